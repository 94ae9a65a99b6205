//! Query-string parsing for every read endpoint, in one place.
//!
//! Parse, don't validate: a [`Filter`] can only hold a date range within the
//! configured span, a known currency and well-formed merchant ids, so the
//! SQL layer never sees anything else. Every problem found is reported at
//! once, as RFC 9457 `invalid-params`.

use serde::Deserialize;
use tally_domain::{Currency, MerchantId};
use tally_ops::problem::InvalidParam;
use time::{Date, Duration};

/// Default range when `from` is omitted: the 30 days ending at `to`.
pub const DEFAULT_DAYS: i64 = 30;
/// The first and last day a request may name. The last is the end of the
/// last whole year of ClickHouse's `Date` (it ends on 2149-06-06; later
/// dates wrap to 1970 there), so that the bound is a pattern in the OpenAPI
/// document; the first leaves room for the previous period of the longest
/// span the server accepts (3 660 days) to stay after 1970-01-01, where
/// `Date` begins. Any other date is a `400`, never date arithmetic that
/// could panic.
pub const FIRST_DAY: Date = time::macros::date!(2000 - 01 - 01);
pub const LAST_DAY: Date = time::macros::date!(2148 - 12 - 31);
/// Most merchants one request may filter on.
pub const MAX_MERCHANTS: usize = 100;
/// Default and largest `limit` of the top-merchants list.
pub const DEFAULT_TOP: u32 = 10;
pub const MAX_TOP: u32 = 100;

/// The raw query string shared by the read endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct RawQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub currency: Option<String>,
    /// One id or several, comma-separated.
    pub merchant_id: Option<String>,
    pub limit: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// An inclusive range of reporting days, at most `max_span_days` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayRange {
    pub from: Date,
    pub to: Date,
}

impl DayRange {
    pub fn days(self) -> i64 {
        (self.to - self.from).whole_days() + 1
    }

    /// This range and the one before it ([`DayRange::previous`]), as one.
    pub fn with_previous(self) -> DayRange {
        DayRange {
            from: self.previous().from,
            to: self.to,
        }
    }

    /// The range of equal length that ends the day before this one starts.
    pub fn previous(self) -> DayRange {
        let len = Duration::days(self.days());
        DayRange {
            from: self.from - len,
            to: self.from - Duration::days(1),
        }
    }
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub range: DayRange,
    pub currency: Option<Currency>,
    pub merchants: Vec<MerchantId>,
    pub limit: u32,
    pub format: Format,
}

/// What an endpoint demands beyond the common parameters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Rankings only make sense within one currency.
    pub currency: bool,
}

pub(crate) fn invalid(errs: &mut Vec<InvalidParam>, name: &str, reason: impl Into<String>) {
    errs.push(InvalidParam {
        name: name.into(),
        reason: reason.into(),
    });
}

pub(crate) fn parse_date(name: &str, v: &str, errs: &mut Vec<InvalidParam>) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    match Date::parse(v.trim(), fmt) {
        Ok(d) if (FIRST_DAY..=LAST_DAY).contains(&d) => Some(d),
        Ok(_) => {
            invalid(
                errs,
                name,
                format!("`{v}` is outside the days this API serves, {FIRST_DAY} to {LAST_DAY}"),
            );
            None
        }
        Err(_) => {
            invalid(
                errs,
                name,
                format!("`{v}` is not a date of the form YYYY-MM-DD"),
            );
            None
        }
    }
}

/// `limit`: a whole number from 1 to `max`, `default` when absent.
pub(crate) fn parse_limit(
    v: Option<&str>,
    default: u32,
    max: u32,
    errs: &mut Vec<InvalidParam>,
) -> u32 {
    let Some(v) = v else { return default };
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            invalid(
                errs,
                "limit",
                format!("`{v}` is not a whole number from 1 to {max}"),
            );
            default
        }
    }
}

/// `format`: `json` (also when absent or empty) or `csv`.
pub(crate) fn parse_format(v: Option<&str>, errs: &mut Vec<InvalidParam>) -> Format {
    match v.map(str::trim) {
        None | Some("" | "json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            invalid(
                errs,
                "format",
                format!("`{other}` is not a format; use json or csv"),
            );
            Format::Json
        }
    }
}

