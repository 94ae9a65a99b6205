//! One run — rebuild, verification or rollback — from lock to record.
//!
//! The seam with the running ingest (ARCHITECTURE.md, "Rebuild") in short:
//!
//! 1. *Register* with the ingest at rest (the exclusive [`SEAM_LOCK`]; every
//!    batch holds it shared until it commits): re-push pending cells, freeze
//!    the live tables into `*_frozen`, record the run with `journaling` on,
//!    and take a REPEATABLE READ snapshot of the write store. At that instant
//!    the projections hold exactly the events no longer in the outbox.
//! 2. *Build* from the snapshot: order facts, and daily cells minus the
//!    contributions of the events still in the snapshot's outbox, so the
//!    shadow counts exactly what the frozen copy should count. Meanwhile
//!    every batch copies the events it consumes into `rebuild_journal`.
//! 3. *Compare* shadow with frozen (polars, in bounded chunks).
//! 4. *Swap*: replay the journal onto the shadow (most of it while the
//!    ingest runs, the rest with it at rest again), make the ingest's
//!    running totals equal to the shadow's cells and the run `swapping` in
//!    one PostgreSQL transaction, then replace the live partitions. The
//!    ingest claims nothing while a run is `swapping`, so a crash there is
//!    completed by the next run, never raced.
//!
//! Versions keep ClickHouse right across the seam: the shadow's cells carry
//! versions drawn after registration, so a push that was still in flight
//! from before loses to them; a push from after registration is for a cell
//! the journal replay rewrote with a still newer version.
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

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tally_domain::DailyMeasures;
use tally_ingest::{
    OUTBOX_COLUMNS, OutboxRow, SEAM_LOCK, TOTALS_COLUMNS, TOTALS_TABLE, TotalsRow, add_to_totals,
    insert_rows, recover_pending,
};
use tally_projection::deployment;
use tally_projection::rows::{CellKey, DailyRow, FactRow, Projected, ReportingZone, project};
use time::{Date, OffsetDateTime};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::RebuildError;
use crate::cells::{CellSums, SortedCells};
use crate::compare::{
    ColumnKind, ColumnSpec, Frame, FrameBuilder, Sink, TableDrift, compare_chunk,
};
use crate::facts;
use crate::progress::{Progress, ProgressMode};
use crate::report::CsvReport;
use crate::source;
use crate::tables::{self, Copy};
use crate::writer::{BLOCK_ROWS, ShadowWriter};

/// Held (session-level) for a whole run: one run at a time across replicas.
pub const RUN_LOCK: i64 = 0x7461_6c6c_7275_6e73; // "tallruns"

/// Rows the order pass hands to the shadow writer at a time.
const HANDOFF_ROWS: usize = 50_000;

/// Longest wait for in-flight ingest batches to commit.
const SEAM_WAIT: Duration = Duration::from_secs(60);

/// The scratch table the cells are built in.
const CELLS_TABLE: &str = "rebuild_cells";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Build and compare; never swap.
    Verify,
    /// Build, compare, and swap if drift was found.
    Repair,
    /// Build, compare and swap.
    Rebuild,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub zone: ReportingZone,
    /// Who started it (`cli`, `schedule`): recorded in the history.
    pub trigger: String,
    pub progress: ProgressMode,
    /// Most rows per side held in memory by one comparison chunk.
    pub chunk_rows: usize,
    /// Rows per block ClickHouse writes while building (a part per
    /// partition each).
    pub insert_rows: usize,
    /// Every differing row, as CSV.
    pub report_file: Option<PathBuf>,
    /// `zone` is to become the deployment's reporting zone: the swap
    /// records it (see [`ZoneChange`]). Without it, a run in another zone
    /// than the recorded one is refused at the swap.
    pub change_zone: bool,
}

impl RunOptions {
    /// Daily cells summed in memory before partial sums go to PostgreSQL:
    /// five comparison chunks' worth (about 80 bytes a cell), so
    /// `--chunk-rows` stays the one memory knob.
    pub fn cells_in_memory(&self) -> usize {
        self.chunk_rows.saturating_mul(5)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            zone: ReportingZone::utc(),
            trigger: "cli".into(),
            progress: ProgressMode::Log,
            chunk_rows: 200_000,
            insert_rows: BLOCK_ROWS,
            report_file: None,
            change_zone: false,
        }
    }
}

/// What a run found and did.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub snapshot_at: OffsetDateTime,
    pub orders: u64,
    pub cells: u64,
    pub daily: TableDrift,
    pub facts: TableDrift,
    /// Orders with events still in the outbox (or dead-lettered) at the
    /// snapshot: their facts are not compared this time.
    pub orders_not_compared: u64,
    /// Cells where the ingest's running totals (`ingest_daily_totals`)
    /// disagreed with the write store at the snapshot: drift that the next
    /// push of those cells would carry into ClickHouse.
    pub ingest_totals_drift: u64,
    pub dead_letters: i64,
    pub swapped: bool,
    /// Events consumed by the ingest during the run and replayed onto the
    /// shadow before the swap.
    pub replayed_events: u64,
    /// How long the ingest was held to freeze the live tables.
    pub register_paused_ms: u64,
    /// How long the ingest was held for the swap.
    pub ingest_paused_ms: u64,
    pub seconds: f64,
    pub notes: Vec<String>,
    /// The deployment's reporting zone before this run changed it.
    pub zone_changed_from: Option<String>,
}

impl RunOutcome {
    pub fn has_drift(&self) -> bool {
        self.daily.differing() > 0 || self.facts.differing() > 0 || self.ingest_totals_drift > 0
    }

    /// Drift with the shape of a calendar mismatch rather than of lost or
    /// doubled events: every order is there on both sides, and every fact
    /// shown differs in its reporting day alone.
    pub fn calendar_shaped(&self) -> bool {
        let f = &self.facts;
        f.different > 0
            && f.missing == 0
            && f.extra == 0
            && !f.worst.is_empty()
            && f.worst
                .iter()
                .all(|r| !r.fields.is_empty() && r.fields.iter().all(|d| d.field == "placed_day"))
    }
}

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

