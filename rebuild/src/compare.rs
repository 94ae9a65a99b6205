//! Exact comparison of an expected and a live table chunk, with polars.
//!
//! Both sides become data frames keyed by one string key (the cell's
//! `day/merchant/currency`, or the order id); a full join classifies each
//! key as matching, missing (expected only), extra (live only) or different
//! (any column differs), and sums the absolute drift of the money columns
//! per currency. Callers feed chunks of bounded size, so memory stays flat
//! however large the projections are.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::Serialize;

use crate::RebuildError;

/// What a compared column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// An integer; differences are reported with their delta.
    Count,
    /// Minor units: like `Count`, and summed per currency into the drift.
    Money,
    Text,
    /// A UTC timestamp, whole seconds (ClickHouse `DateTime`).
    Time,
    Day,
}

pub struct ColumnSpec {
    pub name: &'static str,
    pub kind: ColumnKind,
}

impl ColumnSpec {
    pub const fn new(name: &'static str, kind: ColumnKind) -> Self {
        ColumnSpec { name, kind }
    }

    fn money(&self) -> bool {
        self.kind == ColumnKind::Money
    }
}

enum ColumnBuilder {
    Ints(Vec<i64>),
    Texts(StringChunkedBuilder),
    Days(Vec<i32>),
}

/// Builds one side of a chunk column by column, straight into polars
/// buffers: no `String` per value, so a million-row chunk costs a few
/// large allocations instead of millions of small ones.
pub struct FrameBuilder {
    specs: &'static [ColumnSpec],
    key: StringChunkedBuilder,
    currency: StringChunkedBuilder,
    columns: Vec<ColumnBuilder>,
    next: usize,
    len: usize,
}

impl FrameBuilder {
    pub fn new(specs: &'static [ColumnSpec], capacity: usize) -> Self {
        let columns = specs
            .iter()
            .map(|s| match s.kind {
                ColumnKind::Count | ColumnKind::Money | ColumnKind::Time => {
                    ColumnBuilder::Ints(Vec::with_capacity(capacity))
                }
                ColumnKind::Text => {
                    ColumnBuilder::Texts(StringChunkedBuilder::new(s.name.into(), capacity))
                }
                ColumnKind::Day => ColumnBuilder::Days(Vec::with_capacity(capacity)),
            })
            .collect();
        FrameBuilder {
            specs,
            key: StringChunkedBuilder::new("key".into(), capacity),
            currency: StringChunkedBuilder::new("currency".into(), capacity),
            columns,
            next: 0,
            len: 0,
        }
    }

    /// Starts a row; its values follow in the order of the specs.
    pub fn row(&mut self, key: &str, currency: &str) -> &mut Self {
        debug_assert!(
            self.len == 0 || self.next == self.columns.len(),
            "previous row incomplete"
        );
        self.key.append_value(key);
        self.currency.append_value(currency);
        self.next = 0;
        self.len += 1;
        self
    }

    fn column(&mut self) -> &mut ColumnBuilder {
        let i = self.next;
        self.next += 1;
        &mut self.columns[i]
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        match self.column() {
            ColumnBuilder::Ints(c) => c.push(v),
            _ => panic!("an integer pushed into a non-integer column"),
        }
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        match self.column() {
            ColumnBuilder::Texts(c) => c.append_value(v),
            _ => panic!("text pushed into a non-text column"),
        }
        self
    }

    /// Whole seconds, as ClickHouse keeps them.
    pub fn time(&mut self, t: time::OffsetDateTime) -> &mut Self {
        self.int(t.unix_timestamp() * 1000)
    }

