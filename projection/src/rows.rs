//! ClickHouse row types and the pure mapping from events to rows.
//!
//! Field order must match the table's column order: the client writes
//! RowBinary without names (ClickHouse 18.16 has no
//! RowBinaryWithNamesAndTypes). The integration tests insert and read back
//! every type against a real server.

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, DailyMeasures, EventEnvelope, MerchantId, ParseError};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// One row of the fact tables ([`FACT_TABLES`]): the order's state at
/// `version`.
#[derive(Row, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub order_id: Uuid,
    pub version: u32,
    pub merchant_id: String,
    pub customer_id: String,
    pub currency: [u8; 3],
    pub status: String,
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub placed_at: OffsetDateTime,
    #[serde(with = "clickhouse::serde::time::date")]
    pub placed_day: Date,
    pub item_count: u64,
    pub total_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub updated_at: OffsetDateTime,
}

/// A table of order facts and the column it is sorted by first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactTable {
    /// The live table's name.
    pub live: &'static str,
    /// What it finds fast: its sorting key's first column.
    pub key: &'static str,
}

/// The fact tables: the same rows, each sorted for one kind of question
/// (a merchant's orders, a customer's, one order by id). Every writer of
/// facts writes all of them ([`crate::insert_facts`]); a rebuild builds,
/// compares and swaps each.
pub const FACT_TABLES: [FactTable; 3] = [
    FactTable {
        live: "order_facts",
        key: "merchant_id",
    },
    FactTable {
        live: "order_facts_by_customer",
        key: "customer_id",
    },
    FactTable {
        live: "order_facts_by_id",
        key: "order_id",
    },
];

/// Every table the ingest projects into: the fact tables and the daily
/// cells (what the watermark vouches for).
pub const PROJECTED_TABLES: [&str; 4] = [
    FACT_TABLES[0].live,
    FACT_TABLES[1].live,
    FACT_TABLES[2].live,
    "daily_revenue",
];

/// One row of `daily_revenue`: the absolute totals of a cell at `version`.
#[derive(Row, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DailyRow {
    #[serde(with = "clickhouse::serde::time::date")]
    pub day: Date,
    pub merchant_id: String,
    pub currency: [u8; 3],
    pub orders_placed: i64,
    pub gross_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub orders_cancelled: i64,
    pub items_sold: i64,
    pub version: u64,
}

impl DailyRow {
    /// The row of one cell with these measures.
    pub fn new(
        day: Date,
        merchant_id: String,
        currency: [u8; 3],
        m: &DailyMeasures,
        version: u64,
    ) -> Self {
        DailyRow {
            day,
            merchant_id,
            currency,
            orders_placed: m.orders_placed,
            gross_minor: m.gross_minor,
            captured_minor: m.captured_minor,
            refunded_minor: m.refunded_minor,
            orders_cancelled: m.orders_cancelled,
            items_sold: m.items_sold,
            version,
        }
    }

    /// The row of one cell with these measures.
    pub fn of_cell(key: &CellKey, m: &DailyMeasures, version: u64) -> Self {
        DailyRow::new(
            key.day,
            key.merchant.to_string(),
            key.currency.code_bytes(),
            m,
            version,
        )
    }

    /// The cell this row is about. Fails only for a row no Tally process
    /// wrote (its merchant or currency would not have been accepted).
    pub fn key(&self) -> Result<CellKey, ParseError> {
        CellKey::parse(
            self.day,
            &self.merchant_id,
            &String::from_utf8_lossy(&self.currency),
        )
    }

    pub fn measures(&self) -> DailyMeasures {
        DailyMeasures {
            orders_placed: self.orders_placed,
            gross_minor: self.gross_minor,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            orders_cancelled: self.orders_cancelled,
            items_sold: self.items_sold,
        }
    }
}

/// One row of `ingest_watermark`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct WatermarkRow {
    pub stream: String,
    pub watermark_us: i64,
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub recorded_at: OffsetDateTime,
}

pub fn currency_bytes(code: &str) -> [u8; 3] {
    let b = code.as_bytes();
    [
        b.first().copied().unwrap_or(b'?'),
        b.get(1).copied().unwrap_or(b'?'),
        b.get(2).copied().unwrap_or(b'?'),
    ]
}

