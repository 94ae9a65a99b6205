//! The Order domain: commands in, events out, invariants as plain functions.
//!
//! This crate does no I/O: no database, no clock, no randomness. Callers pass
//! identifiers and timestamps in, which is what lets `tests.rs` cover every
//! command against every order state without a database. Input is parsed
//! into types that cannot hold bad values (`Money`, `Currency`, `Quantity`,
//! `MerchantId`, …), so code past the edge never re-checks it.

pub mod error;
pub mod event;
pub mod money;
pub mod order;
pub mod projection;
pub mod values;

#[cfg(test)]
mod tests;

pub use error::ParseError;
pub use event::{DecodeError, EventEnvelope, SCHEMA_VERSION};
pub use money::{Amount, Currency, Money};
pub use order::{
    CommandKind, DomainError, LineItem, LineItems, Order, OrderCommand, OrderEvent, OrderStatus,
    PlaceOrder, Version,
};
pub use projection::DailyMeasures;
pub use values::{
    Address, CountryCode, CustomerId, EventId, MerchantId, OrderId, PaymentId, Quantity, RefundId,
    ShipmentId, Sku, Text,
};
