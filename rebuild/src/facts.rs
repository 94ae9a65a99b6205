//! Order facts, shadow against frozen: fingerprints first, then every
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

use tally_projection::rows::FactRow;
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

/// A part of `order_facts` its primary key `(merchant_id, order_id)` finds
/// without reading the rest, so every row is read once per side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FactSlice {
    /// Merchants `from ..= to`.
    Merchants(String, String),
    /// One merchant too large for a chunk, split by order id hash.
    Bucket(String, u64, u64),
}

fn fact_slices(counts: &BTreeMap<String, u64>, limit: u64) -> Vec<FactSlice> {
    let limit = limit.max(1);
    let mut out = Vec::new();
    let mut current: Option<(String, String, u64)> = None;
    for (merchant, &n) in counts {
        if n > limit {
            if let Some((a, b, _)) = current.take() {
                out.push(FactSlice::Merchants(a, b));
            }
            let k = n.div_ceil(limit);
            out.extend((0..k).map(|i| FactSlice::Bucket(merchant.clone(), k, i)));
            continue;
        }
        current = match current {
            Some((a, _, acc)) if acc + n <= limit => Some((a, merchant.clone(), acc + n)),
            Some((a, b, _)) => {
                out.push(FactSlice::Merchants(a, b));
                Some((merchant.clone(), merchant.clone(), n))
            }
            None => Some((merchant.clone(), merchant.clone(), n)),
        };
    }
    if let Some((a, b, _)) = current {
        out.push(FactSlice::Merchants(a, b));
    }
    out
}

async fn read_facts(
    ch: &clickhouse::Client,
    table: &str,
    fin: &str,
    slice: &FactSlice,
) -> Result<Vec<FactRow>, RebuildError> {
    let q = match slice {
        FactSlice::Merchants(a, b) => ch
            .query(&format!(
                "SELECT ?fields FROM {table} {fin} WHERE merchant_id >= ? AND merchant_id <= ?"
            ))
            .bind(a)
            .bind(b),
        FactSlice::Bucket(m, k, i) => ch
            .query(&format!(
                "SELECT ?fields FROM {table} {fin}
                 WHERE merchant_id = ? AND cityHash64(toString(order_id)) % ? = ?"
            ))
            .bind(m)
            .bind(*k)
            .bind(*i),
    };
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

fn slice_filter(slice: &FactSlice) -> (String, Vec<String>) {
    match slice {
        FactSlice::Merchants(a, b) => (
            "merchant_id >= ? AND merchant_id <= ?".into(),
            vec![a.clone(), b.clone()],
        ),
        FactSlice::Bucket(m, k, i) => (
            format!("merchant_id = ? AND cityHash64(toString(order_id)) % {k} = {i}"),
            vec![m.clone()],
        ),
    }
}

/// A slice's fingerprints, one per order: the newest version's, as
/// `FINAL` would pick, but chosen here. ClickHouse 18.16 merges a `FINAL`
/// read on one thread; sorting the fingerprints costs this process less
/// than that costs the server, and the server is the busier of the two.
/// (Two rows of one order and version are the same event projected twice,
/// so which of them is kept does not matter.)
async fn read_prints(
    ch: &clickhouse::Client,
    table: &str,
    slice: &FactSlice,
) -> Result<Vec<Print>, RebuildError> {
    let (filter, binds) = slice_filter(slice);
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
    table: &str,
    fin: &str,
    slice: &FactSlice,
    ids: &[Uuid],
) -> Result<Vec<FactRow>, RebuildError> {
    let (filter, binds) = slice_filter(slice);
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

/// Compares shadow and frozen facts in slices of about `chunk_rows` orders.
/// Returns the totals and how many orders were left out because events of
/// theirs were not yet projected at the snapshot.
pub(crate) async fn compare(
    ch: &clickhouse::Client,
    opts: &RunOptions,
    skip: &HashSet<Uuid>,
    sink: &mut Sink<'_>,
) -> Result<(TableDrift, u64), RebuildError> {
    let frozen = Copy::Frozen.of("order_facts");
    let shadow = Copy::Shadow.of("order_facts");
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct MerchantCount {
        merchant_id: String,
        n: u64,
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for table in [&shadow, &frozen] {
        let rows: Vec<MerchantCount> = ch
            .query(&format!(
                "SELECT merchant_id, count() AS n FROM {table} GROUP BY merchant_id"
            ))
            .fetch_all()
            .await?;
        for r in rows {
            let e = counts.entry(r.merchant_id).or_default();
            *e = (*e).max(r.n);
        }
    }
    let n: u64 = counts.values().sum();
    let slices = fact_slices(&counts, opts.chunk_rows as u64);
    drop(counts);
    let mut progress = Progress::start(opts.progress, "order facts", n);
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
                read_prints(&ch, &shadow, &slice),
                read_prints(&ch, &frozen, &slice)
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
                read_facts(ch, &shadow, "", &slice),
                read_facts(ch, &frozen, "FINAL", &slice)
            )?;
            e.retain(|r| keep.contains(&r.order_id));
            l.retain(|r| keep.contains(&r.order_id));
            (e, l)
        } else {
            tokio::try_join!(
                read_ids(ch, &shadow, "", &slice, &ids),
                read_ids(ch, &frozen, "FINAL", &slice, &ids)
            )?
        };
        compare_chunk(
            "order_facts",
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
                FactSlice::Merchants("a".into(), "b".into()),
                FactSlice::Bucket("c".into(), 2, 0),
                FactSlice::Bucket("c".into(), 2, 1),
                FactSlice::Merchants("d".into(), "e".into()),
            ]
        );
    }
}
