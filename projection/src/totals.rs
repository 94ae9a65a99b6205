//! The running daily totals, kept in PostgreSQL (`ingest_daily_totals`),
//! and the record of pushes to ClickHouse still owed.
//!
//! ClickHouse 18.16 deduplicates inserts only for replicated tables and has
//! no deduplication tokens, so an insert whose acknowledgement is lost
//! cannot be repeated if it carries deltas. So ClickHouse never receives a
//! delta: a batch adds its deltas here ([`add_to_totals`]) in the
//! transaction that deletes its outbox rows, and pushes the cells'
//! *absolute* totals, each with a version drawn while the cell's row lock
//! is held, so a later state always has a larger version. Re-sending a
//! cell, sending an old state late, or two workers racing all leave the
//! largest version, which is the right one.
//!
//! A push that dies after the commit is listed in `ingest_pending_pushes`
//! (written in the same transaction, [`record_pending`]) and any worker
//! re-pushes those cells' *current* totals later ([`recover_pending`]):
//! harmless, so no lease or fencing is needed. A listed push holds the
//! freshness watermark back until it has landed.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row as _, Transaction};
use tally_domain::DailyMeasures;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::insert::{InsertError, insert_rows};
use crate::rows::{CellKey, DailyRow, currency_bytes};

/// The ingest's running totals (see migrations/postgres/0002).
pub const TOTALS_TABLE: &str = "ingest_daily_totals";

/// The columns of a totals row ([`TotalsRow`]), in [`DailyRow`]'s order:
/// the cell's key, [`DailyMeasures::NAMES`], its version.
pub fn totals_columns() -> &'static str {
    static COLUMNS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "day, merchant_id, currency, {}, version",
            DailyMeasures::NAMES.join(", ")
        )
    });
    &COLUMNS
}

/// SQL over the measures, written once from [`DailyMeasures::NAMES`]: each
/// measure through `each`, joined by `sep`. Every statement that lists the
/// measures of a cell (sums, updates, comparisons) is built with it, so a
/// measure added to the domain reaches them all.
pub fn each_measure(each: impl Fn(&str) -> String, sep: &str) -> String {
    DailyMeasures::NAMES
        .iter()
        .map(|m| each(m))
        .collect::<Vec<_>>()
        .join(sep)
}

