//! One batch through the pipeline, in the order that makes it exactly-once:
//!
//! 1. In a PostgreSQL transaction, claim and delete up to `batch_size`
//!    outbox rows (`FOR UPDATE SKIP LOCKED`: concurrent workers take
//!    disjoint rows and never wait for each other). Rows that cannot be
//!    decoded go to `ingest_dead_letters` in the same transaction.
//! 2. Insert the orders' fact rows into ClickHouse. They are whole states
//!    keyed by (order, version), so inserting them again after a crash
//!    changes nothing.
//! 3. Still in the transaction, add the batch's deltas to
//!    `ingest_daily_totals` (new absolute values, new versions) and record
//!    the touched cells in `ingest_pending_pushes`. Commit.
//! 4. Push the cells' absolute totals to ClickHouse, then delete the
//!    pending record. A crash before that leaves the record, and any worker
//!    pushes those cells' *current* totals later: again harmless. While a
//!    backlog drains, the delete rides in the next batch's transaction
//!    (one commit fewer per batch); a worker about to go idle deletes at
//!    once, because a pending record holds the watermark back.
//!
//! A crash before the commit undoes step 1 and 3 (the events are claimed
//! again later); after it, every event is counted in PostgreSQL exactly
//! once and ClickHouse only ever receives versioned absolute values.
//!
//! An event that cannot be counted is parked in `ingest_dead_letters` in
//! the batch's own transaction (and taken out of a rebuild's journal, so
//! that the journal holds exactly the events the totals hold): one that
//! does not decode or would take a cell of the batch past 64 bits is found
//! here; one PostgreSQL refuses fails the whole upsert, so the batch comes
//! back as [`IngestError::Poisoned`] and the worker retries its events one
//! at a time, parking the one that fails alone ([`park`];
//! `dead_letters.rs` says which failures count). A parked event's fact
//! row may already be in `order_facts`: it is the order's true state, and
//! the dead letter holds the watermark back until it is retried.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::{PgPool, Postgres, Transaction};
use tally_domain::{DailyMeasures, EventEnvelope, EventId, OrderId};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::IngestError;
use crate::dead_letters::Reason;
use crate::metrics::{EventTypeLabel, Metrics};
use crate::rows::{CellKey, DailyRow, Projected, ReportingZone, currency_bytes, project};

/// Time allowed for one ClickHouse insert before the batch is abandoned
/// (and retried from PostgreSQL).
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// The claim itself, shared by the forms below: lock, read and delete up
/// to `$1` outbox rows that no other worker holds, from one end of the
/// outbox (`ASC`: oldest first, `DESC`: newest first).
macro_rules! claim {
    ($order:literal) => {
        concat!(
            "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox ORDER BY id ",
            $order,
            " LIMIT $1 FOR UPDATE SKIP LOCKED
         )"
        )
    };
}

/// What a batch reads of each claimed row ([`OutboxRow`]).
macro_rules! outbox_columns {
    () => {
        "id, event_id, aggregate_id, aggregate_version, event_type, schema_version,
         occurred_at, payload::text AS payload, created_at"
    };
}

/// The claim while a rebuild needs the events too: the claimed rows are
/// copied into `rebuild_journal` by the same statement.
macro_rules! claim_and_journal {
    ($order:literal) => {
        concat!(
            "WITH claimed AS (",
            claim!($order),
            " RETURNING *
     ), journaled AS (
         INSERT INTO rebuild_journal (outbox_id, event_id, aggregate_id, aggregate_version, event_type,
                                      schema_version, occurred_at, payload, created_at)
         SELECT id, event_id, aggregate_id, aggregate_version, event_type, schema_version,
                occurred_at, payload, created_at
         FROM claimed
     )
     SELECT ",
            outbox_columns!(),
            " FROM claimed"
        )
    };
}

/// The columns of an [`OutboxRow`], for anyone reading the outbox.
pub const OUTBOX_COLUMNS: &str = outbox_columns!();

