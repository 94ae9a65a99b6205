//! The two kinds of domain failure: bad input ([`ParseError`]) and a command
//! that the order's current state forbids ([`DomainError`]).
//!
//! Each variant documents the HTTP status the write API maps it to; the
//! mapping itself lives in one place, `write-api/src/error.rs`.

use crate::order::{CommandKind, OrderStatus};

/// A value that could not be parsed into a domain type. The message says
/// what was wrong and what is expected; the caller adds the field path.
/// HTTP: `400` with the field as `invalid_params[].name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        ParseError(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

/// A well-formed command that the order's invariants reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The command is not allowed in the order's current status, e.g. ship
    /// before capture or cancel after shipping. HTTP: `409`.
    #[error("cannot {command} an order that is {status}")]
    InvalidTransition {
        command: CommandKind,
        status: OrderStatus,
    },
    /// A capture must be for exactly the order total. HTTP: `422`.
    #[error(
        "capture amount must equal the order total of {expected} minor units (got {requested})"
    )]
    CaptureAmountMismatch { expected: i64, requested: i64 },
    /// A refund may not exceed what was captured and not yet refunded.
    /// HTTP: `422`.
    #[error("refund of {requested} minor units exceeds the {available} still refundable")]
    RefundExceedsCaptured { available: i64, requested: i64 },
    /// The order total (Σ quantity × unit price) exceeds
    /// [`Amount::MAX`](crate::Amount::MAX). HTTP: `400`, field `items`.
    #[error("order total must be at most {max} minor units")]
    TotalTooLarge { max: i64 },
    /// Every order must cost something: a zero total has nothing to capture.
    /// HTTP: `400`.
    #[error("order total must be greater than zero")]
    ZeroTotal,
}
