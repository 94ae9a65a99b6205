//! Order facts and daily contributions recomputed from the normalised write
//! tables, in one pass.
//!
//! Like [`crate::oracle`], this is a second statement of the projection
//! rules, independent of the ingest's Rust: amounts come from `order_items`,
//! `payments` and `refunds`, not from the event payloads or the order's
//! cached total, and each amount counts on the reporting day of its own
//! timestamp. One row per order, in `order_id` order, so PostgreSQL answers
//! with merge joins over its primary keys and no sort or hash table: about
//! half the time it takes to `COPY` the same tables out. The daily cells
//! are summed from these rows in Rust ([`crate::cells`]) instead of by a
//! second, aggregating query; the tests hold the two statements to the
//! SQL one ([`crate::oracle::ORACLE_SQL`]). Rows are streamed, never
//! collected.

use futures_util::Stream;
use sqlx::{PgConnection, Postgres};
use tally_domain::DailyMeasures;
use tally_projection::FactRow;
use tally_projection::rows::currency_bytes;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// Orders without items are not facts (the domain cannot place one); their
/// captures, refunds and cancellations still count, as in the oracle.
pub const ORDERS_SQL: &str = "
SELECT o.order_id, o.version, o.merchant_id, o.customer_id, o.currency, o.status, o.placed_at,
       (o.placed_at AT TIME ZONE $1)::date AS placed_day,
       i.order_id IS NOT NULL AS has_items, coalesce(i.items, 0) AS items,
       coalesce(i.gross, 0) AS gross,
       p.amount_minor AS captured, (p.captured_at AT TIME ZONE $1)::date AS captured_day,
       r.refund_days, r.refund_amounts,
       (o.cancelled_at AT TIME ZONE $1)::date AS cancelled_day, o.updated_at
FROM orders o
LEFT JOIN (SELECT order_id, sum(quantity)::int8 AS items,
                  sum(quantity::int8 * unit_price_minor)::int8 AS gross
           FROM order_items GROUP BY order_id) i USING (order_id)
LEFT JOIN payments p USING (order_id)
LEFT JOIN (SELECT order_id, array_agg((refunded_at AT TIME ZONE $1)::date) AS refund_days,
                  array_agg(amount_minor) AS refund_amounts
           FROM refunds GROUP BY order_id) r USING (order_id)
ORDER BY o.order_id";

/// One order as the write tables state it.
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct OrderSource {
    pub order_id: Uuid,
    pub version: i32,
    pub merchant_id: String,
    pub customer_id: String,
    pub currency: String,
    pub status: String,
    pub placed_at: OffsetDateTime,
    pub placed_day: Date,
    pub has_items: bool,
    pub items: i64,
    pub gross: i64,
    pub captured: Option<i64>,
    pub captured_day: Option<Date>,
    pub refund_days: Option<Vec<Date>>,
    pub refund_amounts: Option<Vec<i64>>,
    pub cancelled_day: Option<Date>,
    pub updated_at: OffsetDateTime,
}

impl OrderSource {
    /// The order's `order_facts` row; `None` for an order without items.
    pub fn fact(self) -> Option<FactRow> {
        if !self.has_items {
            return None;
        }
        let refunded = self.refund_amounts.iter().flatten().sum();
        Some(FactRow {
            order_id: self.order_id,
            version: u32::try_from(self.version).unwrap_or(0),
            merchant_id: self.merchant_id,
            customer_id: self.customer_id,
            currency: currency_bytes(&self.currency),
            status: self.status,
            placed_at: self.placed_at,
            placed_day: self.placed_day,
            item_count: u64::try_from(self.items).unwrap_or(0),
            total_minor: self.gross,
            captured_minor: self.captured.unwrap_or(0),
            refunded_minor: refunded,
            updated_at: self.updated_at,
        })
    }

