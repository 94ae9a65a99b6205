//! One batch through the pipeline, in the order that makes it exactly-once:
//!
//! 1. In a PostgreSQL transaction that holds the seam lock shared
//!    (`tally_projection::seam`), claim and delete up to `batch_size`
//!    outbox rows (`FOR UPDATE SKIP LOCKED`: concurrent workers take
//!    disjoint rows and never wait for each other; a row that commits late
//!    is simply there on the next claim, there is no "id > last seen"
//!    cursor to skip it). Rows that cannot be decoded go to
//!    `ingest_dead_letters` in the same transaction.
//! 2. Insert the orders' fact rows into ClickHouse. They are whole states
//!    keyed by (order, version), so inserting them again after a crash
//!    changes nothing.
//! 3. Still in the transaction, add the batch's deltas to
//!    `ingest_daily_totals` (new absolute values, new versions;
//!    `tally_projection::totals` says why ClickHouse never sees a delta)
//!    and record the touched cells in `ingest_pending_pushes`. Commit.
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
//! row may already be in the fact tables: it is the order's true state, and
//! the dead letter holds the watermark back until it is retried.

use std::time::Instant;

use sqlx::{PgPool, Postgres, Transaction};
use tally_projection::seam::{self, ClaimFrom, OutboxRow, SeamState};
use tally_projection::totals::{self, TOTALS_TABLE, add_to_totals};
use tally_projection::{Projected, ReportingZone, insert_facts, insert_rows, project};
use uuid::Uuid;

use crate::IngestError;
use crate::dead_letters::Reason;
use crate::metrics::{EventTypeLabel, Metrics};

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
        SeamState {
            journaling,
            swapping,
            recorded_zone,
        },
    ) = seam::begin_batch(pool).await?;
    if let Some(recorded) = recorded_zone.filter(|r| !r.eq_ignore_ascii_case(zone.name())) {
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
    totals::clear_pending(&mut *tx, settled).await?;
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
        seam::unjournal(&mut tx, &ids).await?;
    }
    let t_decode = started.elapsed();
    // The fact insert comes before the totals upsert, never beside it: the
    // upsert locks the batch's cells until the commit, and a worker whose
    // ClickHouse is slow must not hold other workers' cells meanwhile.
    insert_facts(ch, str::to_owned, &facts)
        .await
        .inspect_err(|e| metrics.clickhouse_failed(e))?;
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
            totals::record_pending(&mut tx, cells.keys(), oldest_created).await?,
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
        decode_ms = t_decode.saturating_sub(t_claim).as_millis() as u64,
        facts_ms = t_facts.saturating_sub(t_decode).as_millis() as u64,
        totals_ms = t_totals.saturating_sub(t_facts).as_millis() as u64,
        commit_ms = t_commit.saturating_sub(t_totals).as_millis() as u64,
        push_ms = started.elapsed().saturating_sub(t_commit).as_millis() as u64,
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
    let (mut tx, state) = seam::begin_batch(pool).await?;
    if state.swapping {
        tx.rollback().await?;
        return Ok(BatchOutcome {
            paused: true,
            limit: 1,
            ..BatchOutcome::default()
        });
    }
    let row: Option<OutboxRow> = sqlx::query_as(seam::TAKE_ONE_SQL)
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

/// Deletes the pending records of pushes that have landed.
pub(crate) async fn clear_settled(
    pool: &PgPool,
    settled: &mut Vec<Uuid>,
) -> Result<(), sqlx::Error> {
    totals::clear_pending(pool, settled).await?;
    settled.clear();
    Ok(())
}
