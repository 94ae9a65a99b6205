//! Read-your-writes. A command's acknowledgement carries a consistency
//! token (`tally_projection::watermark::ConsistencyToken`); a read that
//! sends it back (`?after=<token>` or the `Tally-Consistency-Token` header)
//! is answered only once the published watermark is past it, so its answer
//! includes that write.
//!
//! Waiting holds no database connection and does not poll per request:
//! one observer per process ([`WatermarkWatch::run`]) reads the published
//! watermark every [`POLL`] while anyone waits (and not at all otherwise),
//! and wakes the waiters through a `watch` channel. A read waits at most
//! `Prefer: wait=<seconds>` (default [`DEFAULT_WAIT`], at most
//! [`MAX_WAIT`]), then answers `425` with `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tally_ops::Replicas;
use tally_ops::problem::InvalidParam;
use tally_projection::watermark::{ConsistencyToken, published_micros, replica_caught_up};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::DashError;

/// How often the observer reads the watermark while someone waits.
pub const POLL: Duration = Duration::from_millis(20);
/// The wait a read with a token gets without `Prefer: wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// The longest wait `Prefer: wait` can ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The published watermark as this process last saw it, and the readers
/// waiting for it to move.
pub struct WatermarkWatch {
    replicas: Arc<Replicas>,
    /// Per replica, the newest watermark it was seen to hold the rows of:
    /// rows do not leave a replica, so a watermark at or below it needs no
    /// second look at `system.replicas` (which reads ZooKeeper).
    vouched: Vec<AtomicI64>,
    seen: watch::Sender<i64>,
    waiters: AtomicUsize,
    someone_waits: Notify,
}

impl WatermarkWatch {
    pub fn new(replicas: Arc<Replicas>) -> Arc<Self> {
        Arc::new(WatermarkWatch {
            vouched: (0..replicas.len()).map(|_| AtomicI64::new(0)).collect(),
            replicas,
            seen: watch::Sender::new(0),
            waiters: AtomicUsize::new(0),
            someone_waits: Notify::new(),
        })
    }

    /// The newest watermark observed (microseconds; 0: none yet), which the
    /// replica it was read from held the rows of.
    pub fn last_seen(&self) -> i64 {
        *self.seen.borrow()
    }

