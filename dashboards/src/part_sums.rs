//! Sums of merged parts, kept in the dashboards process: per (currency,
//! day) for the daily and summary views, per (currency, ISO week, merchant)
//! for the ranking. Ranking 10 000 merchants over 90 days would otherwise
//! group 900 000 cells by merchant on every request (25-35 ms of ClickHouse
//! on 2 cores; added up from cached weeks it is about 1 ms), and the daily
//! view would sum them by day.
//!
//! Why it is exact: a ClickHouse part never changes once written. A merge,
//! a mutation or a replaced partition writes new parts under new names. So
//! the sums of one merged part, keyed by the part's name, stay right for as
//! long as that name is active. A read uses a part's sums only for days its
//! plan (`plan.rs`) says that part is the sole cover of, never a day read
//! with `FINAL`; the other days (ragged ends of a ranking's range, days
//! read with `FINAL`, parts not cached yet) are read live, and the plan's
//! before/after check covers the answer as a whole.
//!
//! Why a cache and not a rollup table: it costs the ingest and the rebuild
//! nothing and is no projection that could drift, and a miss only means
//! those days are read live, as they would be without it, so a cold cache
//! is never slower than no cache. A background task fills it (newest parts
//! first, within a row budget) and drops the parts that went.

use std::collections::{HashMap, HashSet};
use std::ops::AddAssign;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clickhouse::Row;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tally_domain::MerchantId;
use tally_ops::Shutdown;
use time::Date;

use crate::params::DayRange;
use crate::plan::Plan;
use crate::sums::{DailyRow, MerchantRow, TopRow, Wide};

/// The measures the ranking shows, of one merchant in one part and week,
/// as cached: 64 bits keep the cache small, and a part whose weekly sums
/// do not fit is not cached (its days are read live, in 128 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tot {
    pub net: i64,
    pub orders: i64,
    pub gross: i64,
}

/// [`Tot`]s added over parts, weeks and live days: in 128 bits, so no
/// range overflows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WideTot {
    pub net: Wide,
    pub orders: Wide,
    pub gross: Wide,
}

impl AddAssign<Tot> for WideTot {
    fn add_assign(&mut self, o: Tot) {
        self.net += Wide::from(o.net);
        self.orders += Wide::from(o.orders);
        self.gross += Wide::from(o.gross);
    }
}

impl AddAssign for WideTot {
    fn add_assign(&mut self, o: WideTot) {
        self.net += o.net;
        self.orders += o.orders;
        self.gross += o.gross;
    }
}

/// One (part, currency, week): merchants by number, with their sums.
type Week = Arc<[(u32, Tot)]>;

/// (currency, Monday).
type WeekKey = ([u8; 3], Date);

/// Merchant ids by number, so that adding up weeks is array arithmetic.
/// Only grows: it holds each merchant id seen once.
#[derive(Clone, Debug, Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 merchants");
        let name: Arc<str> = name.into();
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }
}

struct Cached {
    weeks: HashMap<WeekKey, Week>,
    /// Totals per (day, currency), in that order.
    days: Vec<DailyRow>,
    rows: usize,
}

#[derive(Default)]
struct State {
    names: Arc<Names>,
    parts: HashMap<String, Cached>,
    rows: usize,
    /// Parts that did not fit the budget: not filled again until something
    /// is dropped.
    too_big: HashSet<String>,
}

/// The cache's Prometheus metrics.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    pub parts: Gauge,
    pub rows: Gauge,
    pub fills: Counter,
    pub days_cached: Counter,
    pub days_live: Counter,
}

pub struct PartSums {
    state: Mutex<State>,
    budget_rows: usize,
    metrics: CacheMetrics,
}

/// Monday of `d`'s week (ClickHouse's `toMonday`).
pub fn monday(d: Date) -> Date {
    d - time::Duration::days(i64::from(d.weekday().number_days_from_monday()))
}

