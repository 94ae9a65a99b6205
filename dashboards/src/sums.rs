//! Exact sums over any range, and the rows they arrive in. Cells are
//! 64-bit; a range's sum is taken in 128 bits, which ClickHouse 18.16 can
//! only give as two 64-bit halves ([`split_sum`]), put together here.

use clickhouse::Row;
use serde::Deserialize;
use time::Date;

/// Every figure summed over a range. Cells are 64-bit; any sum of them is
/// taken in 128 bits ([`split_sum`] in ClickHouse, `i128` here), so no
/// range can overflow or wrap: ClickHouse's `sum(Int64)` would wrap
/// silently past 9.2e18.
pub type Wide = i128;

/// `sum(column)` exactly, whatever the range. ClickHouse sums a 64-bit
/// column exactly only while the sum fits 64 bits, and `Int128` is newer
/// than 18.16 (`Decimal128` is there, but 18.16 crashes reading it inside
/// `groupArray`). So a column is summed as two halves that cannot overflow
/// for fewer than 2^31 rows: its high 32 bits (an arithmetic shift) and its
/// low 32 bits (unsigned). The sum is `hi · 2^32 + lo`, put together in
/// 128 bits by [`Halves`]. Two columns where one was, and only `Int64`
/// arithmetic: on 18.16 it costs less than summing `Decimal128`.
pub(crate) fn split_sum(column: &str, cond: Option<&str>) -> String {
    let (hi, lo) = halves_of(column);
    match cond {
        None => format!("sum({hi}), sum({lo})"),
        Some(c) => format!("sumIf({hi}, {c}), sumIf({lo}, {c})"),
    }
}

/// A column's high and low 32 bits, as the SQL expressions [`split_sum`]
/// and [`merchant_sums`] add up.
fn halves_of(column: &str) -> (String, String) {
    (
        format!("bitShiftRight({column}, 32)"),
        format!("bitAnd({column}, 4294967295)"),
    )
}

/// The two columns of a [`split_sum`].
#[derive(Deserialize, Debug, Clone, Copy)]
pub(crate) struct Halves {
    hi: i64,
    lo: i64,
}

impl From<Halves> for Wide {
    fn from(h: Halves) -> Wide {
        (Wide::from(h.hi) << 32) + Wide::from(h.lo)
    }
}

pub(crate) fn halves<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Wide, D::Error> {
    Halves::deserialize(d).map(Wide::from)
}

/// Sums of one (day or period, currency), read from the columns of
/// [`sums`].
#[derive(Row, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    #[serde(deserialize_with = "halves")]
    pub orders_placed: Wide,
    #[serde(deserialize_with = "halves")]
    pub orders_cancelled: Wide,
    #[serde(deserialize_with = "halves")]
    pub items_sold: Wide,
    #[serde(deserialize_with = "halves")]
    pub gross_minor: Wide,
    #[serde(deserialize_with = "halves")]
    pub captured_minor: Wide,
    #[serde(deserialize_with = "halves")]
    pub refunded_minor: Wide,
}

impl Sums {
    pub fn net_minor(&self) -> Wide {
        self.captured_minor - self.refunded_minor
    }
}

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, o: Sums) {
        self.orders_placed += o.orders_placed;
        self.orders_cancelled += o.orders_cancelled;
        self.items_sold += o.items_sold;
        self.gross_minor += o.gross_minor;
        self.captured_minor += o.captured_minor;
        self.refunded_minor += o.refunded_minor;
    }
}

/// The columns of [`Sums`], in its order.
const SUM_COLUMNS: [&str; 6] = [
    "orders_placed",
    "orders_cancelled",
    "items_sold",
    "gross_minor",
    "captured_minor",
    "refunded_minor",
];

/// The [`split_sum`] (or its `sumIf` with `cond`) of every [`Sums`] column.
pub(crate) fn sums(cond: Option<&str>) -> String {
    SUM_COLUMNS.map(|c| split_sum(c, cond)).join(", ")
}

/// Per merchant, split ([`split_sum`]): `net_hi, net_lo, orders_hi,
/// orders_lo, gross_hi, gross_lo`. Net is captured minus refunded, half by
/// half.
pub(crate) fn merchant_sums() -> String {
    let hi = |c: &str| format!("sum({})", halves_of(c).0);
    let lo = |c: &str| format!("sum({})", halves_of(c).1);
    format!(
        "{} - {} AS net_hi, {} - {} AS net_lo, {} AS orders_hi, {} AS orders_lo, \
         {} AS gross_hi, {} AS gross_lo",
        hi("captured_minor"),
        hi("refunded_minor"),
        lo("captured_minor"),
        lo("refunded_minor"),
        hi("orders_placed"),
        lo("orders_placed"),
        hi("gross_minor"),
        lo("gross_minor"),
    )
}

#[derive(Row, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyRow {
    #[serde(with = "clickhouse::serde::time::date")]
    pub day: Date,
    pub currency: [u8; 3],
    pub sums: Sums,
}

#[derive(Row, Deserialize, Debug, PartialEq, Eq)]
pub struct PeriodRow {
    pub currency: [u8; 3],
    /// The requested period.
    pub current: Sums,
    /// The period of equal length before it.
    pub previous: Sums,
}

#[derive(Row, Deserialize, Debug, PartialEq, Eq)]
#[serde(from = "SplitTop")]
pub struct TopRow {
    /// Net of every merchant in the range (the denominator of the shares).
    pub total_net_minor: Wide,
    pub merchants: u64,
    /// (merchant, net, orders placed, gross), best first.
    pub top: Vec<(String, Wide, Wide, Wide)>,
}

/// [`TopRow`] as `plan::top_sql` sends it: every figure in halves.
#[derive(Deserialize)]
struct SplitTop {
    total: Halves,
    merchants: u64,
    top: Vec<(String, i64, i64, i64, i64, i64, i64)>,
}

impl From<SplitTop> for TopRow {
    fn from(t: SplitTop) -> TopRow {
        let w = |hi, lo| Wide::from(Halves { hi, lo });
        TopRow {
            total_net_minor: t.total.into(),
            merchants: t.merchants,
            top: t
                .top
                .into_iter()
                .map(|(m, nh, nl, oh, ol, gh, gl)| (m, w(nh, nl), w(oh, ol), w(gh, gl)))
                .collect(),
        }
    }
}

#[derive(Row, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MerchantRow {
    pub merchant_id: String,
    #[serde(deserialize_with = "halves")]
    pub net: Wide,
    #[serde(deserialize_with = "halves")]
    pub orders: Wide,
    #[serde(deserialize_with = "halves")]
    pub gross: Wide,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summed_columns_are_the_domains_measures() {
        let mut ours = SUM_COLUMNS.to_vec();
        let mut domain = tally_domain::DailyMeasures::NAMES.to_vec();
        ours.sort_unstable();
        domain.sort_unstable();
        assert_eq!(ours, domain);
    }
}
