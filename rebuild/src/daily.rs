//! Daily cells, shadow against frozen, a range of days at a time: the
//! cells' counterpart of `facts.rs`. Also the one conversion of cell rows
//! into comparison frames, which reconciliation uses too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use sqlx::PgPool;
use tally_domain::DailyMeasures;
use tally_projection::insert_rows;
use tally_projection::rows::DailyRow;
use tally_projection::totals::{TotalsRow, totals_columns};
use time::Date;
use tokio_util::task::AbortOnDropHandle;

use crate::RebuildError;
use crate::cells::SortedCells;
use crate::compare::{
    ColumnKind, ColumnSpec, Frame, FrameBuilder, Sink, TableDrift, compare_chunk,
};
use crate::options::RunOptions;
use crate::pipeline::Pipelined;
use crate::progress::Progress;
use crate::tables::Copy;

/// The measures as compared: amounts (`*_minor`) count as money in the
/// drift per currency, the rest as counts.
pub(crate) static DAILY_SPECS: LazyLock<[ColumnSpec; DailyMeasures::COUNT]> = LazyLock::new(|| {
    DailyMeasures::NAMES.map(|name| {
        let kind = if name.ends_with("_minor") {
            ColumnKind::Money
        } else {
            ColumnKind::Count
        };
        ColumnSpec::new(name, kind)
    })
});

pub(crate) fn daily_frame<'a>(
    rows: impl ExactSizeIterator<Item = &'a DailyRow>,
) -> Result<Frame, RebuildError> {
    let mut f = FrameBuilder::new(&*DAILY_SPECS, rows.len());
    let mut key = String::new();
    for r in rows {
        let m = r.measures();
        if m.is_zero() {
            continue;
        }
        let cur = std::str::from_utf8(&r.currency).unwrap_or("???");
        key.clear();
        let _ = write!(key, "{}/{}/{cur}", r.day, r.merchant_id);
        let row = f.row(&key, cur);
        for v in m.values() {
            row.int(v);
        }
    }
    Ok(f.finish()?)
}

pub(crate) async fn compare_daily_rows(
    expected: &[DailyRow],
    live: &[DailyRow],
    totals: &mut TableDrift,
    sink: &mut Sink<'_>,
) -> Result<(), RebuildError> {
    compare_chunk(
        "daily_revenue",
        &*DAILY_SPECS,
        daily_frame(expected.iter())?,
        daily_frame(live.iter())?,
        totals,
        sink,
    )
    .await
}

/// Day ranges holding at most about `limit` cells on either side.
fn day_ranges(counts: &BTreeMap<Date, u64>, limit: u64) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let mut current: Option<(Date, Date, u64)> = None;
    for (&day, &n) in counts {
        current = match current {
            Some((from, _, acc)) if acc + n <= limit => Some((from, day, acc + n)),
            Some((from, to, _)) => {
                out.push((from, to));
                Some((day, day, n))
            }
            None => Some((day, day, n)),
        };
    }
    if let Some((from, to, _)) = current {
        out.push((from, to));
    }
    out
}