/// The days of `part` (`from..=to`) that `plan` lets the cache answer for,
/// one range per week: the part's days of that week, when they all lie in
/// the plan's range and none is read with `FINAL` (so this part is their
/// only cover).
fn usable_weeks(plan: &Plan, from: Date, to: Date) -> Vec<DayRange> {
    let range = plan.range();
    let mut out = Vec::new();
    let mut m = monday(from);
    while m <= to {
        let span = DayRange {
            from: m.max(from),
            to: (m + time::Duration::days(6)).min(to),
        };
        let inside = range.from <= span.from && span.to <= range.to;
        let clean = plan
            .needs_final()
            .iter()
            .all(|r| r.to < span.from || span.to < r.from);
        if inside && clean {
            out.push(span);
        }
        m += time::Duration::days(7);
    }
    out
}

/// The days of `part` (`from..=to`) within the plan's range that are not
/// read with `FINAL` (so this part is their only cover).
fn clean_days(plan: &Plan, from: Date, to: Date) -> Vec<DayRange> {
    let range = plan.range();
    let (mut from, to) = (from.max(range.from), to.min(range.to));
    let mut out = Vec::new();
    // `needs_final` is sorted and disjoint.
    for r in plan.needs_final() {
        if from > to {
            return out;
        }
        if r.to < from || to < r.from {
            continue;
        }
        if from < r.from {
            out.push(DayRange {
                from,
                to: r.from.previous_day().unwrap_or(r.from),
            });
        }
        match r.to.next_day() {
            Some(next) => from = next,
            None => return out,
        }
    }
    if from <= to {
        out.push(DayRange { from, to });
    }
    out
}

/// Sorts day ranges and joins adjacent ones.
fn joined(mut days: Vec<DayRange>) -> Vec<DayRange> {
    days.sort_by_key(|r| r.from);
    let mut out: Vec<DayRange> = Vec::with_capacity(days.len());
    for r in days {
        match out.last_mut() {
            Some(last) if last.to.next_day() == Some(r.from) => last.to = r.to,
            _ => out.push(r),
        }
    }
    out
}

/// What the cache can answer of per-day totals over one plan.
#[derive(Debug, Default)]
pub struct DayCover {
    /// One row per (day, currency) with cells, of the days answered.
    pub rows: Vec<DailyRow>,
    /// The days answered, sorted, adjacent ranges joined.
    pub days: Vec<DayRange>,
}

/// What the cache can answer of a ranking over one plan.
pub struct Cover {
    names: Arc<Names>,
    weeks: Vec<Week>,
    /// The days answered, sorted, adjacent ranges joined: the live query
    /// reads the range without them.
    pub days: Vec<DayRange>,
}

impl Cover {
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    pub fn days_count(&self) -> i64 {
        self.days.iter().map(|r| r.days()).sum()
    }

    /// The ranking: the cached weeks plus `live`, the per-merchant sums of
    /// the other days. Only merchants in `only` count, when it is given
    /// (the live rows are filtered already). Ties go to the smaller id, as
    /// in `plan::top_sql`.
    pub fn rank(&self, live: Vec<MerchantRow>, only: &[MerchantId], limit: usize) -> TopRow {
        let n = self.names.names.len();
        let mut acc = vec![WideTot::default(); n];
        let mut seen = vec![false; n];
        let allowed: Option<Vec<bool>> = (!only.is_empty()).then(|| {
            let mut a = vec![false; n];
            for m in only {
                if let Some(&i) = self.names.ids.get(m.as_str()) {
                    a[i as usize] = true;
                }
            }
            a
        });
        for week in &self.weeks {
            for &(i, t) in week.iter() {
                let i = i as usize;
                if allowed.as_ref().is_none_or(|a| a[i]) {
                    acc[i] += t;
                    seen[i] = true;
                }
            }
        }
        let mut others: HashMap<String, WideTot> = HashMap::new();
        for r in live {
            let t = WideTot {
                net: r.net,
                orders: r.orders,
                gross: r.gross,
            };
            match self.names.ids.get(r.merchant_id.as_str()) {
                Some(&i) => {
                    acc[i as usize] += t;
                    seen[i as usize] = true;
                }
                None => *others.entry(r.merchant_id).or_default() += t,
            }
        }
        let mut all: Vec<(&str, WideTot)> = seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| (&*self.names.names[i], acc[i]))
            .chain(others.iter().map(|(m, t)| (m.as_str(), *t)))
            .collect();
        let total_net_minor = all.iter().map(|(_, t)| t.net).sum();
        let merchants = all.len() as u64;
        let best_first = |a: &(&str, WideTot), b: &(&str, WideTot)| {
            b.1.net.cmp(&a.1.net).then_with(|| a.0.cmp(b.0))
        };
        if limit == 0 {
            all.clear();
        } else if all.len() > limit {
            all.select_nth_unstable_by(limit - 1, best_first);
            all.truncate(limit);
        }
        all.sort_by(best_first);
        TopRow {
            total_net_minor,
            merchants,
            top: all
                .into_iter()
                .map(|(m, t)| (m.to_owned(), t.net, t.orders, t.gross))
                .collect(),
        }
    }
}