    /// Whether replica `index` (reached through `ch`) holds every row the
    /// watermark `us` covers; always on a single server. Checked after the
    /// watermark was read (`replica_caught_up`), and remembered.
    pub async fn vouches(
        &self,
        index: usize,
        ch: &clickhouse::Client,
        us: i64,
    ) -> Result<bool, clickhouse::error::Error> {
        let Some(vouched) = self.vouched.get(index).filter(|_| self.replicas.len() > 1) else {
            return Ok(true);
        };
        if us <= vouched.load(Ordering::SeqCst) {
            return Ok(true);
        }
        if replica_caught_up(ch).await? {
            vouched.fetch_max(us, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads the watermark and tells the waiters if it moved.
    async fn observe(&self) -> Result<i64, clickhouse::error::Error> {
        let replica = self.replicas.current();
        let us = published_micros(&replica.client).await?;
        if !self.vouches(replica.index, &replica.client, us).await? {
            // This replica lacks rows the watermark covers: not yet.
            return Ok(*self.seen.borrow());
        }
        self.seen.send_if_modified(|seen| {
            let moved = us > *seen;
            if moved {
                *seen = us;
            }
            moved
        });
        Ok(*self.seen.borrow())
    }

    /// The observer: idle until a reader waits, then reading every
    /// [`POLL`] until none does.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if self.waiters.load(Ordering::SeqCst) == 0 {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.someone_waits.notified() => {}
                }
            }
            if let Err(e) = self.observe().await {
                tracing::warn!(error = %tally_ops::error_chain(&e), "reading the watermark for waiting readers failed");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Returns once the read side includes the write `token` names, or
    /// `NotYetConsistent` after `budget`.
    pub async fn wait_for(
        &self,
        token: ConsistencyToken,
        budget: Duration,
    ) -> Result<(), DashError> {
        let started = Instant::now();
        if token.is_covered_by(*self.seen.borrow()) || token.is_covered_by(self.observe().await?) {
            return Ok(());
        }
        let mut seen = self.seen.subscribe();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.someone_waits.notify_one();
        let waited = tokio::time::timeout(budget, async {
            loop {
                if token.is_covered_by(*seen.borrow_and_update()) {
                    return;
                }
                if seen.changed().await.is_err() {
                    // The sender lives as long as `self`: not reached.
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        waited.map_err(|_| DashError::NotYetConsistent {
            waited_ms: started.elapsed().as_millis() as u64,
            max_wait_secs: MAX_WAIT.as_secs(),
        })
    }
}

/// The token a read names (`?after=` or the header; both must agree), and
/// the wait it allows, or what is wrong with them.
fn requested(
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<(ConsistencyToken, Duration)>, DashError> {
    let mut invalid = Vec::new();
    let mut tokens = Vec::new();
    // Decoded like every other parameter (`%2E` is a `.`); empty, it
    // names no write, as an empty parameter means "not given" everywhere.
    let from_query = query
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, v)| k == "after" && !v.trim().is_empty())
        .map(|(_, v)| v);
    for raw in from_query {
        match raw.parse::<ConsistencyToken>() {
            Ok(t) => tokens.push(t),
            Err(reason) => invalid.push(InvalidParam {
                name: "after".into(),
                reason,
            }),
        }
    }
    if let Some(v) = headers.get(ConsistencyToken::HEADER) {
        match v
            .to_str()
            .map_err(|_| "not ASCII".to_owned())
            .and_then(str::parse)
        {
            Ok(t) => tokens.push(t),
            Err(reason) => invalid.push(InvalidParam {
                name: "Tally-Consistency-Token".into(),
                reason,
            }),
        }
    }
    let wait = prefer_wait(headers).unwrap_or_else(|reason| {
        invalid.push(InvalidParam {
            name: "Prefer".into(),
            reason,
        });
        DEFAULT_WAIT
    });
    if !invalid.is_empty() {
        return Err(DashError::Invalid(invalid));
    }
    // Several tokens: the read must include every write they name.
    Ok(tokens.into_iter().max().map(|t| (t, wait)))
}

/// `Prefer: wait=<seconds>` (RFC 7240), capped at [`MAX_WAIT`].
fn prefer_wait(headers: &HeaderMap) -> Result<Duration, String> {
    for v in headers.get_all("prefer") {
        let Ok(v) = v.to_str() else { continue };
        for pref in v.split(',') {
            if let Some(secs) = pref.trim().strip_prefix("wait=") {
                return secs
                    .trim()
                    .parse::<u64>()
                    .map(|s| Duration::from_secs(s).min(MAX_WAIT))
                    .map_err(|_| format!("`wait={secs}` is not a whole number of seconds"));
            }
        }
    }
    Ok(DEFAULT_WAIT)
}

/// The middleware: waits for the token, if the read names one.
pub async fn read_after(
    State(watch): State<Arc<WatermarkWatch>>,
    req: Request,
    next: Next,
) -> Response {
    match requested(req.uri().query(), req.headers()) {
        Err(e) => e.into_response(),
        Ok(None) => next.run(req).await,
        Ok(Some((token, budget))) => match watch.wait_for(token, budget).await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_read_names_its_token_in_the_query_or_a_header_and_may_allow_a_wait() {
        let t = ConsistencyToken::from_micros(1_000);
        let q = format!(
            "from=2026-01-01&after={}",
            t.to_string().replace('.', "%2E")
        );
        let (got, wait) = requested(Some(&q), &HeaderMap::new()).unwrap().unwrap();
        assert_eq!((got, wait), (t, DEFAULT_WAIT));
        let later = ConsistencyToken::from_micros(2_000);
        let h = headers(&[
            ("tally-consistency-token", &later.to_string()),
            ("prefer", "respond-async, wait=3"),
        ]);
        let (got, wait) = requested(Some(&q), &h).unwrap().unwrap();
        assert_eq!(
            (got, wait),
            (later, Duration::from_secs(3)),
            "the later token wins"
        );
        let capped = headers(&[("prefer", "wait=600")]);
        assert_eq!(prefer_wait(&capped), Ok(MAX_WAIT));
        assert!(
            requested(Some("from=2026-01-01"), &HeaderMap::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_tokens_and_waits_are_reported_together() {
        let h = headers(&[
            ("tally-consistency-token", "nonsense"),
            ("prefer", "wait=soon"),
        ]);
        let Err(DashError::Invalid(params)) = requested(Some("after=1.zz"), &h) else {
            panic!("accepted");
        };
        let names: Vec<_> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["after", "Tally-Consistency-Token", "Prefer"]);
    }
}
