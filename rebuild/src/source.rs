//! Order facts recomputed from the normalised write tables.
//!
//! Like the daily cells in [`crate::oracle`], this is a second statement of
//! the projection rules, independent of the ingest's Rust: amounts come
//! from `order_items`, `payments` and `refunds`, not from the event payloads
//! or the order's cached total. Rows are streamed, never collected.

use futures_util::{Stream, StreamExt};
use sqlx::{PgConnection, Postgres};
use tally_ingest::FactRow;
use tally_ingest::rows::currency_bytes;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

pub const FACTS_SQL: &str = "
SELECT o.order_id, o.version, o.merchant_id, o.customer_id, o.currency, o.status, o.placed_at,
       (o.placed_at AT TIME ZONE $1)::date AS placed_day,
       i.items, i.gross, coalesce(p.amount_minor, 0) AS captured,
       coalesce(r.refunded, 0)::int8 AS refunded, o.updated_at
FROM orders o
JOIN (SELECT order_id, sum(quantity)::int8 AS items, sum(quantity::int8 * unit_price_minor)::int8 AS gross
      FROM order_items GROUP BY order_id) i USING (order_id)
LEFT JOIN payments p USING (order_id)
LEFT JOIN (SELECT order_id, sum(amount_minor) AS refunded FROM refunds GROUP BY order_id) r USING (order_id)";

#[derive(sqlx::FromRow)]
struct FactSource {
    order_id: Uuid,
    version: i32,
    merchant_id: String,
    customer_id: String,
    currency: String,
    status: String,
    placed_at: OffsetDateTime,
    placed_day: Date,
    items: i64,
    gross: i64,
    captured: i64,
    refunded: i64,
    updated_at: OffsetDateTime,
}

impl From<FactSource> for FactRow {
    fn from(s: FactSource) -> FactRow {
        FactRow {
            order_id: s.order_id,
            version: u32::try_from(s.version).unwrap_or(0),
            merchant_id: s.merchant_id,
            customer_id: s.customer_id,
            currency: currency_bytes(&s.currency),
            status: s.status,
            placed_at: s.placed_at,
            placed_day: s.placed_day,
            item_count: u64::try_from(s.items).unwrap_or(0),
            total_minor: s.gross,
            captured_minor: s.captured,
            refunded_minor: s.refunded,
            updated_at: s.updated_at,
        }
    }
}

/// Every order's fact row as the connection's snapshot sees the write store.
pub fn facts<'c>(
    conn: &'c mut PgConnection,
    zone: &'c str,
) -> impl Stream<Item = Result<FactRow, sqlx::Error>> + 'c {
    sqlx::query_as::<Postgres, FactSource>(FACTS_SQL)
        .bind(zone)
        .fetch(conn)
        .map(|r| r.map(FactRow::from))
}