/// Claims up to `$1` outbox rows, oldest first. Public so that `tally
/// bench drain` measures PostgreSQL alone with exactly this statement.
pub const CLAIM_SQL: &str = concat!(claim!("ASC"), " RETURNING ", outbox_columns!());

/// Which end of the outbox a worker claims from.
///
/// Correctness does not depend on it: a fact row wins by its version and
/// daily deltas add up in any order, and the watermark is the oldest row
/// still waiting wherever the workers take from. It is about contention.
/// Two workers claiming from the same end meet on the same index pages:
/// the second one steps over every row the first holds locked (`SKIP
/// LOCKED` still visits them) and over the dead entries both leave behind.
/// A second worker that claims from the other end meets the first only
/// when the backlog is nearly gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClaimFrom {
    /// Oldest first: the watermark moves as the backlog shrinks.
    #[default]
    Oldest,
    /// Newest first: for a second worker beside an oldest-first one.
    Newest,
}

impl ClaimFrom {
    /// The `i`th of several workers started together: alternate ends, the
    /// first from the oldest.
    pub fn alternating(i: usize) -> ClaimFrom {
        if i % 2 == 0 {
            ClaimFrom::Oldest
        } else {
            ClaimFrom::Newest
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimFrom::Oldest => "oldest",
            ClaimFrom::Newest => "newest",
        }
    }

    fn sql(self, journaling: bool) -> &'static str {
        match (self, journaling) {
            (ClaimFrom::Oldest, false) => CLAIM_SQL,
            (ClaimFrom::Newest, false) => {
                concat!(claim!("DESC"), " RETURNING ", outbox_columns!())
            }
            (ClaimFrom::Oldest, true) => claim_and_journal!("ASC"),
            (ClaimFrom::Newest, true) => claim_and_journal!("DESC"),
        }
    }
}

impl std::str::FromStr for ClaimFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oldest" => Ok(ClaimFrom::Oldest),
            "newest" => Ok(ClaimFrom::Newest),
            other => Err(format!(
                "unknown claim end {other:?}: use \"oldest\" or \"newest\""
            )),
        }
    }
}

impl std::fmt::Display for ClaimFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every batch holds this advisory lock (shared) until it commits; a
/// rebuild takes it exclusively for the moments it must see the ingest at
/// rest: taking its snapshot and swapping (ARCHITECTURE.md, "Rebuild").
pub const SEAM_LOCK: i64 = 0x7461_6c6c_7365_616d; // "tallseam"

/// What a batch must know about rebuilds. Read by a statement *after* the
/// one that takes [`SEAM_LOCK`]: a statement sees the database as of its
/// start, so one that waited for the lock would miss a run registered
/// while it waited, and claim events the run never hears about.
/// The recorded reporting zone is read by the same statement, for the same
/// reason: it changes only under the exclusive lock (`deployment.rs`).
const SEAM_STATE_SQL: &str = "SELECT EXISTS (SELECT 1 FROM rebuild_runs WHERE journaling),
            EXISTS (SELECT 1 FROM rebuild_runs WHERE state = 'swapping'),
            (SELECT value FROM deployment_settings WHERE key = 'reporting_zone')";

/// What a batch must know of rebuilds and of the deployment, read at the
/// seam ([`SEAM_STATE_SQL`]).
struct Seam {
    journaling: bool,
    swapping: bool,
    recorded: Option<String>,
}

/// A batch's transaction: the shared [`SEAM_LOCK`] taken, then the seam
/// state read by the next statement.
async fn begin_at_seam(
    pool: &PgPool,
) -> Result<(Transaction<'static, Postgres>, Seam), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(SEAM_LOCK)
        .execute(&mut *tx)
        .await?;
    let (journaling, swapping, recorded) =
        sqlx::query_as(SEAM_STATE_SQL).fetch_one(&mut *tx).await?;
    Ok((
        tx,
        Seam {
            journaling,
            swapping,
            recorded,
        },
    ))
}