    pub fn day(&mut self, d: time::Date) -> &mut Self {
        const EPOCH_JULIAN: i32 = 2_440_588; // 1970-01-01
        match self.column() {
            ColumnBuilder::Days(c) => c.push(d.to_julian_day() - EPOCH_JULIAN),
            _ => panic!("a day pushed into a non-day column"),
        }
        self
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> PolarsResult<Frame> {
        let mut columns = vec![
            self.key.finish().into_column(),
            self.currency.finish().into_column(),
            Column::new("present".into(), vec![true; self.len]),
        ];
        for (spec, values) in self.specs.iter().zip(self.columns) {
            columns.push(match values {
                ColumnBuilder::Ints(v) if spec.kind == ColumnKind::Time => {
                    Column::new(spec.name.into(), v)
                        .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?
                }
                ColumnBuilder::Ints(v) => Column::new(spec.name.into(), v),
                ColumnBuilder::Texts(b) => b.finish().into_column(),
                ColumnBuilder::Days(v) => Column::new(spec.name.into(), v).cast(&DataType::Date)?,
            });
        }
        Ok(Frame {
            len: self.len,
            columns,
        })
    }
}

/// The rows of one side of a chunk, as polars columns: `key`, `currency`,
/// `present`, then one per spec.
pub struct Frame {
    len: usize,
    columns: Vec<Column>,
}

impl Frame {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn into_df(self) -> PolarsResult<DataFrame> {
        DataFrame::new(self.len, self.columns)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Missing,
    Extra,
    Different,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Different => "different",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FieldDiff {
    pub field: &'static str,
    pub expected: Option<String>,
    pub live: Option<String>,
    /// live − expected, for integer columns present on both sides.
    pub delta: Option<i64>,
}

/// A key that does not match.
#[derive(Clone, Debug, Serialize)]
pub struct DriftRow {
    pub table: &'static str,
    pub kind: Kind,
    pub key: String,
    pub currency: String,
    pub fields: Vec<FieldDiff>,
    /// Sum of the absolute differences of the money columns (minor units).
    pub abs_drift_minor: i128,
}

/// Totals for one projection across all chunks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableDrift {
    pub compared: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// currency → money column → total absolute drift (minor units).
    pub drift_by_currency: BTreeMap<String, BTreeMap<&'static str, i128>>,
    /// The largest offenders by absolute drift (then first seen).
    pub worst: Vec<DriftRow>,
}

impl TableDrift {
    pub const WORST_KEPT: usize = 20;

    pub fn differing(&self) -> u64 {
        self.missing + self.extra + self.different
    }

    fn keep_worst(&mut self, row: &DriftRow) {
        if self.worst.len() < Self::WORST_KEPT {
            self.worst.push(row.clone());
        } else if let Some((i, least)) = self
            .worst
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.abs_drift_minor)
            && row.abs_drift_minor > least.abs_drift_minor
        {
            self.worst[i] = row.clone();
        }
        self.worst
            .sort_by_key(|r| std::cmp::Reverse(r.abs_drift_minor));
    }
}

type WriteRow<'a> = Box<dyn FnMut(&DriftRow) -> Result<(), RebuildError> + Send + 'a>;

/// Where the differing rows go. Without a report file only the worst rows
/// of each chunk are ever built, so a comparison against live tables that
/// are badly damaged (or empty) needs no more memory than a quiet one.
pub struct Sink<'a> {
    write: Option<WriteRow<'a>>,
}

impl<'a> Sink<'a> {
    /// Counts and the worst offenders only.
    pub fn worst_only() -> Self {
        Sink { write: None }
    }

    /// Every differing row goes to `write` (the report file).
    pub fn every_row(write: impl FnMut(&DriftRow) -> Result<(), RebuildError> + Send + 'a) -> Self {
        Sink {
            write: Some(Box::new(write)),
        }
    }

    fn wants_every_row(&self) -> bool {
        self.write.is_some()
    }

    fn write(&mut self, row: &DriftRow) -> Result<(), RebuildError> {
        match &mut self.write {
            Some(w) => w(row),
            None => Ok(()),
        }
    }
}

