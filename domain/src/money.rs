//! Exact money: integer minor units tagged with an ISO 4217 currency.
//!
//! There is deliberately no float anywhere in this module, no `Default`, and
//! no arithmetic between two currencies: the only way to add amounts is
//! [`Money::checked_add`], which refuses a currency mismatch and overflow.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParseError;

/// Active ISO 4217 codes and their minor-unit exponent (digits after the
/// decimal point). Funds codes and precious metals (XAU, XDR, …) are left
/// out on purpose: orders are not paid in them.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// An ISO 4217 currency that orders may be placed in.
///
/// Stored as its three ASCII letters, so it is `Copy` and cheap to compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses an upper-case ISO 4217 code such as `EUR`. Lower case is
    /// rejected rather than silently fixed, so the code a client sent is the
    /// code that is stored.
    pub fn parse(code: &str) -> Result<Self, ParseError> {
        ISO_4217
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, _)| {
                let b = c.as_bytes();
                Currency([b[0], b[1], b[2]])
            })
            .ok_or_else(|| {
                ParseError::new(format!(
                    "`{code}` is not an active ISO 4217 currency code (expected three upper-case letters such as EUR or JPY)"
                ))
            })
    }

    /// The code as stored in ClickHouse's `FixedString(3)` columns.
    pub fn code_bytes(&self) -> [u8; 3] {
        self.0
    }

    pub fn code(&self) -> &str {
        // Only ever built from the ASCII table above.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u8 {
        ISO_4217
            .iter()
            .find(|(c, _)| c.as_bytes() == self.0)
            .map_or(2, |(_, e)| *e)
    }

    /// Every currency Tally accepts, for documentation and input forms.
    pub fn all() -> impl Iterator<Item = Currency> {
        ISO_4217.iter().filter_map(|(c, _)| Currency::parse(c).ok())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A non-negative amount of minor units (cents, yen, fils). The currency is
/// carried by the order it belongs to; [`Money`] pairs the two where both
/// travel together.
///
/// Input is bounded by [`Amount::MAX`] ([`Amount::parse`]); what was once
/// accepted is read back with [`Amount::from_stored`], which is not, so a
/// bound lowered later never makes a recorded event unreadable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// The largest amount a command may carry, per line price, line, order
    /// total, payment or refund: 999 999 999 999 minor units, the twelve
    /// digits of the amount field card networks exchange (ISO 8583 field 4;
    /// Stripe's own ceiling is lower, eight digits). It keeps every sum
    /// Tally forms far from 64 bits: a day's cell would need over nine
    /// million maximal orders of one merchant to overflow, and the read
    /// side sums ranges in 128 bits regardless.
    pub const MAX: Amount = Amount(999_999_999_999);

    /// Parses an amount from input: 0 to [`Amount::MAX`].
    pub fn parse(minor: i64) -> Result<Self, ParseError> {
        if minor < 0 {
            return Err(ParseError::new(format!(
                "amount must not be negative (got {minor} minor units)"
            )));
        }
        Self::bounded(minor)
    }

    /// Parses an amount from input that must be strictly positive
    /// (payments, refunds): 1 to [`Amount::MAX`].
    pub fn parse_positive(minor: i64) -> Result<Self, ParseError> {
        if minor <= 0 {
            return Err(ParseError::new(format!(
                "amount must be at least 1 minor unit (got {minor})"
            )));
        }
        Self::bounded(minor)
    }

    fn bounded(minor: i64) -> Result<Self, ParseError> {
        if minor > Self::MAX.0 {
            return Err(ParseError::new(format!(
                "amount must be at most {} minor units (got {minor})",
                Self::MAX.0
            )));
        }
        Ok(Amount(minor))
    }

    /// Reads back an amount that was accepted before (the write tables, an
    /// outbox event): any non-negative value, whatever the bound is now.
    pub fn from_stored(minor: i64) -> Result<Self, ParseError> {
        if minor < 0 {
            return Err(ParseError::new(format!(
                "amount must not be negative (got {minor} minor units)"
            )));
        }
        Ok(Amount(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `self - other`, or `None` if that would be negative.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).filter(|v| *v >= 0).map(Amount)
    }

    pub fn checked_mul(self, factor: u32) -> Option<Amount> {
        self.0.checked_mul(i64::from(factor)).map(Amount)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// Deserialisation reads recorded events: [`Amount::from_stored`].
impl TryFrom<i64> for Amount {
    type Error = ParseError;
    fn try_from(v: i64) -> Result<Self, ParseError> {
        Amount::from_stored(v)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

/// An amount in a currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Money {
    pub amount: Amount,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount: Amount, currency: Currency) -> Self {
        Money { amount, currency }
    }

    /// Adds two amounts of the same currency; `None` on a currency mismatch
    /// or overflow. There is no other way to add money.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Some(Money::new(
            self.amount.checked_add(other.amount)?,
            self.currency,
        ))
    }

    /// The decimal rendering finance users read, e.g. `12.50` for 1250 EUR
    /// minor units and `1250` for 1250 JPY. Exact: integer arithmetic only.
    pub fn to_decimal_string(self) -> String {
        format_minor(self.amount.minor(), self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

/// Formats a signed number of minor units as an exact decimal string in the
/// currency's exponent (`-1250` EUR → `-12.50`). Used for net figures, which
/// can be negative when refunds outrun captures on a day.
pub fn format_minor(minor: impl Into<i128>, currency: Currency) -> String {
    let minor: i128 = minor.into();
    let exp = u32::from(currency.exponent());
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u128.pow(exp);
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exp as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn currency_accepts_iso_codes_and_rejects_everything_else() {
        assert_eq!(eur().code(), "EUR");
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        for bad in ["eur", "EU", "EURO", "XXX", "", "E1R", "ZZZ"] {
            assert!(Currency::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn currency_table_has_no_duplicates_and_only_upper_case_codes() {
        let mut codes: Vec<_> = ISO_4217.iter().map(|(c, _)| *c).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase()))
        );
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert_eq!(Currency::all().count(), n);
    }

    #[test]
    fn currency_round_trips_through_json() {
        let json = serde_json::to_string(&eur()).unwrap();
        assert_eq!(json, "\"EUR\"");
        assert_eq!(serde_json::from_str::<Currency>(&json).unwrap(), eur());
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn amount_rejects_negative_and_positive_rejects_zero() {
        assert!(Amount::parse(-1).is_err());
        assert_eq!(Amount::parse(0).unwrap(), Amount::ZERO);
        assert!(Amount::parse_positive(0).is_err());
        assert_eq!(Amount::parse_positive(1).unwrap().minor(), 1);
        assert!(serde_json::from_str::<Amount>("-5").is_err());
    }

    #[test]
    fn input_is_bounded_but_recorded_amounts_are_not() {
        assert_eq!(Amount::parse(999_999_999_999).unwrap(), Amount::MAX);
        assert!(Amount::parse(1_000_000_000_000).is_err());
        assert!(Amount::parse_positive(1_000_000_000_000).is_err());
        assert!(Amount::parse(i64::MAX).is_err());
        // An event recorded under another bound still reads back.
        let big = serde_json::from_str::<Amount>("4611686018427387904").unwrap();
        assert_eq!(big.minor(), 4_611_686_018_427_387_904);
        assert!(Amount::from_stored(-1).is_err());
    }

    #[test]
    fn amount_arithmetic_is_checked() {
        let max = Amount::from_stored(i64::MAX).unwrap();
        assert!(max.checked_add(Amount::parse(1).unwrap()).is_none());
        assert!(max.checked_mul(2).is_none());
        assert!(
            Amount::parse(1)
                .unwrap()
                .checked_sub(Amount::parse(2).unwrap())
                .is_none()
        );
        assert_eq!(
            Amount::parse(5)
                .unwrap()
                .checked_sub(Amount::parse(2).unwrap()),
            Some(Amount::parse(3).unwrap())
        );
    }

    #[test]
    fn money_never_adds_across_currencies() {
        let a = Money::new(Amount::parse(100).unwrap(), eur());
        let b = Money::new(Amount::parse(100).unwrap(), Currency::parse("USD").unwrap());
        assert!(a.checked_add(b).is_none());
        assert_eq!(a.checked_add(a).unwrap().amount.minor(), 200);
    }

    #[test]
    fn decimal_rendering_is_exact_for_every_exponent() {
        assert_eq!(format_minor(1250, eur()), "12.50");
        assert_eq!(format_minor(5, eur()), "0.05");
        assert_eq!(format_minor(-1250, eur()), "-12.50");
        assert_eq!(format_minor(1250, Currency::parse("JPY").unwrap()), "1250");
        assert_eq!(format_minor(1250, Currency::parse("KWD").unwrap()), "1.250");
        assert_eq!(format_minor(i64::MIN, eur()), "-92233720368547758.08");
        assert_eq!(
            Money::new(Amount::parse(99).unwrap(), eur()).to_string(),
            "0.99 EUR"
        );
    }
}
