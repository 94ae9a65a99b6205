//! The fact tables, shadow against frozen, each read along its own key: fingerprints first, then every
//! column of the rows whose fingerprints differ.
//!
//! Reading a million full rows from each side and joining them in polars
//! was the longest step after the order pass. Now ClickHouse returns, per
//! row, the money and count columns as they are and one `cityHash64` of
//! the rest (merchant, customer, currency, status and times); polars joins
//! those by order id. Only rows missing, extra or unequal there are read in
//! full and compared column by column, so counts, drift per currency and
//! the report are those of a full comparison. Money and counts are always
//! compared exactly; a change in the hashed columns that left the 64-bit
//! hash unchanged would go unseen (odds about 1 in 1.8e19 per changed row).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tally_projection::rows::{FACT_TABLES, FactRow, FactTable};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::RebuildError;
use crate::compare::{
    ColumnKind, ColumnSpec, Frame, FrameBuilder, Sink, TableDrift, compare_chunk, unequal_keys,
};
use crate::options::RunOptions;
use crate::pipeline::Pipelined;
use crate::progress::Progress;
use crate::tables::Copy;

pub(crate) const FACT_SPECS: [ColumnSpec; 11] = [
    ColumnSpec::new("version", ColumnKind::Count),
    ColumnSpec::new("merchant_id", ColumnKind::Text),
    ColumnSpec::new("customer_id", ColumnKind::Text),
    ColumnSpec::new("status", ColumnKind::Text),
    ColumnSpec::new("placed_at", ColumnKind::Time),
    ColumnSpec::new("placed_day", ColumnKind::Day),
    ColumnSpec::new("item_count", ColumnKind::Count),
    ColumnSpec::new("total_minor", ColumnKind::Money),
    ColumnSpec::new("captured_minor", ColumnKind::Money),
    ColumnSpec::new("refunded_minor", ColumnKind::Money),
    ColumnSpec::new("updated_at", ColumnKind::Time),
];

fn fact_frame(rows: &[FactRow], skip: &HashSet<Uuid>) -> Result<Frame, RebuildError> {
    let mut f = FrameBuilder::new(&FACT_SPECS, rows.len());
    let mut key = [0u8; uuid::fmt::Hyphenated::LENGTH];
    for r in rows.iter().filter(|r| !skip.contains(&r.order_id)) {
        let key = r.order_id.hyphenated().encode_lower(&mut key);
        f.row(key, std::str::from_utf8(&r.currency).unwrap_or("???"))
            .int(i64::from(r.version))
            .text(&r.merchant_id)
            .text(&r.customer_id)
            .text(&r.status)
            .time(r.placed_at)
            .day(r.placed_day)
            .int(r.item_count as i64)
            .int(r.total_minor)
            .int(r.captured_minor)
            .int(r.refunded_minor)
            .time(r.updated_at);
    }
    Ok(f.finish()?)
}

/// A part of a fact table its sorting key finds without reading the rest,
/// so every row is read once per side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FactSlice {
    /// Keys `from ..= to` of the table's key column.
    Keys(String, String),
    /// The rows of one key too many for a chunk (or, with no key, of a
    /// table keyed by order id itself), split by order id hash.
    Bucket(Option<String>, u64, u64),
}

/// Slices of about `limit` orders, from the orders per key.
fn fact_slices(counts: &BTreeMap<String, u64>, limit: u64) -> Vec<FactSlice> {
    let limit = limit.max(1);
    let mut out = Vec::new();
    let mut current: Option<(String, String, u64)> = None;
    for (key, &n) in counts {
        if n > limit {
            if let Some((a, b, _)) = current.take() {
                out.push(FactSlice::Keys(a, b));
            }
            out.extend(buckets(Some(key), n, limit));
            continue;
        }
        current = match current {
            Some((a, _, acc)) if acc + n <= limit => Some((a, key.clone(), acc + n)),
            Some((a, b, _)) => {
                out.push(FactSlice::Keys(a, b));
                Some((key.clone(), key.clone(), n))
            }
            None => Some((key.clone(), key.clone(), n)),
        };
    }
    if let Some((a, b, _)) = current {
        out.push(FactSlice::Keys(a, b));
    }
    out
}

