//! Phase 2: the shadow built from the registration's snapshot. One pass
//! over the orders writes their facts and sums their daily cells; the
//! events still in the snapshot's outbox are subtracted from the cells
//! (they are not in the live tables yet either).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};
use tally_domain::DailyMeasures;
use tally_projection::rows::{CellKey, FactRow, Projected, ReportingZone, project};
use tally_projection::seam::{OUTBOX_COLUMNS, OutboxRow};
use tally_projection::totals::{TOTALS_TABLE, add_to_totals, each_measure, measures_differ};
use uuid::Uuid;

use super::{CELLS_TABLE, RunOptions};
use crate::RebuildError;
use crate::cells::{CellSums, SortedCells};
use crate::progress::Progress;
use crate::source;
use crate::tables::{self, Copy};
use crate::writer::ShadowWriter;

/// Builds from `snapshot` (the registration's): a second connection
/// imports it and streams the orders while `snapshot` reads the outbox and
/// takes the cells.
pub(super) async fn build(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
    snapshot: &mut PgConnection,
) -> Result<Pass, RebuildError> {
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
    let pass = pass(snapshot, &mut orders_tx, ch, opts).await?;
    orders_tx.rollback().await?;
    Ok(pass)
}

/// Rows the order pass hands to the shadow writer at a time.
const HANDOFF_ROWS: usize = 50_000;

/// What the pass over the orders produced.
pub(super) struct Pass {
    pub(super) backlog: Backlog,
    pub(super) orders: u64,
    pub(super) sums: CellSums,
    /// The version the shadow's cells carry.
    pub(super) version: i64,
    /// Still writing ClickHouse's last block of facts: only the facts
    /// comparison has to wait for it.
    pub(super) facts: ShadowWriter<FactRow>,
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
pub(super) enum Cells {
    Sorted(Arc<SortedCells>),
    Spilled(CellSums),
}

/// The daily cells, minus what the snapshot's outbox still holds, into
/// `rebuild_cells`; then the cells where the ingest's running totals
/// disagree with them. Returns (cells, cells whose totals drifted).
pub(super) async fn write_cells(
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
                sqlx::query(&format!(
                    "DELETE FROM rebuild_cells WHERE {}",
                    each_measure(|m| format!("{m} = 0"), " AND ")
                ))
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
         WHERE {differ}",
        differ = measures_differ("r", "t")
    ))
    .execute(&mut *snapshot)
    .await?
    .rows_affected() as i64;
    let cells: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild_cells")
        .fetch_one(&mut *snapshot)
        .await?;
    tracing::debug!(
        cells_written_ms = written.as_millis() as u64,
        totals_compared_ms = t.elapsed().saturating_sub(written).as_millis() as u64,
        "daily cells built"
    );
    Ok((cells, totals_drift))
}

/// What the snapshot's outbox (and dead letters) hold: not yet in the
/// projections, so subtracted from the cells and left out of the facts.
pub(super) struct Backlog {
    pub(super) cells: BTreeMap<CellKey, DailyMeasures>,
    pub(super) orders: HashSet<Uuid>,
    pub(super) dead_letters: i64,
    pub(super) undecodable: u64,
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

pub(super) fn merge_cells(
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
