//! The schedule, inside the long-running service (`tally up`,
//! `tally scheduler`): a full rebuild on a cron expression (default
//! nightly) and a cheap reconciliation every few minutes.
//!
//! Every replica may run the scheduler: the rebuild's run lock lets one
//! through and records the others as skipped. Each run reads the
//! deployment's reporting zone afresh, so a scheduler started before
//! `tally rebuild --change-reporting-zone` follows the change.
//!
//! What operators alert on is exported from `rebuild_runs`, the history
//! every run writes whoever started it (this schedule, `tally rebuild` or
//! `tally verify` on a laptop), re-read every 15 s: when each kind last
//! succeeded, how the last one ended, its drift and duration. The jobs'
//! own counters say whether this scheduler is doing its work.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tally_ops::telemetry::KindLabel;
use tally_projection::rows::ReportingZone;
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

/// The deployment's zone now (`tally_projection::deployment`).
async fn current_zone(
    pool: &PgPool,
    fallback: &ReportingZone,
) -> Result<ReportingZone, RebuildError> {
    match tally_projection::deployment::recorded(pool).await? {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindStateLabels {
    pub kind: &'static str,
    pub state: &'static str,
}

/// Kinds of run, as `rebuild_runs.kind` records them.
const KINDS: [&str; 3] = ["rebuild", "verify", "rollback"];
/// States a run ends in (or is in), as `rebuild_runs.state` records them.
const STATES: [&str; 7] = [
    "building",
    "swapping",
    "swapped",
    "verified",
    "rolled_back",
    "failed",
    "skipped",
];

/// Per kind of run: when one last succeeded, and the latest one's state,
/// drift rows and seconds.
type LatestRun = (
    String,
    Option<f64>,
    Option<String>,
    Option<i64>,
    Option<f64>,
);

/// The scheduler's metrics (`tally_scheduler_*`, `tally_rebuild_*`,
/// `tally_reconcile_*`).
pub struct SchedulerMetrics {
    pub reconcile: Arc<ReconcileMetrics>,
    /// Job runs by job (`rebuild`, `reconcile`) and result (`ok`,
    /// `failed`, `skipped`).
    pub job_runs: Family<JobLabels, Counter>,
    pub last_success: Family<KindLabel, Gauge<f64, AtomicU64>>,
    pub last_state: Family<KindStateLabels, Gauge>,
    pub last_drift_rows: Family<KindLabel, Gauge>,
    pub last_duration: Family<KindLabel, Gauge<f64, AtomicU64>>,
}

impl SchedulerMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = SchedulerMetrics {
            reconcile: Arc::new(ReconcileMetrics::default()),
            job_runs: Family::default(),
            last_success: Family::default(),
            last_state: Family::default(),
            last_drift_rows: Family::default(),
            last_duration: Family::default(),
        };
        for job in ["rebuild", "reconcile"] {
            for result in ["ok", "failed", "skipped"] {
                let _ = m.job_runs.get_or_create(&JobLabels { job, result });
            }
        }
        m.reconcile.register(registry);
        let s = registry.sub_registry_with_prefix("tally_scheduler");
        s.register(
            "job_runs",
            "Scheduled jobs run by this scheduler, by job (rebuild, reconcile) and result (ok, failed, skipped)",
            m.job_runs.clone(),
        );
        let r = registry.sub_registry_with_prefix("tally_rebuild");
        r.register(
            "last_success_timestamp_seconds",
            "When a run of each kind last succeeded (rebuild: swapped; verify: verified), whoever started it",
            m.last_success.clone(),
        );
        r.register(
            "last_run_state",
            "1 for the state the latest run of each kind is in (swapped, verified, failed, ...), 0 for the others",
            m.last_state.clone(),
        );
        r.register(
            "last_drift_rows",
            "Differing rows (cells and orders) the latest finished run of each kind found",
            m.last_drift_rows.clone(),
        );
        r.register(
            "last_duration_seconds",
            "How long the latest finished run of each kind took",
            m.last_duration.clone(),
        );
        Arc::new(m)
    }

    fn job(&self, job: &'static str, result: &'static str) {
        self.job_runs
            .get_or_create(&JobLabels { job, result })
            .inc();
    }

    /// Re-reads `rebuild_runs` into the `tally_rebuild_*` gauges.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), RebuildError> {
        let rows: Vec<LatestRun> = sqlx::query_as(
            "SELECT k.kind,
                        (SELECT extract(epoch FROM max(finished_at))::float8 FROM rebuild_runs
                          WHERE kind = k.kind AND state IN ('swapped', 'verified', 'rolled_back')),
                        l.state, l.drift_rows,
                        extract(epoch FROM l.finished_at - l.started_at)::float8
                 FROM unnest($1::text[]) AS k(kind)
                 LEFT JOIN LATERAL (SELECT state, drift_rows, finished_at, started_at
                                    FROM rebuild_runs r WHERE r.kind = k.kind
                                    ORDER BY run_id DESC LIMIT 1) l ON true",
        )
        .bind(KINDS.to_vec())
        .fetch_all(pool)
        .await?;
        for (kind, success, state, drift, seconds) in rows {
            let Some(kind) = KINDS.iter().copied().find(|k| *k == kind) else {
                continue;
            };
            let label = KindLabel { kind };
            if let Some(at) = success {
                self.last_success.get_or_create(&label).set(at);
            }
            for s in STATES {
                self.last_state
                    .get_or_create(&KindStateLabels { kind, state: s })
                    .set(i64::from(state.as_deref() == Some(s)));
            }
            if let Some(d) = drift {
                self.last_drift_rows.get_or_create(&label).set(d);
            }
            if let Some(secs) = seconds {
                self.last_duration.get_or_create(&label).set(secs);
            }
        }
        Ok(())
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
        metrics: Arc<SchedulerMetrics>,
    ) -> Result<Self, RebuildError> {
        if let Err(e) = metrics.refresh(&pool).await {
            tracing::warn!(error = %e, "could not read the rebuild history for its metrics");
        }
        let sched = JobScheduler::new()
            .await
            .map_err(|e| RebuildError::Scheduler(e.to_string()))?;

        let opts = RunOptions {
            zone: config.reporting_zone.clone(),
            trigger: "schedule".into(),
            progress: ProgressMode::Log,
            ..RunOptions::default()
        };
        let (p, c, m) = (pool.clone(), ch.clone(), metrics.clone());
        let rebuild = Job::new_async(config.rebuild_cron.as_str(), move |_id, _l| {
            let (pool, ch, mut opts, metrics) = (p.clone(), c.clone(), opts.clone(), m.clone());
            Box::pin(async move {
                let outcome = match current_zone(&pool, &opts.zone).await {
                    Ok(zone) => {
                        opts.zone = zone;
                        run(&pool, &ch, Mode::Rebuild, &opts).await
                    }
                    Err(e) => Err(e),
                };
                metrics.job(
                    "rebuild",
                    match &outcome {
                        Ok(_) => "ok",
                        Err(RebuildError::Busy(_)) => "skipped",
                        Err(_) => "failed",
                    },
                );
                if let Err(e) = metrics.refresh(&pool).await {
                    tracing::warn!(error = %e, "could not refresh the rebuild metrics");
                }
                match outcome {
                    Ok(o) => tracing::info!(
                        run_id = o.run_id,
                        orders = o.orders,
                        cells = o.cells,
                        drift_rows = o.differing(),
                        seconds = o.seconds,
                        "scheduled rebuild swapped in"
                    ),
                    Err(RebuildError::Busy(who)) => {
                        tracing::info!(%who, "scheduled rebuild skipped: another run holds the lock");
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled rebuild failed"),
                }
            })
        })
        .map_err(|e| cron_error("rebuild", &config.rebuild_cron, e))?;

        let zone = config.reporting_zone.clone();
        let days = config.reconcile_days;
        let (p, m) = (pool.clone(), metrics.clone());
        let reconcile = Job::new_async(config.reconcile_cron.as_str(), move |_id, _l| {
            let (pool, ch, zone, metrics) = (p.clone(), ch.clone(), zone.clone(), m.clone());
            Box::pin(async move {
                let r = match current_zone(&pool, &zone).await {
                    Ok(zone) => reconcile_recent(&pool, &ch, &zone, days, &metrics.reconcile).await,
                    Err(e) => Err(e),
                };
                metrics.job("reconcile", if r.is_ok() { "ok" } else { "failed" });
                if let Err(e) = r {
                    tracing::error!(error = %e, "reconciliation could not run");
                }
            })
        })
        .map_err(|e| cron_error("reconcile", &config.reconcile_cron, e))?;

        // Runs started elsewhere (`tally rebuild` by hand) show up too.
        let history = Job::new_async("*/15 * * * * *", move |_id, _l| {
            let (pool, metrics) = (pool.clone(), metrics.clone());
            Box::pin(async move {
                if let Err(e) = metrics.refresh(&pool).await {
                    tracing::warn!(error = %e, "could not refresh the rebuild metrics");
                }
            })
        })
        .map_err(|e| cron_error("history", "*/15 * * * * *", e))?;
        for job in [rebuild, reconcile, history] {
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
