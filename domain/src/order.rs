//! The Order aggregate: `place`/`handle` turn a command into exactly one
//! event or refuse it; `apply` folds an event into the state.
//!
//! Both are plain functions of their inputs. Identifiers and timestamps are
//! passed in by the caller, so the same inputs always give the same event and
//! every invariant is testable without a database.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ParseError;
use crate::money::{Amount, Currency, Money};
use crate::values::{
    Address, CustomerId, MerchantId, OrderId, PaymentId, Quantity, RefundId, ShipmentId, Sku, Text,
};

/// Where an order is in its lifecycle.
///
/// ```text
/// Placed ──capture──▶ Paid ──ship──▶ Shipped
///   │                  │
///   └──cancel──▶ Cancelled ◀──cancel (refunds what was captured)
/// ```
/// Refunds are recorded against Paid and Shipped orders and do not change
/// the status.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Placed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError::new(format!("unknown order status `{s}`")))
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of command, for error messages and metrics labels.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CommandKind {
    Place,
    Capture,
    Ship,
    Cancel,
    Refund,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Place => "place_order",
            CommandKind::Capture => "capture_payment",
            CommandKind::Ship => "ship_order",
            CommandKind::Cancel => "cancel_order",
            CommandKind::Refund => "refund_order",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self {
            CommandKind::Place => "place",
            CommandKind::Capture => "capture payment for",
            CommandKind::Ship => "ship",
            CommandKind::Cancel => "cancel",
            CommandKind::Refund => "refund",
        };
        f.write_str(verb)
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

/// An aggregate version: 1 after `OrderPlaced`, +1 per event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(NonZeroU32);

impl Version {
    pub const FIRST: Version = Version(NonZeroU32::MIN);

    pub fn new(v: u32) -> Option<Version> {
        NonZeroU32::new(v).map(Version)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

/// One line of an order.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Amount,
}

/// The lines of an order: between 1 and [`LineItems::MAX`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<LineItem>", into = "Vec<LineItem>")]
pub struct LineItems(Vec<LineItem>);

impl LineItems {
    pub const MAX: usize = 100;

    pub fn parse(items: Vec<LineItem>) -> Result<Self, ParseError> {
        match items.len() {
            0 => Err(ParseError::new("an order needs at least one line item")),
            n if n > Self::MAX => Err(ParseError::new(format!(
                "an order may have at most {} line items (got {n})",
                Self::MAX
            ))),
            _ => Ok(LineItems(items)),
        }
    }

    pub fn as_slice(&self) -> &[LineItem] {
        &self.0
    }

    /// Σ quantity × unit price, or `TotalTooLarge` past [`Amount::MAX`].
    pub fn total(&self) -> Result<Amount, DomainError> {
        self.0.iter().try_fold(Amount::ZERO, |acc, line| {
            line.unit_price
                .checked_mul(line.quantity.get())
                .and_then(|sub| acc.checked_add(sub))
                .filter(|t| *t <= Amount::MAX)
                .ok_or(DomainError::TotalTooLarge {
                    max: Amount::MAX.minor(),
                })
        })
    }

    /// Σ quantity: the "items sold" measure.
    pub fn unit_count(&self) -> u64 {
        self.0.iter().map(|l| u64::from(l.quantity.get())).sum()
    }
}

impl TryFrom<Vec<LineItem>> for LineItems {
    type Error = ParseError;
    fn try_from(v: Vec<LineItem>) -> Result<Self, ParseError> {
        LineItems::parse(v)
    }
}

impl From<LineItems> for Vec<LineItem> {
    fn from(l: LineItems) -> Self {
        l.0
    }
}

/// Place a new order. Built only from parsed values.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub merchant_id: MerchantId,
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub items: LineItems,
    pub shipping_address: Address,
}

/// A command against an existing order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum OrderCommand {
    CapturePayment {
        payment_id: PaymentId,
        amount: Amount,
    },
    Ship {
        shipment_id: ShipmentId,
        carrier: Text<100>,
        tracking_number: Text<100>,
    },
    Cancel {
        reason: Text<500>,
        /// Used only if the cancellation has to refund a captured payment.
        refund_id: RefundId,
    },
    Refund {
        refund_id: RefundId,
        amount: Amount,
        reason: Option<Text<500>>,
    },
}

impl OrderCommand {
    pub fn kind(&self) -> CommandKind {
        match self {
            OrderCommand::CapturePayment { .. } => CommandKind::Capture,
            OrderCommand::Ship { .. } => CommandKind::Ship,
            OrderCommand::Cancel { .. } => CommandKind::Cancel,
            OrderCommand::Refund { .. } => CommandKind::Refund,
        }
    }
}

/// A refund recorded as part of a cancellation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CancellationRefund {
    pub refund_id: RefundId,
    pub amount: Amount,
}

/// What happened to an order. Exactly one per accepted command.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    OrderPlaced {
        merchant_id: MerchantId,
        customer_id: CustomerId,
        currency: Currency,
        items: LineItems,
        shipping_address: Address,
        total: Amount,
    },
    PaymentCaptured {
        payment_id: PaymentId,
        amount: Amount,
    },
    OrderShipped {
        shipment_id: ShipmentId,
        carrier: Text<100>,
        tracking_number: Text<100>,
    },
    OrderCancelled {
        reason: Text<500>,
        refund: Option<CancellationRefund>,
    },
    OrderRefunded {
        refund_id: RefundId,
        amount: Amount,
        reason: Option<Text<500>>,
    },
}

