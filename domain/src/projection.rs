//! What each event contributes to the finance aggregates.
//!
//! This is the one statement of the counting rules: every amount counts on
//! the reporting day of its own event (capture on capture day, refund on
//! refund day), per (merchant, currency). The ingest applies it to events;
//! the rebuild states the same rules in SQL over the write tables, and
//! verification proves the two agree.

use crate::order::OrderEvent;

/// Additive measures of one (day, merchant, currency) cell. Amounts are
/// minor units of that cell's currency; they are never added across cells
/// of different currencies.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DailyMeasures {
    pub orders_placed: i64,
    pub gross_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub orders_cancelled: i64,
    pub items_sold: i64,
}

impl DailyMeasures {
    /// The contribution of one event to the cell of its own day.
    pub fn of_event(event: &OrderEvent) -> DailyMeasures {
        let zero = DailyMeasures::default();
        match event {
            OrderEvent::OrderPlaced { total, items, .. } => DailyMeasures {
                orders_placed: 1,
                gross_minor: total.minor(),
                items_sold: i64::try_from(items.unit_count()).unwrap_or(i64::MAX),
                ..zero
            },
            OrderEvent::PaymentCaptured { amount, .. } => DailyMeasures {
                captured_minor: amount.minor(),
                ..zero
            },
            OrderEvent::OrderShipped { .. } => zero,
            OrderEvent::OrderCancelled { refund, .. } => DailyMeasures {
                orders_cancelled: 1,
                refunded_minor: refund.map_or(0, |r| r.amount.minor()),
                ..zero
            },
            OrderEvent::OrderRefunded { amount, .. } => DailyMeasures {
                refunded_minor: amount.minor(),
                ..zero
            },
        }
    }

    /// Captured minus refunded: what finance calls net revenue.
    pub fn net_minor(&self) -> i64 {
        self.captured_minor - self.refunded_minor
    }

    /// Adds another cell's measures. Saturates rather than wraps: a cell
    /// reaching 9.2e18 minor units is a bug to be seen, not hidden.
    pub fn add(&mut self, o: &DailyMeasures) {
        self.orders_placed = self.orders_placed.saturating_add(o.orders_placed);
        self.gross_minor = self.gross_minor.saturating_add(o.gross_minor);
        self.captured_minor = self.captured_minor.saturating_add(o.captured_minor);
        self.refunded_minor = self.refunded_minor.saturating_add(o.refunded_minor);
        self.orders_cancelled = self.orders_cancelled.saturating_add(o.orders_cancelled);
        self.items_sold = self.items_sold.saturating_add(o.items_sold);
    }

    /// The measures that cancel these: adding them subtracts a cell.
    pub fn negated(&self) -> DailyMeasures {
        DailyMeasures {
            orders_placed: -self.orders_placed,
            gross_minor: -self.gross_minor,
            captured_minor: -self.captured_minor,
            refunded_minor: -self.refunded_minor,
            orders_cancelled: -self.orders_cancelled,
            items_sold: -self.items_sold,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == DailyMeasures::default()
    }
}
