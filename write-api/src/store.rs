//! SQL for the command side. Every command is one statement where the
//! schema allows it: the normalised rows and the outbox row go in together,
//! atomically, in a single round trip.

use tally_domain::{EventEnvelope, PlaceOrder};

/// Writes the address, order, line items and the `OrderPlaced` outbox row.
pub async fn insert_placed_order(
    db: impl sqlx::PgExecutor<'_>,
    cmd: &PlaceOrder,
    ev: &EventEnvelope,
) -> Result<(), sqlx::Error> {
    let items = cmd.items.as_slice();
    let line_nos: Vec<i16> = (1..=items.len() as i16).collect();
    let skus: Vec<&str> = items.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i32> = items.iter().map(|l| l.quantity.get() as i32).collect();
    let prices: Vec<i64> = items.iter().map(|l| l.unit_price.minor()).collect();
    let a = &cmd.shipping_address;
    let address_id = uuid::Uuid::now_v7();
    sqlx::query(
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
        VALUES ($20, $9, $21, $22, $23, $15, $24)",
    )
    .bind(address_id)
    .bind(a.name.as_str())
    .bind(a.line1.as_str())
    .bind(a.line2.as_ref().map(|t| t.as_str()))
    .bind(a.city.as_str())
    .bind(a.region.as_ref().map(|t| t.as_str()))
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
    .execute(db)
    .await?;
    Ok(())
}