    /// What the order adds to the daily cells of its merchant and currency:
    /// each (day, measures), placement on the placed day, the capture on
    /// its day, each refund on its day, the cancellation on its day.
    pub fn contributions(&self, mut add: impl FnMut(Date, DailyMeasures)) {
        if self.has_items {
            add(
                self.placed_day,
                DailyMeasures {
                    orders_placed: 1,
                    gross_minor: self.gross,
                    items_sold: self.items,
                    ..DailyMeasures::default()
                },
            );
        }
        if let (Some(day), Some(amount)) = (self.captured_day, self.captured) {
            add(
                day,
                DailyMeasures {
                    captured_minor: amount,
                    ..DailyMeasures::default()
                },
            );
        }
        if let (Some(days), Some(amounts)) = (&self.refund_days, &self.refund_amounts) {
            for (&day, &amount) in days.iter().zip(amounts) {
                add(
                    day,
                    DailyMeasures {
                        refunded_minor: amount,
                        ..DailyMeasures::default()
                    },
                );
            }
        }
        if let Some(day) = self.cancelled_day {
            add(
                day,
                DailyMeasures {
                    orders_cancelled: 1,
                    ..DailyMeasures::default()
                },
            );
        }
    }
}

/// Every order as the connection's snapshot sees the write store. The
/// caller's transaction should turn parallel query off: on a busy 2-core
/// machine PostgreSQL's parallel plan for this repeats the item
/// aggregation in every worker.
pub fn orders<'c>(
    conn: &'c mut PgConnection,
    zone: &'c str,
) -> impl Stream<Item = Result<OrderSource, sqlx::Error>> + 'c {
    sqlx::query_as::<Postgres, OrderSource>(ORDERS_SQL)
        .bind(zone)
        .fetch(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn order() -> OrderSource {
        OrderSource {
            order_id: Uuid::nil(),
            version: 4,
            merchant_id: "m".into(),
            customer_id: "c".into(),
            currency: "EUR".into(),
            status: "cancelled".into(),
            placed_at: datetime!(2026-01-01 23:30 UTC),
            placed_day: date!(2026 - 01 - 01),
            has_items: true,
            items: 3,
            gross: 2999,
            captured: Some(2999),
            captured_day: Some(date!(2026 - 01 - 02)),
            refund_days: Some(vec![date!(2026 - 01 - 03), date!(2026 - 01 - 05)]),
            refund_amounts: Some(vec![500, 2499]),
            cancelled_day: Some(date!(2026 - 01 - 05)),
            updated_at: datetime!(2026-01-05 10:00 UTC),
        }
    }

    fn contributions(o: &OrderSource) -> Vec<(Date, DailyMeasures)> {
        let mut out = Vec::new();
        o.contributions(|d, m| out.push((d, m)));
        out
    }

    #[test]
    fn every_amount_counts_on_its_own_day() {
        let c = contributions(&order());
        let on = |d: Date| {
            let mut m = DailyMeasures::default();
            for (day, x) in &c {
                if *day == d {
                    m = m.checked_add(x).unwrap();
                }
            }
            m
        };
        assert_eq!(c.len(), 5);
        let placed = on(date!(2026 - 01 - 01));
        assert_eq!(
            (placed.orders_placed, placed.gross_minor, placed.items_sold),
            (1, 2999, 3)
        );
        assert_eq!(on(date!(2026 - 01 - 02)).captured_minor, 2999);
        assert_eq!(on(date!(2026 - 01 - 03)).refunded_minor, 500);
        let last = on(date!(2026 - 01 - 05));
        assert_eq!((last.refunded_minor, last.orders_cancelled), (2499, 1));
    }

    #[test]
    fn the_fact_sums_the_refunds_and_an_order_without_items_has_none() {
        let f = order().fact().unwrap();
        assert_eq!(
            (f.total_minor, f.captured_minor, f.refunded_minor, f.version),
            (2999, 2999, 2999, 4)
        );
        let bare = OrderSource {
            has_items: false,
            items: 0,
            gross: 0,
            ..order()
        };
        let c = contributions(&bare);
        assert!(bare.fact().is_none());
        assert_eq!(c.len(), 4, "capture, two refunds, cancellation: {c:?}");
        assert!(c.iter().all(|(_, m)| m.orders_placed == 0));
    }

    #[test]
    fn an_order_with_nothing_but_items_adds_one_placement() {
        let o = OrderSource {
            captured: None,
            captured_day: None,
            refund_days: None,
            refund_amounts: None,
            cancelled_day: None,
            ..order()
        };
        assert_eq!(contributions(&o).len(), 1);
        assert_eq!(o.fact().unwrap().refunded_minor, 0);
    }
}
