//! What the read endpoints answer: JSON bodies and the same tables as CSV.
//!
//! Money is an exact integer of minor units beside a decimal string in the
//! currency's exponent; ratios (shares, changes) are computed in integer
//! arithmetic and rendered as fixed-point strings, so the page and a CSV
//! reader see the same digits the JSON does. Nothing here adds amounts of
//! different currencies.

use serde::{Deserialize, Serialize};
use tally_domain::Currency;
use tally_domain::money::format_minor;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::params::DayRange;
use crate::sums::{Sums, Wide};

/// How complete the read side is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Freshness {
    /// Every event committed before this instant is counted (RFC 3339), or
    /// `null` if the ingest has never reported.
    pub complete_up_to: Option<String>,
    /// Seconds between `complete_up_to` and the answer.
    pub lag_seconds: Option<f64>,
}

impl Freshness {
    pub fn at(watermark: Option<OffsetDateTime>, now: OffsetDateTime) -> Freshness {
        Freshness {
            complete_up_to: watermark.and_then(|t| t.format(&Rfc3339).ok()),
            lag_seconds: watermark
                .map(|t| ((now - t).as_seconds_f64().max(0.0) * 1000.0).round() / 1000.0),
        }
    }
}

/// `value / base` as a percentage with `decimals` places, rounded half away
/// from zero; `None` when `base` is zero.
pub fn percent(value: Wide, base: Wide, decimals: u32) -> Option<String> {
    if base == 0 {
        return None;
    }
    let scale = 10i128.pow(decimals);
    // Checked: a 128-bit figure this large has no meaningful percentage.
    let num = value.checked_mul(100)?.checked_mul(scale)?;
    let den = base;
    let q = (num.abs() + den.abs() / 2) / den.abs();
    let negative = (num < 0) != (den < 0) && q != 0;
    let (int, frac) = (q / scale, q % scale);
    let sign = if negative { "-" } else { "" };
    Some(if decimals == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac:0width$}", width = decimals as usize)
    })
}