#[derive(Row, Deserialize)]
struct ActivePart {
    name: String,
}

#[derive(Row, Deserialize)]
struct FillRow {
    currency: [u8; 3],
    #[serde(with = "clickhouse::serde::time::date")]
    monday: Date,
    merchant_id: String,
    #[serde(deserialize_with = "crate::sums::halves")]
    net: Wide,
    #[serde(deserialize_with = "crate::sums::halves")]
    orders: Wide,
    #[serde(deserialize_with = "crate::sums::halves")]
    gross: Wide,
}

/// What one refresh did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub filled: usize,
    pub dropped: usize,
    /// Parts left out because the budget is spent.
    pub over_budget: usize,
}

impl PartSums {
    /// A cache that holds at most `budget_rows` sums, 32 bytes or so each
    /// (nearly all of them (merchant, week) sums).
    pub fn new(budget_rows: usize, metrics: CacheMetrics) -> PartSums {
        PartSums {
            state: Mutex::new(State::default()),
            budget_rows,
            metrics,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that changes it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the cache holds for `currency` over `plan`'s range.
    pub fn cover(&self, plan: &Plan, currency: [u8; 3]) -> Cover {
        let st = self.state();
        let mut weeks = Vec::new();
        let mut days: Vec<DayRange> = Vec::new();
        for p in plan.parts() {
            let Some(cached) = st.parts.get(p.name.as_str()) else {
                continue;
            };
            for span in usable_weeks(plan, p.min_date, p.max_date) {
                if let Some(w) = cached.weeks.get(&(currency, monday(span.from))) {
                    weeks.push(w.clone());
                }
                days.push(span);
            }
        }
        let cover = Cover {
            names: st.names.clone(),
            weeks,
            days: joined(days),
        };
        self.count_days(plan, &cover.days);
        cover
    }

    /// What the cache holds of per-day totals over `plan`'s range, of one
    /// currency or of all.
    pub fn day_cover(&self, plan: &Plan, currency: Option<[u8; 3]>) -> DayCover {
        let st = self.state();
        let mut cover = DayCover::default();
        for p in plan.parts() {
            let Some(cached) = st.parts.get(p.name.as_str()) else {
                continue;
            };
            for span in clean_days(plan, p.min_date, p.max_date) {
                let from = cached.days.partition_point(|r| r.day < span.from);
                cover.rows.extend(
                    cached.days[from..]
                        .iter()
                        .take_while(|r| r.day <= span.to)
                        .filter(|r| currency.is_none_or(|c| r.currency == c)),
                );
                cover.days.push(span);
            }
        }
        cover.days = joined(cover.days);
        self.count_days(plan, &cover.days);
        cover
    }

    fn count_days(&self, plan: &Plan, cached: &[DayRange]) {
        let cached: i64 = cached.iter().map(|r| r.days()).sum();
        let live = plan.range().days() - cached;
        self.metrics
            .days_cached
            .inc_by(u64::try_from(cached).unwrap_or(0));
        self.metrics
            .days_live
            .inc_by(u64::try_from(live).unwrap_or(0));
    }

    /// Drops the parts that are no longer active and fills the merged
    /// parts with days since `since` that are not cached yet, newest
    /// first, while the budget lasts. Parts of a single day are left out:
    /// in practice today's, which the ingest's next insert makes dirty
    /// again at once, and one day is cheap to read live anyway.
    pub async fn refresh(
        &self,
        ch: &clickhouse::Client,
        since: Date,
    ) -> Result<Refreshed, clickhouse::error::Error> {
        let active: Vec<ActivePart> = ch
            .query(
                "SELECT name FROM system.parts \
                 WHERE database = currentDatabase() AND table = 'daily_revenue' AND active \
                   AND level > 0 AND max_date > min_date AND max_date >= toDate(?) \
                 ORDER BY max_date DESC, name",
            )
            .bind(since.to_string())
            .fetch_all()
            .await?;
        let mut done = Refreshed::default();
        let todo: Vec<String> = {
            let mut st = self.state();
            let keep: HashSet<&str> = active.iter().map(|p| p.name.as_str()).collect();
            let before = st.parts.len();
            st.parts.retain(|name, _| keep.contains(name.as_str()));
            done.dropped = before - st.parts.len();
            if done.dropped > 0 {
                st.too_big.clear();
            }
            st.too_big.retain(|name| keep.contains(name.as_str()));
            st.rows = st.parts.values().map(|c| c.rows).sum();
            self.publish(&st);
            active
                .iter()
                .filter(|p| !st.parts.contains_key(&p.name) && !st.too_big.contains(&p.name))
                .map(|p| p.name.clone())
                .collect()
        };
        for name in todo {
            match self.fill(ch, &name).await? {
                Fill::Done => done.filled += 1,
                Fill::Gone => {}
                Fill::OverBudget => done.over_budget += 1,
            }
        }
        Ok(done)
    }

    async fn fill(
        &self,
        ch: &clickhouse::Client,
        part: &str,
    ) -> Result<Fill, clickhouse::error::Error> {
        let rows: Vec<FillRow> = ch
            .query(&format!(
                "SELECT currency, toMonday(day) AS monday, merchant_id, {} \
                     FROM daily_revenue WHERE _part = ? \
                     GROUP BY currency, monday, merchant_id",
                crate::sums::merchant_sums()
            ))
            .bind(part)
            .fetch_all()
            .await?;
        let days: Vec<DailyRow> = ch
            .query(&format!(
                "SELECT day, currency, {} FROM daily_revenue WHERE _part = ? \
                 GROUP BY day, currency ORDER BY day, currency",
                crate::sums::sums(None)
            ))
            .bind(part)
            .fetch_all()
            .await?;
        // Listed before the queries and still active after them: active
        // when they started, so they read the whole part (a part that went
        // before would have given nothing).
        let active: u64 = ch
            .query(
                "SELECT count() FROM system.parts \
                 WHERE database = currentDatabase() AND table = 'daily_revenue' AND active AND name = ?",
            )
            .bind(part)
            .fetch_one()
            .await?;
        if active == 0 {
            return Ok(Fill::Gone);
        }
        let mut st = self.state();
        if st.parts.contains_key(part) {
            return Ok(Fill::Done);
        }
        if st.rows + rows.len() + days.len() > self.budget_rows {
            st.too_big.insert(part.to_owned());
            return Ok(Fill::OverBudget);
        }
        let narrow = |r: &FillRow| {
            Some(Tot {
                net: i64::try_from(r.net).ok()?,
                orders: i64::try_from(r.orders).ok()?,
                gross: i64::try_from(r.gross).ok()?,
            })
        };
        let Some(tots) = rows.iter().map(narrow).collect::<Option<Vec<Tot>>>() else {
            st.too_big.insert(part.to_owned());
            return Ok(Fill::OverBudget);
        };
        let n = rows.len() + days.len();
        let names = Arc::make_mut(&mut st.names);
        let mut weeks: HashMap<WeekKey, Vec<(u32, Tot)>> = HashMap::new();
        for (r, t) in rows.iter().zip(tots) {
            let id = names.id(&r.merchant_id);
            weeks
                .entry((r.currency, r.monday))
                .or_default()
                .push((id, t));
        }
        let weeks = weeks.into_iter().map(|(k, v)| (k, v.into())).collect();
        st.parts.insert(
            part.to_owned(),
            Cached {
                weeks,
                days,
                rows: n,
            },
        );
        st.rows += n;
        self.metrics.fills.inc();
        self.publish(&st);
        Ok(Fill::Done)
    }

    fn publish(&self, st: &State) {
        self.metrics.parts.set(st.parts.len() as i64);
        self.metrics.rows.set(st.rows as i64);
    }

    /// Refreshes every `every` until `shutdown`, for the parts a request
    /// may ask for (the last `max_span_days`).
    pub async fn keep_warm(
        &self,
        replicas: std::sync::Arc<tally_ops::Replicas>,
        max_span_days: i64,
        every: Duration,
        shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let since = time::OffsetDateTime::now_utc().date()
                - time::Duration::days(max_span_days.saturating_sub(1));
            // Parts are named alike on every replica: sums taken from one
            // serve reads of another.
            match self.refresh(&replicas.current().client, since).await {
                Ok(r) => {
                    if failing {
                        tracing::info!("part sums refreshing again");
                    }
                    failing = false;
                    if r.filled + r.dropped > 0 {
                        tracing::debug!(?r, "part sums refreshed");
                    }
                    if r.over_budget > 0 {
                        tracing::warn!(
                            parts = r.over_budget,
                            budget_rows = self.budget_rows,
                            "the sums of some parts do not fit the cache; their days are read live \
                             (raise TALLY_DASHBOARDS_CACHE_ROWS, 32 bytes a row)"
                        );
                    }
                }
                // A ClickHouse outage shows in /readyz; say it once here.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "refreshing the part sums failed; every day is read live meanwhile");
                }
                Err(_) => {}
            }
        }
    }
}

