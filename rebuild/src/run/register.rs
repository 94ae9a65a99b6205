//! Phase 1: one run at a time ([`RUN_LOCK`]), interrupted runs finished
//! first, then registration with the ingest at rest
//! (`tally_projection::seam`, step 1).

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tally_projection::seam;
use tally_projection::totals::recover_pending;
use time::OffsetDateTime;

use super::RunOptions;
use crate::RebuildError;
use crate::tables::{self, Copy};

/// Held (session-level) for a whole run: one run at a time across replicas.
pub const RUN_LOCK: i64 = 0x7461_6c6c_7275_6e73; // "tallruns"

/// Longest wait for in-flight ingest batches to commit.
const SEAM_WAIT: Duration = Duration::from_secs(60);

/// The locks live on a connection of their own, outside the pool: if the
/// process dies, PostgreSQL releases them with the connection.
pub(super) struct Locks {
    conn: PgConnection,
}

impl Locks {
    pub(super) async fn connect(pool: &PgPool) -> Result<Locks, RebuildError> {
        let opts = pool.connect_options();
        let mut conn = PgConnection::connect_with(&opts).await?;
        // Waiting for the ingest to come to rest is bounded: a batch that
        // holds the seam for minutes is a fault to report, not to wait out.
        sqlx::query(&format!("SET lock_timeout = '{}s'", SEAM_WAIT.as_secs()))
            .execute(&mut conn)
            .await?;
        Ok(Locks { conn })
    }

    pub(super) async fn try_run_lock(&mut self) -> Result<bool, RebuildError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RUN_LOCK)
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Waits for in-flight ingest batches to commit and keeps new ones out.
    pub(super) async fn seam(&mut self) -> Result<(), RebuildError> {
        let t = Instant::now();
        let r = seam::rest(&mut self.conn).await;
        if let Err(sqlx::Error::Database(e)) = &r
            && e.code().as_deref() == Some("55P03")
        {
            return Err(RebuildError::Refused(format!(
                "the ingest did not come to rest within {} s: an ingest batch held its lock \
                     that long (see pg_stat_activity for `tally-ingest` sessions); nothing was \
                     swapped, run again once it is healthy",
                SEAM_WAIT.as_secs()
            )));
        }
        r?;
        tracing::debug!(waited_ms = t.elapsed().as_millis() as u64, "ingest at rest");
        Ok(())
    }

    pub(super) async fn release_seam(&mut self) -> Result<(), RebuildError> {
        Ok(seam::resume(&mut self.conn).await?)
    }
}

impl Locks {
    /// Lets the next run start at once: unlocks, then closes the
    /// connection. Dropping it instead leaves the lock held until the
    /// server notices the closed socket, and a run started in that moment
    /// (the scheduler's next, a test's) was told another one holds it.
    pub(super) async fn release(self) {
        let mut conn = self.conn;
        if let Err(e) = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "could not release the run lock; it goes with the connection");
        }
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the lock connection");
        }
    }
}

pub(super) fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown-host".into(), |s| s.trim().to_owned());
    format!("{name} pid {}", std::process::id())
}

/// Takes the run lock or records a skipped run and says who holds it.
pub(super) async fn lock_or_skip(
    pool: &PgPool,
    locks: &mut Locks,
    kind: &str,
    trigger: &str,
) -> Result<(), RebuildError> {
    if locks.try_run_lock().await? {
        return Ok(());
    }
    let holder: Option<(i64, String, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT run_id, kind, host, started_at FROM rebuild_runs
         WHERE state IN ('building', 'swapping') ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let who = match holder {
        Some((id, k, h, at)) => format!("{k} run #{id} on {h}, started {at}"),
        None => "a run that has not registered yet".into(),
    };
    sqlx::query(
        "INSERT INTO rebuild_runs (kind, trigger, state, finished_at, message, host)
         VALUES ($1, $2, 'skipped', clock_timestamp(), $3, $4)",
    )
    .bind(kind)
    .bind(trigger)
    .bind(format!("skipped: {who} holds the lock"))
    .bind(host())
    .execute(pool)
    .await?;
    Err(RebuildError::Busy(who))
}

/// Completes swaps a crashed run left half done, and closes runs whose
/// process died while building (we hold the run lock, so none is alive).
pub(super) async fn finish_interrupted(
    pool: &PgPool,
    ch: &clickhouse::Client,
) -> Result<(), RebuildError> {
    let swapping: Vec<(i64, String)> = sqlx::query_as(
        "SELECT run_id, kind FROM rebuild_runs WHERE state = 'swapping' ORDER BY run_id",
    )
    .fetch_all(pool)
    .await?;
    for (run_id, kind) in swapping {
        tracing::warn!(run_id, "completing the interrupted swap of an earlier run");
        super::swap::complete_swap(pool, ch, run_id, &kind).await?;
    }
    let abandoned = sqlx::query(
        "UPDATE rebuild_runs SET state = 'failed', journaling = false, finished_at = clock_timestamp(),
                message = 'abandoned: the process running it ended before it finished'
         WHERE state = 'building'",
    )
    .execute(pool)
    .await?
    .rows_affected();
    if abandoned > 0 {
        tracing::warn!(runs = abandoned, "marked abandoned runs as failed");
    }
    trim_journal(pool).await
}

/// The journal is only kept while some run needs it.
pub(super) async fn trim_journal(pool: &PgPool) -> Result<(), RebuildError> {
    Ok(seam::trim_journal(pool).await?)
}

pub(super) struct Registered {
    pub(super) run_id: i64,
    pub(super) journal_from: i64,
    pub(super) snapshot_at: OffsetDateTime,
    pub(super) snapshot: sqlx::Transaction<'static, sqlx::Postgres>,
    pub(super) paused_ms: u64,
    /// When the run began (before registration), for its duration.
    pub(super) started: Instant,
}

pub(super) async fn register(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    kind: &str,
    opts: &RunOptions,
) -> Result<Registered, RebuildError> {
    let started = Instant::now();
    // Empty copies first: only the partition copy needs the ingest at rest.
    tables::recreate(ch, Copy::Frozen).await?;
    locks.seam().await?;
    let paused = Instant::now();
    let r = async {
        // Live = the ingest's totals: no batch is in flight, and every
        // committed one has its cells pushed.
        recover_pending(pool, ch, Duration::ZERO).await?;
        tables::copy_live_into(ch, Copy::Frozen).await?;
        let (run_id, journal_from): (i64, i64) = sqlx::query_as(
            "INSERT INTO rebuild_runs (kind, trigger, state, journaling, journal_from, host, reporting_zone)
             VALUES ($1, $2, 'building', true,
                     (SELECT coalesce(max(seq), 0) FROM rebuild_journal), $3, $4)
             RETURNING run_id, journal_from",
        )
        .bind(kind)
        .bind(&opts.trigger)
        .bind(host())
        .bind(opts.zone.name())
        .fetch_one(pool)
        .await?;
        let mut snapshot = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *snapshot)
            .await?;
        let (snap, snapshot_at): (String, OffsetDateTime) =
            sqlx::query_as("SELECT pg_current_snapshot()::text, now()")
                .fetch_one(&mut *snapshot)
                .await?;
        sqlx::query("UPDATE rebuild_runs SET snapshot = $2 WHERE run_id = $1")
            .bind(run_id)
            .bind(&snap)
            .execute(pool)
            .await?;
        Ok::<_, RebuildError>(Registered {
            started,
            run_id,
            journal_from,
            snapshot_at,
            snapshot,
            paused_ms: paused.elapsed().as_millis() as u64,
        })
    }
    .await;
    locks.release_seam().await?;
    r
}
