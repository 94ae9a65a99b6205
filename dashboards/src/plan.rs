//! How a range of days is read exactly: the SQL behind each read endpoint
//! and the plan that says which days need `FINAL`.
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
//! `FINAL` merges at read time, but on 18.16 it costs 5-10× the scan. A day
//! covered by a single merged part has one row per cell (a merge keeps the
//! newest version of each key), so it can be read without `FINAL`; only
//! days covered by two or more parts, or by a part never merged (in
//! practice: today's, which the ingest rewrites all day), are read with it.
//! `system.parts` gives each part's first and last day.

use std::collections::HashSet;

use clickhouse::Row;
use serde::Deserialize;
use time::Date;

use crate::params::{DayRange, Filter};
use crate::sums::{merchant_sums, sums};

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

    pub(crate) fn query(&self, ch: &clickhouse::Client) -> clickhouse::query::Query {
        self.args.iter().fold(ch.query(&self.text), |q, a| match a {
            Arg::Str(s) => q.bind(s.as_str()),
            Arg::UInt(n) => q.bind(*n),
        })
    }

    /// The statement with its values written in, by the client's own
    /// escaping: what the benchmark hands to `clickhouse-client`.
    pub fn inline(&self) -> String {
        self.query(&clickhouse::Client::default())
            .sql_display()
            .to_string()
    }
}

/// Which days of a range must be read with `FINAL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    range: DayRange,
    /// Disjoint, sorted day ranges where a cell may have more than one row:
    /// days covered by two or more parts, or by a part never merged.
    /// Adjacent ranges are joined.
    needs_final: Vec<DayRange>,
    /// Every active part overlapping the range, to detect a change.
    parts: Vec<Part>,
}

impl Plan {
    pub(crate) fn new(parts: Vec<Part>, range: DayRange) -> Plan {
        Plan {
            range,
            needs_final: days_needing_final(&parts, range),
            parts,
        }
    }

    /// Everything with `FINAL` (the fallback).
    pub(crate) fn all_final(range: DayRange) -> Plan {
        Plan {
            range,
            needs_final: vec![range],
            parts: Vec::new(),
        }
    }

    pub(crate) fn range(&self) -> DayRange {
        self.range
    }

    pub(crate) fn needs_final(&self) -> &[DayRange] {
        &self.needs_final
    }

    pub(crate) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// How many days of the range are read with `FINAL`.
    pub fn final_days(&self) -> i64 {
        self.needs_final.iter().map(|r| r.days()).sum()
    }

    /// Whether every day of `p` within the range is read with `FINAL`.
    fn read_with_final(&self, p: &Part) -> bool {
        let (from, to) = (
            p.min_date.max(self.range.from),
            p.max_date.min(self.range.to),
        );
        from > to
            || self
                .needs_final
                .iter()
                .any(|r| r.from <= from && to <= r.to)
    }

    /// Whether a query run with this plan read what it assumed, given the
    /// parts found after it (see the module docs): every part that appeared
    /// or went in between covers only days read with `FINAL`.
    pub fn still_holds(&self, after: &Plan) -> bool {
        let before: HashSet<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
        let now: HashSet<&str> = after.parts.iter().map(|p| p.name.as_str()).collect();
        self.parts
            .iter()
            .filter(|p| !now.contains(p.name.as_str()))
            .chain(
                after
                    .parts
                    .iter()
                    .filter(|p| !before.contains(p.name.as_str())),
            )
            .all(|p| self.read_with_final(p))
    }
}

#[derive(Row, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) level: u32,
    #[serde(with = "clickhouse::serde::time::date")]
    pub(crate) min_date: Date,
    #[serde(with = "clickhouse::serde::time::date")]
    pub(crate) max_date: Date,
}

impl Part {
    #[cfg(test)]
    pub(crate) fn new(name: &str, level: u32, min_date: Date, max_date: Date) -> Part {
        Part {
            name: name.into(),
            level,
            min_date,
            max_date,
        }
    }
}

