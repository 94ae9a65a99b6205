//! The ClickHouse queries behind the read endpoints.
//!
//! They read the `daily_revenue` aggregate (and the watermark) only, never
//! the per-order facts. The SQL text depends only on which filters are
//! present and on how many merchants are given, never on their values: every
//! value is bound with `?` (client-side escaping, the only binding
//! ClickHouse 18.16 understands).
//!
//! Exactness without paying for `FINAL` everywhere: the ingest overwrites a
//! cell by inserting a newer version of it, so a cell can have several rows
//! until ClickHouse merges them, and a plain `sum` would count it twice.
//! `FINAL` merges at read time, but on 18.16 it costs 5-10× the scan. A
//! partition that is a single merged part has one row per cell, so it can be
//! read without `FINAL`; only the others (in practice the current month) are
//! read with it. Which partitions are clean is looked up first, and looked
//! up again after the query: if any part of the range appeared or went in
//! between, the answer is discarded and the query runs again (after three
//! tries, with `FINAL` throughout). Parts are never renamed or reused, so an
//! unchanged list means the query read what the plan assumed.

use clickhouse::Row;
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

/// A bound value.
#[derive(Clone, Debug)]
pub enum Arg {
    Str(String),
    UInt(u64),
}

/// SQL text with `?` placeholders and their values, in order.
#[derive(Clone, Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn arg(&mut self, a: Arg) -> &mut Self {
        self.text.push('?');
        self.args.push(a);
        self
    }

    fn str(&mut self, v: impl Into<String>) -> &mut Self {
        self.arg(Arg::Str(v.into()))
    }

    fn query(&self, ch: &clickhouse::Client) -> clickhouse::query::Query {
        self.args.iter().fold(ch.query(&self.text), |q, a| match a {
            Arg::Str(s) => q.bind(s.as_str()),
            Arg::UInt(n) => q.bind(*n),
        })
    }

    /// The statement with its values written in, escaped as the client
    /// does: what the benchmark hands to `clickhouse-client`.
    pub fn inline(&self) -> String {
        let mut out = String::new();
        let mut args = self.args.iter();
        for (i, piece) in self.text.split('?').enumerate() {
            if i > 0 {
                match args.next() {
                    Some(Arg::Str(s)) => {
                        out.push('\'');
                        out.push_str(&s.replace('\\', "\\\\").replace('\'', "\\'"));
                        out.push('\'');
                    }
                    Some(Arg::UInt(n)) => out.push_str(&n.to_string()),
                    None => out.push('?'),
                }
            }
            out.push_str(piece);
        }
        out
    }
}

/// Which partitions (months) of the range may be read without `FINAL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Partitions with rows in the range that are not one merged part.
    dirty: Vec<u32>,
    /// Every active part of the range's partitions, to detect a change.
    fingerprint: Vec<(String, Vec<String>)>,
}

impl Plan {
    /// Reads everything with `FINAL` (the fallback).
    fn all_final() -> Plan {
        Plan {
            dirty: Vec::new(),
            fingerprint: vec![("*".into(), Vec::new())],
        }
    }

    fn is_all_final(&self) -> bool {
        self.fingerprint.first().is_some_and(|(p, _)| p == "*")
    }

    /// How many partitions of the range need `FINAL`.
    pub fn dirty_partitions(&self) -> usize {
        self.dirty.len()
    }
}

fn month(d: Date) -> u32 {
    d.year() as u32 * 100 + u8::from(d.month()) as u32
}

#[derive(Row, Deserialize)]
struct PartitionParts {
    partition: String,
    names: Vec<String>,
    min_level: u32,
}

/// Looks up which partitions of `range` are clean.
pub async fn plan(
    ch: &clickhouse::Client,
    range: DayRange,
) -> Result<Plan, clickhouse::error::Error> {
    let rows: Vec<PartitionParts> = ch
        .query(
            "SELECT partition, arraySort(groupArray(name)), min(level) FROM system.parts \
             WHERE database = currentDatabase() AND table = 'daily_revenue' AND active \
               AND partition >= ? AND partition <= ? \
             GROUP BY partition ORDER BY partition",
        )
        .bind(month(range.from).to_string())
        .bind(month(range.to).to_string())
        .fetch_all()
        .await?;
    let dirty = rows
        .iter()
        .filter(|p| p.names.len() != 1 || p.min_level == 0)
        .filter_map(|p| p.partition.parse().ok())
        .collect();
    Ok(Plan {
        dirty,
        fingerprint: rows.into_iter().map(|p| (p.partition, p.names)).collect(),
    })
}