/// `n` rows split by order id hash into slices of at most about `limit`.
fn buckets(key: Option<&String>, n: u64, limit: u64) -> impl Iterator<Item = FactSlice> {
    let k = n.div_ceil(limit.max(1)).max(1);
    let key = key.cloned();
    (0..k).map(move |i| FactSlice::Bucket(key.clone(), k, i))
}

/// The slice as a condition on `table`'s key column, with its parameters.
fn slice_filter(table: FactTable, slice: &FactSlice) -> (String, Vec<String>) {
    let key = table.key;
    match slice {
        FactSlice::Keys(a, b) => (
            format!("{key} >= ? AND {key} <= ?"),
            vec![a.clone(), b.clone()],
        ),
        FactSlice::Bucket(Some(v), k, i) => (
            format!("{key} = ? AND cityHash64(toString(order_id)) % {k} = {i}"),
            vec![v.clone()],
        ),
        FactSlice::Bucket(None, k, i) => (
            format!("cityHash64(toString(order_id)) % {k} = {i}"),
            vec![],
        ),
    }
}

async fn read_facts(
    ch: &clickhouse::Client,
    t: FactTable,
    table: &str,
    fin: &str,
    slice: &FactSlice,
) -> Result<Vec<FactRow>, RebuildError> {
    let (filter, binds) = slice_filter(t, slice);
    let mut q = ch.query(&format!("SELECT ?fields FROM {table} {fin} WHERE {filter}"));
    for b in binds {
        q = q.bind(b);
    }
    Ok(q.fetch_all().await?)
}

/// One row's fingerprint: the exact measures and a hash of the rest.
#[derive(clickhouse::Row, serde::Deserialize)]
struct Print {
    #[serde(with = "clickhouse::serde::uuid")]
    order_id: Uuid,
    currency: [u8; 3],
    version: u32,
    item_count: u64,
    total_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    rest: u64,
}

const PRINT_FIELDS: &str = "order_id, currency, version, item_count, total_minor, captured_minor,
    refunded_minor,
    cityHash64(merchant_id, customer_id, currency, status, placed_at, placed_day, updated_at) AS rest";

const PRINT_SPECS: [ColumnSpec; 6] = [
    ColumnSpec::new("version", ColumnKind::Count),
    ColumnSpec::new("item_count", ColumnKind::Count),
    ColumnSpec::new("total_minor", ColumnKind::Money),
    ColumnSpec::new("captured_minor", ColumnKind::Money),
    ColumnSpec::new("refunded_minor", ColumnKind::Money),
    ColumnSpec::new("rest", ColumnKind::Count),
];

/// Above this many unequal orders in a slice (or half the slice), the
/// whole slice is read again rather than an `IN` list: ClickHouse caps a
/// query's length, and past half a slice the list saves little.
const IN_LIST_MAX: usize = 1_000;

fn print_frame(rows: &[Print], skip: &HashSet<Uuid>) -> Result<Frame, RebuildError> {
    let mut f = FrameBuilder::new(&PRINT_SPECS, rows.len());
    let mut key = [0u8; uuid::fmt::Hyphenated::LENGTH];
    for r in rows.iter().filter(|r| !skip.contains(&r.order_id)) {
        let key = r.order_id.hyphenated().encode_lower(&mut key);
        f.row(key, std::str::from_utf8(&r.currency).unwrap_or("???"))
            .int(i64::from(r.version))
            .int(r.item_count as i64)
            .int(r.total_minor)
            .int(r.captured_minor)
            .int(r.refunded_minor)
            .int(r.rest as i64); // the bits, for equality only
    }
    Ok(f.finish()?)
}

/// A slice's fingerprints, one per order: the newest version's, as
/// `FINAL` would pick, but chosen here. ClickHouse 18.16 merges a `FINAL`
/// read on one thread; sorting the fingerprints costs this process less
/// than that costs the server, and the server is the busier of the two.
/// (Two rows of one order and version are the same event projected twice,
/// so which of them is kept does not matter.)
async fn read_prints(
    ch: &clickhouse::Client,
    t: FactTable,
    table: &str,
    slice: &FactSlice,
) -> Result<Vec<Print>, RebuildError> {
    let (filter, binds) = slice_filter(t, slice);
    let mut q = ch.query(&format!(
        "SELECT {PRINT_FIELDS} FROM {table} WHERE {filter}"
    ));
    for b in binds {
        q = q.bind(b);
    }
    let mut rows: Vec<Print> = q.fetch_all().await?;
    newest_per_order(&mut rows);
    Ok(rows)
}

