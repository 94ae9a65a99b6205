//! The dead-letter table: events the worker could not decode or project.
//! They hold the freshness watermark back (the numbers are incomplete
//! without them) until an operator retries them after a fix.
//!
//! Only a failure that would recur for that event alone parks it
//! ([`Reason`]): a payload this build cannot read, a daily cell that would
//! leave 64 bits, a value or constraint PostgreSQL refuses (SQLSTATE
//! classes 22 and 23). Everything else (a store down, a timeout, a missing
//! table) would fail every event alike, so the batch is retried with
//! backoff and nothing is parked: dead-lettering the whole outbox because
//! ClickHouse is away would be worse than waiting. A batch that fails
//! deterministically is retried one event at a time, so that exactly the
//! event at fault is parked and the rest go on (`Worker::cycle`). After
//! `PARK_LIMIT` events parked in a row with none counted between them the
//! worker stops parking and backs off: a failure that hits every event is
//! the deployment's, and must not empty the outbox into this table.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// Why an event was parked; stored in `ingest_dead_letters.reason` and
/// the `reason` label of `tally_ingest_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The payload is not an event this build can read.
    Decode,
    /// Its amounts would take a daily cell past 64-bit minor units.
    Overflow,
    /// PostgreSQL refused a value while projecting it (SQLSTATE class 22,
    /// e.g. `bigint out of range` in the running totals).
    Data,
    /// A constraint refused it (SQLSTATE class 23).
    Constraint,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Decode,
        Reason::Overflow,
        Reason::Data,
        Reason::Constraint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::Overflow => "overflow",
            Reason::Data => "data",
            Reason::Constraint => "constraint",
        }
    }

    /// The reason a PostgreSQL error would recur for the same event, or
    /// `None` for errors that are about the store, not the event.
    pub fn of_postgres(e: &sqlx::Error) -> Option<Reason> {
        let sqlx::Error::Database(db) = e else {
            return None;
        };
        let code = db.code()?;
        match code.get(..2) {
            Some("22") => Some(Reason::Data),
            Some("23") => Some(Reason::Constraint),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub outbox_id: i64,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub aggregate_version: i32,
    pub event_type: String,
    pub created_at: OffsetDateTime,
    pub failed_at: OffsetDateTime,
    pub reason: String,
    pub error: String,
}

pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outbox_id, event_id, aggregate_id, aggregate_version, event_type, created_at, failed_at,
                reason, error
         FROM ingest_dead_letters ORDER BY outbox_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many dead letters there are per reason, most first.
pub async fn count_by_reason(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT reason, count(*) FROM ingest_dead_letters GROUP BY reason ORDER BY 2 DESC, 1",
    )
    .fetch_all(pool)
    .await
}

/// Moves dead letters back into the outbox (all of them if `outbox_id` is
/// `None`), keeping their original `created_at` so the watermark stays
/// honest. Returns how many were moved.
pub async fn retry(pool: &PgPool, outbox_id: Option<i64>) -> Result<u64, sqlx::Error> {
    let moved = sqlx::query(
        "WITH moved AS (
             DELETE FROM ingest_dead_letters WHERE $1::int8 IS NULL OR outbox_id = $1
             RETURNING event_id, aggregate_id, aggregate_version, event_type, schema_version,
                       occurred_at, payload, created_at
         )
         INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version,
                             occurred_at, payload, created_at)
         SELECT * FROM moved",
    )
    .bind(outbox_id)
    .execute(pool)
    .await?;
    Ok(moved.rows_affected())
}