/// Appends the `WHERE` conditions of the filter over `range`.
fn conditions(sql: &mut Sql, f: &Filter, range: DayRange) {
    sql.push(" WHERE day >= toDate(")
        .str(range.from.to_string())
        .push(") AND day <= toDate(")
        .str(range.to.to_string())
        .push(")");
    if let Some(c) = f.currency {
        sql.push(" AND currency = ").str(c.code());
    }
    if !f.merchants.is_empty() {
        sql.push(" AND merchant_id IN (");
        for (i, m) in f.merchants.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.str(m.as_str());
        }
        sql.push(")");
    }
}

/// Appends the rows of `daily_revenue` that the filter selects over `range`,
/// one row per cell: a table expression for `FROM`.
fn source(sql: &mut Sql, f: &Filter, range: DayRange, plan: &Plan) {
    let months = |ms: &[u32]| ms.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    if plan.is_all_final() || plan.dirty.len() == plan.fingerprint.len() && !plan.dirty.is_empty() {
        sql.push("daily_revenue FINAL");
        conditions(sql, f, range);
    } else if plan.dirty.is_empty() {
        sql.push("daily_revenue");
        conditions(sql, f, range);
    } else {
        // Partition numbers come from system.parts, not from the request.
        let dirty = months(&plan.dirty);
        sql.push("(SELECT * FROM daily_revenue");
        conditions(sql, f, range);
        sql.push(&format!(
            " AND toYYYYMM(day) NOT IN ({dirty}) UNION ALL SELECT * FROM daily_revenue FINAL"
        ));
        conditions(sql, f, range);
        sql.push(&format!(" AND toYYYYMM(day) IN ({dirty}))"));
    }
}

pub fn daily_sql(f: &Filter, plan: &Plan) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT day, currency, {SUMS} FROM "));
    source(&mut sql, f, f.range, plan);
    sql.push(" GROUP BY day, currency ORDER BY day, currency");
    sql
}

/// Totals per currency for the filter's range and the period before it, in
/// one scan.
pub fn periods_sql(f: &Filter, plan: &Plan) -> Sql {
    let both = DayRange {
        from: f.range.previous().from,
        to: f.range.to,
    };
    let mut sql = Sql::default();
    sql.push("SELECT currency, toUInt8(day >= toDate(")
        .str(f.range.from.to_string())
        .push(&format!(")) AS current, {SUMS} FROM "));
    source(&mut sql, f, both, plan);
    sql.push(" GROUP BY currency, current ORDER BY currency, current");
    sql
}

/// The `limit` merchants with the highest net revenue in one currency, and
/// the currency's total over all merchants, in one scan. Ties are broken by
/// merchant id so that the order is stable.
pub fn top_sql(f: &Filter, plan: &Plan) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT sum(net), count(), arraySlice(arraySort(m -> (-m.2, m.1), groupArray((merchant_id, net, orders, gross))), 1, ")
        .arg(Arg::UInt(f.limit.into()))
        .push(") FROM (SELECT merchant_id, sum(captured_minor) - sum(refunded_minor) AS net, sum(orders_placed) AS orders, sum(gross_minor) AS gross FROM ");
    source(&mut sql, f, f.range, plan);
    sql.push(" GROUP BY merchant_id)");
    sql
}

/// Runs the statement `build` makes for the current plan of `range`, until
/// the plan still holds after it ran (see the module docs).
async fn exact<T>(
    ch: &clickhouse::Client,
    range: DayRange,
    build: impl Fn(&Plan) -> Sql,
) -> Result<Vec<T>, clickhouse::error::Error>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    for _ in 0..3 {
        let before = plan(ch, range).await?;
        let rows = build(&before).query(ch).fetch_all::<T>().await?;
        if plan(ch, range).await? == before {
            return Ok(rows);
        }
        tracing::debug!("daily_revenue parts changed during a read; reading again");
    }
    build(&Plan::all_final()).query(ch).fetch_all::<T>().await
}

