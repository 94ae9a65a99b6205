//! Projections regenerated from the write store: rebuild, verification,
//! rollback, continuous reconciliation, and their schedule.
//!
//! The ground truth for every finance figure is the normalised write model
//! (orders, order_items, payments, refunds), never the outbox: [`source`]
//! (with [`cells`]) and [`oracle`] state the projection rules again,
//! independently of the ingest's event code and of each other, so the
//! tests can hold one to the other. [`run`] builds shadow tables in one pass
//! over a snapshot of the write store, compares them with a frozen copy of the live
//! ones ([`compare`], polars) and swaps them in partition by partition
//! ([`tables`]); ARCHITECTURE.md ("Rebuild") explains why the seam with the
//! running ingest loses and doubles nothing.

pub mod cells;
pub mod compare;
mod daily;
mod facts;
pub mod options;
pub mod oracle;
mod pipeline;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod source;
pub mod tables;
pub mod verify;
pub mod writer;

pub use oracle::daily_from_write_store;
pub use scheduler::{RebuildScheduler, SchedulerConfig, SchedulerMetrics};
pub use verify::{DriftReport, verify_daily};

impl From<tally_projection::totals::TotalsError> for RebuildError {
    fn from(e: tally_projection::totals::TotalsError) -> Self {
        use tally_projection::totals::TotalsError as E;
        match e {
            E::Postgres(e) => RebuildError::Postgres(e),
            E::Insert(e) => RebuildError::Insert(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Insert(#[from] tally_projection::InsertError),
    #[error("comparison: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("report file: {0}")]
    Io(#[from] std::io::Error),
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// Another rebuild, verification or rollback holds the lock.
    #[error("another run is in progress ({0}); this one is skipped")]
    Busy(String),
    /// The run cannot go on; the message says what to do.
    #[error("{0}")]
    Refused(String),
    #[error("internal invariant violated: {0}")]
    Invariant(String),
}
