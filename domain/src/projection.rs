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
    /// The measures' names, in field order: the one list the column lists
    /// elsewhere (SQL, ClickHouse rows, comparisons, the dashboards' sums)
    /// are checked against by tests.
    pub const NAMES: [&'static str; 6] = [
        "orders_placed",
        "gross_minor",
        "captured_minor",
        "refunded_minor",
        "orders_cancelled",
        "items_sold",
    ];

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

    /// Captured minus refunded: what finance calls net revenue. 128 bits,
    /// so it holds for any two 64-bit measures.
    pub fn net_minor(&self) -> i128 {
        i128::from(self.captured_minor) - i128::from(self.refunded_minor)
    }

    /// The sum of two cells' measures, or `None` if any of them leaves 64
    /// bits. Never saturates or wraps: a wrong figure is worse than none,
    /// and the caller decides who is told (the ingest parks the event that
    /// tipped the cell over, the rebuild refuses to swap).
    pub fn checked_add(&self, o: &DailyMeasures) -> Option<DailyMeasures> {
        Some(DailyMeasures {
            orders_placed: self.orders_placed.checked_add(o.orders_placed)?,
            gross_minor: self.gross_minor.checked_add(o.gross_minor)?,
            captured_minor: self.captured_minor.checked_add(o.captured_minor)?,
            refunded_minor: self.refunded_minor.checked_add(o.refunded_minor)?,
            orders_cancelled: self.orders_cancelled.checked_add(o.orders_cancelled)?,
            items_sold: self.items_sold.checked_add(o.items_sold)?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_fields_in_order() {
        // A field added to the struct breaks this pattern until it is
        // named here and in NAMES.
        let DailyMeasures {
            orders_placed: _,
            gross_minor: _,
            captured_minor: _,
            refunded_minor: _,
            orders_cancelled: _,
            items_sold: _,
        } = DailyMeasures::default();
        assert_eq!(
            DailyMeasures::NAMES,
            [
                "orders_placed",
                "gross_minor",
                "captured_minor",
                "refunded_minor",
                "orders_cancelled",
                "items_sold"
            ]
        );
    }
}
