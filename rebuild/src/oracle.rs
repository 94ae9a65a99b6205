//! The daily figures recomputed from the normalised write tables.
//!
//! Gross and items come from `order_items` (not the cached order total),
//! captures from `payments`, refunds from `refunds`, cancellations from
//! `orders.cancelled_at`; each on the reporting day (in the configured IANA
//! zone) of its own timestamp. The
//! grouping happens in PostgreSQL and rows are streamed, so memory grows
//! with the number of (day, merchant, currency) cells, not with orders.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::PgPool;
use tally_domain::DailyMeasures;
use tally_projection::rows::CellKey;
use time::Date;

/// (day, merchant, currency) → measures.
pub type Cells = BTreeMap<CellKey, DailyMeasures>;

pub const ORACLE_SQL: &str = "
SELECT day, merchant_id, currency,
       sum(orders_placed)::int8, sum(gross)::int8, sum(captured)::int8,
       sum(refunded)::int8, sum(cancelled)::int8, sum(items)::int8
FROM (
    SELECT (o.placed_at AT TIME ZONE $1)::date AS day, o.merchant_id, o.currency,
           1 AS orders_placed, i.gross, 0 AS captured, 0 AS refunded, 0 AS cancelled, i.items
    FROM orders o
    JOIN (SELECT order_id, sum(quantity::int8 * unit_price_minor) AS gross, sum(quantity) AS items
          FROM order_items GROUP BY order_id) i USING (order_id)
    UNION ALL
    SELECT (p.captured_at AT TIME ZONE $1)::date, o.merchant_id, o.currency, 0, 0, p.amount_minor, 0, 0, 0
    FROM payments p JOIN orders o USING (order_id)
    UNION ALL
    SELECT (r.refunded_at AT TIME ZONE $1)::date, o.merchant_id, o.currency, 0, 0, 0, r.amount_minor, 0, 0
    FROM refunds r JOIN orders o USING (order_id)
    UNION ALL
    SELECT (o.cancelled_at AT TIME ZONE $1)::date, o.merchant_id, o.currency, 0, 0, 0, 0, 1, 0
    FROM orders o WHERE o.cancelled_at IS NOT NULL
) contributions
GROUP BY day, merchant_id, currency";

/// One row of [`ORACLE_SQL`]: day, merchant, currency, then the measures.
pub type OracleRow = (Date, String, String, i64, i64, i64, i64, i64, i64);

/// A cell's key and measures, from an oracle row. Fails only for a
/// merchant or currency the write API would not have accepted.
pub fn cell(row: OracleRow) -> Result<(CellKey, DailyMeasures), sqlx::Error> {
    let (day, merchant, currency, op, gross, cap, refd, canc, items) = row;
    let key = CellKey::parse(day, &merchant, &currency)
        .map_err(|e| sqlx::Error::Decode(format!("a write-store cell key: {e}").into()))?;
    Ok((
        key,
        DailyMeasures::from_values([op, gross, cap, refd, canc, items]),
    ))
}

/// `zone` is an IANA name (`UTC`, `Europe/Berlin`): the ingest's reporting zone.
pub async fn daily_from_write_store(pool: &PgPool, zone: &str) -> Result<Cells, sqlx::Error> {
    let mut out = Cells::new();
    let mut rows = sqlx::query_as::<_, OracleRow>(ORACLE_SQL)
        .bind(zone)
        .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let (key, measures) = cell(row)?;
        out.insert(key, measures);
    }
    Ok(out)
}
