//! One run (rebuild, verification or rollback) from lock to record, by
//! phase: [`register`] with the ingest at rest, [`build`] the shadow from
//! one snapshot of the write store, [`compare`] it with the frozen live
//! tables, then [`swap`] it in or drop it; [`rollback`] installs the tables
//! from before the last swap the same way. The protocol with the running
//! ingest, and why it loses and doubles nothing, is `tally_projection::seam`.
//!
//! *Changing the reporting zone* ([`RunOptions::change_zone`]) is a rebuild
//! in the new zone whose swap also records the zone. Until the swap the
//! ingest counts in the old calendar and journals as usual; the replay
//! counts the journal in the new one. At the swap, with the ingest at rest,
//! the running totals are aligned with every rebuilt cell (not only the
//! drifted ones), the zone is recorded in the same transaction, and the
//! next batch reads it at the seam, so every event is counted in exactly
//! one calendar. One gap is the calendar's own: a push of old-calendar
//! cells can still be on its way to ClickHouse (a batch pushes after its
//! commit), and its key may not exist in the new calendar, so no rebuilt
//! row outranks it. Every such push is still listed in
//! `ingest_pending_pushes`, so the shadow gets a row for each listed key,
//! the rebuilt cell or zeros, with a version newer than any push's, and the
//! list is cleared. The change ends the rollback window: a rollback would
//! bring back tables counted in the old calendar.

mod build;
mod compare;
mod register;
mod rollback;
mod swap;

use serde::Serialize;
use sqlx::PgPool;
use tally_projection::deployment;
use time::OffsetDateTime;

use crate::RebuildError;
pub use crate::options::{Mode, RunOptions};
pub use crate::report::RunOutcome;

pub use register::RUN_LOCK;
pub use rollback::{RollbackOutcome, rollback};

use register::{Locks, Registered, finish_interrupted, lock_or_skip, register, trim_journal};

/// The scratch table the cells are built in.
pub(crate) const CELLS_TABLE: &str = "rebuild_cells";

/// One row of `tally rebuild history`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct HistoryRow {
    pub run_id: i64,
    pub kind: String,
    pub trigger: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub orders: Option<i64>,
    pub cells: Option<i64>,
    pub drift_rows: Option<i64>,
    pub swapped: bool,
    pub message: Option<String>,
    pub host: String,
    /// The calendar the run counted days in (`None`: runs from before it
    /// was recorded).
    pub reporting_zone: Option<String>,
}

