//! Continuous reconciliation: between full rebuilds, a cheap check that the
//! live daily cells of recent, complete days equal the write store's sums.
//!
//! "Complete" means older than the freshness watermark (minus a margin for
//! commands whose event time precedes their commit): every event of those
//! days is projected, so any difference is drift, not lag. Finance alerts
//! on `tally_reconcile_drift_minor`, per currency.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use sqlx::PgPool;
use tally_projection::rows::{DailyRow, ReportingZone};
use time::{Date, Duration, OffsetDateTime};

use crate::RebuildError;
use crate::compare::{Sink, TableDrift};
use crate::daily::compare_daily_rows;
use crate::oracle::{ORACLE_SQL, OracleRow, cell};

/// Events are stamped when the command runs and committed a little later:
/// a day counts as complete once the watermark is this far past its end.
pub const COMPLETENESS_MARGIN: Duration = Duration::minutes(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CurrencyLabel {
    pub currency: String,
}

/// Gauges set by every reconciliation.
#[derive(Clone, Default)]
pub struct ReconcileMetrics {
    /// Total absolute drift (gross + captured + refunded) per currency.
    pub drift_minor: Family<CurrencyLabel, Gauge<i64, AtomicI64>>,
    pub drift_cells: Gauge<i64, AtomicI64>,
    pub last_run_timestamp: Gauge<i64, AtomicI64>,
}

impl ReconcileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tally_reconcile_drift_minor",
            "Absolute drift in minor units between the write store and the live daily cells of complete recent days, per currency",
            self.drift_minor.clone(),
        );
        registry.register(
            "tally_reconcile_drift_cells",
            "Daily cells that differed at the last reconciliation",
            self.drift_cells.clone(),
        );
        registry.register(
            "tally_reconcile_last_run_timestamp_seconds",
            "When reconciliation last completed",
            self.last_run_timestamp.clone(),
        );
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReconcileOutcome {
    pub from: Date,
    /// First day not checked (not yet complete).
    pub until: Date,
    #[serde(with = "time::serde::rfc3339::option")]
    pub watermark: Option<OffsetDateTime>,
    pub daily: TableDrift,
}

impl ReconcileOutcome {
    pub fn has_drift(&self) -> bool {
        self.daily.differing() > 0
    }
}

/// Compares days `since ..` up to the last complete day.
pub async fn reconcile(
    pool: &PgPool,
    ch: &clickhouse::Client,
    zone: &ReportingZone,
    since: Date,
    sink: &mut Sink<'_>,
) -> Result<ReconcileOutcome, RebuildError> {
    let wm = tally_projection::watermark::published(ch).await?;
    let until = match wm {
        Some(w) => zone.day(w - COMPLETENESS_MARGIN),
        None => since, // nothing projected yet: nothing is complete
    };
    let mut out = ReconcileOutcome {
        from: since,
        until,
        watermark: wm,
        daily: TableDrift::default(),
    };
    if since >= until {
        return Ok(out);
    }
    let expected: Vec<DailyRow> = sqlx::query_as::<_, OracleRow>(&format!(
        "SELECT * FROM ({ORACLE_SQL}) c WHERE day >= $2 AND day < $3"
    ))
    .bind(zone.name())
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| cell(row).map(|(key, m)| DailyRow::of_cell(&key, &m, 0)))
    .collect::<Result<_, _>>()?;
    let live: Vec<DailyRow> = ch
        .query("SELECT ?fields FROM daily_revenue FINAL WHERE day >= toDate(?) AND day < toDate(?)")
        .bind(since.to_string())
        .bind(until.to_string())
        .fetch_all()
        .await?;
    compare_daily_rows(&expected, &live, &mut out.daily, sink).await?;
    Ok(out)
}

/// The scheduled form: the last `days` days, logged and exported.
pub async fn reconcile_recent(
    pool: &PgPool,
    ch: &clickhouse::Client,
    zone: &ReportingZone,
    days: i64,
    metrics: &Arc<ReconcileMetrics>,
) -> Result<ReconcileOutcome, RebuildError> {
    let today = zone.day(OffsetDateTime::now_utc());
    let since = today - Duration::days(days);
    let out = reconcile(pool, ch, zone, since, &mut Sink::worst_only()).await?;
    metrics.drift_minor.clear();
    for (currency, by) in &out.daily.drift_by_currency {
        let total: i128 = by.values().sum();
        metrics
            .drift_minor
            .get_or_create(&CurrencyLabel {
                currency: currency.clone(),
            })
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
    metrics.drift_cells.set(out.daily.differing() as i64);
    metrics
        .last_run_timestamp
        .set(OffsetDateTime::now_utc().unix_timestamp());
    if out.has_drift() {
        tracing::error!(
            from = %out.from,
            until = %out.until,
            cells = out.daily.differing(),
            drift = ?out.daily.drift_by_currency,
            "reconciliation: live daily revenue differs from the write store"
        );
    } else {
        tracing::info!(from = %out.from, until = %out.until, cells = out.daily.compared, "reconciliation: no drift");
    }
    Ok(out)
}
