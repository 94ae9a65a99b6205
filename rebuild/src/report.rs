//! What a run found ([`RunOutcome`]) and how it reaches people and
//! machines: a summary table for a terminal, JSON, and a CSV file with
//! every differing field.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use crate::RebuildError;
use crate::compare::{DriftRow, TableDrift};

/// What a run found and did.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub run_id: i64,
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub snapshot_at: OffsetDateTime,
    pub orders: u64,
    pub cells: u64,
    pub daily: TableDrift,
    /// `order_facts`.
    pub facts: TableDrift,
    /// The other fact tables (`order_facts_by_customer`, `order_facts_by_id`),
    /// by name: the same rows sorted by another key, compared likewise.
    pub fact_copies: std::collections::BTreeMap<String, TableDrift>,
    /// Orders with events still in the outbox (or dead-lettered) at the
    /// snapshot: their facts are not compared this time.
    pub orders_not_compared: u64,
    /// Cells where the ingest's running totals (`ingest_daily_totals`)
    /// disagreed with the write store at the snapshot: drift that the next
    /// push of those cells would carry into ClickHouse.
    pub ingest_totals_drift: u64,
    pub dead_letters: i64,
    pub swapped: bool,
    /// Events consumed by the ingest during the run and replayed onto the
    /// shadow before the swap.
    pub replayed_events: u64,
    /// How long the ingest was held to freeze the live tables.
    pub register_paused_ms: u64,
    /// How long the ingest was held for the swap.
    pub ingest_paused_ms: u64,
    pub seconds: f64,
    pub notes: Vec<String>,
    /// The deployment's reporting zone before this run changed it.
    pub zone_changed_from: Option<String>,
}

impl RunOutcome {
    pub fn has_drift(&self) -> bool {
        self.differing() > 0 || self.ingest_totals_drift > 0
    }

    /// Rows missing, extra or different, over every projection.
    pub fn differing(&self) -> u64 {
        self.tables().map(|(_, t)| t.differing()).sum()
    }

    /// Every projection's comparison, by table name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableDrift)> {
        [("daily_revenue", &self.daily), ("order_facts", &self.facts)]
            .into_iter()
            .chain(self.fact_copies.iter().map(|(n, t)| (n.as_str(), t)))
    }

    /// Drift with the shape of a calendar mismatch rather than of lost or
    /// doubled events: every order is there on both sides, and every fact
    /// shown differs in its reporting day alone.
    pub fn calendar_shaped(&self) -> bool {
        let f = &self.facts;
        f.different > 0
            && f.missing == 0
            && f.extra == 0
            && !f.worst.is_empty()
            && f.worst
                .iter()
                .all(|r| !r.fields.is_empty() && r.fields.iter().all(|d| d.field == "placed_day"))
    }
}

/// Every differing field of every differing row, one CSV line each
/// (long format, so facts and cells share one file).
pub struct CsvReport {
    out: BufWriter<File>,
    rows: u64,
}

impl CsvReport {
    pub const HEADER: &'static str = "table,kind,key,currency,field,expected,live,delta";

    pub fn create(path: &Path) -> Result<CsvReport, RebuildError> {
        let file = File::create(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{}", Self::HEADER)?;
        Ok(CsvReport { out, rows: 0 })
    }

    pub fn write(&mut self, row: &DriftRow) -> Result<(), RebuildError> {
        self.rows += 1;
        for f in &row.fields {
            writeln!(
                self.out,
                "{},{},{},{},{},{},{},{}",
                row.table,
                row.kind.as_str(),
                csv_field(&row.key),
                csv_field(&row.currency),
                f.field,
                csv_field(f.expected.as_deref().unwrap_or("")),
                csv_field(f.live.as_deref().unwrap_or("")),
                f.delta.map(|d| d.to_string()).unwrap_or_default()
            )?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<u64, RebuildError> {
        self.out.flush()?;
        Ok(self.rows)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `2026-11-23 14:18:07 UTC`: what an operator reads in a summary.
pub fn utc(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_else(|_| t.to_string())
}

/// Thousands separated with a thin space, as finance reads them.
fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The human summary printed by `tally verify` and `tally rebuild`.
pub fn summary(o: &RunOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} run #{} — write store snapshot at {} — {} orders, {} daily cells, {:.1} s",
        o.kind,
        o.run_id,
        o.snapshot_at,
        n(o.orders),
        n(o.cells),
        o.seconds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>12} {:>12} {:>9} {:>9} {:>10}",
        "projection", "compared", "matching", "missing", "extra", "different"
    );
    for (name, t) in o.tables() {
        let _ = writeln!(
            s,
            "{:<24} {:>12} {:>12} {:>9} {:>9} {:>10}",
            name,
            n(t.compared),
            n(t.matching),
            n(t.missing),
            n(t.extra),
            n(t.different)
        );
    }
    if o.has_drift() {
        let _ = writeln!(s);
        let _ = writeln!(s, "absolute drift per currency (minor units):");
        for (name, t) in o.tables() {
            drift_table(&mut s, name, t);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "worst offenders:");
        for r in o.tables().flat_map(|(_, t)| t.worst.iter()).take(10) {
            let fields: Vec<String> = r
                .fields
                .iter()
                .map(|f| {
                    format!(
                        "{} {} → {}",
                        f.field,
                        f.expected.as_deref().unwrap_or("∅"),
                        f.live.as_deref().unwrap_or("∅")
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "  {:<24} {:<9} {}  {}",
                r.table,
                r.kind.as_str(),
                r.key,
                fields.join(", ")
            );
        }
    }
    if o.orders_not_compared > 0 {
        let _ = writeln!(
            s,
            "\n{} order(s) had events not yet projected at the snapshot; their facts were not compared.",
            n(o.orders_not_compared)
        );
    }
    for note in &o.notes {
        let _ = writeln!(s, "note: {note}");
    }
    if o.calendar_shaped() && !o.swapped {
        let _ = writeln!(
            s,
            "\nThe order facts differ in their reporting day alone: the live projections count \
             days in another calendar than this run's, which is not lost or doubled events. This \
             run used the deployment's recorded zone (`tally migrate` prints it), so the live \
             tables are the odd ones out; `tally verify --repair` puts them right."
        );
    }
    let _ = writeln!(s);
    let verdict = match (o.has_drift(), o.swapped) {
        (false, false) => "no drift".to_owned(),
        (false, true) => "no drift; rebuilt tables swapped in".to_owned(),
        (true, true) => "DRIFT found; repaired: the rebuilt tables are live".to_owned(),
        (true, false) => {
            "DRIFT found (run `tally verify --repair` to swap the rebuilt tables in)".to_owned()
        }
    };
    let _ = writeln!(s, "result: {verdict}");
    s
}

fn drift_table(s: &mut String, name: &str, t: &TableDrift) {
    for (currency, by) in &t.drift_by_currency {
        let cols: Vec<String> = by.iter().map(|(m, v)| format!("{m} {v}")).collect();
        let _ = writeln!(s, "  {name:<24} {currency}  {}", cols.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1 000");
        assert_eq!(n(1234567), "1 234 567");
    }

    #[test]
    fn csv_fields_with_separators_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
