//! SQL for the command side. Every command is one statement where the
//! schema allows it: the normalised rows and the outbox row go in together,
//! atomically, in a single round trip.

use tally_domain::{
    Amount, CustomerId, MerchantId, Order, OrderEvent, OrderId, OrderStatus, PlaceOrder, Version,
};
use tally_domain::{Currency, EventEnvelope};
use time::OffsetDateTime;

use crate::error::ApiError;

/// The outbox row's `created_at` in microseconds: what a consistency token
/// names (`tally_projection::watermark::ConsistencyToken`).
const CREATED_AT_US: &str = "(extract(epoch FROM created_at) * 1000000)::int8";

/// Writes the address, order, line items and the `OrderPlaced` outbox row;
/// returns the outbox row's `created_at` (µs).
pub async fn insert_placed_order(
    db: impl sqlx::PgExecutor<'_>,
    cmd: &PlaceOrder,
    ev: &EventEnvelope,
) -> Result<i64, sqlx::Error> {
    let items = cmd.items.as_slice();
    let line_nos: Vec<i16> = (1..=items.len() as i16).collect();
    let skus: Vec<&str> = items.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i32> = items.iter().map(|l| l.quantity.get() as i32).collect();
    let prices: Vec<i64> = items.iter().map(|l| l.unit_price.minor()).collect();
    let a = &cmd.shipping_address;
    let address_id = uuid::Uuid::now_v7();
    sqlx::query_scalar(&format!(
        "WITH address AS (
            INSERT INTO addresses (address_id, name, line1, line2, city, region, postal_code, country)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ), ord AS (
            INSERT INTO orders (order_id, merchant_id, customer_id, currency, status, total_minor,
                                item_count, shipping_address_id, version, placed_at, updated_at)
            VALUES ($9, $10, $11, $12, 'placed', $13, $14, $1, 1, $15, $15)
        ), items AS (
            INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor)
            SELECT $9, * FROM unnest($16::smallint[], $17::text[], $18::integer[], $19::bigint[])
        )
        INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version,
                            occurred_at, payload)
        VALUES ($20, $9, $21, $22, $23, $15, $24)
        RETURNING {CREATED_AT_US}"
    ))
    .bind(address_id)
    .bind(a.name.as_str())
    .bind(a.line1.as_str())
    .bind(a.line2.as_ref().map(tally_domain::Text::as_str))
    .bind(a.city.as_str())
    .bind(a.region.as_ref().map(tally_domain::Text::as_str))
    .bind(a.postal_code.as_str())
    .bind(a.country.as_str())
    .bind(cmd.order_id.as_uuid())
    .bind(cmd.merchant_id.as_str())
    .bind(cmd.customer_id.as_str())
    .bind(cmd.currency.code())
    .bind(ev.order.total.minor())
    .bind(i64::try_from(ev.order.item_count).unwrap_or(i64::MAX))
    .bind(ev.occurred_at)
    .bind(&line_nos)
    .bind(&skus)
    .bind(&quantities)
    .bind(&prices)
    .bind(ev.event_id.as_uuid())
    .bind(ev.aggregate_version.get() as i32)
    .bind(ev.event_type())
    .bind(ev.schema_version as i16)
    .bind(ev.payload_json())
    .fetch_one(db)
    .await
}

type OrderRow = (
    uuid::Uuid,
    i32,
    String,
    String,
    String,
    String,
    OffsetDateTime,
    i64,
    i64,
    i64,
    i64,
);

/// Loads an order's state: the order row plus what was captured and
/// refunded, in one query.
pub async fn load_order(
    db: impl sqlx::PgExecutor<'_>,
    id: OrderId,
) -> Result<Option<Order>, ApiError> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT o.order_id, o.version, o.merchant_id, o.customer_id, o.currency, o.status, o.placed_at,
                o.item_count, o.total_minor,
                COALESCE((SELECT p.amount_minor FROM payments p WHERE p.order_id = o.order_id), 0),
                COALESCE((SELECT sum(r.amount_minor) FROM refunds r WHERE r.order_id = o.order_id), 0)::int8
         FROM orders o WHERE o.order_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(db)
    .await?;
    let Some((
        oid,
        version,
        merchant,
        customer,
        currency,
        status,
        placed_at,
        items,
        total,
        captured,
        refunded,
    )) = row
    else {
        return Ok(None);
    };
    let bad = |what: &str| {
        ApiError::Internal(format!("order {oid} has an invalid {what} in the database"))
    };
    Ok(Some(Order {
        id: OrderId::from_uuid(oid),
        version: u32::try_from(version)
            .ok()
            .and_then(Version::new)
            .ok_or_else(|| bad("version"))?,
        merchant_id: MerchantId::parse(&merchant).map_err(|_| bad("merchant_id"))?,
        customer_id: CustomerId::parse(&customer).map_err(|_| bad("customer_id"))?,
        currency: Currency::parse(currency.trim_end()).map_err(|_| bad("currency"))?,
        status: OrderStatus::parse(&status).map_err(|_| bad("status"))?,
        placed_at,
        item_count: u64::try_from(items).map_err(|_| bad("item_count"))?,
        total: Amount::from_stored(total).map_err(|_| bad("total"))?,
        captured: Amount::from_stored(captured).map_err(|_| bad("captured"))?,
        refunded: Amount::from_stored(refunded).map_err(|_| bad("refunded"))?,
    }))
}

