//! A fault-injecting TCP proxy, for putting between a worker and ClickHouse
//! (Toxiproxy is not installable here). It can refuse connections, or let
//! requests through and drop the responses: the "insert landed, but the
//! acknowledgement was lost" fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Faults {
    refuse: AtomicBool,
    /// Responses to requests containing these bytes are lost (`""`: all).
    lose_acks_for: Mutex<Option<Vec<u8>>>,
    /// Held back this long before being forwarded.
    response_delay_ms: AtomicU64,
}

impl Faults {
    fn loses(&self, request_chunk: &[u8]) -> bool {
        match self.lose_acks_for.lock().unwrap().as_deref() {
            None => false,
            Some([]) => true,
            Some(p) => request_chunk.windows(p.len()).any(|w| w == p),
        }
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if f.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let f = f.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, f).await;
                    }
                });
            }
        });
        FaultProxy { addr, faults, task }
    }

    /// `http://host:port` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything passes.
    pub fn heal(&self) {
        self.faults.refuse.store(false, Ordering::SeqCst);
        *self.faults.lose_acks_for.lock().unwrap() = None;
        self.faults.response_delay_ms.store(0, Ordering::SeqCst);
    }

    /// Requests whose text contains `pattern` (`""`: every request) reach
    /// the server, but their responses are dropped and the connection
    /// closed: the server did the work, the client never hears of it.
    pub fn lose_acks_for(&self, pattern: &str) {
        *self.faults.lose_acks_for.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }

    /// Every response chunk waits `d` before it is forwarded: a slow
    /// server, which widens the windows a crash can land in.
    pub fn delay_responses(&self, d: Duration) {
        self.faults
            .response_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// New connections are closed at once (existing ones keep working).
    pub fn refuse_connections(&self) {
        self.faults.refuse.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // HTTP/1.1 without pipelining: one request at a time per connection, so
    // "the current request is doomed" is one flag.
    let doomed = Arc::new(AtomicBool::new(false));
    let up = {
        let (faults, doomed) = (faults.clone(), doomed.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if faults.loses(&buf[..n]) {
                    doomed.store(true, Ordering::SeqCst);
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = faults.response_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if doomed.load(Ordering::SeqCst) || cw.write_all(&buf[..n]).await.is_err() {
                break; // the response is lost; the client sees a closed connection
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        () = down => {}
        () = async { up.await; std::future::pending::<()>().await } => {}
    }
}