/// `$first::int8[], $first+1::int8[], …`: one array parameter per measure,
/// for statements that take cells as parallel arrays (`unnest`).
pub fn measure_arrays(first: usize) -> String {
    (first..first + DailyMeasures::COUNT)
        .map(|i| format!("${i}::int8[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(a.m1, a.m2, …) IS DISTINCT FROM (b.m1, b.m2, …)`: two cells differ.
pub fn measures_differ(a: &str, b: &str) -> String {
    format!(
        "({}) IS DISTINCT FROM ({})",
        each_measure(|m| format!("{a}.{m}"), ", "),
        each_measure(|m| format!("{b}.{m}"), ", ")
    )
}

/// One row of the running totals (or of a table of the same shape), read
/// by [`totals_columns`].
pub struct TotalsRow {
    day: Date,
    merchant_id: String,
    currency: String,
    measures: DailyMeasures,
    version: u64,
}

impl<'r> sqlx::FromRow<'r, PgRow> for TotalsRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let mut values = [0; DailyMeasures::COUNT];
        for (v, name) in values.iter_mut().zip(DailyMeasures::NAMES) {
            *v = row.try_get(name)?;
        }
        Ok(TotalsRow {
            day: row.try_get("day")?,
            merchant_id: row.try_get("merchant_id")?,
            currency: row.try_get("currency")?,
            measures: DailyMeasures::from_values(values),
            // Drawn from `ingest_version_seq`, which starts at 1: a negative
            // one is a corrupt row, not a version to clamp.
            version: u64::try_from(row.try_get::<i64, _>("version")?).map_err(|_| {
                sqlx::Error::Decode("a running total with a negative version".into())
            })?,
        })
    }
}

impl From<TotalsRow> for DailyRow {
    fn from(t: TotalsRow) -> DailyRow {
        DailyRow::new(
            t.day,
            t.merchant_id,
            currency_bytes(&t.currency),
            &t.measures,
            t.version,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(transparent)]
    Insert(#[from] InsertError),
}

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
    let mut m: [Vec<i64>; DailyMeasures::COUNT] = Default::default();
    for (key, d) in cells {
        days.push(key.day);
        merchants.push(key.merchant.as_str());
        currencies.push(key.currency.code());
        for (col, v) in m.iter_mut().zip(d.values()) {
            col.push(v);
        }
    }
    let arrays = measure_arrays(4);
    let sql = format!(
        "INSERT INTO {table} AS t ({cols})
         SELECT u.*, nextval('ingest_version_seq')
         FROM unnest($1::date[], $2::text[], $3::text[], {arrays})
              AS u(day, merchant_id, currency, {names})
         ORDER BY 1, 2, 3
         ON CONFLICT (day, merchant_id, currency) DO UPDATE SET
             {add},
             version = nextval('ingest_version_seq')
         RETURNING {cols}",
        cols = totals_columns(),
        names = each_measure(str::to_owned, ", "),
        add = each_measure(|m| format!("{m} = t.{m} + excluded.{m}"), ", "),
    );
    let mut q = sqlx::query_as(&sql)
        .bind(&days)
        .bind(&merchants)
        .bind(&currencies);
    for col in &m {
        q = q.bind(col);
    }
    let rows: Vec<TotalsRow> = q.fetch_all(&mut **tx).await?;
    Ok(rows.into_iter().map(DailyRow::from).collect())
}

/// Lists the cells a batch is about to push, in its transaction; returns
/// the record's id, to delete once the push has landed.
pub async fn record_pending<'a>(
    tx: &mut Transaction<'_, Postgres>,
    cells: impl ExactSizeIterator<Item = &'a CellKey>,
    oldest_created: OffsetDateTime,
) -> Result<Uuid, sqlx::Error> {
    let batch_id = Uuid::now_v7();
    let (mut days, mut merchants, mut currencies) = (
        Vec::with_capacity(cells.len()),
        Vec::with_capacity(cells.len()),
        Vec::with_capacity(cells.len()),
    );
    for k in cells {
        days.push(k.day);
        merchants.push(k.merchant.as_str());
        currencies.push(k.currency.code());
    }
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

/// Deletes the records of pushes that have landed.
pub async fn clear_pending<'e>(
    db: impl sqlx::PgExecutor<'e>,
    batch_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    if !batch_ids.is_empty() {
        sqlx::query("DELETE FROM ingest_pending_pushes WHERE batch_id = ANY($1)")
            .bind(batch_ids)
            .execute(db)
            .await?;
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
) -> Result<usize, TotalsError> {
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
        // Explicitly, not on drop: until sqlx gets round to it, an open
        // transaction holds the watermark back.
        tx.rollback().await?;
        return Ok(0);
    }
    let ids: Vec<Uuid> = pending.into_iter().map(|(id,)| id).collect();
    let rows: Vec<TotalsRow> = sqlx::query_as(&format!(
        "SELECT DISTINCT {cols} FROM {TOTALS_TABLE} t
         JOIN (SELECT unnest(days) AS day, unnest(merchant_ids) AS merchant_id, unnest(currencies) AS currency
               FROM ingest_pending_pushes WHERE batch_id = ANY($1)) p
           USING (day, merchant_id, currency)",
        cols = totals_columns()
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let rows: Vec<DailyRow> = rows.into_iter().map(DailyRow::from).collect();
    insert_rows(ch, "daily_revenue", &rows).await?;
    clear_pending(&mut *tx, &ids).await?;
    tx.commit().await?;
    tracing::info!(
        records = ids.len(),
        cells = rows.len(),
        "re-pushed pending daily totals"
    );
    Ok(ids.len())
}