/// What one chunk's comparison found: its counts and drift (`worst` left
/// empty), and the differing rows themselves.
#[derive(Debug, Default)]
pub struct ChunkDiff {
    pub counts: TableDrift,
    pub rows: Vec<DriftRow>,
}

impl TableDrift {
    /// Adds a chunk's findings; every differing row goes to `sink`.
    pub fn absorb(&mut self, diff: ChunkDiff, sink: &mut Sink<'_>) -> Result<(), RebuildError> {
        let c = diff.counts;
        self.compared += c.compared;
        self.matching += c.matching;
        self.missing += c.missing;
        self.extra += c.extra;
        self.different += c.different;
        for (cur, by) in c.drift_by_currency {
            let e = self.drift_by_currency.entry(cur).or_default();
            for (m, v) in by {
                *e.entry(m).or_default() += v;
            }
        }
        for row in &diff.rows {
            sink.write(row)?;
            self.keep_worst(row);
        }
        Ok(())
    }
}

/// Compares one chunk on a blocking thread (polars computes; the async
/// runtime must not wait on it) and adds the result to `totals`.
pub async fn compare_chunk(
    table: &'static str,
    specs: &'static [ColumnSpec],
    expected: Frame,
    live: Frame,
    totals: &mut TableDrift,
    sink: &mut Sink<'_>,
) -> Result<(), RebuildError> {
    let every_row = sink.wants_every_row();
    let diff = tokio::task::spawn_blocking(move || {
        compare_frames(table, specs, expected, live, every_row)
    })
    .await
    .map_err(|e| RebuildError::Invariant(format!("comparison task failed: {e}")))??;
    totals.absorb(diff, sink)
}

