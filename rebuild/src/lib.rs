//! Projections regenerated from the write store, and the scheduled job
//! that checks the live ones against them.
//!
//! The ground truth for every finance figure is the normalised write model
//! (orders, order_items, payments, refunds), never the outbox: [`oracle`]
//! states the counting rules once more, in SQL, independently of the
//! ingest's Rust. [`verify`] compares that with what ClickHouse serves.
//! Issue #5 extends this into shadow tables, swap and rollback; this crate
//! already owns the schedule (tokio-cron-scheduler) that will run them.

pub mod oracle;
pub mod scheduler;
pub mod verify;

pub use oracle::daily_from_write_store;
pub use scheduler::{RebuildScheduler, SchedulerConfig};
pub use verify::{DriftReport, verify_daily};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("scheduler: {0}")]
    Scheduler(String),
}
