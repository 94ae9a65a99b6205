//! The read endpoints' queries, run so that the answer is exact (the plan
//! and its SQL: `plan.rs`; cached sums of merged parts: `part_sums.rs`).
//!
//! The parts are looked up before the query and again after it. Parts are
//! never renamed or reused, and a part only goes when something that covers
//! its days takes its place (a merge, a mutation, a partition replaced), so
//! a day whose covering parts all stayed put through both lookups was
//! covered by exactly those parts while the query ran. If every part that
//! appeared or went in between covers only days read with `FINAL` anyway
//! (in practice: the ingest's new parts for today), the answer stands;
//! otherwise it is discarded and the query runs again (after three tries,
//! with `FINAL` throughout).

use std::future::Future;

use tally_domain::Currency;

use crate::params::{DayRange, Filter};
use crate::part_sums::{DayCover, PartSums};
pub use crate::plan::{Arg, Plan, Sql, daily_sql, merchants_sql, periods_sql, plan, top_sql};
pub use crate::sums::{DailyRow, MerchantRow, PeriodRow, Sums, TopRow, Wide};

/// Runs `read` with the current plan of `range` until the plan still holds
/// after it ran (see the module docs); after three tries, with `FINAL`
/// throughout.
async fn exact<T, F, Fut>(
    ch: &clickhouse::Client,
    stats: &ReadStats,
    range: DayRange,
    read: F,
) -> Result<T, clickhouse::error::Error>
where
    F: Fn(Plan) -> Fut,
    Fut: Future<Output = Result<T, clickhouse::error::Error>>,
{
    for _ in 0..3 {
        let before = plan(ch, range).await?;
        let out = read(before.clone()).await?;
        if before.still_holds(&plan(ch, range).await?) {
            return Ok(out);
        }
        stats.retries.inc();
        tracing::debug!("daily_revenue parts changed during a read; reading again");
    }
    stats.fallbacks.inc();
    read(Plan::all_final(range)).await
}

/// How often reads had to be repeated because parts changed underneath,
/// and how often they gave up and read everything with `FINAL` (slow).
#[derive(Clone, Debug, Default)]
pub struct ReadStats {
    pub retries: prometheus_client::metrics::counter::Counter,
    pub fallbacks: prometheus_client::metrics::counter::Counter,
}

/// The live half of a read the cache answers in part: the rows of `sql`,
/// or none when the cached days are the whole of the plan's range.
async fn live_rows<T>(
    ch: &clickhouse::Client,
    plan: &Plan,
    cached: &[DayRange],
    sql: impl FnOnce() -> Sql,
) -> Result<Vec<T>, clickhouse::error::Error>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    if cached == [plan.range()] {
        return Ok(Vec::new());
    }
    sql().query(ch).fetch_all().await
}

/// Per day and currency: cached totals for the days merged parts alone
/// cover, a live read of the others. With a merchant filter, all live.
pub async fn daily(
    ch: &clickhouse::Client,
    stats: &ReadStats,
    cache: &PartSums,
    f: &Filter,
) -> Result<Vec<DailyRow>, clickhouse::error::Error> {
    exact(ch, stats, f.range, |p| async move {
        let cover = day_cover(cache, &p, f);
        let mut rows: Vec<DailyRow> =
            live_rows(ch, &p, &cover.days, || daily_sql(f, &p, &cover.days)).await?;
        if !cover.rows.is_empty() {
            rows.extend(cover.rows);
            rows.sort_by_key(|r| (r.day, r.currency));
        }
        Ok(rows)
    })
    .await
}

/// The cached part of a daily or summary read: none with a merchant filter
/// (the cache holds totals over all merchants).
fn day_cover(cache: &PartSums, plan: &Plan, f: &Filter) -> DayCover {
    if f.merchants.is_empty() {
        cache.day_cover(plan, f.currency.map(|c| c.code_bytes()))
    } else {
        DayCover::default()
    }
}

/// Totals per currency of the range and of the period before it, from
/// cached day totals and a live read, as [`daily`].
pub async fn periods(
    ch: &clickhouse::Client,
    stats: &ReadStats,
    cache: &PartSums,
    f: &Filter,
) -> Result<Vec<PeriodRow>, clickhouse::error::Error> {
    exact(ch, stats, f.range.with_previous(), |p| async move {
        let cover = day_cover(cache, &p, f);
        let live: Vec<PeriodRow> =
            live_rows(ch, &p, &cover.days, || periods_sql(f, &p, &cover.days)).await?;
        if cover.rows.is_empty() {
            return Ok(live);
        }
        let mut by: std::collections::BTreeMap<[u8; 3], (Sums, Sums)> = live
            .into_iter()
            .map(|r| (r.currency, (r.current, r.previous)))
            .collect();
        for r in cover.rows {
            let (current, previous) = by.entry(r.currency).or_default();
            if r.day >= f.range.from {
                *current += r.sums;
            } else {
                *previous += r.sums;
            }
        }
        Ok(by
            .into_iter()
            .map(|(currency, (current, previous))| PeriodRow {
                currency,
                current,
                previous,
            })
            .collect())
    })
    .await
}

/// The ranking of `f`'s currency: from the cached weeks of merged parts
/// plus a live read of the other days, or wholly live when nothing of the
/// range is cached.
pub async fn top_merchants(
    ch: &clickhouse::Client,
    stats: &ReadStats,
    cache: &PartSums,
    f: &Filter,
) -> Result<TopRow, clickhouse::error::Error> {
    exact(ch, stats, f.range, |p| async move {
        // Rankings always have a currency; without one, read live.
        let cover = f.currency.map(|c| cache.cover(&p, c.code_bytes()));
        let Some(cover) = cover.filter(|c| !c.is_empty()) else {
            return top_sql(f, &p).query(ch).fetch_one::<TopRow>().await;
        };
        let live: Vec<MerchantRow> =
            live_rows(ch, &p, &cover.days, || merchants_sql(f, &p, &cover.days)).await?;
        Ok(cover.rank(live, &f.merchants, f.limit as usize))
    })
    .await
}

/// The currency of a row, as stored. Rows are written by the ingest from
/// parsed [`Currency`] values, so a code that does not parse means the
/// table was written by something else.
pub fn currency(code: [u8; 3]) -> Result<Currency, String> {
    let s = String::from_utf8_lossy(&code);
    Currency::parse(&s).map_err(|_| format!("unknown currency `{s}` in daily_revenue"))
}
