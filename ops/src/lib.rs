//! Operational plumbing every Tally service shares: how to reach the two
//! stores, how errors look on the wire (RFC 9457 problem details), health,
//! readiness and metrics endpoints, and shutdown.
//!
//! It exists so that `write-api`, `ingest` and `dashboards` behave the same
//! way to an operator, and so that none of them invents its own variant.
//! It knows nothing about orders.

pub mod auth;
pub mod http;
pub mod problem;
pub mod shutdown;
pub mod stores;
pub mod telemetry;

pub use problem::Problem;
pub use shutdown::Shutdown;
pub use stores::{ChSettings, PgSettings};