/// Writes the cells into the shadow table and compares them with the
/// frozen live cells, a range of days at a time. The cells come from
/// `sorted` when the pass kept them in memory, else from `rebuild_cells`.
pub(crate) async fn compare(
    pool: &PgPool,
    ch: &clickhouse::Client,
    opts: &RunOptions,
    sorted: Option<Arc<SortedCells>>,
    sink: &mut Sink<'_>,
) -> Result<TableDrift, RebuildError> {
    let frozen = Copy::Frozen.of("daily_revenue");
    let shadow = Copy::Shadow.of("daily_revenue");
    let mut counts: BTreeMap<Date, u64> = match &sorted {
        Some(s) => s.day_counts(),
        None => {
            let pg: Vec<(Date, i64)> =
                sqlx::query_as("SELECT day, count(*) FROM rebuild_cells GROUP BY day")
                    .fetch_all(pool)
                    .await?;
            pg.into_iter().map(|(d, n)| (d, n as u64)).collect()
        }
    };
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct DayCount {
        #[serde(with = "clickhouse::serde::time::date")]
        day: Date,
        n: u64,
    }
    let ch_counts: Vec<DayCount> = ch
        .query(&format!(
            "SELECT day, count() AS n FROM {frozen} GROUP BY day"
        ))
        .fetch_all()
        .await?;
    for c in ch_counts {
        let e = counts.entry(c.day).or_default();
        *e = (*e).max(c.n);
    }
    let total: u64 = counts.values().sum();
    let mut progress = Progress::start(opts.progress, "daily cells", total);
    let mut totals = TableDrift::default();
    let ranges = day_ranges(&counts, opts.chunk_rows as u64);
    let fetch = |(from, to): (Date, Date)| {
        let (pool, ch, sorted) = (pool.clone(), ch.clone(), sorted.clone());
        let (shadow, frozen) = (shadow.clone(), frozen.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            let expected: Vec<DailyRow> = match sorted {
                Some(s) => s.rows_between(from, to),
                None => sqlx::query_as::<_, TotalsRow>(&format!(
                    "SELECT {cols} FROM rebuild_cells WHERE day BETWEEN $1 AND $2",
                    cols = totals_columns()
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&pool)
                .await?
                .into_iter()
                .map(DailyRow::from)
                .collect(),
            };
            insert_rows(&ch, &shadow, &expected).await?;
            let live: Vec<DailyRow> = ch
                .query(&format!(
                    "SELECT ?fields FROM {frozen} FINAL WHERE day >= toDate(?) AND day <= toDate(?)"
                ))
                .bind(from.to_string())
                .bind(to.to_string())
                .fetch_all()
                .await?;
            let rows = expected.len().max(live.len()) as u64;
            Ok((
                rows,
                daily_frame(expected.iter())?,
                daily_frame(live.iter())?,
            ))
        }))
    };
    let mut chunks = Pipelined::new(&ranges, |&r| fetch(r));
    while let Some(chunk) = chunks.next().await {
        let (rows, expected, live) = chunk?;
        progress.inc(rows);
        compare_chunk(
            "daily_revenue",
            &*DAILY_SPECS,
            expected,
            live,
            &mut totals,
            sink,
        )
        .await?;
    }
    progress.finish();
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    /// Adding a measure means adding it everywhere a cell's columns are
    /// listed; this names the lists that must agree with the domain's.
    #[test]
    fn every_list_of_the_daily_measures_agrees_with_the_domain() {
        let names = DailyMeasures::NAMES;
        assert_eq!(
            DAILY_SPECS.each_ref().map(|s| s.name),
            names,
            "the comparison's columns"
        );
        let cell = |n: &[&'static str]| -> Vec<&'static str> {
            let mut c = vec!["day", "merchant_id", "currency"];
            c.extend_from_slice(n);
            c.push("version");
            c
        };
        assert_eq!(
            totals_columns()
                .split(", ")
                .map(str::trim)
                .collect::<Vec<_>>(),
            cell(&names),
            "the running totals' SQL columns"
        );
        assert_eq!(
            <DailyRow as clickhouse::Row>::COLUMN_NAMES.to_vec(),
            cell(&names),
            "the ClickHouse row"
        );
    }

    #[test]
    fn day_ranges_respect_the_limit_and_cover_every_day() {
        let counts: BTreeMap<Date, u64> = [
            (date!(2026 - 01 - 01), 5),
            (date!(2026 - 01 - 02), 5),
            (date!(2026 - 01 - 03), 20),
            (date!(2026 - 01 - 05), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            day_ranges(&counts, 10),
            vec![
                (date!(2026 - 01 - 01), date!(2026 - 01 - 02)),
                (date!(2026 - 01 - 03), date!(2026 - 01 - 03)),
                (date!(2026 - 01 - 05), date!(2026 - 01 - 05)),
            ]
        );
        assert!(day_ranges(&BTreeMap::new(), 10).is_empty());
    }
}
