//! The rebuild schedule. Runs inside the long-lived service (`tally up`),
//! on a cron expression from configuration.

use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::RebuildError;
use crate::verify::verify_daily;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Six-field cron expression (with seconds), UTC. Default: 03:00 nightly.
    pub cron: String,
    /// The ingest's reporting zone (IANA name).
    pub reporting_zone: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            cron: "0 0 3 * * *".into(),
            reporting_zone: "UTC".into(),
        }
    }
}

pub struct RebuildScheduler {
    inner: JobScheduler,
}

impl RebuildScheduler {
    /// Starts the schedule. Each run verifies the live aggregates against
    /// the write store and logs the outcome.
    pub async fn start(
        config: &SchedulerConfig,
        pool: PgPool,
        ch: clickhouse::Client,
    ) -> Result<Self, RebuildError> {
        let sched = JobScheduler::new()
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;
        let zone = config.reporting_zone.clone();
        let job = Job::new_async(config.cron.as_str(), move |_id, _l| {
            let (pool, ch, zone) = (pool.clone(), ch.clone(), zone.clone());
            Box::pin(async move {
                match verify_daily(&pool, &ch, &zone).await {
                    Ok(r) if r.is_clean() => {
                        tracing::info!(cells = r.matching, "scheduled verification: no drift")
                    }
                    Ok(r) => tracing::warn!(
                        matching = r.matching,
                        missing = r.missing.len(),
                        extra = r.extra.len(),
                        different = r.different.len(),
                        "scheduled verification found drift"
                    ),
                    Err(e) => tracing::error!(error = %e, "scheduled verification failed"),
                }
            })
        })
        .map_err(|e| {
            RebuildError::Scheduler(format!("invalid cron expression `{}`: {e}", config.cron))
        })?;
        sched
            .add(job)
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;
        sched
            .start()
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;
        tracing::info!(cron = %config.cron, "rebuild scheduler started");
        Ok(RebuildScheduler { inner: sched })
    }

    pub async fn shutdown(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "rebuild scheduler did not shut down cleanly");
        }
    }
}