/// The days of `range` that `parts` may hold several rows of a cell for.
fn days_needing_final(parts: &[Part], range: DayRange) -> Vec<DayRange> {
    // A sweep over part boundaries: +1 where a part starts, -1 after it
    // ends; a level-0 part counts twice (it may hold duplicates alone).
    // Only "level > 0 holds no key twice" is relied on, which is true of a
    // merge's output on every version and of an insert collapsed by
    // `optimize_on_insert` (21.1+); a level-0 part that happens to hold no
    // duplicates is merely read with FINAL when it need not be.
    let mut edges: Vec<(Date, i32)> = Vec::new();
    for p in parts {
        let (from, to) = (p.min_date.max(range.from), p.max_date.min(range.to));
        if from > to {
            continue;
        }
        let weight = if p.level == 0 { 2 } else { 1 };
        edges.push((from, weight));
        if let Some(after) = to.next_day() {
            edges.push((after, -weight));
        }
    }
    edges.sort();
    let mut out: Vec<DayRange> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < edges.len() {
        let day = edges[i].0;
        while i < edges.len() && edges[i].0 == day {
            depth += edges[i].1;
            i += 1;
        }
        let end = edges
            .get(i)
            .and_then(|e| e.0.previous_day())
            .unwrap_or(range.to);
        if depth >= 2 && day <= end {
            match out.last_mut() {
                Some(last) if last.to.next_day() == Some(day) => last.to = end,
                _ => out.push(DayRange { from: day, to: end }),
            }
        }
    }
    out
}

/// Looks up the active parts that overlap `range` and plans which of its
/// days need `FINAL`.
pub async fn plan(
    ch: &clickhouse::Client,
    range: DayRange,
) -> Result<Plan, clickhouse::error::Error> {
    let parts: Vec<Part> = ch
        .query(
            "SELECT name, level, min_date, max_date FROM system.parts \
             WHERE database = currentDatabase() AND table = 'daily_revenue' AND active \
               AND max_date >= toDate(?) AND min_date <= toDate(?) \
             ORDER BY name",
        )
        .bind(range.from.to_string())
        .bind(range.to.to_string())
        .fetch_all()
        .await?;
    Ok(Plan::new(parts, range))
}

/// Appends `day >= ? AND day <= ?` for `r`.
fn day_between(sql: &mut Sql, r: DayRange) {
    sql.push("day >= toDate(")
        .str(r.from.to_string())
        .push(") AND day <= toDate(")
        .str(r.to.to_string())
        .push(")");
}

/// Appends the `WHERE` conditions of the filter over `range`, without the
/// days of `skip`.
fn conditions(sql: &mut Sql, f: &Filter, range: DayRange, skip: &[DayRange]) {
    sql.push(" WHERE ");
    day_between(sql, range);
    if !skip.is_empty() {
        sql.push(" AND NOT ");
        days_in(sql, skip);
    }
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

/// Appends `(day >= ? AND day <= ?) OR …` for `ranges`.
fn days_in(sql: &mut Sql, ranges: &[DayRange]) {
    sql.push("(");
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        day_between(sql, *r);
        sql.push(")");
    }
    sql.push(")");
}

/// Appends the rows of `daily_revenue` that the filter selects over `range`
/// but for the days of `skip`, one row per cell: a table expression for
/// `FROM`.
fn source(sql: &mut Sql, f: &Filter, range: DayRange, skip: &[DayRange], plan: &Plan) {
    let whole = plan
        .needs_final
        .first()
        .is_some_and(|r| r.from <= range.from && r.to >= range.to);
    if whole {
        sql.push("daily_revenue FINAL");
        conditions(sql, f, range, skip);
    } else if plan.needs_final.is_empty() {
        sql.push("daily_revenue");
        conditions(sql, f, range, skip);
    } else {
        sql.push("(SELECT * FROM daily_revenue");
        conditions(sql, f, range, skip);
        sql.push(" AND NOT ");
        days_in(sql, &plan.needs_final);
        sql.push(" UNION ALL SELECT * FROM daily_revenue FINAL");
        conditions(sql, f, range, skip);
        sql.push(" AND ");
        days_in(sql, &plan.needs_final);
        sql.push(")");
    }
}

/// Sums per day and currency, but for the days of `skip`.
pub fn daily_sql(f: &Filter, plan: &Plan, skip: &[DayRange]) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT day, currency, {} FROM ", sums(None)));
    source(&mut sql, f, f.range, skip, plan);
    sql.push(" GROUP BY day, currency ORDER BY day, currency");
    sql
}

/// Totals per currency for the filter's range and the period before it, in
/// one scan, but for the days of `skip`.
pub fn periods_sql(f: &Filter, plan: &Plan, skip: &[DayRange]) -> Sql {
    let mut sql = Sql::default();
    sql.push("WITH toDate(")
        .str(f.range.from.to_string())
        .push(&format!(
            ") AS split SELECT currency, {}, {} FROM ",
            sums(Some("day >= split")),
            sums(Some("day < split"))
        ));
    source(&mut sql, f, f.range.with_previous(), skip, plan);
    sql.push(" GROUP BY currency ORDER BY currency");
    sql
}

