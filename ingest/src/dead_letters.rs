//! The dead-letter table: events the worker could not decode or project.
//! They hold the freshness watermark back (the numbers are incomplete
//! without them) until an operator retries them after a fix.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub outbox_id: i64,
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub aggregate_version: i32,
    pub event_type: String,
    pub created_at: OffsetDateTime,
    pub failed_at: OffsetDateTime,
    pub error: String,
}

pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outbox_id, event_id, aggregate_id, aggregate_version, event_type, created_at, failed_at, error
         FROM ingest_dead_letters ORDER BY outbox_id LIMIT $1",
    )
    .bind(limit)
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