enum Fill {
    Done,
    Gone,
    OverBudget,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Part;
    use time::macros::date;

    fn r(from: Date, to: Date) -> DayRange {
        DayRange { from, to }
    }

    #[test]
    fn monday_is_the_start_of_the_iso_week() {
        assert_eq!(monday(date!(2026 - 11 - 23)), date!(2026 - 11 - 23));
        assert_eq!(monday(date!(2026 - 11 - 29)), date!(2026 - 11 - 23));
        assert_eq!(monday(date!(2026 - 11 - 01)), date!(2026 - 10 - 26));
    }

    #[test]
    fn only_whole_clean_weeks_inside_the_range_are_usable() {
        // October 2026 starts on a Thursday. The range cuts its first and
        // last weeks; Oct 20 is covered by a second part, so its week is
        // read live.
        let month = Part::new("m", 1, date!(2026 - 10 - 01), date!(2026 - 10 - 31));
        let late = Part::new("l", 0, date!(2026 - 10 - 20), date!(2026 - 10 - 20));
        let plan = Plan::new(
            vec![month.clone(), late],
            r(date!(2026 - 10 - 02), date!(2026 - 10 - 30)),
        );
        assert_eq!(
            usable_weeks(&plan, month.min_date, month.max_date),
            [
                r(date!(2026 - 10 - 05), date!(2026 - 10 - 11)),
                r(date!(2026 - 10 - 12), date!(2026 - 10 - 18)),
            ]
        );
        // The part's own first days form a week fragment of their own: the
        // part holds nothing of September.
        let plan = Plan::new(
            vec![month.clone()],
            r(date!(2026 - 09 - 20), date!(2026 - 11 - 10)),
        );
        let weeks = usable_weeks(&plan, month.min_date, month.max_date);
        assert_eq!(
            weeks.first(),
            Some(&r(date!(2026 - 10 - 01), date!(2026 - 10 - 04)))
        );
        assert_eq!(
            weeks.last(),
            Some(&r(date!(2026 - 10 - 26), date!(2026 - 10 - 31)))
        );
        assert_eq!(weeks.len(), 5);
    }