/// The `limit` merchants with the highest net revenue in one currency, and
/// the currency's total over all merchants, in one scan. Ties are broken by
/// merchant id so that the order is stable.
pub fn top_sql(f: &Filter, plan: &Plan) -> Sql {
    let mut sql = Sql::default();
    // Ranked by net as a float (exact below 2^53 minor units, where any two
    // nets compare as they should); every figure sent is exact.
    sql.push("SELECT sum(net_hi), sum(net_lo), count(), arraySlice(arraySort(m -> (-(toFloat64(m.2) * 4294967296 + toFloat64(m.3)), m.1), groupArray((merchant_id, net_hi, net_lo, orders_hi, orders_lo, gross_hi, gross_lo))), 1, ")
        .arg(Arg::UInt(f.limit.into()))
        .push(&format!(") FROM (SELECT merchant_id, {} FROM ", merchant_sums()));
    source(&mut sql, f, f.range, &[], plan);
    sql.push(" GROUP BY merchant_id)");
    sql
}

/// Per-merchant sums of the days the cached weeks do not answer: the
/// live half of a cached ranking.
pub fn merchants_sql(f: &Filter, plan: &Plan, skip: &[DayRange]) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT merchant_id, {} FROM ", merchant_sums()));
    source(&mut sql, f, f.range, skip, plan);
    sql.push(" GROUP BY merchant_id");
    sql
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

    fn part(name: &str, level: u32, from: Date, to: Date) -> Part {
        Part {
            name: name.into(),
            level,
            min_date: from,
            max_date: to,
        }
    }

    fn range(from: Date, to: Date) -> DayRange {
        DayRange { from, to }
    }

    fn planned(parts: &[Part], r: DayRange) -> Plan {
        Plan::new(parts.to_vec(), r)
    }

    #[test]
    fn only_days_that_two_parts_or_an_unmerged_part_cover_need_final() {
        let r = range(date!(2026 - 08 - 15), date!(2026 - 10 - 10));
        // One merged part per month: nothing to merge at read time.
        let merged = [
            part("a", 1, date!(2026 - 08 - 01), date!(2026 - 08 - 31)),
            part("b", 3, date!(2026 - 09 - 01), date!(2026 - 09 - 30)),
            part("c", 2, date!(2026 - 10 - 01), date!(2026 - 10 - 09)),
        ];
        assert_eq!(days_needing_final(&merged, r), []);
        // Today's part, never merged, beside the month's merged part.
        let mut today = merged.to_vec();
        today.push(part("d", 0, date!(2026 - 10 - 10), date!(2026 - 10 - 10)));
        assert_eq!(
            days_needing_final(&today, r),
            [range(date!(2026 - 10 - 10), date!(2026 - 10 - 10))]
        );
        // Two merged parts overlapping: their common days, clipped to the range.
        let overlap = [
            part("a", 1, date!(2026 - 08 - 01), date!(2026 - 08 - 31)),
            part("e", 1, date!(2026 - 08 - 10), date!(2026 - 08 - 20)),
            part("f", 1, date!(2026 - 08 - 20), date!(2026 - 08 - 25)),
        ];
        assert_eq!(
            days_needing_final(&overlap, r),
            [range(date!(2026 - 08 - 15), date!(2026 - 08 - 25))]
        );
        // An unmerged part alone may hold duplicates of its own.
        let alone = [part("g", 0, date!(2026 - 09 - 05), date!(2026 - 09 - 06))];
        assert_eq!(
            days_needing_final(&alone, r),
            [range(date!(2026 - 09 - 05), date!(2026 - 09 - 06))]
        );
    }

    #[test]
    fn a_plan_survives_new_parts_only_where_it_read_with_final() {
        let r = range(date!(2026 - 11 - 01), date!(2026 - 11 - 23));
        let month = part("m1", 3, date!(2026 - 11 - 01), date!(2026 - 11 - 22));
        let today = part("t1", 0, date!(2026 - 11 - 23), date!(2026 - 11 - 23));
        let plan = planned(&[month.clone(), today.clone()], r);
        assert_eq!(
            plan.needs_final,
            [range(date!(2026 - 11 - 23), date!(2026 - 11 - 23))]
        );
        let with = |extra: &[Part], without: &[&str]| {
            let mut parts: Vec<Part> = [month.clone(), today.clone()]
                .into_iter()
                .filter(|p| !without.contains(&p.name.as_str()))
                .collect();
            parts.extend_from_slice(extra);
            planned(&parts, r)
        };
        // Nothing changed.
        assert!(plan.still_holds(&with(&[], &[])));
        // The ingest wrote today again; today was read with FINAL.
        let t2 = part("t2", 0, date!(2026 - 11 - 23), date!(2026 - 11 - 23));
        assert!(plan.still_holds(&with(std::slice::from_ref(&t2), &[])));
        // Today's parts merged together: still only today.
        let t12 = part("t1_2", 1, date!(2026 - 11 - 23), date!(2026 - 11 - 23));
        assert!(plan.still_holds(&with(&[t12], &["t1"])));
        // A late write to a day read without FINAL: the answer may count a
        // cell twice.
        let late = part("l1", 0, date!(2026 - 11 - 05), date!(2026 - 11 - 05));
        assert!(!plan.still_holds(&with(&[late], &[])));
        // The month merged with today: its days changed parts.
        let merged = part("m1_t1", 4, date!(2026 - 11 - 01), date!(2026 - 11 - 23));
        assert!(!plan.still_holds(&with(&[merged], &["m1", "t1"])));
        // The month's part went (a partition replaced or dropped).
        assert!(!plan.still_holds(&with(&[], &["m1"])));
        // A part outside the range changes nothing here.
        let october = part("o1", 0, date!(2026 - 10 - 30), date!(2026 - 10 - 31));
        assert!(plan.still_holds(&with(&[october], &[])));
        // When today was clean at planning time, its new part is not
        // covered by FINAL: read again.
        let clean = planned(
            &[
                month.clone(),
                part("t0", 1, date!(2026 - 11 - 23), date!(2026 - 11 - 23)),
            ],
            r,
        );
        assert!(clean.needs_final.is_empty());
        let mut later = clean.parts.clone();
        later.push(t2);
        assert!(!clean.still_holds(&planned(&later, r)));
    }

    #[test]
    fn clean_days_are_read_without_final_and_the_rest_with_it() {
        let f = filter("");
        let r = f.range;
        let clean = planned(
            &[part("a", 1, date!(2026 - 08 - 01), date!(2026 - 10 - 31))],
            r,
        );
        let sql = daily_sql(&f, &clean, &[]);
        assert!(!sql.text.contains("FINAL"), "{}", sql.text);
        assert_eq!(sql.args.len(), 3);

        let mixed = planned(
            &[
                part("a", 1, date!(2026 - 08 - 01), date!(2026 - 10 - 31)),
                part("b", 0, date!(2026 - 10 - 10), date!(2026 - 10 - 10)),
            ],
            r,
        );
        let sql = top_sql(&f, &mixed);
        assert!(
            sql.text
                .contains("UNION ALL SELECT * FROM daily_revenue FINAL"),
            "{}",
            sql.text
        );
        // limit; then per branch the filter's three values and one day range.
        assert_eq!(sql.args.len(), 1 + 2 * (3 + 2));
        assert!(
            sql.inline().contains(
                "AND NOT ((day >= toDate('2026-10-10') AND day <= toDate('2026-10-10')))"
            )
        );

        let dirty = planned(
            &[part("a", 0, date!(2026 - 08 - 01), date!(2026 - 10 - 31))],
            r,
        );
        let sql = daily_sql(&f, &dirty, &[]);
        assert!(
            sql.text.contains("FROM daily_revenue FINAL WHERE"),
            "{}",
            sql.text
        );
        assert!(!sql.text.contains("UNION"));
        let sql = daily_sql(&f, &Plan::all_final(f.range), &[]);
        assert!(
            sql.text.contains("FROM daily_revenue FINAL WHERE"),
            "{}",
            sql.text
        );
    }

    #[test]
    fn values_are_placeholders_in_the_text_and_escaped_when_inlined() {
        let f = filter("m-1,m.2");
        let sql = daily_sql(&f, &planned(&[], f.range), &[]);
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
        let sql = periods_sql(&f, &planned(&[], f.range), &[]);
        let inlined = sql.inline();
        // 2026-08-15..2026-10-10 is 57 days; the period before starts 57 days earlier.
        assert!(
            inlined.contains("WITH toDate('2026-08-15') AS split"),
            "{inlined}"
        );
        assert!(inlined.contains("day >= toDate('2026-06-19')"), "{inlined}");
    }
}