/// The comparison itself: pure, synchronous. `every_row`: return every
/// differing row, else only the [`TableDrift::WORST_KEPT`] with the largest
/// drift (earliest first among equals), which is all the worst list of the
/// whole run can take from this chunk.
pub fn compare_frames(
    table: &'static str,
    specs: &[ColumnSpec],
    expected: Frame,
    live: Frame,
    every_row: bool,
) -> Result<ChunkDiff, RebuildError> {
    let mut diff = ChunkDiff::default();
    let totals = &mut diff.counts;
    if expected.is_empty() && live.is_empty() {
        return Ok(diff);
    }
    let joined = classify(specs, expected.into_df()?, live.into_df()?);
    let cur = when(col("currency").is_null())
        .then(col("currency_live"))
        .otherwise(col("currency"))
        .alias("cur");
    let mut abs_cols = Vec::new();
    for s in specs.iter().filter(|s| s.money()) {
        let d =
            col(format!("{}_live", s.name)).fill_null(lit(0i64)) - col(s.name).fill_null(lit(0i64));
        abs_cols.push(
            when(d.clone().lt(lit(0i64)))
                .then(lit(0i64) - d.clone())
                .otherwise(d)
                .alias(format!("abs_{}", s.name)),
        );
    }
    let classified = joined
        .with_columns([cur])
        .with_columns(abs_cols)
        .collect()?;

    // Counts by kind.
    let kinds = classified.column("kind")?.str()?.clone();
    let mut diff_idx = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        totals.compared += 1;
        match k {
            Some("match") => totals.matching += 1,
            Some("missing") => {
                totals.missing += 1;
                diff_idx.push(i);
            }
            Some("extra") => {
                totals.extra += 1;
                diff_idx.push(i);
            }
            _ => {
                totals.different += 1;
                diff_idx.push(i);
            }
        }
    }
    if diff_idx.is_empty() {
        return Ok(diff);
    }

    // Absolute drift per currency, in polars.
    let money: Vec<&ColumnSpec> = specs.iter().filter(|s| s.money()).collect();
    let by_currency = classified
        .clone()
        .lazy()
        .filter(col("kind").neq(lit("match")))
        .group_by([col("cur")])
        .agg(
            money
                .iter()
                .map(|s| col(format!("abs_{}", s.name)).sum())
                .collect::<Vec<_>>(),
        )
        .collect()?;
    let curs = by_currency.column("cur")?.str()?.clone();
    for (i, c) in curs.iter().enumerate() {
        let entry = totals
            .drift_by_currency
            .entry(c.unwrap_or("?").to_owned())
            .or_default();
        for s in &money {
            let v = by_currency
                .column(&format!("abs_{}", s.name))?
                .i64()?
                .get(i)
                .unwrap_or(0);
            *entry.entry(s.name).or_default() += i128::from(v);
        }
    }

    if !every_row && diff_idx.len() > TableDrift::WORST_KEPT {
        let abs = money
            .iter()
            .map(|s| {
                Ok(classified
                    .column(&format!("abs_{}", s.name))?
                    .i64()?
                    .clone())
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        let drift =
            |i: usize| -> i128 { abs.iter().map(|c| i128::from(c.get(i).unwrap_or(0))).sum() };
        diff_idx.sort_by_cached_key(|&i| (std::cmp::Reverse(drift(i)), i));
        diff_idx.truncate(TableDrift::WORST_KEPT);
        diff_idx.sort_unstable();
    }

    // The differing rows themselves, for the report and the worst list.
    for i in diff_idx {
        let kind = match kinds.get(i) {
            Some("missing") => Kind::Missing,
            Some("extra") => Kind::Extra,
            _ => Kind::Different,
        };
        let key = text(&classified, "key", i)?.unwrap_or_default();
        let currency = text(&classified, "cur", i)?.unwrap_or_default();
        let mut fields = Vec::new();
        let mut abs: i128 = 0;
        for s in specs {
            let e = classified.column(s.name)?.get(i)?;
            let l = classified.column(&format!("{}_live", s.name))?.get(i)?;
            if e == l {
                continue;
            }
            let delta = match (&e, &l) {
                (AnyValue::Int64(a), AnyValue::Int64(b)) => Some(b - a),
                _ => None,
            };
            if s.money() {
                let as_i = |v: &AnyValue| match v {
                    AnyValue::Int64(x) => i128::from(*x),
                    _ => 0,
                };
                abs += (as_i(&l) - as_i(&e)).abs();
            }
            fields.push(FieldDiff {
                field: s.name,
                expected: show(&e),
                live: show(&l),
                delta,
            });
        }
        let row = DriftRow {
            table,
            kind,
            key,
            currency,
            fields,
            abs_drift_minor: abs,
        };
        diff.rows.push(row);
    }
    Ok(diff)
}

/// Both sides joined by key, each row labelled `kind`: match, missing,
/// extra or different (in any column of `specs`, or the currency).
fn classify(specs: &[ColumnSpec], expected: DataFrame, live: DataFrame) -> LazyFrame {
    let args = JoinArgs::new(JoinType::Full)
        .with_coalesce(JoinCoalesce::CoalesceColumns)
        .with_suffix(Some("_live".into()));
    let joined = expected
        .lazy()
        .join(live.lazy(), [col("key")], [col("key")], args);
    let differs = specs
        .iter()
        .map(|s| col(s.name).neq_missing(col(format!("{}_live", s.name))))
        .chain([col("currency").neq_missing(col("currency_live"))])
        .reduce(polars::prelude::Expr::or)
        .unwrap_or(lit(false));
    let kind = when(col("present_live").is_null())
        .then(lit("missing"))
        .when(col("present").is_null())
        .then(lit("extra"))
        .when(differs)
        .then(lit("different"))
        .otherwise(lit("match"))
        .alias("kind");
    joined.with_columns([kind])
}

/// How many keys match, and the keys that do not: a first, cheap pass
/// whose unequal keys are then compared in full by [`compare_frames`].
pub fn unequal_keys(
    specs: &[ColumnSpec],
    expected: Frame,
    live: Frame,
) -> Result<(u64, Vec<String>), RebuildError> {
    if expected.is_empty() && live.is_empty() {
        return Ok((0, Vec::new()));
    }
    let classified = classify(specs, expected.into_df()?, live.into_df()?)
        .select([col("key"), col("kind")])
        .collect()?;
    let kinds = classified.column("kind")?.str()?;
    let keys = classified.column("key")?.str()?;
    let mut matching = 0;
    let mut unequal = Vec::new();
    for (k, key) in kinds.iter().zip(keys.iter()) {
        match k {
            Some("match") => matching += 1,
            _ => unequal.push(key.unwrap_or_default().to_owned()),
        }
    }
    Ok((matching, unequal))
}

fn text(df: &DataFrame, name: &str, i: usize) -> PolarsResult<Option<String>> {
    Ok(show(&df.column(name)?.get(i)?))
}

fn show(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::Null => None,
        AnyValue::String(s) => Some((*s).to_owned()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: [ColumnSpec; 4] = [
        ColumnSpec::new("gross_minor", ColumnKind::Money),
        ColumnSpec::new("status", ColumnKind::Text),
        ColumnSpec::new("at", ColumnKind::Time),
        ColumnSpec::new("day", ColumnKind::Day),
    ];

    fn frame(rows: &[(&str, &str, i64, &str)]) -> Frame {
        let mut f = FrameBuilder::new(&SPECS, rows.len());
        for (k, c, g, s) in rows {
            f.row(k, c)
                .int(*g)
                .text(s)
                .time(time::macros::datetime!(2026-01-02 03:04:05 UTC))
                .day(time::macros::date!(2026 - 01 - 02));
        }
        f.finish().unwrap()
    }

    #[test]
    fn times_and_days_show_as_such_and_differences_are_found() {
        let mut a = FrameBuilder::new(&SPECS, 1);
        a.row("k", "EUR")
            .int(1)
            .text("x")
            .time(time::macros::datetime!(2026-01-02 03:04:05 UTC))
            .day(time::macros::date!(2026 - 01 - 02));
        let mut b = FrameBuilder::new(&SPECS, 1);
        b.row("k", "EUR")
            .int(1)
            .text("x")
            .time(time::macros::datetime!(2026-01-02 03:04:06 UTC))
            .day(time::macros::date!(2026 - 01 - 03));
        let diff =
            compare_frames("t", &SPECS, a.finish().unwrap(), b.finish().unwrap(), true).unwrap();
        assert_eq!(diff.counts.different, 1);
        let fields: Vec<_> = diff.rows[0]
            .fields
            .iter()
            .map(|f| {
                (
                    f.field,
                    f.expected.clone().unwrap(),
                    f.live.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                (
                    "at",
                    "2026-01-02 03:04:05".into(),
                    "2026-01-02 03:04:06".into()
                ),
                ("day", "2026-01-02".into(), "2026-01-03".into()),
            ]
        );
    }

    #[test]
    fn a_lone_missing_or_extra_row_keeps_its_kind() {
        // A one-row chunk: polars may hand computed columns back as a
        // scalar, whose values read differently from a series'.
        for (expected, live, want) in [
            (frame(&[("a", "EUR", 1, "paid")]), frame(&[]), Kind::Missing),
            (frame(&[]), frame(&[("a", "EUR", 1, "paid")]), Kind::Extra),
            (
                frame(&[("a", "EUR", 1, "paid")]),
                frame(&[("a", "EUR", 2, "paid")]),
                Kind::Different,
            ),
        ] {
            let diff = compare_frames("t", &SPECS, expected, live, true).unwrap();
            let kinds: Vec<Kind> = diff.rows.iter().map(|r| r.kind).collect();
            assert_eq!(kinds, vec![want]);
            assert_eq!(diff.rows[0].currency, "EUR");
            if want == Kind::Different {
                let f = &diff.rows[0].fields;
                assert_eq!(
                    (f.len(), f[0].field, f[0].delta),
                    (1, "gross_minor", Some(1))
                );
            }
        }
    }

    #[test]
    fn classifies_every_key_and_sums_drift_per_currency() {
        let expected = frame(&[
            ("a", "EUR", 100, "paid"),
            ("b", "EUR", 50, "paid"),
            ("c", "USD", 70, "placed"),
            ("d", "USD", 10, "placed"),
        ]);
        let live = frame(&[
            ("a", "EUR", 100, "paid"),   // match
            ("b", "EUR", 45, "paid"),    // different by -5
            ("d", "USD", 10, "shipped"), // different status, no money drift
            ("e", "JPY", 9, "placed"),   // extra
        ]); // c missing
        let mut totals = TableDrift::default();
        let mut seen = Vec::new();
        let diff = compare_frames("t", &SPECS, expected, live, true).unwrap();
        {
            let mut sink = Sink::every_row(|r| {
                seen.push((r.key.clone(), r.kind));
                Ok(())
            });
            totals.absorb(diff, &mut sink).unwrap();
        }
        assert_eq!(
            (
                totals.compared,
                totals.matching,
                totals.missing,
                totals.extra,
                totals.different
            ),
            (5, 1, 1, 1, 2)
        );
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            vec![
                ("b".into(), Kind::Different),
                ("c".into(), Kind::Missing),
                ("d".into(), Kind::Different),
                ("e".into(), Kind::Extra),
            ]
        );
        assert_eq!(totals.drift_by_currency["EUR"]["gross_minor"], 5);
        assert_eq!(totals.drift_by_currency["USD"]["gross_minor"], 70);
        assert_eq!(totals.drift_by_currency["JPY"]["gross_minor"], 9);
        assert_eq!(totals.worst[0].key, "c");
        let b = totals.worst.iter().find(|r| r.key == "b").unwrap();
        assert_eq!(b.fields[0].delta, Some(-5));
    }

    #[test]
    fn without_a_report_only_the_worst_rows_of_a_chunk_are_built() {
        // 50 keys, all missing on the live side, drift 1..=50; the last
        // three have the same drift as their predecessors' neighbours.
        let keys: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
        let rows: Vec<(&str, &str, i64, &str)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), "EUR", (i as i64 % 47) + 1, "paid"))
            .collect();
        let everything = compare_frames("t", &SPECS, frame(&rows), frame(&[]), true).unwrap();
        assert_eq!(everything.rows.len(), 50);
        let diff = compare_frames("t", &SPECS, frame(&rows), frame(&[]), false).unwrap();
        assert_eq!(diff.counts.missing, 50, "counts cover every row");
        assert_eq!(
            diff.counts.drift_by_currency["EUR"]["gross_minor"],
            everything.counts.drift_by_currency["EUR"]["gross_minor"]
        );
        assert_eq!(diff.rows.len(), TableDrift::WORST_KEPT);
        // The same worst list either way, ties going to the row seen first.
        let worst = |d: ChunkDiff| {
            let mut t = TableDrift::default();
            t.absorb(d, &mut Sink::worst_only()).unwrap();
            t.worst
                .iter()
                .map(|r| (r.key.clone(), r.abs_drift_minor))
                .collect::<Vec<_>>()
        };
        let all = worst(everything);
        assert_eq!(worst(diff), all);
        assert_eq!(all[0], ("k46".to_string(), 47));
        assert!(all.iter().all(|(_, d)| *d >= 27), "{all:?}");
    }

    #[test]
    fn identical_sides_match_entirely() {
        let rows = [("a", "EUR", 1, "x"), ("b", "EUR", 2, "y")];
        let mut totals = TableDrift::default();
        let diff = compare_frames("t", &SPECS, frame(&rows), frame(&rows), true).unwrap();
        totals
            .absorb(diff, &mut Sink::every_row(|_| panic!("no drift expected")))
            .unwrap();
        assert_eq!(
            (totals.compared, totals.matching, totals.differing()),
            (2, 2, 0)
        );
    }
}
