//! Operational plumbing every Tally service shares: how to reach the two
//! stores, how errors look on the wire (RFC 9457 problem details), health,
//! readiness and metrics endpoints, and shutdown.
//!
//! It exists so that `write-api`, `ingest` and `dashboards` behave the same
//! way to an operator, and so that none of them invents its own variant.
//! It knows nothing about orders.

pub mod auth;
#[cfg(feature = "cli")]
pub mod flags;
pub mod http;
pub mod problem;
pub mod shutdown;
pub mod stores;
pub mod telemetry;

pub use problem::Problem;
pub use shutdown::Shutdown;
pub use stores::{ChCluster, ChSettings, PgSettings, Pinned, Replicas};

/// An error with its causes, `outer: inner: root`: what a log line or a
/// readiness answer needs when the top level alone says only "network
/// error" and the cause is an untrusted certificate.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// `%XX` for every byte but RFC 3986's unreserved characters and
/// `also_keep`.
pub(crate) fn percent_encode(s: &str, also_keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || also_keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
