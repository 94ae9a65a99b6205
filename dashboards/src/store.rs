//! The ClickHouse queries behind the read endpoints.
//!
//! They read the `daily_revenue` aggregate (and the watermark) only, never
//! the per-order facts. `FINAL` is needed because the ingest overwrites a
//! cell by inserting a newer version of it; without it a cell not yet merged
//! would count twice. The SQL text depends only on which filters are present
//! and on how many merchants are given, never on their values: every value
//! is bound with `?` (client-side escaping, the only binding ClickHouse 18.16
//! understands).

use clickhouse::Row;
use clickhouse::query::Query;
use serde::Deserialize;
use tally_domain::Currency;
use time::{Date, OffsetDateTime};

use crate::params::{DayRange, Filter};

/// Sums of one (day or period, currency).
#[derive(Row, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub orders_placed: i64,
    pub orders_cancelled: i64,
    pub items_sold: i64,
    pub gross_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
}

impl Sums {
    pub fn net_minor(&self) -> i64 {
        self.captured_minor - self.refunded_minor
    }
}

const SUMS: &str = "sum(orders_placed), sum(orders_cancelled), sum(items_sold), \
                    sum(gross_minor), sum(captured_minor), sum(refunded_minor)";

#[derive(Row, Deserialize)]
pub struct DailyRow {
    #[serde(with = "clickhouse::serde::time::date")]
    pub day: Date,
    pub currency: [u8; 3],
    pub sums: Sums,
}

#[derive(Row, Deserialize)]
pub struct PeriodRow {
    pub currency: [u8; 3],
    /// 1 for the requested period, 0 for the one before it.
    pub current: u8,
    pub sums: Sums,
}

#[derive(Row, Deserialize)]
pub struct TopRow {
    /// Net of every merchant in the range (the denominator of the shares).
    pub total_net_minor: i64,
    pub merchants: u64,
    /// (merchant, net, orders placed, gross), best first.
    pub top: Vec<(String, i64, i64, i64)>,
}

/// The `WHERE` clause for `range` and the filter's currency and merchants.
fn where_clause(f: &Filter) -> String {
    let mut sql = String::from(" WHERE day >= toDate(?) AND day <= toDate(?)");
    if f.currency.is_some() {
        sql.push_str(" AND currency = ?");
    }
    if !f.merchants.is_empty() {
        let marks = vec!["?"; f.merchants.len()].join(", ");
        sql.push_str(&format!(" AND merchant_id IN ({marks})"));
    }
    sql
}

fn bind_where(mut q: Query, f: &Filter, range: DayRange) -> Query {
    q = q.bind(range.from.to_string()).bind(range.to.to_string());
    if let Some(c) = f.currency {
        q = q.bind(c.code());
    }
    for m in &f.merchants {
        q = q.bind(m.as_str());
    }
    q
}

pub async fn daily(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<Vec<DailyRow>, clickhouse::error::Error> {
    let sql = format!(
        "SELECT day, currency, {SUMS} FROM daily_revenue FINAL{} \
         GROUP BY day, currency ORDER BY day, currency",
        where_clause(f)
    );
    bind_where(ch.query(&sql), f, f.range).fetch_all().await
}

/// Totals per currency for the filter's range and the period before it, in
/// one scan.
pub async fn periods(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<Vec<PeriodRow>, clickhouse::error::Error> {
    let both = DayRange {
        from: f.range.previous().from,
        to: f.range.to,
    };
    let sql = format!(
        "SELECT currency, toUInt8(day >= toDate(?)) AS current, {SUMS} \
         FROM daily_revenue FINAL{} GROUP BY currency, current ORDER BY currency, current",
        where_clause(f)
    );
    let q = ch.query(&sql).bind(f.range.from.to_string());
    bind_where(q, f, both).fetch_all().await
}

/// The `limit` merchants with the highest net revenue in one currency, and
/// the currency's total over all merchants, in one scan. Ties are broken by
/// merchant id so that the order is stable.
pub async fn top_merchants(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<TopRow, clickhouse::error::Error> {
    let sql = format!(
        "SELECT sum(net), count(), \
                arraySlice(arraySort(m -> (-m.2, m.1), groupArray((merchant_id, net, orders, gross))), 1, ?) \
         FROM (SELECT merchant_id, sum(captured_minor) - sum(refunded_minor) AS net, \
                      sum(orders_placed) AS orders, sum(gross_minor) AS gross \
               FROM daily_revenue FINAL{} GROUP BY merchant_id)",
        where_clause(f)
    );
    let q = ch.query(&sql).bind(f.limit);
    bind_where(q, f, f.range).fetch_one().await
}

/// Up to when the projections are complete (`None`: the ingest has never
/// reported).
pub async fn watermark(
    ch: &clickhouse::Client,
) -> Result<Option<OffsetDateTime>, clickhouse::error::Error> {
    let us: i64 = ch
        .query("SELECT max(watermark_us) FROM ingest_watermark")
        .fetch_one()
        .await?;
    Ok((us > 0)
        .then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok())
        .flatten())
}

/// The currency of a row, as stored. Rows are written by the ingest from
/// parsed [`Currency`] values, so a code that does not parse means the
/// table was written by something else.
pub fn currency(code: [u8; 3]) -> Result<Currency, String> {
    let s = String::from_utf8_lossy(&code);
    Currency::parse(&s).map_err(|_| format!("unknown currency `{s}` in daily_revenue"))
}
