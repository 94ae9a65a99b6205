//! Schema migrations for both stores, and the one entry point that applies
//! them: [`migrate`].
//!
//! PostgreSQL migrations are `sqlx::migrate!` files in `migrations/postgres`.
//! ClickHouse has no migration tool that works on 18.16 and on current
//! servers alike, so [`clickhouse`] is a small runner of our own over
//! versioned SQL files in `migrations/clickhouse`. Applied migrations are
//! never edited: both runners refuse a file whose checksum changed.

pub mod clickhouse;
pub mod postgres;
pub mod replicated;

use sqlx::PgPool;
use tally_ops::{ChCluster, ChSettings};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("PostgreSQL migration failed: {0}")]
    Postgres(#[from] sqlx::migrate::MigrateError),
    #[error("PostgreSQL error while migrating: {0}")]
    PostgresLock(#[from] sqlx::Error),
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::ChMigrateError),
    /// Version skew: a newer tally migrated this database.
    #[error(
        "the PostgreSQL database is at migration {applied}, and this tally knows migrations up to \
         {known} only: a newer tally migrated it. This process stops rather than write the old \
         way; run the newer binary (rolling upgrades: migrate first, then replace every process)"
    )]
    Newer { applied: i64, known: i64 },
}

/// Lock key for `pg_advisory_lock`: only one process migrates at a time,
/// including the ClickHouse half, which has no locks of its own.
const MIGRATION_LOCK: i64 = 0x7A11_0001;

/// Applies every pending migration to both stores. Safe to call from many
/// processes at once: they take turns, and the later ones find nothing to do.
/// Every role calls it before it writes, so a binary older than the schema
/// (it knows fewer migrations than were applied) stops here, with the fix.
pub async fn migrate(pg: &PgPool, ch: &ChSettings) -> Result<(), MigrateError> {
    locked(pg, clickhouse::run(ch)).await
}

/// [`migrate`] for a replicated ClickHouse: every node of `cluster`.
pub async fn migrate_cluster(pg: &PgPool, cluster: &ChCluster) -> Result<(), MigrateError> {
    locked(pg, clickhouse::run_cluster(cluster)).await
}

/// Runs PostgreSQL's migrations, then `clickhouse`, under the lock.
async fn locked(
    pg: &PgPool,
    clickhouse: impl Future<Output = Result<(), clickhouse::ChMigrateError>>,
) -> Result<(), MigrateError> {
    let mut conn = pg.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = async {
        let (applied, known) = (
            postgres::applied_version(pg).await?,
            postgres::latest_version(),
        );
        if applied > known {
            return Err(MigrateError::Newer { applied, known });
        }
        postgres::run(pg).await?;
        clickhouse.await?;
        Ok::<(), MigrateError>(())
    }
    .await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result?;
    unlock?;
    Ok(())
}
