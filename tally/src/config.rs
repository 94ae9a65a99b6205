//! The one typed configuration. Every flag that an environment variable
//! can set is declared here, once, in the group a role flattens into its
//! arguments (`roles.rs`, `up.rs`, `rebuild_cli.rs`); closed choices are
//! value enums and the reporting zone is parsed once, into
//! [`ReportingZone`]. The stores' flags are `tally_ops::flags`, shared with
//! `tally-bench`. README's table of variables is checked against these
//! declarations by a test (`main.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use tally_ingest::ClaimFrom;
use tally_ops::flags::StoreFlags;
use tally_ops::{ChSettings, PgSettings};
use tally_projection::ReportingZone;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct Global {
    #[command(flatten)]
    pub stores: StoreFlags,
    /// Where `tally up` keeps its servers' data, logs and stack.json.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = ".tally", global = true)]
    pub data_dir: PathBuf,
    /// Log format: `text` for terminals, `json` for collectors.
    #[arg(
        long,
        env = "TALLY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// The IANA time zone whose midnight separates reporting days. Per
    /// deployment: recorded in the write store when the deployment is
    /// created (default UTC); a later process given another zone refuses
    /// to start. Unset: the recorded one.
    #[arg(long, env = "TALLY_REPORTING_TZ", global = true, value_parser = ReportingZone::parse)]
    pub reporting_tz: Option<ReportingZone>,
}

/// The write API's listening address.
#[derive(Args, Clone, Debug)]
pub struct ApiFlags {
    /// Address the write (command) API listens on.
    #[arg(long, env = "TALLY_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
}

impl ApiFlags {
    pub fn config(&self) -> tally_write_api::ApiConfig {
        tally_write_api::ApiConfig {
            listen: self.api_listen,
            ..Default::default()
        }
    }
}

/// The dashboards' address and bounds.
#[derive(Args, Clone, Debug)]
pub struct DashboardsFlags {
    /// Address the dashboards listen on.
    #[arg(long, env = "TALLY_DASHBOARDS_ADDR", default_value = "127.0.0.1:8081")]
    pub dashboards_listen: SocketAddr,
    /// Longest date range (days) one dashboard request may ask for.
    #[arg(long, alias = "dashboards-max-span-days", env = "TALLY_DASHBOARDS_MAX_SPAN_DAYS",
          default_value_t = 366, value_parser = clap::value_parser!(i64).range(1..=3660))]
    pub max_span_days: i64,
    /// Most sums of merged parts cached (per merchant and week, per day;
    /// about 32 bytes each, so at most about 128 MB by default); 0 turns
    /// the cache off.
    #[arg(
        long,
        alias = "dashboards-cache-rows",
        env = "TALLY_DASHBOARDS_CACHE_ROWS",
        default_value_t = 4_000_000
    )]
    pub cache_rows: usize,
}

impl DashboardsFlags {
    pub fn config(&self) -> tally_dashboards::DashboardsConfig {
        tally_dashboards::DashboardsConfig {
            listen: self.dashboards_listen,
            max_span_days: self.max_span_days,
            cache_rows: self.cache_rows,
            ..Default::default()
        }
    }
}

/// When the scheduled work runs.
#[derive(Args, Clone, Debug)]
pub struct ScheduleFlags {
    /// When the projections are rebuilt from the write store (cron with
    /// seconds, UTC).
    #[arg(long, env = "TALLY_REBUILD_CRON", default_value = "0 0 3 * * *")]
    pub rebuild_cron: String,
    /// When recent days are reconciled against the write store (cron with
    /// seconds, UTC).
    #[arg(long, env = "TALLY_RECONCILE_CRON", default_value = "0 */10 * * * *")]
    pub reconcile_cron: String,
}

/// An ingest worker's settings.
#[derive(Args, Clone, Debug)]
pub struct IngestFlags {
    /// Most outbox events per batch.
    #[arg(long, env = "TALLY_INGEST_BATCH_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub batch_size: i64,
    /// Which end of the outbox to claim from. Running two workers? Give
    /// one of them `newest`, so they never queue behind each other's locks.
    #[arg(
        long,
        env = "TALLY_INGEST_CLAIM_FROM",
        default_value = "oldest",
        value_parser = PossibleValuesParser::new(["oldest", "newest"])
            .try_map(|s| s.parse::<ClaimFrom>())
    )]
    pub claim_from: ClaimFrom,
    /// Address for /livez, /readyz and /metrics.
    #[arg(long, env = "TALLY_INGEST_OPS_ADDR", default_value = "127.0.0.1:9091")]
    pub ops_listen: SocketAddr,
}

/// The scheduler's own endpoints.
#[derive(Args, Clone, Debug)]
pub struct SchedulerFlags {
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    /// Address for /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "TALLY_SCHEDULER_OPS_ADDR",
        default_value = "127.0.0.1:9092"
    )]
    pub ops_listen: SocketAddr,
}

/// Where `tally load` sends its traffic.
#[derive(Args, Clone, Debug)]
pub struct LoadTargetFlags {
    /// Write API base URL (default: the running `tally up`).
    #[arg(long, env = "TALLY_LOAD_API_URL")]
    pub api_url: Option<String>,
    /// API key with `orders:write` (default: the running `tally up`'s).
    #[arg(long, env = "TALLY_LOAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl Global {
    pub fn pg(&self, app: &str) -> anyhow::Result<PgSettings> {
        Ok(self.stores.pg(app)?)
    }

    pub fn ch(&self) -> anyhow::Result<ChSettings> {
        Ok(self.stores.ch()?)
    }

    /// Applies pending migrations to PostgreSQL and to the read side: one
    /// ClickHouse server, or every replica of TALLY_CLICKHOUSE_CLUSTER.
    pub async fn migrate(&self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        match self.stores.ch_cluster()? {
            Some(cluster) => tally_migrations::migrate_cluster(pool, &cluster).await?,
            None => tally_migrations::migrate(pool, &self.ch()?).await?,
        }
        Ok(())
    }

    /// The replicas the ingest writes to (one, without a cluster).
    pub fn ch_replicas(&self) -> anyhow::Result<std::sync::Arc<tally_ops::Replicas>> {
        Ok(tally_ops::Replicas::new(&self.stores.ch_replicas()?))
    }

    /// The replicas the dashboards read, as the read-only user.
    pub fn ch_reader_replicas(&self) -> anyhow::Result<std::sync::Arc<tally_ops::Replicas>> {
        Ok(tally_ops::Replicas::new(&self.stores.ch_reader_replicas()?))
    }
}

impl Global {
    /// The deployment's reporting zone (`tally_projection::deployment`): the
    /// recorded one, which `--reporting-tz` must agree with; recorded from
    /// it (or UTC) if the deployment has none yet. `by` names the process
    /// in the record.
    pub async fn reporting_zone(
        &self,
        pool: &sqlx::PgPool,
        by: &str,
    ) -> anyhow::Result<tally_projection::ReportingZone> {
        Ok(tally_projection::deployment::resolve(pool, self.reporting_tz.as_ref(), by).await?)
    }

    /// An ingest worker's configuration, in the deployment's zone.
    pub async fn ingest_config(
        &self,
        pool: &sqlx::PgPool,
        flags: &IngestFlags,
    ) -> anyhow::Result<tally_ingest::IngestConfig> {
        Ok(tally_ingest::IngestConfig {
            batch_size: flags.batch_size,
            claim_from: flags.claim_from,
            reporting_zone: self.reporting_zone(pool, "tally ingest").await?,
            ..Default::default()
        })
    }
}

pub fn init_tracing(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,tokio_cron_scheduler=warn,tower_http=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if g.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
