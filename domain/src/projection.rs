//! What each event contributes to the finance aggregates.
//!
//! This is the one statement of the counting rules: every amount counts on
//! the reporting day of its own event (capture on capture day, refund on
//! refund day), per (merchant, currency). The ingest applies it to events;
//! the rebuild states the same rules in SQL over the write tables, and
//! verification proves the two agree.

use crate::order::OrderEvent;

/// Declares the measures once: the struct, its names in field order, and
/// the whole-cell arithmetic. A measure added here is added to every
/// column list that tests hold to [`DailyMeasures::NAMES`].
macro_rules! measures {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        /// Additive measures of one (day, merchant, currency) cell. Amounts
        /// are minor units of that cell's currency; they are never added
        /// across cells of different currencies.
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
        pub struct DailyMeasures {
            $($(#[$doc])* pub $name: i64,)+
        }

        impl DailyMeasures {
            /// How many measures a cell has.
            pub const COUNT: usize = [$(stringify!($name)),+].len();

            /// The measures' names, in field order: the one list the column
            /// lists elsewhere (SQL, ClickHouse rows, comparisons, the
            /// dashboards' sums) are derived from or checked against.
            pub const NAMES: [&'static str; DailyMeasures::COUNT] = [$(stringify!($name)),+];

            /// The values, in the order of [`NAMES`](Self::NAMES).
            pub fn values(&self) -> [i64; DailyMeasures::COUNT] {
                [$(self.$name),+]
            }

            /// The measures from values in the order of [`NAMES`](Self::NAMES).
            pub fn from_values(v: [i64; DailyMeasures::COUNT]) -> DailyMeasures {
                let [$($name),+] = v;
                DailyMeasures { $($name),+ }
            }

            /// The sum of two cells' measures, or `None` if any of them
            /// leaves 64 bits. Never saturates or wraps: a wrong figure is
            /// worse than none, and the caller decides who is told (the
            /// ingest parks the event that tipped the cell over, the
            /// rebuild refuses to swap).
            pub fn checked_add(&self, o: &DailyMeasures) -> Option<DailyMeasures> {
                Some(DailyMeasures { $($name: self.$name.checked_add(o.$name)?),+ })
            }

            /// The measures that cancel these: adding them subtracts a cell.
            pub fn negated(&self) -> DailyMeasures {
                DailyMeasures { $($name: -self.$name),+ }
            }
        }
    };
}

measures! {
    /// Orders placed that day.
    orders_placed,
    /// Sum of the placed orders' totals.
    gross_minor,
    /// Payments captured that day.
    captured_minor,
    /// Refunds made that day (including a cancellation's).
    refunded_minor,
    /// Orders cancelled that day.
    orders_cancelled,
    /// Units sold in the orders placed that day.
    items_sold,
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

    /// Captured minus refunded: what finance calls net revenue. 128 bits,
    /// so it holds for any two 64-bit measures.
    pub fn net_minor(&self) -> i128 {
        i128::from(self.captured_minor) - i128::from(self.refunded_minor)
    }

    pub fn is_zero(&self) -> bool {
        *self == DailyMeasures::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_name_order() {
        let m = DailyMeasures::from_values([1, 2, 3, 4, 5, 6]);
        assert_eq!((m.orders_placed, m.refunded_minor, m.items_sold), (1, 4, 6));
        assert_eq!(m.values(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(m.negated().values(), [-1, -2, -3, -4, -5, -6]);
        assert_eq!(
            m.checked_add(&m).map(|s| s.values()),
            Some([2, 4, 6, 8, 10, 12])
        );
        let max = DailyMeasures {
            items_sold: i64::MAX,
            ..DailyMeasures::default()
        };
        assert_eq!(max.checked_add(&m), None);
    }

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