impl OrderEvent {
    pub const TYPES: [&'static str; 5] = [
        "OrderPlaced",
        "PaymentCaptured",
        "OrderShipped",
        "OrderCancelled",
        "OrderRefunded",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced { .. } => Self::TYPES[0],
            OrderEvent::PaymentCaptured { .. } => Self::TYPES[1],
            OrderEvent::OrderShipped { .. } => Self::TYPES[2],
            OrderEvent::OrderCancelled { .. } => Self::TYPES[3],
            OrderEvent::OrderRefunded { .. } => Self::TYPES[4],
        }
    }
}

/// The state of one order: everything the invariants need, nothing more
/// (line items and the address are history, not state).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub version: Version,
    pub merchant_id: MerchantId,
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub status: OrderStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub placed_at: OffsetDateTime,
    pub item_count: u64,
    pub total: Amount,
    pub captured: Amount,
    pub refunded: Amount,
}

/// Decides whether an order may be placed and, if so, what was placed.
pub fn place(cmd: &PlaceOrder) -> Result<OrderEvent, DomainError> {
    let total = cmd.items.total()?;
    if total.is_zero() {
        return Err(DomainError::ZeroTotal);
    }
    Ok(OrderEvent::OrderPlaced {
        merchant_id: cmd.merchant_id.clone(),
        customer_id: cmd.customer_id.clone(),
        currency: cmd.currency,
        items: cmd.items.clone(),
        shipping_address: cmd.shipping_address.clone(),
        total,
    })
}

impl Order {
    /// The state right after `OrderPlaced`; `None` for any other event.
    pub fn from_placed(
        id: OrderId,
        event: &OrderEvent,
        placed_at: OffsetDateTime,
    ) -> Option<Order> {
        match event {
            OrderEvent::OrderPlaced {
                merchant_id,
                customer_id,
                currency,
                items,
                total,
                ..
            } => Some(Order {
                id,
                version: Version::FIRST,
                merchant_id: merchant_id.clone(),
                customer_id: customer_id.clone(),
                currency: *currency,
                status: OrderStatus::Placed,
                placed_at,
                item_count: items.unit_count(),
                total: *total,
                captured: Amount::ZERO,
                refunded: Amount::ZERO,
            }),
            _ => None,
        }
    }

    /// Captured and not yet refunded.
    pub fn refundable(&self) -> Amount {
        self.captured
            .checked_sub(self.refunded)
            .unwrap_or(Amount::ZERO)
    }

    pub fn total_money(&self) -> Money {
        Money::new(self.total, self.currency)
    }

    /// Decides a command against the current state.
    pub fn handle(&self, cmd: &OrderCommand) -> Result<OrderEvent, DomainError> {
        use OrderStatus::*;
        let refuse = || DomainError::InvalidTransition {
            command: cmd.kind(),
            status: self.status,
        };
        match (cmd, self.status) {
            (OrderCommand::CapturePayment { payment_id, amount }, Placed) => {
                if *amount != self.total {
                    return Err(DomainError::CaptureAmountMismatch {
                        expected: self.total.minor(),
                        requested: amount.minor(),
                    });
                }
                Ok(OrderEvent::PaymentCaptured {
                    payment_id: *payment_id,
                    amount: *amount,
                })
            }
            (
                OrderCommand::Ship {
                    shipment_id,
                    carrier,
                    tracking_number,
                },
                Paid,
            ) => Ok(OrderEvent::OrderShipped {
                shipment_id: *shipment_id,
                carrier: carrier.clone(),
                tracking_number: tracking_number.clone(),
            }),
            (OrderCommand::Cancel { reason, refund_id }, Placed | Paid) => {
                let outstanding = self.refundable();
                Ok(OrderEvent::OrderCancelled {
                    reason: reason.clone(),
                    refund: (!outstanding.is_zero()).then_some(CancellationRefund {
                        refund_id: *refund_id,
                        amount: outstanding,
                    }),
                })
            }
            (
                OrderCommand::Refund {
                    refund_id,
                    amount,
                    reason,
                },
                Paid | Shipped,
            ) => {
                let available = self.refundable();
                if amount.is_zero() || *amount > available {
                    return Err(DomainError::RefundExceedsCaptured {
                        available: available.minor(),
                        requested: amount.minor(),
                    });
                }
                Ok(OrderEvent::OrderRefunded {
                    refund_id: *refund_id,
                    amount: *amount,
                    reason: reason.clone(),
                })
            }
            _ => Err(refuse()),
        }
    }

    /// Folds an event into the state and bumps the version. Events come
    /// from `handle`, so they are valid for this state by construction.
    pub fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::PaymentCaptured { amount, .. } => {
                self.status = OrderStatus::Paid;
                self.captured = *amount;
            }
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled { refund, .. } => {
                self.status = OrderStatus::Cancelled;
                if let Some(r) = refund {
                    self.refunded = self.refunded.checked_add(r.amount).unwrap_or(self.captured);
                }
            }
            OrderEvent::OrderRefunded { amount, .. } => {
                self.refunded = self.refunded.checked_add(*amount).unwrap_or(self.captured);
            }
        }
        self.version = self.version.next();
    }
}