    #[test]
    fn clean_days_are_the_parts_days_in_range_without_final_ones() {
        let month = Part::new("m", 1, date!(2026 - 10 - 01), date!(2026 - 10 - 31));
        let late = |from, to| Part::new("l", 0, from, to);
        let range = r(date!(2026 - 09 - 20), date!(2026 - 10 - 25));
        let plan = |extra: &[Part]| {
            let mut parts = vec![month.clone()];
            parts.extend_from_slice(extra);
            Plan::new(parts, range)
        };
        let days = |p: &Plan| clean_days(p, month.min_date, month.max_date);
        // Clipped to the range.
        assert_eq!(
            days(&plan(&[])),
            [r(date!(2026 - 10 - 01), date!(2026 - 10 - 25))]
        );
        // Holes where a second part overlaps, at the start, inside and at
        // the end.
        let p = plan(&[
            late(date!(2026 - 10 - 01), date!(2026 - 10 - 01)),
            late(date!(2026 - 10 - 10), date!(2026 - 10 - 12)),
            late(date!(2026 - 10 - 25), date!(2026 - 10 - 25)),
        ]);
        assert_eq!(
            days(&p),
            [
                r(date!(2026 - 10 - 02), date!(2026 - 10 - 09)),
                r(date!(2026 - 10 - 13), date!(2026 - 10 - 24)),
            ]
        );
        // Everything read with FINAL: nothing.
        let p = plan(&[late(date!(2026 - 09 - 01), date!(2026 - 10 - 31))]);
        assert_eq!(days(&p), []);
        // Joined when adjacent, across parts.
        assert_eq!(
            joined(vec![
                r(date!(2026 - 10 - 13), date!(2026 - 10 - 24)),
                r(date!(2026 - 10 - 02), date!(2026 - 10 - 12)),
                r(date!(2026 - 10 - 26), date!(2026 - 10 - 27)),
            ]),
            [
                r(date!(2026 - 10 - 02), date!(2026 - 10 - 24)),
                r(date!(2026 - 10 - 26), date!(2026 - 10 - 27)),
            ]
        );
    }

