//! The schedule, inside the long-running service (`tally up`,
//! `tally scheduler`): a full rebuild on a cron expression (default
//! nightly) and a cheap reconciliation every few minutes.
//!
//! Every replica may run the scheduler: the rebuild's run lock lets one
//! through and records the others as skipped. Each run reads the
//! deployment's reporting zone afresh, so a scheduler started before
//! `tally rebuild --change-reporting-zone` follows the change.

use std::sync::Arc;

use sqlx::PgPool;
use tally_ingest::rows::ReportingZone;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::RebuildError;
use crate::progress::ProgressMode;
use crate::reconcile::{ReconcileMetrics, reconcile_recent};
use crate::run::{Mode, RunOptions, run};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Six-field cron expression (with seconds), UTC. Default: 03:00 nightly.
    pub rebuild_cron: String,
    /// Six-field cron expression for reconciliation. Default: every 10 minutes.
    pub reconcile_cron: String,
    /// How many recent days reconciliation checks.
    pub reconcile_days: i64,
    /// The zone used while the deployment has none recorded.
    pub reporting_zone: ReportingZone,
}

/// The deployment's zone now (`tally_ingest::deployment`).
async fn current_zone(
    pool: &PgPool,
    fallback: &ReportingZone,
) -> Result<ReportingZone, RebuildError> {
    match tally_ingest::deployment::recorded(pool).await? {
        Some(z) => ReportingZone::parse(&z).map_err(RebuildError::Refused),
        None => Ok(fallback.clone()),
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            rebuild_cron: "0 0 3 * * *".into(),
            reconcile_cron: "0 */10 * * * *".into(),
            reconcile_days: 7,
            reporting_zone: ReportingZone::utc(),
        }
    }
}

pub struct RebuildScheduler {
    inner: JobScheduler,
}

fn cron_error(what: &str, cron: &str, e: impl std::fmt::Display) -> RebuildError {
    RebuildError::Scheduler(format!(
        "invalid {what} cron expression `{cron}` (six fields, seconds first, e.g. `0 0 3 * * *`): {e}"
    ))
}

impl RebuildScheduler {
    pub async fn start(
        config: &SchedulerConfig,
        pool: PgPool,
        ch: clickhouse::Client,
        metrics: Arc<ReconcileMetrics>,
    ) -> Result<Self, RebuildError> {
        let sched = JobScheduler::new()
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;

        let opts = RunOptions {
            zone: config.reporting_zone.clone(),
            trigger: "schedule".into(),
            progress: ProgressMode::Log,
            ..RunOptions::default()
        };
        let (p, c) = (pool.clone(), ch.clone());
        let rebuild = Job::new_async(config.rebuild_cron.as_str(), move |_id, _l| {
            let (pool, ch, mut opts) = (p.clone(), c.clone(), opts.clone());
            Box::pin(async move {
                let outcome = match current_zone(&pool, &opts.zone).await {
                    Ok(zone) => {
                        opts.zone = zone;
                        run(&pool, &ch, Mode::Rebuild, &opts).await
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(o) => tracing::info!(
                        run_id = o.run_id,
                        orders = o.orders,
                        cells = o.cells,
                        drift_rows = o.daily.differing() + o.facts.differing(),
                        seconds = o.seconds,
                        "scheduled rebuild swapped in"
                    ),
                    Err(RebuildError::Busy(who)) => {
                        tracing::info!(%who, "scheduled rebuild skipped: another run holds the lock")
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled rebuild failed"),
                }
            })
        })
        .map_err(|e| cron_error("rebuild", &config.rebuild_cron, e))?;

        let zone = config.reporting_zone.clone();
        let days = config.reconcile_days;
        let reconcile = Job::new_async(config.reconcile_cron.as_str(), move |_id, _l| {
            let (pool, ch, zone, metrics) =
                (pool.clone(), ch.clone(), zone.clone(), metrics.clone());
            Box::pin(async move {
                let r = match current_zone(&pool, &zone).await {
                    Ok(zone) => reconcile_recent(&pool, &ch, &zone, days, &metrics).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "reconciliation could not run");
                }
            })
        })
        .map_err(|e| cron_error("reconcile", &config.reconcile_cron, e))?;

        for job in [rebuild, reconcile] {
            sched
                .add(job)
                .await
                .map_err(|e| RebuildError::Scheduler(e.to_string()))?;
        }
        sched
            .start()
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;
        tracing::info!(rebuild = %config.rebuild_cron, reconcile = %config.reconcile_cron, "rebuild scheduler started");
        Ok(RebuildScheduler { inner: sched })
    }

    pub async fn shutdown(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "rebuild scheduler did not shut down cleanly");
        }
    }
}