/// An outbox row (or a journal row, which has the same shape).
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub aggregate_version: i32,
    pub event_type: String,
    pub schema_version: i16,
    pub occurred_at: OffsetDateTime,
    pub payload: String,
    pub created_at: OffsetDateTime,
}

impl OutboxRow {
    pub fn decode(&self) -> Result<EventEnvelope, tally_domain::DecodeError> {
        EventEnvelope::decode(
            EventId::from_uuid(self.event_id),
            OrderId::from_uuid(self.aggregate_id),
            i64::from(self.aggregate_version),
            &self.event_type,
            self.schema_version,
            self.occurred_at,
            self.payload.as_bytes(),
        )
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub claimed: usize,
    pub projected: usize,
    pub dead_lettered: usize,
    pub cells: usize,
    /// A rebuild's swap was interrupted; nothing is claimed until it is
    /// completed (`tally rebuild` does that first).
    pub paused: bool,
    /// The most this batch could claim: a batch that claimed as many is
    /// followed at once by the next.
    pub limit: i64,
}

pub(crate) async fn run_batch(
    pool: &PgPool,
    ch: &clickhouse::Client,
    batch_size: i64,
    claim_from: ClaimFrom,
    zone: &mut ReportingZone,
    metrics: &Metrics,
    settled: &mut Vec<Uuid>,
) -> Result<BatchOutcome, IngestError> {
    let started = Instant::now();
    let (
        mut tx,
        Seam {
            journaling,
            swapping,
            recorded,
        },
    ) = begin_at_seam(pool).await?;
    if let Some(recorded) = recorded.filter(|r| !r.eq_ignore_ascii_case(zone.name())) {
        let next = ReportingZone::parse(&recorded).map_err(IngestError::Zone)?;
        tracing::info!(
            from = zone.name(),
            to = next.name(),
            "the deployment's reporting zone changed; counting in the new calendar from this batch on"
        );
        *zone = next;
    }
    let zone = &*zone;
    if swapping {
        tx.rollback().await?;
        clear_settled(pool, settled).await?;
        return Ok(BatchOutcome {
            paused: true,
            ..BatchOutcome::default()
        });
    }
    let claim = claim_from.sql(journaling);
    let rows: Vec<OutboxRow> = sqlx::query_as(claim)
        .bind(batch_size)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        // Explicitly, not on drop: sqlx rolls a dropped transaction back
        // lazily, and until then it looks like an open transaction to the
        // watermark.
        tx.rollback().await?;
        clear_settled(pool, settled).await?;
        return Ok(BatchOutcome {
            limit: batch_size,
            ..BatchOutcome::default()
        });
    }
    if !settled.is_empty() {
        sqlx::query("DELETE FROM ingest_pending_pushes WHERE batch_id = ANY($1)")
            .bind(&*settled)
            .execute(&mut *tx)
            .await?;
    }
    let t_claim = started.elapsed();

    let mut events = Vec::with_capacity(rows.len());
    let mut sources = Vec::with_capacity(rows.len());
    let mut parked = Vec::new();
    let mut oldest_created = rows[0].created_at;
    for r in &rows {
        oldest_created = oldest_created.min(r.created_at);
        match r.decode() {
            Ok(e) => {
                events.push(e);
                sources.push(r);
            }
            Err(err) => {
                dead_letter(&mut tx, r, Reason::Decode, &err.to_string()).await?;
                parked.push((r.id, Reason::Decode));
            }
        }
    }

