//! Compares the live `daily_revenue` projection with the oracle, cell by
//! cell, exactly.

use clickhouse::Row;
use serde::Deserialize;
use sqlx::PgPool;
use tally_domain::DailyMeasures;
use time::Date;

use crate::RebuildError;
use crate::oracle::{Cells, daily_from_write_store};

#[derive(Row, Deserialize)]
struct LiveRow {
    #[serde(with = "clickhouse::serde::time::date")]
    day: Date,
    merchant_id: String,
    currency: [u8; 3],
    orders_placed: i64,
    gross_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    orders_cancelled: i64,
    items_sold: i64,
}

/// The live projection, latest version of each cell.
pub async fn live_daily(ch: &clickhouse::Client) -> Result<Cells, clickhouse::error::Error> {
    let rows: Vec<LiveRow> = ch
        .query(
            "SELECT day, merchant_id, currency, orders_placed, gross_minor, captured_minor,
                    refunded_minor, orders_cancelled, items_sold
             FROM daily_revenue FINAL",
        )
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                (
                    r.day,
                    r.merchant_id,
                    String::from_utf8_lossy(&r.currency).into_owned(),
                ),
                DailyMeasures {
                    orders_placed: r.orders_placed,
                    gross_minor: r.gross_minor,
                    captured_minor: r.captured_minor,
                    refunded_minor: r.refunded_minor,
                    orders_cancelled: r.orders_cancelled,
                    items_sold: r.items_sold,
                },
            )
        })
        .collect())
}

/// Cells that match, are missing from the live side, are extra there, or differ.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DriftReport {
    pub matching: usize,
    pub missing: Vec<(Date, String, String)>,
    pub extra: Vec<(Date, String, String)>,
    pub different: Vec<(Date, String, String)>,
}

impl DriftReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }

    pub fn compare(expected: &Cells, live: &Cells) -> DriftReport {
        let mut r = DriftReport::default();
        for (k, want) in expected {
            match live.get(k) {
                None if want.is_zero() => r.matching += 1,
                None => r.missing.push(k.clone()),
                Some(got) if got == want => r.matching += 1,
                Some(_) => r.different.push(k.clone()),
            }
        }
        for (k, got) in live {
            if !expected.contains_key(k) && !got.is_zero() {
                r.extra.push(k.clone());
            }
        }
        r
    }
}

/// Oracle versus live. Exact only at rest: events still in the outbox are
/// in the oracle but not yet live.
pub async fn verify_daily(
    pool: &PgPool,
    ch: &clickhouse::Client,
    zone: &str,
) -> Result<DriftReport, RebuildError> {
    let expected = daily_from_write_store(pool, zone).await?;
    let live = live_daily(ch).await?;
    Ok(DriftReport::compare(&expected, &live))
}