pub async fn history(pool: &PgPool, limit: i64) -> Result<Vec<HistoryRow>, RebuildError> {
    Ok(sqlx::query_as(
        "SELECT run_id, kind, trigger, state, started_at, finished_at, orders, cells, drift_rows,
                swapped, message, host, reporting_zone
         FROM rebuild_runs ORDER BY run_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub(super) async fn mark_failed(pool: &PgPool, run_id: i64, error: &RebuildError) {
    let r = sqlx::query(
        "UPDATE rebuild_runs SET state = 'failed', journaling = false,
                finished_at = clock_timestamp(), message = $2
         WHERE run_id = $1 AND state = 'building'",
    )
    .bind(run_id)
    .bind(error.to_string())
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::error!(run_id, error = %e, "could not record the run's failure");
    }
    if let Err(e) = trim_journal(pool).await {
        tracing::warn!(error = %e, "could not trim the rebuild journal");
    }
}

/// Rebuild or verify. `Err(Busy)` if another run holds the lock (recorded
/// as skipped).
pub async fn run(
    pool: &PgPool,
    ch: &clickhouse::Client,
    mode: Mode,
    opts: &RunOptions,
) -> Result<RunOutcome, RebuildError> {
    let kind = if mode == Mode::Rebuild {
        "rebuild"
    } else {
        "verify"
    };
    let mut locks = Locks::connect(pool).await?;
    lock_or_skip(pool, &mut locks, kind, &opts.trigger).await?;
    let r = run_locked(pool, ch, &mut locks, mode, opts).await;
    locks.release().await;
    r
}

/// [`run`] once it holds the run lock.
async fn run_locked(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    mode: Mode,
    opts: &RunOptions,
) -> Result<RunOutcome, RebuildError> {
    let kind = if mode == Mode::Rebuild {
        "rebuild"
    } else {
        "verify"
    };
    finish_interrupted(pool, ch).await?;
    let installing = what_to_install(pool, mode, opts).await?;
    let reg = register(pool, ch, locks, kind, opts).await?;
    let run_id = reg.run_id;
    tracing::info!(
        run_id,
        kind,
        "run registered; building from the write store"
    );
    match build_compare_swap(pool, ch, locks, (mode, installing), opts, reg).await {
        Ok(o) => Ok(o),
        Err(e) => {
            mark_failed(pool, run_id, &e).await;
            Err(e)
        }
    }
}

/// What a swap installs, which decides how much of the ingest's state it
/// realigns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Installing {
    /// Tables rebuilt in the deployment's zone.
    Rebuild,
    /// The tables from before the last swap.
    Rollback,
    /// Tables rebuilt in a new zone, which the swap records.
    ZoneChange { from: String },
}

async fn what_to_install(
    pool: &PgPool,
    mode: Mode,
    opts: &RunOptions,
) -> Result<Installing, RebuildError> {
    if !opts.change_zone {
        return Ok(Installing::Rebuild);
    }
    if mode != Mode::Rebuild {
        return Err(RebuildError::Refused(
            "changing the reporting zone rebuilds and swaps both projections: use `tally rebuild`, \
             not a verification"
                .into(),
        ));
    }
    Ok(match deployment::recorded(pool).await? {
        Some(from) if !from.eq_ignore_ascii_case(opts.zone.name()) => {
            Installing::ZoneChange { from }
        }
        _ => Installing::Rebuild,
    })
}

/// Build, compare, then swap or close: everything after registration.
async fn build_compare_swap(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    (mode, installing): (Mode, Installing),
    opts: &RunOptions,
    reg: Registered,
) -> Result<RunOutcome, RebuildError> {
    let Registered {
        run_id,
        journal_from,
        snapshot_at,
        mut snapshot,
        paused_ms: register_paused_ms,
        started,
    } = reg;
    let pass = build::build(pool, ch, opts, &mut snapshot).await?;
    let (orders, dead_letters, undecodable) = (
        pass.orders,
        pass.backlog.dead_letters,
        pass.backlog.undecodable,
    );
    let found = compare::compare(pool, ch, opts, pass, snapshot).await?;
    let mut outcome = RunOutcome {
        run_id,
        kind: if mode == Mode::Rebuild {
            "rebuild"
        } else {
            "verify"
        },
        snapshot_at,
        orders,
        cells: found.cells as u64,
        daily: found.daily,
        facts: found.facts,
        fact_copies: found.fact_copies,
        orders_not_compared: found.not_compared,
        ingest_totals_drift: found.totals_drift as u64,
        dead_letters,
        swapped: false,
        replayed_events: 0,
        register_paused_ms,
        ingest_paused_ms: 0,
        seconds: 0.0,
        notes: Vec::new(),
        zone_changed_from: None,
    };
    if dead_letters > 0 {
        outcome.notes.push(format!(
            "{dead_letters} dead-lettered event(s) are in the write store but not in the \
             projections, so their cells differ; see `tally ingest dead-letters`"
        ));
    }
    if undecodable > 0 {
        outcome.notes.push(format!(
            "{undecodable} event(s) in the outbox could not be decoded; the ingest will \
             dead-letter them"
        ));
    }
    sqlx::query(
        "UPDATE rebuild_runs SET orders = $2, cells = $3, drift_rows = $4, drift = $5 WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(orders as i64)
    .bind(found.cells)
    .bind(outcome.differing() as i64)
    .bind(sqlx::types::Json(serde_json::json!({
        "daily": &outcome.daily, "facts": &outcome.facts, "fact_copies": &outcome.fact_copies,
    })))
    .execute(pool)
    .await?;
    let swap = match mode {
        Mode::Verify => false,
        Mode::Repair => outcome.has_drift(),
        Mode::Rebuild => true,
    };
    if swap {
        swap::swap(
            pool,
            ch,
            locks,
            opts,
            journal_from,
            installing,
            &mut outcome,
        )
        .await?;
    } else {
        swap::close_unswapped(pool, ch, run_id).await?;
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}