    let Projected {
        facts,
        cells,
        overflowing,
    } = project(&events, zone);
    for i in overflowing {
        let r = sources[i];
        let why = format!(
            "its amounts take the daily cell ({}, {}, {}) past 64-bit minor units",
            zone.day(events[i].occurred_at),
            events[i].order.merchant_id,
            events[i].order.currency
        );
        dead_letter(&mut tx, r, Reason::Overflow, &why).await?;
        parked.push((r.id, Reason::Overflow));
    }
    if journaling && !parked.is_empty() {
        let ids: Vec<i64> = parked.iter().map(|(id, _)| *id).collect();
        sqlx::query("DELETE FROM rebuild_journal WHERE outbox_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    let t_decode = started.elapsed();
    // The fact insert comes before the totals upsert, never beside it: the
    // upsert locks the batch's cells until the commit, and a worker whose
    // ClickHouse is slow must not hold other workers' cells meanwhile.
    if !facts.is_empty() {
        insert_rows(ch, "order_facts", &facts)
            .await
            .inspect_err(|e| metrics.clickhouse_failed(e))?;
    }
    let t_facts = started.elapsed();
    let pending = if cells.is_empty() {
        None
    } else {
        let totals = match add_to_totals(&mut tx, TOTALS_TABLE, &cells).await {
            Ok(totals) => totals,
            Err(e) => {
                let Some(reason) = Reason::of_postgres(&e) else {
                    return Err(e.into());
                };
                tx.rollback().await?;
                return Err(IngestError::Poisoned {
                    outbox_ids: rows.iter().map(|r| r.id).collect(),
                    reason,
                    error: e.to_string(),
                });
            }
        };
        Some((
            record_pending(&mut tx, &cells, oldest_created).await?,
            totals,
        ))
    };
    let t_totals = started.elapsed();
    tx.commit().await?;
    settled.clear();
    let t_commit = started.elapsed();

    if let Some((batch_id, rows)) = pending {
        insert_rows(ch, "daily_revenue", &rows)
            .await
            .inspect_err(|e| metrics.clickhouse_failed(e))?;
        settled.push(batch_id);
    }
    if (rows.len() as i64) < batch_size {
        clear_settled(pool, settled).await?;
    }

    for e in &events {
        metrics
            .events
            .get_or_create(&EventTypeLabel {
                event_type: e.event_type(),
            })
            .inc();
    }
    for (id, reason) in &parked {
        tracing::warn!(
            outbox_id = id,
            reason = reason.as_str(),
            "event moved to dead letters"
        );
        metrics.dead_lettered(*reason);
    }
    tracing::debug!(
        events = rows.len(),
        cells = cells.len(),
        claim_ms = t_claim.as_millis() as u64,
        decode_ms = (t_decode - t_claim).as_millis() as u64,
        facts_ms = (t_facts - t_decode).as_millis() as u64,
        totals_ms = (t_totals - t_facts).as_millis() as u64,
        commit_ms = (t_commit - t_totals).as_millis() as u64,
        push_ms = (started.elapsed() - t_commit).as_millis() as u64,
        "batch projected"
    );
    metrics.batch_size.observe(rows.len() as f64);
    metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(BatchOutcome {
        claimed: rows.len(),
        projected: rows.len() - parked.len(),
        dead_lettered: parked.len(),
        cells: cells.len(),
        paused: false,
        limit: batch_size,
    })
}

/// Parks the one outbox row `outbox_id`, which failed alone with `reason`
/// (see the module doc). Not journaled: the journal holds only what the
/// totals hold. A row another worker took meanwhile is left to it.
pub(crate) async fn park(
    pool: &PgPool,
    outbox_id: i64,
    reason: Reason,
    error: &str,
    metrics: &Metrics,
) -> Result<BatchOutcome, IngestError> {
    let (mut tx, seam) = begin_at_seam(pool).await?;
    if seam.swapping {
        tx.rollback().await?;
        return Ok(BatchOutcome {
            paused: true,
            limit: 1,
            ..BatchOutcome::default()
        });
    }
    let row: Option<OutboxRow> = sqlx::query_as(concat!(
        "DELETE FROM outbox WHERE id = $1 RETURNING ",
        outbox_columns!()
    ))
    .bind(outbox_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(BatchOutcome {
            limit: 1,
            ..BatchOutcome::default()
        });
    };
    dead_letter(&mut tx, &row, reason, error).await?;
    tx.commit().await?;
    tracing::warn!(outbox_id, event_id = %row.event_id, reason = reason.as_str(), error,
        "event moved to dead letters; the rest of the outbox goes on");
    metrics.dead_lettered(reason);
    Ok(BatchOutcome {
        claimed: 1,
        dead_lettered: 1,
        limit: 1,
        ..BatchOutcome::default()
    })
}

async fn dead_letter(
    tx: &mut Transaction<'_, Postgres>,
    r: &OutboxRow,
    reason: Reason,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ingest_dead_letters (outbox_id, event_id, aggregate_id, aggregate_version, event_type,
                                          schema_version, occurred_at, payload, created_at, error, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)
         ON CONFLICT (outbox_id) DO UPDATE
             SET error = excluded.error, reason = excluded.reason, failed_at = now()",
    )
    .bind(r.id)
    .bind(r.event_id)
    .bind(r.aggregate_id)
    .bind(r.aggregate_version)
    .bind(&r.event_type)
    .bind(r.schema_version)
    .bind(r.occurred_at)
    .bind(&r.payload)
    .bind(r.created_at)
    .bind(error)
    .bind(reason.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
pub struct TotalsRow {
    day: Date,
    merchant_id: String,
    currency: String,
    orders_placed: i64,
    gross_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    orders_cancelled: i64,
    items_sold: i64,
    version: i64,
}

impl From<TotalsRow> for DailyRow {
    fn from(t: TotalsRow) -> DailyRow {
        DailyRow {
            day: t.day,
            merchant_id: t.merchant_id,
            currency: currency_bytes(&t.currency),
            orders_placed: t.orders_placed,
            gross_minor: t.gross_minor,
            captured_minor: t.captured_minor,
            refunded_minor: t.refunded_minor,
            orders_cancelled: t.orders_cancelled,
            items_sold: t.items_sold,
            version: u64::try_from(t.version).unwrap_or(0),
        }
    }
}

/// The ingest's running totals (see migrations/postgres/0002).
pub const TOTALS_TABLE: &str = "ingest_daily_totals";

pub const TOTALS_COLUMNS: &str = "day, merchant_id, currency, orders_placed, gross_minor, captured_minor, \
                              refunded_minor, orders_cancelled, items_sold, version";

/// Adds the deltas and returns the cells' new absolute totals. Cells are
/// locked in key order, so concurrent workers cannot deadlock, and each
/// version is drawn while its row lock is held, so versions follow the
/// order in which states were written.
///
/// `table` is [`TOTALS_TABLE`] or a table of the same shape (a rebuild
/// moves its own cells forward with the same statement).
pub async fn add_to_totals(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static str,
    cells: &BTreeMap<CellKey, DailyMeasures>,
) -> Result<Vec<DailyRow>, sqlx::Error> {
    let mut days = Vec::with_capacity(cells.len());
    let mut merchants = Vec::with_capacity(cells.len());
    let mut currencies = Vec::with_capacity(cells.len());
    let mut m: [Vec<i64>; 6] = Default::default();
    for ((day, merchant, currency), d) in cells {
        days.push(*day);
        merchants.push(merchant.as_str());
        currencies.push(currency.as_str());
        for (col, v) in m.iter_mut().zip([
            d.orders_placed,
            d.gross_minor,
            d.captured_minor,
            d.refunded_minor,
            d.orders_cancelled,
            d.items_sold,
        ]) {
            col.push(v);
        }
    }
    let rows: Vec<TotalsRow> = sqlx::query_as(&format!(
        "INSERT INTO {table} AS t ({TOTALS_COLUMNS})
         SELECT u.*, nextval('ingest_version_seq')
         FROM unnest($1::date[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                     $7::int8[], $8::int8[], $9::int8[])
              AS u(day, merchant_id, currency, orders_placed, gross_minor, captured_minor,
                   refunded_minor, orders_cancelled, items_sold)
         ORDER BY 1, 2, 3
         ON CONFLICT (day, merchant_id, currency) DO UPDATE SET
             orders_placed    = t.orders_placed    + excluded.orders_placed,
             gross_minor      = t.gross_minor      + excluded.gross_minor,
             captured_minor   = t.captured_minor   + excluded.captured_minor,
             refunded_minor   = t.refunded_minor   + excluded.refunded_minor,
             orders_cancelled = t.orders_cancelled + excluded.orders_cancelled,
             items_sold       = t.items_sold       + excluded.items_sold,
             version          = nextval('ingest_version_seq')
         RETURNING {TOTALS_COLUMNS}"
    ))
    .bind(&days)
    .bind(&merchants)
    .bind(&currencies)
    .bind(&m[0])
    .bind(&m[1])
    .bind(&m[2])
    .bind(&m[3])
    .bind(&m[4])
    .bind(&m[5])
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(DailyRow::from).collect())
}

async fn record_pending(
    tx: &mut Transaction<'_, Postgres>,
    cells: &BTreeMap<CellKey, DailyMeasures>,
    oldest_created: OffsetDateTime,
) -> Result<Uuid, sqlx::Error> {
    let batch_id = Uuid::now_v7();
    let days: Vec<Date> = cells.keys().map(|k| k.0).collect();
    let merchants: Vec<&str> = cells.keys().map(|k| k.1.as_str()).collect();
    let currencies: Vec<&str> = cells.keys().map(|k| k.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO ingest_pending_pushes (batch_id, days, merchant_ids, currencies, oldest_created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(batch_id)
    .bind(&days)
    .bind(&merchants)
    .bind(&currencies)
    .bind(oldest_created)
    .execute(&mut **tx)
    .await?;
    Ok(batch_id)
}

/// Deletes the pending records of pushes that have landed.
pub(crate) async fn clear_settled(
    pool: &PgPool,
    settled: &mut Vec<Uuid>,
) -> Result<(), sqlx::Error> {
    if !settled.is_empty() {
        sqlx::query("DELETE FROM ingest_pending_pushes WHERE batch_id = ANY($1)")
            .bind(&*settled)
            .execute(pool)
            .await?;
        settled.clear();
    }
    Ok(())
}

/// Re-pushes cells whose pending record is older than `min_age`: left by a
/// worker that crashed, or whose push failed. Returns how many records it
/// cleared.
pub async fn recover_pending(
    pool: &PgPool,
    ch: &clickhouse::Client,
    min_age: Duration,
) -> Result<usize, IngestError> {
    let mut tx = pool.begin().await?;
    let pending: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT batch_id FROM ingest_pending_pushes
         WHERE created_at <= clock_timestamp() - make_interval(secs => $1)
         ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED",
    )
    .bind(min_age.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    if pending.is_empty() {
        tx.rollback().await?; // see run_batch
        return Ok(0);
    }
    let ids: Vec<Uuid> = pending.into_iter().map(|(id,)| id).collect();
    let rows: Vec<TotalsRow> = sqlx::query_as(&format!(
        "SELECT DISTINCT {cols} FROM ingest_daily_totals t
         JOIN (SELECT unnest(days) AS day, unnest(merchant_ids) AS merchant_id, unnest(currencies) AS currency
               FROM ingest_pending_pushes WHERE batch_id = ANY($1)) p
           USING (day, merchant_id, currency)",
        cols = TOTALS_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let rows: Vec<DailyRow> = rows.into_iter().map(DailyRow::from).collect();
    insert_rows(ch, "daily_revenue", &rows).await?;
    sqlx::query("DELETE FROM ingest_pending_pushes WHERE batch_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        records = ids.len(),
        cells = rows.len(),
        "re-pushed pending daily totals"
    );
    Ok(ids.len())
}

/// One INSERT of all `rows` (a single block: atomic in ClickHouse).
pub async fn insert_rows<T>(
    ch: &clickhouse::Client,
    table: &str,
    rows: &[T],
) -> Result<(), IngestError>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    let work = async {
        let mut insert = ch.insert::<T>(table).await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await
    };
    match tokio::time::timeout(INSERT_TIMEOUT, work).await {
        Ok(r) => r.map_err(|e| IngestError::ClickHouse(table.to_owned(), e)),
        Err(_) => Err(IngestError::Timeout(table.to_owned())),
    }
}
