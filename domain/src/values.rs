//! Identifiers and small value types, each parsed once at the edge so that
//! the rest of the code never sees an unchecked string.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ParseError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) identifier; the caller supplies
            /// the randomness source by calling this, the domain never does.
            pub fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            pub fn parse(s: &str) -> Result<Self, ParseError> {
                Uuid::parse_str(s).map($name).map_err(|_| {
                    ParseError::new(format!("`{s}` is not a UUID"))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an order (the aggregate).
    OrderId
);
uuid_id!(
    /// Identifies one domain event; UUIDv7, so it sorts by creation time.
    EventId
);
uuid_id!(
    /// Identifies a captured payment.
    PaymentId
);
uuid_id!(
    /// Identifies a refund.
    RefundId
);
uuid_id!(
    /// Identifies a shipment.
    ShipmentId
);

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// 1 to 64 characters of `A-Z a-z 0-9 _ . -`, starting with a
            /// letter or digit: safe in URLs, CSV files and log lines.
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                parse_slug(s, $what).map(|s| $name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                parse_slug(&s, $what)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_id!(
    /// The merchant an order is sold by; the unit finance reports on.
    MerchantId,
    "merchant id"
);
slug_id!(
    /// The customer who placed the order.
    CustomerId,
    "customer id"
);
slug_id!(
    /// A stock-keeping unit.
    Sku,
    "sku"
);

pub const MAX_SLUG_LEN: usize = 64;

fn parse_slug<'a>(s: &'a str, what: &str) -> Result<&'a str, ParseError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    match s.chars().next() {
        None => Err(ParseError::new(format!("{what} must not be empty"))),
        Some(_) if s.len() > MAX_SLUG_LEN => Err(ParseError::new(format!(
            "{what} must be at most {MAX_SLUG_LEN} characters (got {})",
            s.len()
        ))),
        Some(first) if !first.is_ascii_alphanumeric() => Err(ParseError::new(format!(
            "{what} must start with a letter or digit"
        ))),
        Some(_) if !s.chars().all(ok_char) => Err(ParseError::new(format!(
            "{what} may contain only letters, digits, `_`, `.` and `-`"
        ))),
        Some(_) => Ok(s),
    }
}

/// How many units of a SKU a line orders: 1 to [`Quantity::MAX`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(NonZeroU32);

impl Quantity {
    /// A line of more than a million units is a client bug, not an order.
    pub const MAX: u32 = 1_000_000;

    pub fn parse(n: i64) -> Result<Self, ParseError> {
        if n < 1 {
            return Err(ParseError::new(format!(
                "quantity must be at least 1 (got {n})"
            )));
        }
        if n > i64::from(Self::MAX) {
            return Err(ParseError::new(format!(
                "quantity must be at most {} (got {n})",
                Self::MAX
            )));
        }
        // In range 1..=MAX, so both conversions succeed.
        u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Quantity)
            .ok_or_else(|| ParseError::new("quantity out of range"))
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ParseError;
    fn try_from(n: i64) -> Result<Self, ParseError> {
        Quantity::parse(n)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.get()
    }
}

/// Free text a person typed (a reason, a carrier, an address line): trimmed,
/// not empty, at most `MAX` characters, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(ParseError::new("must not be empty"));
        }
        let n = t.chars().count();
        if n > MAX {
            return Err(ParseError::new(format!(
                "must be at most {MAX} characters (got {n})"
            )));
        }
        if t.chars().any(char::is_control) {
            return Err(ParseError::new("must not contain control characters"));
        }
        Ok(Text(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> TryFrom<String> for Text<MAX> {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Text::parse(&s)
    }
}

impl<const MAX: usize> From<Text<MAX>> for String {
    fn from(t: Text<MAX>) -> String {
        t.0
    }
}

/// An ISO 3166-1 alpha-2 country code, checked for shape (two upper-case
/// letters); the list of countries changes too often to hard-code here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(CountryCode([*a, *b])),
            _ => Err(ParseError::new(format!(
                "`{s}` is not an ISO 3166-1 alpha-2 country code (two upper-case letters such as DE)"
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl TryFrom<String> for CountryCode {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        CountryCode::parse(&s)
    }
}

impl From<CountryCode> for String {
    fn from(c: CountryCode) -> String {
        c.as_str().to_owned()
    }
}

/// A postal shipping address.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Address {
    pub name: Text<200>,
    pub line1: Text<200>,
    pub line2: Option<Text<200>>,
    pub city: Text<100>,
    pub region: Option<Text<100>>,
    pub postal_code: Text<20>,
    pub country: CountryCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_the_documented_alphabet_only() {
        for ok in ["m1", "merchant-00042", "A.b_c-9", &"x".repeat(64)] {
            assert!(MerchantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-m",
            ".m",
            "m 1",
            "m/1",
            "m;drop",
            &"x".repeat(65),
            "mé",
        ] {
            assert!(MerchantId::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Sku>("\"bad sku\"").is_err());
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-3).is_err());
        assert_eq!(Quantity::parse(1).unwrap().get(), 1);
        assert_eq!(Quantity::parse(1_000_000).unwrap().get(), 1_000_000);
        assert!(Quantity::parse(1_000_001).is_err());
        assert!(Quantity::parse(i64::MAX).is_err());
    }

    #[test]
    fn text_is_trimmed_bounded_and_printable() {
        assert_eq!(Text::<5>::parse("  ab ").unwrap().as_str(), "ab");
        assert!(Text::<5>::parse("   ").is_err());
        assert!(Text::<5>::parse("abcdef").is_err());
        assert!(
            Text::<5>::parse("äöüßé").is_ok(),
            "counts characters, not bytes"
        );
        assert!(Text::<10>::parse("a\u{0}b").is_err());
    }

    #[test]
    fn country_codes_and_uuids() {
        assert_eq!(CountryCode::parse("DE").unwrap().as_str(), "DE");
        for bad in ["de", "DEU", "D", ""] {
            assert!(CountryCode::parse(bad).is_err());
        }
        assert!(OrderId::parse("not-a-uuid").is_err());
        let id = Uuid::now_v7();
        assert_eq!(OrderId::parse(&id.to_string()).unwrap().as_uuid(), id);
    }
}