    fn names(ids: &[&str]) -> Arc<Names> {
        let mut n = Names::default();
        for id in ids {
            n.id(id);
        }
        Arc::new(n)
    }

    fn tot(net: i64) -> Tot {
        Tot {
            net,
            orders: 1,
            gross: net + 1,
        }
    }

    fn live(m: &str, net: i64) -> MerchantRow {
        MerchantRow {
            merchant_id: m.into(),
            net: net.into(),
            orders: 1,
            gross: Wide::from(net) + 1,
        }
    }

    #[test]
    fn the_ranking_adds_cached_weeks_and_live_rows_and_breaks_ties_by_id() {
        let cover = Cover {
            names: names(&["m-a", "m-b", "m-c", "m-d"]),
            weeks: vec![
                Arc::from(vec![(0, tot(100)), (1, tot(50))]),
                Arc::from(vec![(1, tot(50)), (2, tot(-5))]),
            ],
            days: vec![],
        };
        // m-d never seen: not counted; m-e only live.
        let top = cover.rank(vec![live("m-c", 105), live("m-e", 7)], &[], 10);
        assert_eq!(top.total_net_minor, 100 + 100 + 100 + 7);
        assert_eq!(top.merchants, 4);
        assert_eq!(
            top.top,
            [
                ("m-a".to_owned(), 100, 1, 101),
                ("m-b".to_owned(), 100, 2, 102),
                ("m-c".to_owned(), 100, 2, 102),
                ("m-e".to_owned(), 7, 1, 8),
            ]
        );
        let two = cover.rank(vec![live("m-c", 105), live("m-e", 7)], &[], 2);
        assert_eq!(two.merchants, 4);
        assert_eq!(
            two.top.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["m-a", "m-b"]
        );
        assert!(cover.rank(vec![], &[], 0).top.is_empty());
        // A merchant filter applies to the cached weeks.
        let only = [
            MerchantId::parse("m-b").unwrap(),
            MerchantId::parse("m-x").unwrap(),
        ];
        let b = cover.rank(vec![], &only, 10);
        assert_eq!((b.total_net_minor, b.merchants), (100, 1));
    }
}