/// The locks live on a connection of their own, outside the pool: if the
/// process dies, PostgreSQL releases them with the connection.
struct Locks {
    conn: PgConnection,
}

impl Locks {
    async fn connect(pool: &PgPool) -> Result<Locks, RebuildError> {
        let opts = pool.connect_options();
        let mut conn = PgConnection::connect_with(&opts).await?;
        // Waiting for the ingest to come to rest is bounded: a batch that
        // holds the seam for minutes is a fault to report, not to wait out.
        sqlx::query(&format!("SET lock_timeout = '{}s'", SEAM_WAIT.as_secs()))
            .execute(&mut conn)
            .await?;
        Ok(Locks { conn })
    }

    async fn try_run_lock(&mut self) -> Result<bool, RebuildError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RUN_LOCK)
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Waits for in-flight ingest batches to commit and keeps new ones out.
    async fn seam(&mut self) -> Result<(), RebuildError> {
        let t = Instant::now();
        let r = sqlx::query("SELECT pg_advisory_lock($1)::text")
            .bind(SEAM_LOCK)
            .execute(&mut self.conn)
            .await;
        if let Err(sqlx::Error::Database(e)) = &r {
            if e.code().as_deref() == Some("55P03") {
                return Err(RebuildError::Refused(format!(
                    "the ingest did not come to rest within {} s: an ingest batch held its lock \
                     that long (see pg_stat_activity for `tally-ingest` sessions); nothing was \
                     swapped, run again once it is healthy",
                    SEAM_WAIT.as_secs()
                )));
            }
        }
        r?;
        tracing::debug!(waited_ms = t.elapsed().as_millis() as u64, "ingest at rest");
        Ok(())
    }

    async fn release_seam(&mut self) -> Result<(), RebuildError> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SEAM_LOCK)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}

fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{name} pid {}", std::process::id())
}