impl Filter {
    /// Parses `q` against today's date (UTC) and the span limit.
    pub fn parse(
        q: &RawQuery,
        today: Date,
        max_span_days: i64,
        needs: Needs,
    ) -> Result<Filter, Vec<InvalidParam>> {
        let mut errs = Vec::new();
        let given_from = q.from.as_deref().map(|v| parse_date("from", v, &mut errs));
        let to =
            q.to.as_deref()
                .map_or(Some(today), |v| parse_date("to", v, &mut errs));
        let from = match (given_from, to) {
            (Some(from), _) => from,
            (None, Some(to)) => Some(
                to.checked_sub(Duration::days(DEFAULT_DAYS - 1))
                    .unwrap_or(FIRST_DAY)
                    .max(FIRST_DAY),
            ),
            (None, None) => None,
        };
        let currency = match q.currency.as_deref().map(str::trim) {
            None | Some("") if needs.currency => {
                invalid(
                    &mut errs,
                    "currency",
                    "required here: merchants are ranked within one currency (e.g. currency=EUR)",
                );
                None
            }
            None | Some("") => None,
            // `eur` in a URL means EUR; the code itself is still checked.
            Some(c) => Currency::parse(&c.to_ascii_uppercase())
                .map_err(|e| invalid(&mut errs, "currency", e.message()))
                .ok(),
        };
        let mut merchants = Vec::new();
        if let Some(list) = q.merchant_id.as_deref() {
            for m in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                match MerchantId::parse(m) {
                    Ok(id) if !merchants.contains(&id) => merchants.push(id),
                    Ok(_) => {}
                    Err(e) => invalid(&mut errs, "merchant_id", format!("`{m}`: {}", e.message())),
                }
            }
            if merchants.len() > MAX_MERCHANTS {
                invalid(
                    &mut errs,
                    "merchant_id",
                    format!(
                        "{} merchants given; at most {MAX_MERCHANTS} per request",
                        merchants.len()
                    ),
                );
            }
        }
        let limit = parse_limit(q.limit.as_deref(), DEFAULT_TOP, MAX_TOP, &mut errs);
        let format = parse_format(q.format.as_deref(), &mut errs);
        if let (Some(from), Some(to)) = (from, to) {
            let span = (to - from).whole_days() + 1;
            if span < 1 {
                invalid(&mut errs, "from", format!("{from} is after `to` ({to})"));
            } else if span > max_span_days {
                invalid(
                    &mut errs,
                    "to",
                    format!("the range spans {span} days; at most {max_span_days} are allowed"),
                );
            }
        }
        match (from, to) {
            (Some(from), Some(to)) if errs.is_empty() => Ok(Filter {
                range: DayRange { from, to },
                currency,
                merchants,
                limit,
                format,
            }),
            _ => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 23);

    fn q(pairs: &[(&str, &str)]) -> RawQuery {
        let mut q = RawQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "from" => q.from = v,
                "to" => q.to = v,
                "currency" => q.currency = v,
                "merchant_id" => q.merchant_id = v,
                "limit" => q.limit = v,
                "format" => q.format = v,
                other => panic!("unknown key {other}"),
            }
        }
        q
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Filter, Vec<InvalidParam>> {
        Filter::parse(&q(pairs), TODAY, 366, Needs::default())
    }

    fn names(errs: Vec<InvalidParam>) -> Vec<String> {
        errs.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn defaults_are_the_last_30_days_all_currencies_json() {
        let f = parse(&[]).unwrap();
        assert_eq!(f.range.from, date!(2026 - 10 - 25));
        assert_eq!(f.range.to, TODAY);
        assert_eq!(f.range.days(), 30);
        assert_eq!((f.currency, f.merchants.len()), (None, 0));
        assert_eq!((f.limit, f.format), (DEFAULT_TOP, Format::Json));
    }

    #[test]
    fn from_alone_runs_to_today_and_to_alone_gets_30_days() {
        let f = parse(&[("from", "2026-11-01")]).unwrap();
        assert_eq!((f.range.from, f.range.to), (date!(2026 - 11 - 01), TODAY));
        let f = parse(&[("to", "2026-01-30")]).unwrap();
        assert_eq!(f.range.from, date!(2026 - 01 - 01));
    }

    #[test]
    fn the_span_limit_is_inclusive() {
        assert!(parse(&[("from", "2025-11-23"), ("to", "2026-11-23")]).is_ok()); // 366 days
        let errs = parse(&[("from", "2025-11-22"), ("to", "2026-11-23")]).unwrap_err();
        assert_eq!(names(errs.clone()), ["to"]);
        assert!(errs[0].reason.contains("367 days"), "{}", errs[0].reason);
    }

    #[test]
    fn a_one_day_range_is_fine_and_a_reversed_one_is_not() {
        let f = parse(&[("from", "2026-11-01"), ("to", "2026-11-01")]).unwrap();
        assert_eq!(f.range.days(), 1);
        let errs = parse(&[("from", "2026-11-02"), ("to", "2026-11-01")]).unwrap_err();
        assert_eq!(names(errs), ["from"]);
    }

    #[test]
    fn every_bad_parameter_is_reported_at_once() {
        let errs = parse(&[
            ("from", "yesterday"),
            ("to", "2026-13-01"),
            ("currency", "EURO"),
            ("merchant_id", "ok-1,bad id"),
            ("limit", "0"),
            ("format", "xml"),
        ])
        .unwrap_err();
        assert_eq!(
            names(errs),
            ["from", "to", "currency", "merchant_id", "limit", "format"]
        );
    }

    #[test]
    fn currency_is_parsed_and_can_be_required() {
        assert_eq!(
            parse(&[("currency", "usd")]).map(|f| f.currency),
            parse(&[("currency", "USD")]).map(|f| f.currency),
        );
        assert!(parse(&[("currency", "XYZ")]).is_err());
        let needs = Needs { currency: true };
        let errs = Filter::parse(&q(&[]), TODAY, 366, needs).unwrap_err();
        assert_eq!(names(errs), ["currency"]);
        assert!(Filter::parse(&q(&[("currency", "EUR")]), TODAY, 366, needs).is_ok());
    }

    #[test]
    fn merchants_are_a_deduplicated_comma_list_with_a_cap() {
        let f = parse(&[("merchant_id", "m-1, m-2,,m-1")]).unwrap();
        let ids: Vec<&str> = f
            .merchants
            .iter()
            .map(tally_domain::MerchantId::as_str)
            .collect();
        assert_eq!(ids, ["m-1", "m-2"]);
        let many = (0..=MAX_MERCHANTS)
            .map(|i| format!("m-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            names(parse(&[("merchant_id", &many)]).unwrap_err()),
            ["merchant_id"]
        );
        // SQL metacharacters never get as far as a query.
        assert!(parse(&[("merchant_id", "x' OR 1=1 --")]).is_err());
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse(&[("limit", "100")]).unwrap().limit, 100);
        assert!(parse(&[("limit", "101")]).is_err());
        assert!(parse(&[("limit", "-1")]).is_err());
        assert_eq!(parse(&[("format", "csv")]).unwrap().format, Format::Csv);
    }

    #[test]
    fn the_previous_period_has_equal_length_and_ends_the_day_before() {
        let r = DayRange {
            from: date!(2026 - 03 - 01),
            to: date!(2026 - 03 - 31),
        };
        let p = r.previous();
        assert_eq!(
            (p.from, p.to),
            (date!(2026 - 01 - 29), date!(2026 - 02 - 28))
        );
        assert_eq!(p.days(), r.days());
        let one = DayRange {
            from: TODAY,
            to: TODAY,
        };
        assert_eq!(one.previous().to, date!(2026 - 11 - 22));
        assert_eq!(one.previous().days(), 1);
    }
}

