//! The order lists' query string and cursor, parsed before any SQL is
//! built (like `params.rs` for the aggregates: every problem at once, as
//! `invalid-params`).
//!
//! Pages are keyset pages, newest first by `(placed_at, order_id)`. The
//! cursor is the last row's position in that order, plus its reporting
//! day: a reporting day only grows with `placed_at`, so "after the cursor"
//! also means "on or before its day", which lets ClickHouse skip every
//! newer month without reading it. An order's `placed_at` never changes,
//! so orders placed while a client pages sort before its cursor and a
//! rebuild's swap (the same rows again) moves nothing across it: each
//! order is on exactly one page.

use serde::Deserialize;
use tally_domain::{Currency, OrderStatus};
use tally_ops::problem::InvalidParam;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::params::{FIRST_DAY, Format, LAST_DAY, invalid, parse_date, parse_format, parse_limit};

/// Orders per page without `limit`, and the most a page may hold.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

/// The raw query string of the order lists.
#[derive(Debug, Default, Deserialize)]
pub struct RawOrderQuery {
    pub status: Option<String>,
    pub currency: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub format: Option<String>,
}

/// Where a page ends: the last order it showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// `placed_at` in whole seconds (ClickHouse's `DateTime`).
    pub placed_at: i64,
    pub placed_day: Date,
    pub order_id: Uuid,
}

const CURSOR_VERSION: &str = "c1";

impl Cursor {
    /// Opaque to clients; versioned so that its form can change.
    pub fn encode(&self) -> String {
        format!(
            "{CURSOR_VERSION}.{}.{}.{}",
            self.placed_at,
            self.placed_day.to_julian_day(),
            self.order_id.simple()
        )
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let mut parts = s.trim().split('.');
        if parts.next()? != CURSOR_VERSION {
            return None;
        }
        let placed_at: i64 = parts.next()?.parse().ok()?;
        let day: i32 = parts.next()?.parse().ok()?;
        let id = parts.next()?;
        if parts.next().is_some() || id.len() != 32 {
            return None;
        }
        let order_id = Uuid::try_parse(id).ok()?;
        let placed_day = Date::from_julian_day(day).ok()?;
        // Within what ClickHouse's DateTime and Date hold, so the SQL
        // never sees a value it would wrap or refuse.
        ((0..=i64::from(u32::MAX)).contains(&placed_at)
            && (FIRST_DAY..=LAST_DAY).contains(&placed_day))
        .then_some(Cursor {
            placed_at,
            placed_day,
            order_id,
        })
    }

    pub fn of(placed_at: OffsetDateTime, placed_day: Date, order_id: Uuid) -> Cursor {
        Cursor {
            placed_at: placed_at.unix_timestamp(),
            placed_day,
            order_id,
        }
    }
}

/// A validated order-list request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub currency: Option<Currency>,
    /// Reporting days, inclusive.
    pub from: Option<Date>,
    pub to: Option<Date>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
    pub format: Format,
}

impl OrderFilter {
    pub fn parse(q: &RawOrderQuery) -> Result<OrderFilter, Vec<InvalidParam>> {
        let mut errs = Vec::new();
        let status = match q.status.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => OrderStatus::parse(&s.to_ascii_lowercase())
                .map_err(|_| {
                    let all: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                    invalid(
                        &mut errs,
                        "status",
                        format!("`{s}` is not a status; one of {}", all.join(", ")),
                    );
                })
                .ok(),
        };
        let currency = match q.currency.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Currency::parse(&c.to_ascii_uppercase())
                .map_err(|e| invalid(&mut errs, "currency", e.message()))
                .ok(),
        };
        let from = q
            .from
            .as_deref()
            .and_then(|v| parse_date("from", v, &mut errs));
        let to = q.to.as_deref().and_then(|v| parse_date("to", v, &mut errs));
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            invalid(&mut errs, "from", format!("{f} is after `to` ({t})"));
        }
        let limit = parse_limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE, &mut errs);
        let cursor = match q.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => {
                let parsed = Cursor::decode(c);
                if parsed.is_none() {
                    invalid(
                        &mut errs,
                        "cursor",
                        "not a cursor this API issued; pass `next_cursor` from the previous \
                         page unchanged, or leave it out for the first page",
                    );
                }
                parsed
            }
        };
        let format = parse_format(q.format.as_deref(), &mut errs);
        if errs.is_empty() {
            Ok(OrderFilter {
                status,
                currency,
                from,
                to,
                limit,
                cursor,
                format,
            })
        } else {
            Err(errs)
        }
    }
}

/// An order id from the path.
pub fn order_id(raw: &str) -> Result<Uuid, Vec<InvalidParam>> {
    Uuid::try_parse(raw.trim()).map_err(|_| {
        vec![InvalidParam {
            name: "order_id".into(),
            reason: format!("`{raw}` is not a UUID"),
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> RawOrderQuery {
        let mut r = RawOrderQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "status" => r.status = v,
                "currency" => r.currency = v,
                "from" => r.from = v,
                "to" => r.to = v,
                "limit" => r.limit = v,
                "cursor" => r.cursor = v,
                "format" => r.format = v,
                _ => panic!("{k}"),
            }
        }
        r
    }

    #[test]
    fn a_cursor_survives_its_round_trip_and_nothing_else_parses() {
        let c = Cursor {
            placed_at: 1_764_000_000,
            placed_day: time::macros::date!(2025 - 11 - 24),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "c1",
            "c2.1.2.00000000000000000000000000000000",
            "c1.-1.2460000.00000000000000000000000000000000",
            "c1.99999999999.2460000.00000000000000000000000000000000",
            "c1.1.x.00000000000000000000000000000000",
            "c1.1.2460000.0000",
            "c1.1.2460000.00000000-0000-0000-0000-000000000000",
            "c1.1.2460000.00000000000000000000000000000000.extra",
            "c1.1.0.00000000000000000000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let f = OrderFilter::parse(&q(&[])).unwrap();
        assert_eq!(
            (f.limit, f.status, f.currency, f.cursor, f.format),
            (DEFAULT_PAGE, None, None, None, Format::Json)
        );
        let f = OrderFilter::parse(&q(&[
            ("status", "Shipped"),
            ("currency", "eur"),
            ("limit", "500"),
            ("from", "2026-01-01"),
            ("to", "2026-01-01"),
            ("format", "csv"),
        ]))
        .unwrap();
        assert_eq!(f.status, Some(OrderStatus::Shipped));
        assert_eq!(
            f.currency.map(|c| c.code().to_owned()).as_deref(),
            Some("EUR")
        );
        assert_eq!((f.limit, f.format), (500, Format::Csv));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = OrderFilter::parse(&q(&[
            ("status", "lost"),
            ("currency", "XXX"),
            ("limit", "501"),
            ("from", "2026-02-01"),
            ("to", "2026-01-01"),
            ("cursor", "page-2"),
            ("format", "xml"),
        ]))
        .unwrap_err();
        let names: Vec<&str> = errs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["status", "currency", "from", "limit", "cursor", "format"]
        );
        for zero in ["0", "-1", "ten", ""] {
            assert!(
                OrderFilter::parse(&q(&[("limit", zero)])).is_err(),
                "{zero}"
            );
        }
        assert!(OrderFilter::parse(&q(&[("from", "1999-12-31")])).is_err());
        assert!(order_id("not-a-uuid").is_err());
        assert!(order_id("0190a0b1-0000-7000-8000-000000000001").is_ok());
    }
}