/// Takes the run lock or records a skipped run and says who holds it.
async fn lock_or_skip(
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
async fn finish_interrupted(pool: &PgPool, ch: &clickhouse::Client) -> Result<(), RebuildError> {
    let swapping: Vec<(i64, String)> = sqlx::query_as(
        "SELECT run_id, kind FROM rebuild_runs WHERE state = 'swapping' ORDER BY run_id",
    )
    .fetch_all(pool)
    .await?;
    for (run_id, kind) in swapping {
        tracing::warn!(run_id, "completing the interrupted swap of an earlier run");
        complete_swap(pool, ch, run_id, &kind).await?;
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
async fn trim_journal(pool: &PgPool) -> Result<(), RebuildError> {
    sqlx::query(
        "DELETE FROM rebuild_journal WHERE NOT EXISTS (SELECT 1 FROM rebuild_runs WHERE journaling)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn mark_failed(pool: &PgPool, run_id: i64, error: &RebuildError) {
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
    finish_interrupted(pool, ch).await?;
    let installing = what_to_install(pool, mode, opts).await?;
    let started = Instant::now();
    let reg = register(pool, ch, &mut locks, kind, opts).await?;
    let run_id = reg.run_id;
    tracing::info!(
        run_id,
        kind,
        "run registered; building from the write store"
    );
    match build_compare_swap(pool, ch, &mut locks, mode, opts, reg, installing, started).await {
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
enum Installing {
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

struct Registered {
    run_id: i64,
    journal_from: i64,
    snapshot_at: OffsetDateTime,
    snapshot: sqlx::Transaction<'static, sqlx::Postgres>,
    paused_ms: u64,
}

async fn register(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    kind: &str,
    opts: &RunOptions,
) -> Result<Registered, RebuildError> {
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

/// What the pass over the orders produced.
struct Pass {
    backlog: Backlog,
    orders: u64,
    sums: CellSums,
    /// The version the shadow's cells carry.
    version: i64,
    /// Still writing ClickHouse's last block of facts: only the facts
    /// comparison has to wait for it.
    facts: ShadowWriter<FactRow>,
}

/// One pass over the write store as of the snapshot: every order's fact
/// row into the shadow table, and its contributions summed into daily
/// cells. `orders_conn` has imported the snapshot; `snapshot` reads the
/// outbox and takes any cells spilled over the memory budget.
async fn pass(
    snapshot: &mut PgConnection,
    orders_conn: &mut PgConnection,
    ch: &clickhouse::Client,
    opts: &RunOptions,
) -> Result<Pass, RebuildError> {
    let backlog = read_backlog(&mut *snapshot, &opts.zone).await?;
    sqlx::query("TRUNCATE rebuild_cells, rebuild_totals_drift")
        .execute(&mut *snapshot)
        .await?;
    let v0: i64 = sqlx::query_scalar("SELECT nextval('ingest_version_seq')")
        .fetch_one(&mut *snapshot)
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *orders_conn)
        .await?;
    tables::recreate(ch, Copy::Shadow).await?;

    let mut progress = Progress::start(opts.progress, "orders", total as u64);
    let shadow = Copy::Shadow.of("order_facts");
    let zone = opts.zone.name().to_owned();
    let mut sums = CellSums::new(opts.cells_in_memory());
    let mut facts: Vec<FactRow> = Vec::with_capacity(HANDOFF_ROWS);
    // The writer encodes and sends on its own task: PostgreSQL, this
    // process and ClickHouse each keep a core busy.
    let mut writer = ShadowWriter::start(ch, &shadow, opts.insert_rows);
    let mut orders = 0u64;
    {
        let mut rows = source::orders(&mut *orders_conn, &zone);
        while let Some(o) = rows.try_next().await? {
            orders += 1;
            let at = sums.column(&o.merchant_id, &o.currency);
            o.contributions(|day, m| sums.add_at(day, at, &m));
            facts.extend(o.fact());
            if facts.len() >= HANDOFF_ROWS {
                progress.inc(facts.len() as u64);
                let chunk = std::mem::replace(&mut facts, Vec::with_capacity(HANDOFF_ROWS));
                writer.send(chunk).await?;
            }
            if sums.full() {
                sums.spill(&mut *snapshot).await?;
            }
        }
    }
    progress.inc(facts.len() as u64);
    sums.check()?;
    writer.send(facts).await?;
    progress.finish();
    Ok(Pass {
        backlog,
        orders,
        sums,
        version: v0,
        facts: writer,
    })
}

/// A pass's daily cells: sorted in memory when they fitted the budget,
/// else partial sums of which some are already in PostgreSQL.
enum Cells {
    Sorted(Arc<SortedCells>),
    Spilled(CellSums),
}

/// The daily cells, minus what the snapshot's outbox still holds, into
/// `rebuild_cells`; then the cells where the ingest's running totals
/// disagree with them. Returns (cells, cells whose totals drifted).
async fn write_cells(
    snapshot: &mut PgConnection,
    cells: Cells,
    version: i64,
    backlog: &BTreeMap<CellKey, DailyMeasures>,
) -> Result<(i64, i64), RebuildError> {
    let t = Instant::now();
    match cells {
        Cells::Sorted(sorted) => {
            sorted.write(&mut *snapshot, CELLS_TABLE).await?;
        }
        Cells::Spilled(sums) => {
            sums.write(&mut *snapshot, CELLS_TABLE, version).await?;
            if !backlog.is_empty() {
                let negated = backlog
                    .iter()
                    .map(|(k, d)| (k.clone(), d.negated()))
                    .collect();
                let mut tx = snapshot.begin().await?; // a savepoint: add_to_totals wants a transaction
                add_to_totals(&mut tx, CELLS_TABLE, &negated).await?;
                tx.commit().await?;
                sqlx::query(
                    "DELETE FROM rebuild_cells WHERE orders_placed = 0 AND gross_minor = 0
                       AND captured_minor = 0 AND refunded_minor = 0 AND orders_cancelled = 0
                       AND items_sold = 0",
                )
                .execute(&mut *snapshot)
                .await?;
            }
        }
    }
    let written = t.elapsed();
    // Both tables are read in primary-key order, so a merge join needs no
    // hash table; the planner's hash join spilled to disk in 16 batches
    // at the default `work_mem` and took 0.5 s where this takes 0.35 s
    // (700 000 cells). Local: it ends with the snapshot's commit.
    sqlx::query("SET LOCAL enable_hashjoin = off")
        .execute(&mut *snapshot)
        .await?;
    // Both sides as of the snapshot; afterwards both move by the same
    // journaled deltas, so this set is what a swap has to rewrite.
    let totals_drift = sqlx::query(&format!(
        "INSERT INTO rebuild_totals_drift (day, merchant_id, currency)
         SELECT coalesce(r.day, t.day), coalesce(r.merchant_id, t.merchant_id),
                coalesce(r.currency, t.currency)
         FROM {CELLS_TABLE} r FULL JOIN {TOTALS_TABLE} t
           ON r.day = t.day AND r.merchant_id = t.merchant_id AND r.currency = t.currency
         WHERE (r.orders_placed, r.gross_minor, r.captured_minor, r.refunded_minor,
                r.orders_cancelled, r.items_sold)
            IS DISTINCT FROM (t.orders_placed, t.gross_minor, t.captured_minor, t.refunded_minor,
                              t.orders_cancelled, t.items_sold)"
    ))
    .execute(&mut *snapshot)
    .await?
    .rows_affected() as i64;
    let cells: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild_cells")
        .fetch_one(&mut *snapshot)
        .await?;
    tracing::debug!(
        cells_written_ms = written.as_millis() as u64,
        totals_compared_ms = (t.elapsed() - written).as_millis() as u64,
        "daily cells built"
    );
    Ok((cells, totals_drift))
}

/// A chunk read (and turned into frames) while the previous one is being
/// compared; dropped, it stops reading.
pub(crate) type Prefetch<T> = AbortOnDropHandle<Result<T, RebuildError>>;

pub(crate) async fn prefetched<T>(p: Prefetch<T>) -> Result<T, RebuildError> {
    p.await
        .map_err(|e| RebuildError::Invariant(format!("chunk reader failed: {e}")))?
}

/// What the snapshot's outbox (and dead letters) hold: not yet in the
/// projections, so subtracted from the cells and left out of the facts.
struct Backlog {
    cells: BTreeMap<CellKey, DailyMeasures>,
    orders: HashSet<Uuid>,
    dead_letters: i64,
    undecodable: u64,
}

async fn read_backlog(
    conn: &mut PgConnection,
    zone: &ReportingZone,
) -> Result<Backlog, RebuildError> {
    let mut b = Backlog {
        cells: BTreeMap::new(),
        orders: HashSet::new(),
        dead_letters: 0,
        undecodable: 0,
    };
    {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox");
        let mut rows = sqlx::query_as::<_, OutboxRow>(&sql).fetch(&mut *conn);
        let mut events = Vec::new();
        while let Some(r) = rows.try_next().await? {
            b.orders.insert(r.aggregate_id);
            match r.decode() {
                Ok(e) => events.push(e),
                Err(_) => b.undecodable += 1,
            }
            if events.len() >= 10_000 {
                merge_cells(&mut b.cells, project(&events, zone))?;
                events.clear();
            }
        }
        merge_cells(&mut b.cells, project(&events, zone))?;
    }
    let dead: Vec<(Uuid,)> = sqlx::query_as("SELECT aggregate_id FROM ingest_dead_letters")
        .fetch_all(&mut *conn)
        .await?;
    b.dead_letters = dead.len() as i64;
    b.orders.extend(dead.into_iter().map(|(id,)| id));
    Ok(b)
}

fn merge_cells(
    into: &mut BTreeMap<CellKey, DailyMeasures>,
    from: Projected,
) -> Result<(), RebuildError> {
    if !from.overflowing.is_empty() {
        return Err(RebuildError::Refused(format!(
            "{} event(s) in the outbox sum past 64-bit minor units; the ingest will dead-letter them",
            from.overflowing.len()
        )));
    }
    for (k, d) in from.cells {
        let what = format!("{k:?}");
        let cell = into.entry(k).or_default();
        *cell = cell.checked_add(&d).ok_or_else(|| {
            RebuildError::Refused(format!(
                "the outbox's events for cell {what} sum past 64-bit minor units"
            ))
        })?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn build_compare_swap(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    mode: Mode,
    opts: &RunOptions,
    reg: Registered,
    installing: Installing,
    started: Instant,
) -> Result<RunOutcome, RebuildError> {
    let Registered {
        run_id,
        journal_from,
        snapshot_at,
        mut snapshot,
        paused_ms: register_paused_ms,
    } = reg;

    // Build from one snapshot: a second connection imports it and streams
    // the orders while this one reads the outbox and writes the cells.
    let exported: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *snapshot)
        .await?;
    if !exported.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(RebuildError::Invariant(format!(
            "unexpected snapshot id {exported:?}"
        )));
    }
    let mut orders_tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *orders_tx)
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{exported}'"))
        .execute(&mut *orders_tx)
        .await?;
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *orders_tx)
        .await?;
    let Pass {
        backlog,
        orders,
        sums,
        version,
        facts: facts_writer,
    } = pass(&mut snapshot, &mut orders_tx, ch, opts).await?;
    orders_tx.rollback().await?;

    // Then, side by side: PostgreSQL writes the cells and ClickHouse and
    // polars compare the facts; the cells are compared once written. One
    // report file between the two comparisons.
    let report = match &opts.report_file {
        Some(p) => Some(std::sync::Mutex::new(CsvReport::create(p)?)),
        None => None,
    };
    let poisoned = || RebuildError::Invariant("report writer poisoned".into());
    let sink = || match &report {
        Some(r) => Sink::every_row(|row| r.lock().map_err(|_| poisoned())?.write(row)),
        None => Sink::worst_only(),
    };
    let (cells_and_daily, facts) = {
        let (mut sink_daily, mut sink_facts) = (sink(), sink());
        let cells_then_daily = async {
            match sums.into_sorted(&backlog.cells, version) {
                // From memory: PostgreSQL takes the cells while ClickHouse
                // compares them.
                Ok(sorted) => {
                    let sorted = Arc::new(sorted);
                    let write = async {
                        let r = write_cells(
                            &mut snapshot,
                            Cells::Sorted(sorted.clone()),
                            version,
                            &backlog.cells,
                        )
                        .await?;
                        snapshot.commit().await?;
                        Ok::<_, RebuildError>(r)
                    };
                    let (written, daily) = tokio::join!(
                        write,
                        compare_daily(pool, ch, opts, Some(sorted.clone()), &mut sink_daily)
                    );
                    let (cells, totals_drift) = written?;
                    Ok::<_, RebuildError>((cells, totals_drift, daily?))
                }
                // Over budget: PostgreSQL adds up the spilled sums, then
                // the comparison reads them back.
                Err(sums) => {
                    let (cells, totals_drift) = write_cells(
                        &mut snapshot,
                        Cells::Spilled(*sums),
                        version,
                        &backlog.cells,
                    )
                    .await?;
                    snapshot.commit().await?;
                    let daily = compare_daily(pool, ch, opts, None, &mut sink_daily).await?;
                    Ok((cells, totals_drift, daily))
                }
            }
        };
        let facts = async {
            let t = Instant::now();
            let rows = facts_writer.finish().await?;
            tracing::debug!(
                rows,
                waited_ms = t.elapsed().as_millis() as u64,
                "shadow facts written"
            );
            facts::compare(ch, opts, &backlog.orders, &mut sink_facts).await
        };
        tokio::join!(cells_then_daily, facts)
    };
    let ((cells, totals_drift, daily), (facts, not_compared)) = (cells_and_daily?, facts?);
    if let Some(r) = report {
        r.into_inner().map_err(|_| poisoned())?.finish()?;
    }

    let mut outcome = RunOutcome {
        run_id,
        kind: if mode == Mode::Rebuild {
            "rebuild"
        } else {
            "verify"
        },
        snapshot_at,
        orders,
        cells: cells as u64,
        daily,
        facts,
        orders_not_compared: not_compared,
        ingest_totals_drift: totals_drift as u64,
        dead_letters: backlog.dead_letters,
        swapped: false,
        replayed_events: 0,
        register_paused_ms,
        ingest_paused_ms: 0,
        seconds: 0.0,
        notes: Vec::new(),
        zone_changed_from: None,
    };
    if backlog.dead_letters > 0 {
        outcome.notes.push(format!(
            "{} dead-lettered event(s) are in the write store but not in the projections, so their \
             cells differ; see `tally ingest dead-letters`",
            backlog.dead_letters
        ));
    }
    if backlog.undecodable > 0 {
        outcome.notes.push(format!(
            "{} event(s) in the outbox could not be decoded; the ingest will dead-letter them",
            backlog.undecodable
        ));
    }
    sqlx::query(
        "UPDATE rebuild_runs SET orders = $2, cells = $3, drift_rows = $4, drift = $5 WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(orders as i64)
    .bind(cells)
    .bind((outcome.daily.differing() + outcome.facts.differing()) as i64)
    .bind(sqlx::types::Json(serde_json::json!({
        "daily": &outcome.daily, "facts": &outcome.facts,
    })))
    .execute(pool)
    .await?;

    let swap = match mode {
        Mode::Verify => false,
        Mode::Repair => outcome.has_drift(),
        Mode::Rebuild => true,
    };
    if swap {
        if backlog.dead_letters > 0 {
            return Err(RebuildError::Refused(format!(
                "not swapping: {} dead-lettered event(s) would be counted by the rebuild but not by \
                 the ingest's running totals. Fix and retry them first (`tally ingest dead-letters`, \
                 `tally ingest retry <id>`), then run again",
                backlog.dead_letters
            )));
        }
        if orders == 0 && outcome.daily.extra + outcome.facts.extra > 0 {
            return Err(RebuildError::Refused(
                "not swapping: the write store has no orders but the live projections have rows. \
                 Is --postgres-url pointing at the right database?"
                    .into(),
            ));
        }
        let from = match &installing {
            Installing::ZoneChange { from } => Some(from.clone()),
            _ => None,
        };
        let installed = install(
            pool,
            ch,
            locks,
            run_id,
            journal_from,
            &opts.zone,
            installing,
        )
        .await?;
        if let Some(from) = from {
            let drift = if outcome.has_drift() {
                " (the drift above is the old calendar's days against the new one's)"
            } else {
                ""
            };
            outcome.notes.push(format!(
                "the deployment's reporting zone changed from {from} to {}; the running ingest \
                 counts in {} from now on{drift}",
                opts.zone.name(),
                opts.zone.name()
            ));
            outcome.zone_changed_from = Some(from);
        }
        outcome.swapped = true;
        outcome.replayed_events = installed.replayed;
        outcome.ingest_paused_ms = installed.paused_ms;
    } else {
        sqlx::query(
            "UPDATE rebuild_runs SET state = 'verified', journaling = false, finished_at = clock_timestamp()
             WHERE run_id = $1",
        )
        .bind(run_id)
        .execute(pool)
        .await?;
        trim_journal(pool).await?;
        tables::drop_copy(ch, Copy::Shadow).await?;
        tables::drop_copy(ch, Copy::Frozen).await?;
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

const DAILY_SPECS: [ColumnSpec; 6] = [
    ColumnSpec::new("orders_placed", ColumnKind::Count),
    ColumnSpec::new("gross_minor", ColumnKind::Money),
    ColumnSpec::new("captured_minor", ColumnKind::Money),
    ColumnSpec::new("refunded_minor", ColumnKind::Money),
    ColumnSpec::new("orders_cancelled", ColumnKind::Count),
    ColumnSpec::new("items_sold", ColumnKind::Count),
];

pub(crate) fn daily_frame<'a>(
    rows: impl ExactSizeIterator<Item = &'a DailyRow>,
) -> Result<Frame, RebuildError> {
    let mut f = FrameBuilder::new(&DAILY_SPECS, rows.len());
    let mut key = String::new();
    for r in rows {
        let m = r.measures();
        if m.is_zero() {
            continue;
        }
        let cur = std::str::from_utf8(&r.currency).unwrap_or("???");
        key.clear();
        let _ = write!(key, "{}/{}/{cur}", r.day, r.merchant_id);
        f.row(&key, cur)
            .int(m.orders_placed)
            .int(m.gross_minor)
            .int(m.captured_minor)
            .int(m.refunded_minor)
            .int(m.orders_cancelled)
            .int(m.items_sold);
    }
    Ok(f.finish()?)
}

pub(crate) async fn compare_daily_rows(
    expected: &[DailyRow],
    live: &[DailyRow],
    totals: &mut TableDrift,
    sink: &mut Sink<'_>,
) -> Result<(), RebuildError> {
    compare_chunk(
        "daily_revenue",
        &DAILY_SPECS,
        daily_frame(expected.iter())?,
        daily_frame(live.iter())?,
        totals,
        sink,
    )
    .await
}

/// Day ranges holding at most about `limit` cells on either side.
fn day_ranges(counts: &BTreeMap<Date, u64>, limit: u64) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let mut current: Option<(Date, Date, u64)> = None;
    for (&day, &n) in counts {
        current = match current {
            Some((from, _, acc)) if acc + n <= limit => Some((from, day, acc + n)),
            Some((from, to, _)) => {
                out.push((from, to));
                Some((day, day, n))
            }
            None => Some((day, day, n)),
        };
    }
    if let Some((from, to, _)) = current {
        out.push((from, to));
    }
    out
}

/// Writes the cells into the shadow table and compares them with the
/// frozen live cells, a range of days at a time. The cells come from
/// `sorted` when the pass kept them in memory, else from `rebuild_cells`.
async fn compare_daily(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
    sorted: Option<Arc<SortedCells>>,
    sink: &mut Sink<'_>,
) -> Result<TableDrift, RebuildError> {
    let frozen = Copy::Frozen.of("daily_revenue");
    let shadow = Copy::Shadow.of("daily_revenue");
    let mut counts: BTreeMap<Date, u64> = match &sorted {
        Some(s) => s.day_counts(),
        None => {
            let pg: Vec<(Date, i64)> =
                sqlx::query_as("SELECT day, count(*) FROM rebuild_cells GROUP BY day")
                    .fetch_all(pool)
                    .await?;
            pg.into_iter().map(|(d, n)| (d, n as u64)).collect()
        }
    };
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct DayCount {
        #[serde(with = "clickhouse::serde::time::date")]
        day: Date,
        n: u64,
    }
    let ch_counts: Vec<DayCount> = ch
        .query(&format!(
            "SELECT day, count() AS n FROM {frozen} GROUP BY day"
        ))
        .fetch_all()
        .await?;
    for c in ch_counts {
        let e = counts.entry(c.day).or_default();
        *e = (*e).max(c.n);
    }
    let total: u64 = counts.values().sum();
    let mut progress = Progress::start(opts.progress, "daily cells", total);
    let mut totals = TableDrift::default();
    let ranges = day_ranges(&counts, opts.chunk_rows as u64);
    let fetch = |(from, to): (Date, Date)| {
        let (pool, ch, sorted) = (pool.clone(), ch.clone(), sorted.clone());
        let (shadow, frozen) = (shadow.clone(), frozen.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            let expected: Vec<DailyRow> = match sorted {
                Some(s) => s.rows_between(from, to),
                None => sqlx::query_as::<_, TotalsRow>(&format!(
                    "SELECT {TOTALS_COLUMNS} FROM rebuild_cells WHERE day BETWEEN $1 AND $2"
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&pool)
                .await?
                .into_iter()
                .map(DailyRow::from)
                .collect(),
            };
            insert_rows(&ch, &shadow, &expected).await?;
            let live: Vec<DailyRow> = ch
                .query(&format!(
                    "SELECT ?fields FROM {frozen} FINAL WHERE day >= toDate(?) AND day <= toDate(?)"
                ))
                .bind(from.to_string())
                .bind(to.to_string())
                .fetch_all()
                .await?;
            let rows = expected.len().max(live.len()) as u64;
            Ok((
                rows,
                daily_frame(expected.iter())?,
                daily_frame(live.iter())?,
            ))
        }))
    };
    let mut next = ranges.first().map(|&r| fetch(r));
    for i in 0..ranges.len() {
        let Some(chunk) = next.take() else { break };
        let (rows, expected, live) = prefetched(chunk).await?;
        next = ranges.get(i + 1).map(|&r| fetch(r));
        progress.inc(rows);
        compare_chunk(
            "daily_revenue",
            &DAILY_SPECS,
            expected,
            live,
            &mut totals,
            sink,
        )
        .await?;
    }
    progress.finish();
    Ok(totals)
}

/// Replays journal rows after `after` onto the shadow (facts) and
/// `rebuild_cells` + the shadow cells. Returns the last sequence applied
/// and how many events were replayed.
async fn catch_up(
    pool: &PgPool,
    ch: &clickhouse::Client,
    after: i64,
    zone: &ReportingZone,
) -> Result<(i64, u64), RebuildError> {
    let mut replayed = 0u64;
    let facts_shadow = Copy::Shadow.of("order_facts");
    let cells_shadow = Copy::Shadow.of("daily_revenue");
    let mut last = after;
    loop {
        let rows: Vec<(i64, OutboxRow)> = sqlx::query_as::<_, JournalRow>(
            "SELECT seq, outbox_id AS id, event_id, aggregate_id, aggregate_version, event_type,
                    schema_version, occurred_at, payload::text AS payload, created_at
             FROM rebuild_journal WHERE seq > $1 ORDER BY seq LIMIT 10000",
        )
        .bind(last)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|j| (j.seq, j.row))
        .collect();
        let Some((max_seq, _)) = rows.last() else {
            return Ok((last, replayed));
        };
        replayed += rows.len() as u64;
        last = *max_seq;
        // Rows the ingest could not decode were dead-lettered, not counted.
        let events: Vec<_> = rows.iter().filter_map(|(_, r)| r.decode().ok()).collect();
        // Events the ingest parked as overflowing are left out here by the
        // same rule, and the swap is refused while any dead letter exists.
        let Projected { facts, cells, .. } = project(&events, zone);
        insert_rows(ch, &facts_shadow, &facts).await?;
        if !cells.is_empty() {
            let mut tx = pool.begin().await?;
            let rows = add_to_totals(&mut tx, CELLS_TABLE, &cells).await?;
            insert_rows(ch, &cells_shadow, &rows).await?;
            tx.commit().await?;
        }
        tracing::debug!(events = events.len(), last_seq = last, "journal replayed");
    }
}

#[derive(sqlx::FromRow)]
struct JournalRow {
    seq: i64,
    #[sqlx(flatten)]
    row: OutboxRow,
}

/// Replays the journal, aligns the ingest's totals with the shadow cells
/// and swaps the shadow in. `final_state` closes the rollback window when
/// the installed tables are themselves a rollback.
async fn install(
    pool: &PgPool,
    ch: &clickhouse::Client,
    locks: &mut Locks,
    run_id: i64,
    journal_from: i64,
    zone: &ReportingZone,
    installing: Installing,
) -> Result<Installed, RebuildError> {
    let is_rollback = installing == Installing::Rollback;
    // Both end the rollback window and realign every cell.
    let realign_all = installing != Installing::Rebuild;
    let t = Instant::now();
    let (applied, before) = catch_up(pool, ch, journal_from, zone).await?;
    tracing::info!(
        replayed_to = applied,
        seconds = t.elapsed().as_secs_f64(),
        "journal replayed; pausing the ingest for the swap"
    );
    locks.seam().await?;
    let paused = Instant::now();
    let r = async {
        let (_, during) = catch_up(pool, ch, applied, zone).await?;
        // With the ingest at rest, dead letters are final: one parked
        // since the snapshot was journaled and replayed here, so swapping
        // would count it now and again when it is retried.
        // The calendar is the deployment's: a run in another zone would
        // swap in cells of other days under the ingest's feet.
        let recorded = deployment::recorded(pool).await?;
        let expected = match &installing {
            Installing::ZoneChange { from } => from.as_str(),
            _ => zone.name(),
        };
        if let Some(recorded) = recorded.filter(|r| !r.eq_ignore_ascii_case(expected)) {
            return Err(RebuildError::Refused(format!(
                "not swapping: this run counted days in {} but the deployment reports in \
                 {recorded}; run it again without --reporting-tz (or with {recorded}), or change \
                 the deployment's zone with `tally rebuild --reporting-tz {} --change-reporting-zone`",
                zone.name(),
                zone.name()
            )));
        }
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_dead_letters")
            .fetch_one(pool)
            .await?;
        if dead > 0 {
            return Err(RebuildError::Refused(format!(
                "not swapping: the ingest dead-lettered {dead} event(s) during the run. Fix and \
                 retry them first (`tally ingest dead-letters`, `tally ingest retry <id>`), then run again"
            )));
        }
        if let Installing::ZoneChange { .. } = &installing {
            outrank_pending_pushes(pool, ch).await?;
        }
        let mut tx = pool.begin().await?;
        // A rebuild rewrites the cells found to differ at its snapshot; a
        // rollback, whose base is older, and a zone change, whose cells are
        // other days, compare every cell.
        let (only, join) = if realign_all {
            ("", "")
        } else {
            (
                "AND EXISTS (SELECT 1 FROM rebuild_totals_drift d
                             WHERE d.day = t.day AND d.merchant_id = t.merchant_id AND d.currency = t.currency)",
                "JOIN rebuild_totals_drift USING (day, merchant_id, currency)",
            )
        };
        sqlx::query(&format!(
            "DELETE FROM {TOTALS_TABLE} t WHERE NOT EXISTS (
                 SELECT 1 FROM {CELLS_TABLE} r
                 WHERE r.day = t.day AND r.merchant_id = t.merchant_id AND r.currency = t.currency) {only}"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {TOTALS_TABLE} AS t ({TOTALS_COLUMNS})
             SELECT {TOTALS_COLUMNS} FROM {CELLS_TABLE} {join}
             ON CONFLICT (day, merchant_id, currency) DO UPDATE SET
                 orders_placed = excluded.orders_placed, gross_minor = excluded.gross_minor,
                 captured_minor = excluded.captured_minor, refunded_minor = excluded.refunded_minor,
                 orders_cancelled = excluded.orders_cancelled, items_sold = excluded.items_sold,
                 version = excluded.version
             WHERE (t.orders_placed, t.gross_minor, t.captured_minor, t.refunded_minor,
                    t.orders_cancelled, t.items_sold)
                IS DISTINCT FROM (excluded.orders_placed, excluded.gross_minor, excluded.captured_minor,
                                  excluded.refunded_minor, excluded.orders_cancelled, excluded.items_sold)"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rebuild_runs SET state = 'swapping', swapped = true, journaling = NOT $2
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(realign_all)
        .execute(&mut *tx)
        .await?;
        if let Installing::ZoneChange { from } = &installing {
            sqlx::query("DELETE FROM ingest_pending_pushes")
                .execute(&mut *tx)
                .await?;
            deployment::change(&mut *tx, zone, "tally rebuild --change-reporting-zone").await?;
            sqlx::query("UPDATE rebuild_runs SET message = $2 WHERE run_id = $1")
                .bind(run_id)
                .bind(format!(
                    "reporting zone changed from {from} to {}",
                    zone.name()
                ))
                .execute(&mut *tx)
                .await?;
        }
        // The previous rollback window ends here.
        sqlx::query("UPDATE rebuild_runs SET journaling = false WHERE journaling AND run_id <> $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let keep_after = if realign_all { i64::MAX } else { journal_from };
        sqlx::query("DELETE FROM rebuild_journal WHERE seq <= $1")
            .bind(keep_after)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        complete_swap(pool, ch, run_id, if is_rollback { "rollback" } else { "rebuild" }).await?;
        Ok::<_, RebuildError>(before + during)
    }
    .await;
    let released = locks.release_seam().await;
    tracing::info!(
        run_id,
        paused_ms = paused.elapsed().as_millis() as u64,
        ok = r.is_ok(),
        "swap finished; ingest resumed"
    );
    let replayed = r?;
    released?;
    Ok(Installed {
        replayed,
        paused_ms: paused.elapsed().as_millis() as u64,
    })
}

struct Installed {
    replayed: u64,
    paused_ms: u64,
}

/// Gives the shadow a row, newer than any push, for every cell key an
/// ingest push may still be carrying to ClickHouse (the module doc's
/// "zone change"): the rebuilt cell, or zeros where the new calendar has
/// none. Called with the ingest at rest, so the list cannot grow.
async fn outrank_pending_pushes(
    pool: &PgPool,
    ch: &clickhouse::Client,
) -> Result<(), RebuildError> {
    let version: i64 = sqlx::query_scalar("SELECT nextval('ingest_version_seq')")
        .fetch_one(pool)
        .await?;
    let rows: Vec<TotalsRow> = sqlx::query_as(&format!(
        "SELECT p.day, p.merchant_id, p.currency,
                coalesce(r.orders_placed, 0) AS orders_placed, coalesce(r.gross_minor, 0) AS gross_minor,
                coalesce(r.captured_minor, 0) AS captured_minor,
                coalesce(r.refunded_minor, 0) AS refunded_minor,
                coalesce(r.orders_cancelled, 0) AS orders_cancelled,
                coalesce(r.items_sold, 0) AS items_sold, $1::int8 AS version
         FROM (SELECT DISTINCT unnest(days) AS day, unnest(merchant_ids) AS merchant_id,
                      unnest(currencies) AS currency
               FROM ingest_pending_pushes) p
         LEFT JOIN {CELLS_TABLE} r USING (day, merchant_id, currency)"
    ))
    .bind(version)
    .fetch_all(pool)
    .await?;
    let rows: Vec<DailyRow> = rows.into_iter().map(DailyRow::from).collect();
    tracing::info!(
        cells = rows.len(),
        "shadow cells outranking pushes still in flight in the old calendar"
    );
    insert_rows(ch, &Copy::Shadow.of("daily_revenue"), &rows).await?;
    Ok(())
}

/// The ClickHouse half of a swap; safe to repeat until it has finished.
async fn complete_swap(
    pool: &PgPool,
    ch: &clickhouse::Client,
    run_id: i64,
    kind: &str,
) -> Result<(), RebuildError> {
    let shadow_there = tables::exists(ch, &Copy::Shadow.of("order_facts")).await?
        && tables::exists(ch, &Copy::Shadow.of("daily_revenue")).await?;
    if shadow_there {
        let partitions = tables::swap_into_live(ch, Copy::Shadow).await?;
        tracing::info!(run_id, partitions, "shadow tables swapped in");
    }
    if kind == "rollback" {
        tables::drop_copy(ch, Copy::Previous).await?;
    } else if tables::exists(ch, &Copy::Frozen.of("order_facts")).await? {
        tables::rename_copy(ch, Copy::Frozen, Copy::Previous).await?;
    }
    sqlx::query(
        "UPDATE rebuild_runs SET state = 'swapped', finished_at = clock_timestamp() WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    tables::drop_copy(ch, Copy::Shadow).await?;
    Ok(())
}

/// What `tally rebuild rollback` did.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackOutcome {
    pub run_id: i64,
    pub rolled_back_run: i64,
    pub cells: u64,
    pub seconds: f64,
}

/// Puts the tables from before the last swap back, moved forward by every
/// event consumed since (the journal), and ends the rollback window.
pub async fn rollback(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
) -> Result<RollbackOutcome, RebuildError> {
    let started = Instant::now();
    let mut locks = Locks::connect(pool).await?;
    lock_or_skip(pool, &mut locks, "rollback", &opts.trigger).await?;
    finish_interrupted(pool, ch).await?;
    let target: Option<(i64, i64)> = sqlx::query_as(
        "SELECT run_id, journal_from FROM rebuild_runs
         WHERE journaling AND swapped AND state = 'swapped' AND kind IN ('rebuild', 'verify')
         ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some((target, journal_from)) = target else {
        return Err(RebuildError::Refused(
            "nothing to roll back: a rollback is possible after a swap, until the next successful \
             one or rollback (see `tally rebuild history`)"
                .into(),
        ));
    };
    for live in tables::PROJECTIONS {
        if !tables::exists(ch, &Copy::Previous.of(live)).await? {
            return Err(RebuildError::Refused(format!(
                "cannot roll back run #{target}: ClickHouse table {} is gone",
                Copy::Previous.of(live)
            )));
        }
    }
    let (run_id,): (i64,) = sqlx::query_as(
        "INSERT INTO rebuild_runs (kind, trigger, state, journaling, journal_from, host, message)
         VALUES ('rollback', $1, 'building', false, $2, $3, $4) RETURNING run_id",
    )
    .bind(&opts.trigger)
    .bind(journal_from)
    .bind(host())
    .bind(format!("rollback of run #{target}"))
    .fetch_one(pool)
    .await?;
    let r = async {
        // Shadow := previous. Facts keep their versions (states by
        // aggregate version); cells get a version newer than any push so
        // far, like a rebuild's.
        tables::recreate(ch, Copy::Shadow).await?;
        tables::replace_all_partitions(
            ch,
            &Copy::Previous.of("order_facts"),
            &Copy::Shadow.of("order_facts"),
        )
        .await?;
        let v0: i64 = sqlx::query_scalar("SELECT nextval('ingest_version_seq')")
            .fetch_one(pool)
            .await?;
        sqlx::query("TRUNCATE rebuild_cells").execute(pool).await?;
        let mut cursor = ch
            .query(&format!(
                "SELECT ?fields FROM {} FINAL",
                Copy::Previous.of("daily_revenue")
            ))
            .fetch::<DailyRow>()?;
        let mut cells = 0u64;
        let mut chunk = Vec::new();
        loop {
            let next = cursor.next().await?;
            let done = next.is_none();
            if let Some(mut row) = next {
                row.version = v0 as u64;
                chunk.push(row);
            }
            if chunk.len() >= 10_000 || (done && !chunk.is_empty()) {
                cells += chunk.len() as u64;
                load_cells(pool, &chunk).await?;
                insert_rows(ch, &Copy::Shadow.of("daily_revenue"), &chunk).await?;
                chunk.clear();
            }
            if done {
                break;
            }
        }
        install(
            pool,
            ch,
            &mut locks,
            run_id,
            journal_from,
            &opts.zone,
            Installing::Rollback,
        )
        .await?;
        sqlx::query("UPDATE rebuild_runs SET state = 'rolled_back' WHERE run_id = $1")
            .bind(target)
            .execute(pool)
            .await?;
        sqlx::query("UPDATE rebuild_runs SET cells = $2 WHERE run_id = $1")
            .bind(run_id)
            .bind(cells as i64)
            .execute(pool)
            .await?;
        Ok::<_, RebuildError>(cells)
    }
    .await;
    match r {
        Ok(cells) => Ok(RollbackOutcome {
            run_id,
            rolled_back_run: target,
            cells,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            mark_failed(pool, run_id, &e).await;
            Err(e)
        }
    }
}

async fn load_cells(pool: &PgPool, rows: &[DailyRow]) -> Result<(), RebuildError> {
    let days: Vec<Date> = rows.iter().map(|r| r.day).collect();
    let merchants: Vec<&str> = rows.iter().map(|r| r.merchant_id.as_str()).collect();
    let currencies: Vec<String> = rows
        .iter()
        .map(|r| String::from_utf8_lossy(&r.currency).into_owned())
        .collect();
    let col = |f: fn(&DailyRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    sqlx::query(&format!(
        "INSERT INTO {CELLS_TABLE} ({TOTALS_COLUMNS})
         SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                              $7::int8[], $8::int8[], $9::int8[], $10::int8[])"
    ))
    .bind(&days)
    .bind(&merchants)
    .bind(&currencies)
    .bind(col(|r| r.orders_placed))
    .bind(col(|r| r.gross_minor))
    .bind(col(|r| r.captured_minor))
    .bind(col(|r| r.refunded_minor))
    .bind(col(|r| r.orders_cancelled))
    .bind(col(|r| r.items_sold))
    .bind(col(|r| r.version as i64))
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    /// Adding a measure means adding it everywhere a cell's columns are
    /// listed; this names the lists that must agree with the domain's.
    #[test]
    fn every_list_of_the_daily_measures_agrees_with_the_domain() {
        let names = DailyMeasures::NAMES;
        assert_eq!(
            DAILY_SPECS.map(|s| s.name),
            names,
            "the comparison's columns"
        );
        let cell = |n: &[&'static str]| -> Vec<&'static str> {
            let mut c = vec!["day", "merchant_id", "currency"];
            c.extend_from_slice(n);
            c.push("version");
            c
        };
        assert_eq!(
            TOTALS_COLUMNS
                .split(", ")
                .map(str::trim)
                .collect::<Vec<_>>(),
            cell(&names),
            "the running totals' SQL columns"
        );
        assert_eq!(
            <DailyRow as clickhouse::Row>::COLUMN_NAMES.to_vec(),
            cell(&names),
            "the ClickHouse row"
        );
    }

    #[test]
    fn day_ranges_respect_the_limit_and_cover_every_day() {
        let counts: BTreeMap<Date, u64> = [
            (date!(2026 - 01 - 01), 5),
            (date!(2026 - 01 - 02), 5),
            (date!(2026 - 01 - 03), 20),
            (date!(2026 - 01 - 05), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            day_ranges(&counts, 10),
            vec![
                (date!(2026 - 01 - 01), date!(2026 - 01 - 02)),
                (date!(2026 - 01 - 03), date!(2026 - 01 - 03)),
                (date!(2026 - 01 - 05), date!(2026 - 01 - 05)),
            ]
        );
        assert!(day_ranges(&BTreeMap::new(), 10).is_empty());
    }
}