/// `total / count` in minor units, rounded half away from zero.
pub fn average(total: Wide, count: Wide) -> Option<Wide> {
    if count <= 0 {
        return None;
    }
    let (t, c) = (total, count);
    let q = (t.abs() + c / 2) / c;
    Some(if t < 0 { -q } else { q })
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DailyRevenue {
    pub day: String,
    pub currency: String,
    pub orders_placed: Wide,
    pub orders_cancelled: Wide,
    pub items_sold: Wide,
    pub gross_minor: Wide,
    pub captured_minor: Wide,
    pub refunded_minor: Wide,
    pub net_minor: Wide,
    /// Gross placed per order placed; `null` on a day without orders.
    pub average_order_minor: Option<Wide>,
    pub gross: String,
    pub captured: String,
    pub refunded: String,
    pub net: String,
    pub average_order: Option<String>,
}

impl DailyRevenue {
    pub fn new(day: String, currency: Currency, s: &Sums) -> DailyRevenue {
        let aov = average(s.gross_minor, s.orders_placed);
        DailyRevenue {
            day,
            currency: currency.code().to_owned(),
            orders_placed: s.orders_placed,
            orders_cancelled: s.orders_cancelled,
            items_sold: s.items_sold,
            gross_minor: s.gross_minor,
            captured_minor: s.captured_minor,
            refunded_minor: s.refunded_minor,
            net_minor: s.net_minor(),
            average_order_minor: aov,
            gross: format_minor(s.gross_minor, currency),
            captured: format_minor(s.captured_minor, currency),
            refunded: format_minor(s.refunded_minor, currency),
            net: format_minor(s.net_minor(), currency),
            average_order: aov.map(|m| format_minor(m, currency)),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DailyResponse {
    pub from: String,
    pub to: String,
    pub freshness: Freshness,
    pub rows: Vec<DailyRevenue>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TopMerchant {
    pub rank: u32,
    pub merchant_id: String,
    pub net_minor: Wide,
    pub net: String,
    pub gross_minor: Wide,
    pub gross: String,
    pub orders_placed: Wide,
    /// This merchant's part of the currency's net revenue over all
    /// merchants, in percent with two decimals; `null` when that total is
    /// zero.
    pub share_percent: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TopResponse {
    pub from: String,
    pub to: String,
    pub currency: String,
    pub freshness: Freshness,
    /// Net revenue of all merchants in the range (the shares' base).
    pub total_net_minor: Wide,
    pub total_net: String,
    /// Merchants with any activity in the range.
    pub merchants: u64,
    pub rows: Vec<TopMerchant>,
}

/// One measure of the period summary.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    pub measure: String,
    /// `minor` (money, in the currency's minor units) or `count`.
    pub unit: String,
    pub current: Wide,
    pub previous: Wide,
    pub change: Wide,
    /// The three figures formatted: decimals for money, integers for counts.
    pub current_formatted: String,
    pub previous_formatted: String,
    pub change_formatted: String,
    /// Change relative to the previous period's magnitude, in percent with
    /// one decimal; `null` when the previous period had none.
    pub change_percent: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CurrencySummary {
    pub currency: String,
    pub measures: Vec<Measure>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SummaryResponse {
    pub from: String,
    pub to: String,
    pub previous_from: String,
    pub previous_to: String,
    pub freshness: Freshness,
    pub currencies: Vec<CurrencySummary>,
}

/// One measure of the summary: its name, whether it is money, and how it
/// is read from a period's sums (`None`: undefined, e.g. the average of no
/// orders).
struct MeasureDef {
    name: &'static str,
    money: bool,
    value: fn(&Sums) -> Option<Wide>,
}

/// The measures in the order the page shows them.
const MEASURES: [MeasureDef; 8] = [
    MeasureDef {
        name: "net",
        money: true,
        value: |s| Some(s.net_minor()),
    },
    MeasureDef {
        name: "captured",
        money: true,
        value: |s| Some(s.captured_minor),
    },
    MeasureDef {
        name: "refunded",
        money: true,
        value: |s| Some(s.refunded_minor),
    },
    MeasureDef {
        name: "gross",
        money: true,
        value: |s| Some(s.gross_minor),
    },
    MeasureDef {
        name: "orders_placed",
        money: false,
        value: |s| Some(s.orders_placed),
    },
    MeasureDef {
        name: "average_order",
        money: true,
        value: |s| average(s.gross_minor, s.orders_placed),
    },
    MeasureDef {
        name: "orders_cancelled",
        money: false,
        value: |s| Some(s.orders_cancelled),
    },
    MeasureDef {
        name: "items_sold",
        money: false,
        value: |s| Some(s.items_sold),
    },
];

impl CurrencySummary {
    pub fn new(currency: Currency, current: &Sums, previous: &Sums) -> CurrencySummary {
        let measures = MEASURES
            .iter()
            .map(|m| {
                let fmt = |v: Wide| {
                    if m.money {
                        format_minor(v, currency)
                    } else {
                        v.to_string()
                    }
                };
                let c = (m.value)(current).unwrap_or(0);
                let p = (m.value)(previous).unwrap_or(0);
                let change = c - p;
                Measure {
                    measure: m.name.to_owned(),
                    unit: if m.money { "minor" } else { "count" }.to_owned(),
                    current: c,
                    previous: p,
                    change,
                    current_formatted: fmt(c),
                    previous_formatted: fmt(p),
                    change_formatted: fmt(change),
                    change_percent: percent(change, p.abs(), 1),
                }
            })
            .collect();
        CurrencySummary {
            currency: currency.code().to_owned(),
            measures,
        }
    }
}

/// A response body the page shows as a table: it says how fresh it is and
/// can be downloaded as CSV.
pub trait Table: Serialize {
    fn freshness(&self) -> &Freshness;
    fn csv(&self) -> String;
}

/// A CSV document, RFC 4180 quoting where a field needs it.
///
/// A text cell a spreadsheet would read as a formula (starting with `=`,
/// `+`, `-`, `@`, a tab or a carriage return) is prefixed with `'`, as
/// OWASP advises for CSV injection; numbers, negative ones included, are
/// left as they are. Merchant ids are slugs today, so this is defence in
/// depth: the CSV must stay safe whatever a cell comes to hold.
#[derive(Default)]
pub struct Csv(String);

/// A field as it may be written: formula-looking text defused.
fn defuse(f: &str) -> std::borrow::Cow<'_, str> {
    let risky = f.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let number = {
        let digits = f.strip_prefix('-').unwrap_or(f);
        let mut parts = digits.splitn(2, '.');
        let int = parts.next().unwrap_or("");
        let frac = parts.next();
        !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.is_none_or(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if risky && !number {
        std::borrow::Cow::Owned(format!("'{f}"))
    } else {
        std::borrow::Cow::Borrowed(f)
    }
}

impl Csv {
    pub fn row<I, S>(&mut self, fields: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for (i, f) in fields.into_iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let f = defuse(f.as_ref());
            if f.contains([',', '"', '\n', '\r']) {
                self.0.push('"');
                self.0.push_str(&f.replace('"', "\"\""));
                self.0.push('"');
            } else {
                self.0.push_str(&f);
            }
        }
        self.0.push_str("\r\n");
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

fn opt(v: &Option<impl ToString>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

impl Table for DailyResponse {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    fn csv(&self) -> String {
        let mut c = Csv::default();
        c.row([
            "day",
            "currency",
            "orders_placed",
            "orders_cancelled",
            "items_sold",
            "gross_minor",
            "captured_minor",
            "refunded_minor",
            "net_minor",
            "average_order_minor",
            "gross",
            "captured",
            "refunded",
            "net",
            "average_order",
        ]);
        for r in &self.rows {
            c.row([
                r.day.clone(),
                r.currency.clone(),
                r.orders_placed.to_string(),
                r.orders_cancelled.to_string(),
                r.items_sold.to_string(),
                r.gross_minor.to_string(),
                r.captured_minor.to_string(),
                r.refunded_minor.to_string(),
                r.net_minor.to_string(),
                opt(&r.average_order_minor),
                r.gross.clone(),
                r.captured.clone(),
                r.refunded.clone(),
                r.net.clone(),
                opt(&r.average_order),
            ]);
        }
        c.into_string()
    }
}

impl Table for TopResponse {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    fn csv(&self) -> String {
        let mut c = Csv::default();
        c.row([
            "rank",
            "merchant_id",
            "currency",
            "net_minor",
            "net",
            "gross_minor",
            "gross",
            "orders_placed",
            "share_percent",
        ]);
        for r in &self.rows {
            c.row([
                r.rank.to_string(),
                r.merchant_id.clone(),
                self.currency.clone(),
                r.net_minor.to_string(),
                r.net.clone(),
                r.gross_minor.to_string(),
                r.gross.clone(),
                r.orders_placed.to_string(),
                opt(&r.share_percent),
            ]);
        }
        c.into_string()
    }
}

impl Table for SummaryResponse {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    fn csv(&self) -> String {
        let mut c = Csv::default();
        c.row([
            "currency",
            "measure",
            "unit",
            "current",
            "previous",
            "change",
            "current_formatted",
            "previous_formatted",
            "change_formatted",
            "change_percent",
        ]);
        for cur in &self.currencies {
            for m in &cur.measures {
                c.row([
                    cur.currency.clone(),
                    m.measure.clone(),
                    m.unit.clone(),
                    m.current.to_string(),
                    m.previous.to_string(),
                    m.change.to_string(),
                    m.current_formatted.clone(),
                    m.previous_formatted.clone(),
                    m.change_formatted.clone(),
                    opt(&m.change_percent),
                ]);
            }
        }
        c.into_string()
    }
}

/// A file name for a download: `daily-revenue_2026-01-01_2026-03-31.csv`.
pub fn file_name(table: &str, range: DayRange, currency: Option<Currency>) -> String {
    match currency {
        Some(c) => format!("{table}_{}_{}_{}.csv", c.code(), range.from, range.to),
        None => format!("{table}_{}_{}.csv", range.from, range.to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn percent_rounds_half_away_from_zero_in_integers() {
        assert_eq!(percent(1, 3, 2).as_deref(), Some("33.33"));
        assert_eq!(percent(2, 3, 2).as_deref(), Some("66.67"));
        assert_eq!(percent(-2, 3, 1).as_deref(), Some("-66.7"));
        assert_eq!(percent(1, 8, 1).as_deref(), Some("12.5"));
        assert_eq!(percent(1, 16, 1).as_deref(), Some("6.3")); // 6.25 → 6.3
        assert_eq!(percent(-1, 16, 1).as_deref(), Some("-6.3"));
        assert_eq!(percent(0, 5, 1).as_deref(), Some("0.0"));
        assert_eq!(percent(-1, 100_000, 1).as_deref(), Some("0.0")); // no "-0.0"
        assert_eq!(percent(5, 0, 1), None);
        assert_eq!(
            percent(i64::MAX.into(), 1, 2).as_deref().map(str::len),
            Some(24)
        );
        assert_eq!(percent(Wide::MAX, 1, 2), None); // checked, not wrapped
    }

    #[test]
    fn average_order_value_rounds_and_skips_empty_days() {
        assert_eq!(average(1000, 3), Some(333));
        assert_eq!(average(1001, 2), Some(501)); // 500.5 → 501
        assert_eq!(average(-1001, 2), Some(-501));
        assert_eq!(average(1000, 0), None);
    }

    #[test]
    fn summary_measures_compare_with_the_previous_period() {
        let cur = Sums {
            orders_placed: 4,
            orders_cancelled: 1,
            items_sold: 9,
            gross_minor: 10_000,
            captured_minor: 8_000,
            refunded_minor: 500,
        };
        let prev = Sums {
            orders_placed: 2,
            captured_minor: 6_000,
            refunded_minor: 0,
            gross_minor: 6_000,
            ..Sums::default()
        };
        let s = CurrencySummary::new(eur(), &cur, &prev);
        let names: Vec<&str> = s.measures.iter().map(|m| m.measure.as_str()).collect();
        assert_eq!(names, MEASURES.map(|m| m.name));
        let net = &s.measures[0];
        assert_eq!(
            (net.current, net.previous, net.change),
            (7_500, 6_000, 1_500)
        );
        assert_eq!(net.current_formatted, "75.00");
        assert_eq!(net.change_formatted, "15.00");
        assert_eq!(net.change_percent.as_deref(), Some("25.0"));
        let refunded = &s.measures[2];
        assert_eq!(refunded.change_percent, None); // nothing refunded before
        let orders = &s.measures[4];
        assert_eq!(
            (orders.unit.as_str(), orders.current_formatted.as_str()),
            ("count", "4")
        );
        assert_eq!(orders.change_percent.as_deref(), Some("100.0"));
        let aov = &s.measures[5];
        assert_eq!((aov.current, aov.previous), (2_500, 3_000));
        assert_eq!(aov.change_percent.as_deref(), Some("-16.7"));
    }

    #[test]
    fn a_negative_previous_period_gives_a_change_of_the_right_sign() {
        let cur = Sums {
            captured_minor: 100,
            ..Sums::default()
        };
        let prev = Sums {
            refunded_minor: 100,
            ..Sums::default()
        };
        let s = CurrencySummary::new(eur(), &cur, &prev);
        // -1.00 → 1.00 is an improvement of 200 % of the previous magnitude.
        assert_eq!(s.measures[0].change_percent.as_deref(), Some("200.0"));
    }

    #[test]
    fn csv_defuses_formulas_but_not_numbers() {
        let mut c = Csv::default();
        c.row([
            "=HYPERLINK(\"x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "-12.50",
            "-7",
            "0.5",
            "acme",
        ]);
        assert_eq!(
            c.into_string(),
            "\"'=HYPERLINK(\"\"x\"\")\",'+1+1,'-2+3,'@SUM(A1),'\tx,-12.50,-7,0.5,acme\r\n"
        );
        for odd in ["-", "-.5", "-1.", "-1.2.3", "-1e5"] {
            assert!(defuse(odd).starts_with('\''), "{odd}");
        }
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let mut c = Csv::default();
        c.row(["a", "b,c", "say \"hi\"", "-12.50"]);
        assert_eq!(c.into_string(), "a,\"b,c\",\"say \"\"hi\"\"\",-12.50\r\n");
    }

    #[test]
    fn daily_rows_carry_exact_minor_units_and_their_decimal_strings() {
        let s = Sums {
            orders_placed: 3,
            gross_minor: 1_000,
            captured_minor: 999,
            refunded_minor: 1_500,
            ..Sums::default()
        };
        let r = DailyRevenue::new("2026-11-23".into(), eur(), &s);
        assert_eq!((r.net_minor, r.net.as_str()), (-501, "-5.01"));
        assert_eq!(r.average_order_minor, Some(333));
        assert_eq!(r.average_order.as_deref(), Some("3.33"));
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(DailyRevenue::new("d".into(), jpy, &s).gross, "1000");
    }

    #[test]
    fn freshness_reports_lag_and_none_before_the_first_batch() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let f = Freshness::at(Some(now - time::Duration::milliseconds(1500)), now);
        assert_eq!(f.lag_seconds, Some(1.5));
        assert_eq!(f.complete_up_to.as_deref(), Some("2027-01-15T07:59:58.5Z"));
        assert_eq!(Freshness::at(None, now).lag_seconds, None);
    }
}
