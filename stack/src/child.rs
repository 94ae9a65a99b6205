//! Supervised child processes.
//!
//! Children are spawned from one long-lived thread: Linux delivers the
//! parent-death signal when the *thread* that forked a child exits, so
//! spawning from a short-lived test or runtime thread would kill the
//! servers early. That thread is the one piece of process-wide state here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::StackError;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("tally-stack-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel is never closed (the sender is static), so
                // this thread lives as long as the process.
            })
            .expect("spawning the child-process supervisor thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` in its own process group, with `death_signal` delivered
/// to it if this process dies, and its output appended to `log`.
pub(crate) fn spawn(
    mut cmd: Command,
    log: &Path,
    death_signal: Signal,
) -> Result<Child, StackError> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(StackError::io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(StackError::io(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(death_signal).map_err(std::io::Error::from)
            });
        }
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| StackError::Setup("process supervisor poisoned".into()))?
        .send((cmd, tx))
        .map_err(|_| StackError::Setup("process supervisor thread is gone".into()))?;
    rx.recv()
        .map_err(|_| StackError::Setup("process supervisor thread is gone".into()))?
        .map_err(StackError::io(format!("starting {program}")))
}

/// A running server process.
pub struct ChildServer {
    pub name: &'static str,
    pub log: PathBuf,
    child: Mutex<Child>,
    /// The signal that asks this server for a clean, prompt shutdown.
    stop_signal: Signal,
}

impl ChildServer {
    pub(crate) fn new(name: &'static str, child: Child, log: PathBuf, stop_signal: Signal) -> Self {
        ChildServer {
            name,
            log,
            child: Mutex::new(child),
            stop_signal,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX))
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&self) -> Option<String> {
        let mut c = self.child.lock().ok()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Asks for a clean shutdown and waits up to 30 s, then kills.
    pub async fn stop(&self) {
        let pid = self.nix_pid();
        if self.exited().is_some() {
            return;
        }
        tracing::info!(server = self.name, pid = %pid, "stopping");
        let _ = kill(pid, self.stop_signal);
        for _ in 0..300 {
            if self.exited().is_some() {
                tracing::info!(server = self.name, "stopped");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(server = self.name, "did not stop within 30 s; killing it");
        let _ = kill(pid, Signal::SIGKILL);
        if let Ok(mut c) = self.child.lock() {
            let _ = c.wait();
        }
    }

    /// SIGKILLs the server and reaps it: a crash, for chaos tests.
    pub async fn kill(&self) {
        let _ = kill(self.nix_pid(), Signal::SIGKILL);
        for _ in 0..100 {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `n` lines of the server's log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