pub async fn daily(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<Vec<DailyRow>, clickhouse::error::Error> {
    exact(ch, f.range, |p| daily_sql(f, p)).await
}

pub async fn periods(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<Vec<PeriodRow>, clickhouse::error::Error> {
    let both = DayRange {
        from: f.range.previous().from,
        to: f.range.to,
    };
    exact(ch, both, |p| periods_sql(f, p)).await
}

pub async fn top_merchants(
    ch: &clickhouse::Client,
    f: &Filter,
) -> Result<TopRow, clickhouse::error::Error> {
    let rows: Vec<TopRow> = exact(ch, f.range, |p| top_sql(f, p)).await?;
    rows.into_iter()
        .next()
        .ok_or(clickhouse::error::Error::RowNotFound)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Format, RawQuery};
    use time::macros::date;

    fn filter(merchants: &str) -> Filter {
        let q = RawQuery {
            from: Some("2026-08-15".into()),
            to: Some("2026-10-10".into()),
            currency: Some("EUR".into()),
            merchant_id: Some(merchants.into()),
            ..RawQuery::default()
        };
        let f = Filter::parse(&q, date!(2026 - 11 - 23), 366, Default::default()).unwrap();
        assert_eq!(f.format, Format::Json);
        f
    }

    fn plan(parts: &[(&str, usize, bool)]) -> Plan {
        Plan {
            dirty: parts
                .iter()
                .filter(|p| !p.2)
                .map(|p| p.0.parse().unwrap())
                .collect(),
            fingerprint: parts
                .iter()
                .map(|(p, n, _)| (p.to_string(), vec!["x".to_string(); *n]))
                .collect(),
        }
    }

    #[test]
    fn clean_partitions_are_read_without_final_and_the_rest_with_it() {
        let f = filter("");
        let clean = plan(&[
            ("202608", 1, true),
            ("202609", 1, true),
            ("202610", 1, true),
        ]);
        let sql = daily_sql(&f, &clean);
        assert!(!sql.text.contains("FINAL"), "{}", sql.text);
        assert_eq!(sql.args.len(), 3);

        let mixed = plan(&[
            ("202608", 1, true),
            ("202609", 1, true),
            ("202610", 4, false),
        ]);
        let sql = top_sql(&f, &mixed);
        assert!(
            sql.text
                .contains("NOT IN (202610) UNION ALL SELECT * FROM daily_revenue FINAL")
        );
        // limit, then the filter's three values once per branch.
        assert_eq!(sql.args.len(), 7);

        let dirty = plan(&[("202609", 2, false), ("202610", 3, false)]);
        let sql = daily_sql(&f, &dirty);
        assert!(
            sql.text.contains("FROM daily_revenue FINAL WHERE"),
            "{}",
            sql.text
        );
        assert!(!sql.text.contains("UNION"));
        let sql = daily_sql(&f, &Plan::all_final());
        assert!(
            sql.text.contains("FROM daily_revenue FINAL WHERE"),
            "{}",
            sql.text
        );
    }

    #[test]
    fn values_are_placeholders_in_the_text_and_escaped_when_inlined() {
        let f = filter("m-1,m.2");
        let sql = daily_sql(&f, &plan(&[]));
        assert!(!sql.text.contains("m-1") && !sql.text.contains("2026-08-15"));
        assert!(sql.text.contains("merchant_id IN (?, ?)"));
        let inlined = sql.inline();
        assert!(inlined.contains("day >= toDate('2026-08-15')"), "{inlined}");
        assert!(
            inlined.contains("merchant_id IN ('m-1', 'm.2')"),
            "{inlined}"
        );
        let tricky = Sql {
            text: "SELECT ?, ?".into(),
            args: vec![Arg::Str("it's \\ x".into()), Arg::UInt(7)],
        };
        assert_eq!(tricky.inline(), "SELECT 'it\\'s \\\\ x', 7");
    }

    #[test]
    fn the_summary_reads_both_periods() {
        let f = filter("");
        let sql = periods_sql(&f, &plan(&[]));
        let inlined = sql.inline();
        // 2026-08-15..2026-10-10 is 57 days; the period before starts 57 days earlier.
        assert!(
            inlined.contains("toUInt8(day >= toDate('2026-08-15'))"),
            "{inlined}"
        );
        assert!(inlined.contains("day >= toDate('2026-06-19')"), "{inlined}");
    }
}