/// The current version of an order, for conflict responses.
pub async fn current_version(db: impl sqlx::PgExecutor<'_>, id: OrderId) -> Result<u32, ApiError> {
    let v: Option<i32> = sqlx::query_scalar("SELECT version FROM orders WHERE order_id = $1")
        .bind(id.as_uuid())
        .fetch_optional(db)
        .await?;
    Ok(v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
}

/// Writes the effects of an event on an existing order and its outbox row,
/// in one statement, only if the order is still at the version the
/// decision was made on. Returns the outbox row's `created_at` (µs), or
/// `None`: someone else changed the order first.
pub async fn apply_event(
    db: impl sqlx::PgExecutor<'_>,
    ev: &EventEnvelope,
) -> Result<Option<i64>, ApiError> {
    let new_version = ev.aggregate_version.get() as i32;
    let mut payment: (Option<uuid::Uuid>, Option<i64>) = (None, None);
    let mut shipment: (Option<uuid::Uuid>, Option<&str>, Option<&str>) = (None, None, None);
    let mut refund: (Option<uuid::Uuid>, Option<i64>, Option<&str>, Option<&str>) =
        (None, None, None, None);
    let mut cancel_reason: Option<&str> = None;
    match &ev.event {
        OrderEvent::OrderPlaced { .. } => {
            return Err(ApiError::Internal(
                "OrderPlaced is written by insert_placed_order".into(),
            ));
        }
        OrderEvent::PaymentCaptured { payment_id, amount } => {
            payment = (Some(payment_id.as_uuid()), Some(amount.minor()));
        }
        OrderEvent::OrderShipped {
            shipment_id,
            carrier,
            tracking_number,
        } => {
            shipment = (
                Some(shipment_id.as_uuid()),
                Some(carrier.as_str()),
                Some(tracking_number.as_str()),
            );
        }
        OrderEvent::OrderCancelled { reason, refund: r } => {
            cancel_reason = Some(reason.as_str());
            if let Some(r) = r {
                refund = (
                    Some(r.refund_id.as_uuid()),
                    Some(r.amount.minor()),
                    Some("cancellation"),
                    Some(reason.as_str()),
                );
            }
        }
        OrderEvent::OrderRefunded {
            refund_id,
            amount,
            reason,
        } => {
            refund = (
                Some(refund_id.as_uuid()),
                Some(amount.minor()),
                Some("requested"),
                reason.as_ref().map(tally_domain::Text::as_str),
            );
        }
    }
    let applied: Option<i64> = sqlx::query_scalar(&format!(
        "WITH upd AS (
            UPDATE orders SET status = $2, version = $3, updated_at = $4,
                              cancelled_at = CASE WHEN $5::text IS NULL THEN cancelled_at ELSE $4 END,
                              cancel_reason = COALESCE($5, cancel_reason)
            WHERE order_id = $1 AND version = $3 - 1
            RETURNING order_id
        ), pay AS (
            INSERT INTO payments (payment_id, order_id, amount_minor, captured_at)
            SELECT $6, order_id, $7, $4 FROM upd WHERE $6::uuid IS NOT NULL
        ), ship AS (
            INSERT INTO shipments (shipment_id, order_id, carrier, tracking_number, shipped_at)
            SELECT $8, order_id, $9, $10, $4 FROM upd WHERE $8::uuid IS NOT NULL
        ), refund AS (
            INSERT INTO refunds (refund_id, order_id, amount_minor, cause, reason, refunded_at)
            SELECT $11, order_id, $12, $13, $14, $4 FROM upd WHERE $11::uuid IS NOT NULL
        )
        INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version, occurred_at, payload)
        SELECT $15, order_id, $3, $16, $17, $4, $18 FROM upd
        RETURNING {CREATED_AT_US}"
    ))
    .bind(ev.aggregate_id.as_uuid())
    .bind(ev.order.status.as_str())
    .bind(new_version)
    .bind(ev.occurred_at)
    .bind(cancel_reason)
    .bind(payment.0)
    .bind(payment.1)
    .bind(shipment.0)
    .bind(shipment.1)
    .bind(shipment.2)
    .bind(refund.0)
    .bind(refund.1)
    .bind(refund.2)
    .bind(refund.3)
    .bind(ev.event_id.as_uuid())
    .bind(ev.event_type())
    .bind(ev.schema_version as i16)
    .bind(ev.payload_json())
    .fetch_optional(db)
    .await?;
    Ok(applied)
}