/// The time zone whose midnight separates reporting days. Finance teams
/// close their books in one zone; UTC unless configured.
#[derive(Clone, Debug)]
pub struct ReportingZone {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl ReportingZone {
    pub fn utc() -> Self {
        ReportingZone {
            name: "UTC".into(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    /// An IANA zone name such as `Europe/Berlin`.
    pub fn parse(name: &str) -> Result<Self, String> {
        jiff::tz::TimeZone::get(name)
            .map(|tz| ReportingZone {
                name: name.to_owned(),
                tz,
            })
            .map_err(|e| {
                format!(
                    "`{name}` is not a known IANA time zone (such as UTC or Europe/Berlin): {e}"
                )
            })
    }

    /// Whether two names mean the same zone as recorded (`utc` is `UTC`).
    pub fn same_as(&self, other: &ReportingZone) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
    }

    /// The name, as PostgreSQL's `AT TIME ZONE` accepts it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reporting day an instant falls on.
    pub fn day(&self, at: OffsetDateTime) -> Date {
        let local = jiff::Timestamp::from_nanosecond(at.unix_timestamp_nanos())
            .map(|ts| ts.to_zoned(self.tz.clone()).date());
        match local {
            Ok(d) => time::Month::try_from(d.month() as u8)
                .ok()
                .and_then(|m| Date::from_calendar_date(i32::from(d.year()), m, d.day() as u8).ok())
                .unwrap_or(at.date()),
            Err(_) => at.to_offset(time::UtcOffset::UTC).date(),
        }
    }
}

impl FactRow {
    pub fn from_envelope(e: &EventEnvelope, zone: &ReportingZone) -> FactRow {
        let o = &e.order;
        FactRow {
            order_id: o.id.as_uuid(),
            version: o.version.get(),
            merchant_id: o.merchant_id.to_string(),
            customer_id: o.customer_id.to_string(),
            currency: currency_bytes(o.currency.code()),
            status: o.status.as_str().to_owned(),
            placed_at: o.placed_at,
            placed_day: zone.day(o.placed_at),
            item_count: o.item_count,
            total_minor: o.total.minor(),
            captured_minor: o.captured.minor(),
            refunded_minor: o.refunded.minor(),
            updated_at: e.occurred_at,
        }
    }
}

/// A daily cell: one merchant's figures in one currency on one reporting
/// day. Orders as (day, merchant, currency code), the order in which the
/// running totals lock their rows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub day: Date,
    pub merchant: MerchantId,
    pub currency: Currency,
}

impl CellKey {
    /// A key from stored text (PostgreSQL `text`/`char(3)`, ClickHouse
    /// `String`/`FixedString(3)`): trailing blanks of a `char(3)` are
    /// ignored, anything the domain would not accept is refused.
    pub fn parse(day: Date, merchant: &str, currency: &str) -> Result<CellKey, ParseError> {
        Ok(CellKey {
            day,
            merchant: MerchantId::parse(merchant)?,
            currency: Currency::parse(currency.trim_end())?,
        })
    }
}

impl std::fmt::Display for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}, {})", self.day, self.merchant, self.currency)
    }
}

/// What a batch of events becomes.
#[derive(Debug, Default)]
pub struct Projected {
    /// The newest fact row per order.
    pub facts: Vec<FactRow>,
    /// The summed deltas per cell.
    pub cells: BTreeMap<CellKey, DailyMeasures>,
    /// Events left out of both because their delta would take a cell of
    /// the batch past 64 bits (by index into the input): the caller parks
    /// them rather than count a clamped figure.
    pub overflowing: Vec<usize>,
}

/// The newest fact row per order, and the summed deltas per cell, of a
/// batch of events. Pure: the worker's I/O happens around it.
pub fn project(events: &[EventEnvelope], zone: &ReportingZone) -> Projected {
    let mut facts: BTreeMap<Uuid, FactRow> = BTreeMap::new();
    let mut out = Projected::default();
    for (i, e) in events.iter().enumerate() {
        let delta = DailyMeasures::of_event(&e.event);
        if !delta.is_zero() {
            let key = CellKey {
                day: zone.day(e.occurred_at),
                merchant: e.order.merchant_id.clone(),
                currency: e.order.currency,
            };
            let cell = out.cells.entry(key).or_default();
            match cell.checked_add(&delta) {
                Some(sum) => *cell = sum,
                None => {
                    out.overflowing.push(i);
                    continue;
                }
            }
        }
        let row = FactRow::from_envelope(e, zone);
        match facts.get(&row.order_id) {
            Some(existing) if existing.version >= row.version => {}
            _ => {
                facts.insert(row.order_id, row);
            }
        }
    }
    out.facts = facts.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn reporting_days_follow_the_configured_zone() {
        let late_utc = datetime!(2026-11-23 23:30 UTC);
        assert_eq!(ReportingZone::utc().day(late_utc), date!(2026 - 11 - 23));
        let berlin = ReportingZone::parse("Europe/Berlin").unwrap();
        assert_eq!(
            berlin.day(late_utc),
            date!(2026 - 11 - 24),
            "00:30 in Berlin"
        );
        let la = ReportingZone::parse("America/Los_Angeles").unwrap();
        assert_eq!(
            la.day(datetime!(2026-11-24 05:00 UTC)),
            date!(2026 - 11 - 23)
        );
        // DST: 2026-03-29 01:30 UTC is 03:30 CEST.
        assert_eq!(
            berlin.day(datetime!(2026-03-28 23:30 UTC)),
            date!(2026 - 03 - 29)
        );
        assert!(ReportingZone::parse("Mars/Olympus").is_err());
    }
}
