//! Every write to a projection table is one INSERT of whole rows: one
//! block, which ClickHouse applies atomically, bounded in time so that a
//! hung server costs a retry from PostgreSQL, never a stuck worker.

use std::time::Duration;

/// Time allowed for one ClickHouse insert before it is abandoned (the
/// caller's transaction is rolled back and its work claimed again).
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("ClickHouse insert into {table} failed: {source}")]
    Failed {
        table: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse insert into {0} timed out after {secs} s", secs = INSERT_TIMEOUT.as_secs())]
    Timeout(String),
}

/// One INSERT of all `rows` into `table`.
pub async fn insert_rows<T>(
    ch: &clickhouse::Client,
    table: &str,
    rows: &[T],
) -> Result<(), InsertError>
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
        Ok(r) => r.map_err(|source| InsertError::Failed {
            table: table.to_owned(),
            source,
        }),
        Err(_) => Err(InsertError::Timeout(table.to_owned())),
    }
}

/// Writes `rows` to every fact table ([`crate::rows::FACT_TABLES`]), at
/// once: the same rows, each table sorted its own way. `table` names the
/// copy to write, e.g. `|live| live.to_owned()` for the live tables.
/// Each insert is whole-row and versioned like any other, so a retry after
/// one of them failed rewrites what the others already hold without
/// changing it. Every insert runs to its end before the first error is
/// returned: one failing does not cut the others off mid-body.
pub async fn insert_facts(
    ch: &clickhouse::Client,
    table: impl Fn(&str) -> String,
    rows: &[crate::FactRow],
) -> Result<(), InsertError> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = crate::rows::FACT_TABLES
        .iter()
        .map(|t| table(t.live))
        .collect();
    futures_util::future::join_all(names.iter().map(|name| insert_rows(ch, name, rows)))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(drop)
}