/// Whatever a client sends, parsing answers (a filter or field errors) and
/// everything computed from a filter afterwards stays in range.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Dates as clients get them wrong: far years, signs, overflowing
    /// months and days, stray text, and plain good ones.
    fn date_like() -> impl Strategy<Value = String> {
        prop_oneof![
            (-99_999i32..=99_999, 0u8..=13, 0u8..=32)
                .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
            (1990i32..=2160, 1u8..=12, 1u8..=28)
                .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
            Just("-9999-01-01".to_owned()),
            Just("+9999-12-31".to_owned()),
            Just("9999-12-31".to_owned()),
            Just("0000-01-01".to_owned()),
            ".{0,12}",
        ]
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            ".{0,20}",
            "[a-z0-9-]{1,70}(,[a-z0-9-]{0,70}){0,120}",
            Just("EUR".to_owned()),
            Just("eur".to_owned()),
            Just("0".to_owned()),
            Just("4294967296".to_owned()),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_query_parses_or_is_refused_and_never_panics(
            from in proptest::option::of(date_like()),
            to in proptest::option::of(date_like()),
            currency in text(),
            merchant_id in text(),
            limit in text(),
            format in text(),
            span in 1i64..=3660,
            needs_currency in any::<bool>(),
        ) {
            let q = RawQuery { from, to, currency, merchant_id, limit, format };
            let today = time::macros::date!(2026 - 12 - 02);
            match Filter::parse(&q, today, span, Needs { currency: needs_currency }) {
                Ok(f) => {
                    prop_assert!(f.range.from <= f.range.to);
                    prop_assert!(f.range.days() <= span);
                    prop_assert!(f.range.from >= FIRST_DAY && f.range.to <= LAST_DAY);
                    // What the queries derive from it stays after 1970,
                    // where ClickHouse's Date begins.
                    let p = f.range.with_previous();
                    prop_assert!(p.from >= time::macros::date!(1970 - 01 - 01));
                    prop_assert!(f.merchants.len() <= MAX_MERCHANTS);
                    prop_assert!((1..=MAX_TOP).contains(&f.limit));
                    prop_assert!(!needs_currency || f.currency.is_some());
                }
                Err(errs) => prop_assert!(!errs.is_empty()),
            }
        }
    }
}