fn newest_per_order(rows: &mut Vec<Print>) {
    rows.sort_unstable_by(|a, b| a.order_id.cmp(&b.order_id).then(b.version.cmp(&a.version)));
    rows.dedup_by_key(|r| r.order_id);
}

/// The full rows of `ids` (a few, from one slice) on one side.
async fn read_ids(
    ch: &clickhouse::Client,
    t: FactTable,
    table: &str,
    fin: &str,
    slice: &FactSlice,
    ids: &[Uuid],
) -> Result<Vec<FactRow>, RebuildError> {
    let (filter, binds) = slice_filter(t, slice);
    // Hyphenated UUIDs are hex digits and dashes only: safe to inline.
    let list = ids
        .iter()
        .map(|id| format!("toUUID('{}')", id.hyphenated()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = ch.query(&format!(
        "SELECT ?fields FROM {table} {fin} WHERE {filter} AND order_id IN ({list})"
    ));
    for b in binds {
        q = q.bind(b);
    }
    Ok(q.fetch_all().await?)
}

/// What the fact tables' comparisons found.
pub(crate) struct FactsCompared {
    /// `order_facts`.
    pub(crate) facts: TableDrift,
    /// The other fact tables, by name.
    pub(crate) copies: BTreeMap<String, TableDrift>,
    /// Orders left out because events of theirs were not yet projected at
    /// the snapshot.
    pub(crate) not_compared: u64,
}

/// Compares every fact table's shadow with its frozen copy.
pub(crate) async fn compare_all(
    ch: &clickhouse::Client,
    opts: &RunOptions,
    skip: &HashSet<Uuid>,
    sink: &mut Sink<'_>,
) -> Result<FactsCompared, RebuildError> {
    let [first, rest @ ..] = FACT_TABLES;
    let (facts, not_compared) = compare(ch, opts, first, skip, sink).await?;
    let mut copies = BTreeMap::new();
    for t in rest {
        let (drift, _) = compare(ch, opts, t, skip, sink).await?;
        copies.insert(t.live.to_owned(), drift);
    }
    Ok(FactsCompared {
        facts,
        copies,
        not_compared,
    })
}

/// Orders per key of `t` (the larger count of the two sides), or `None`
/// for a table keyed by order id, where that would be every order.
async fn key_counts(
    ch: &clickhouse::Client,
    t: FactTable,
    tables: [&str; 2],
) -> Result<(u64, Option<BTreeMap<String, u64>>), RebuildError> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct KeyCount {
        key: String,
        n: u64,
    }
    if t.key == "order_id" {
        let mut n = 0u64;
        for table in tables {
            let c: u64 = ch
                .query(&format!("SELECT count() FROM {table}"))
                .fetch_one()
                .await?;
            n = n.max(c);
        }
        return Ok((n, None));
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for table in tables {
        let rows: Vec<KeyCount> = ch
            .query(&format!(
                "SELECT {key} AS key, count() AS n FROM {table} GROUP BY {key}",
                key = t.key
            ))
            .fetch_all()
            .await?;
        for r in rows {
            let e = counts.entry(r.key).or_default();
            *e = (*e).max(r.n);
        }
    }
    Ok((counts.values().sum(), Some(counts)))
}

/// Compares `t`'s shadow and frozen copies in slices of about `chunk_rows`
/// orders. Returns the totals and how many orders were left out because
/// events of theirs were not yet projected at the snapshot.
async fn compare(
    ch: &clickhouse::Client,
    opts: &RunOptions,
    t: FactTable,
    skip: &HashSet<Uuid>,
    sink: &mut Sink<'_>,
) -> Result<(TableDrift, u64), RebuildError> {
    let frozen = Copy::Frozen.of(t.live);
    let shadow = Copy::Shadow.of(t.live);
    let limit = opts.chunk_rows as u64;
    let (n, counts) = key_counts(ch, t, [&shadow, &frozen]).await?;
    let slices: Vec<FactSlice> = match counts {
        Some(counts) => fact_slices(&counts, limit),
        None => buckets(None, n, limit).collect(),
    };
    let mut progress = Progress::start(opts.progress, t.live, n);
    let mut totals = TableDrift::default();
    let mut not_compared: HashSet<Uuid> = HashSet::new();
    let skip = Arc::new(skip.clone());
    // A slice's fingerprints, compared on a blocking thread, while the
    // previous slice's unequal rows are compared in full.
    let fetch = |slice: &FactSlice| {
        let (ch, slice, skip) = (ch.clone(), slice.clone(), skip.clone());
        let (shadow, frozen) = (shadow.clone(), frozen.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            let (expected, live) = tokio::try_join!(
                read_prints(&ch, t, &shadow, &slice),
                read_prints(&ch, t, &frozen, &slice)
            )?;
            let skipped: Vec<Uuid> = expected
                .iter()
                .chain(live.iter())
                .map(|r| r.order_id)
                .filter(|id| skip.contains(id))
                .collect();
            let rows = expected.len().max(live.len()) as u64;
            let (expected, live) = (print_frame(&expected, &skip)?, print_frame(&live, &skip)?);
            let (matching, unequal) =
                tokio::task::spawn_blocking(move || unequal_keys(&PRINT_SPECS, expected, live))
                    .await
                    .map_err(|e| {
                        RebuildError::Invariant(format!("comparison task failed: {e}"))
                    })??;
            Ok((slice, rows, skipped, matching, unequal))
        }))
    };
    let mut chunks = Pipelined::new(&slices, fetch);
    while let Some(chunk) = chunks.next().await {
        let (slice, rows, skipped, matching, unequal) = chunk?;
        progress.inc(rows);
        not_compared.extend(skipped);
        totals.compared += matching;
        totals.matching += matching;
        if unequal.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = unequal
            .iter()
            .map(|k| Uuid::parse_str(k))
            .collect::<Result<_, _>>()
            .map_err(|e| RebuildError::Invariant(format!("order id from the comparison: {e}")))?;
        let (expected, live) = if ids.len() > IN_LIST_MAX.min(opts.chunk_rows / 2) {
            let keep: HashSet<Uuid> = ids.iter().copied().collect();
            let (mut e, mut l) = tokio::try_join!(
                read_facts(ch, t, &shadow, "", &slice),
                read_facts(ch, t, &frozen, "FINAL", &slice)
            )?;
            e.retain(|r| keep.contains(&r.order_id));
            l.retain(|r| keep.contains(&r.order_id));
            (e, l)
        } else {
            tokio::try_join!(
                read_ids(ch, t, &shadow, "", &slice, &ids),
                read_ids(ch, t, &frozen, "FINAL", &slice, &ids)
            )?
        };
        compare_chunk(
            t.live,
            &FACT_SPECS,
            fact_frame(&expected, &skip)?,
            fact_frame(&live, &skip)?,
            &mut totals,
            sink,
        )
        .await?;
    }
    progress.finish();
    Ok((totals, not_compared.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_version_of_an_order_is_kept() {
        let print = |id: u128, version: u32| Print {
            order_id: Uuid::from_u128(id),
            currency: *b"EUR",
            version,
            item_count: 1,
            total_minor: i64::from(version) * 10,
            captured_minor: 0,
            refunded_minor: 0,
            rest: 0,
        };
        let mut rows = vec![
            print(2, 1),
            print(1, 1),
            print(2, 3),
            print(1, 2),
            print(2, 2),
        ];
        newest_per_order(&mut rows);
        let kept: Vec<(u128, u32, i64)> = rows
            .iter()
            .map(|r| (r.order_id.as_u128(), r.version, r.total_minor))
            .collect();
        assert_eq!(kept, vec![(1, 2, 20), (2, 3, 30)]);
    }

    #[test]
    fn fact_slices_group_merchants_and_split_large_ones() {
        let counts: BTreeMap<String, u64> = [("a", 3), ("b", 3), ("c", 9), ("d", 1), ("e", 4)]
            .into_iter()
            .map(|(m, n)| (m.to_owned(), n))
            .collect();
        assert_eq!(
            fact_slices(&counts, 6),
            vec![
                FactSlice::Keys("a".into(), "b".into()),
                FactSlice::Bucket(Some("c".into()), 2, 0),
                FactSlice::Bucket(Some("c".into()), 2, 1),
                FactSlice::Keys("d".into(), "e".into()),
            ]
        );
    }
}
