//! The one typed configuration: flags, each with an environment variable.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tally_ops::{ChSettings, PgSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct Global {
    /// PostgreSQL write store. Unset: `tally up` starts its own.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// ClickHouse read store, `http[s]://user:password@host:port/database`
    /// (user and password percent-encoded). Unset: `tally up` starts its own.
    #[arg(long, env = "CLICKHOUSE_URL", global = true, hide_env_values = true)]
    pub clickhouse_url: Option<String>,
    /// PEM file of the CA that signed ClickHouse's certificate, when it is
    /// not a public one (same as `?ca_cert=` in the URL).
    #[arg(long, env = "CLICKHOUSE_CA_CERT", global = true)]
    pub clickhouse_ca_cert: Option<PathBuf>,
    /// Read-only ClickHouse user for the dashboards (defaults to CLICKHOUSE_URL).
    #[arg(
        long,
        env = "CLICKHOUSE_READER_URL",
        global = true,
        hide_env_values = true
    )]
    pub clickhouse_reader_url: Option<String>,
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
    #[arg(long, env = "TALLY_REPORTING_TZ", global = true)]
    pub reporting_tz: Option<String>,
    /// PostgreSQL connections per pool.
    #[arg(
        long,
        env = "TALLY_PG_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub pg_max_connections: u32,
}

impl Global {
    pub fn pg(&self, app: &str) -> anyhow::Result<PgSettings> {
        let url = self.database_url.clone().context(
            "DATABASE_URL is not set: point it at the write database \
             (e.g. postgres://tally@127.0.0.1:5432/tally), or use `tally up`, which starts one",
        )?;
        Ok(PgSettings {
            max_connections: self.pg_max_connections,
            ..PgSettings::new(url, app)
        })
    }

    pub fn ch(&self) -> anyhow::Result<ChSettings> {
        let url = self.clickhouse_url.as_deref().context(
            "CLICKHOUSE_URL is not set: point it at ClickHouse (e.g. http://127.0.0.1:8123/tally), \
             or use `tally up`, which starts one",
        )?;
        self.with_ca(ChSettings::from_url(url).map_err(anyhow::Error::msg)?)
    }

    pub fn ch_reader(&self) -> anyhow::Result<ChSettings> {
        match self.clickhouse_reader_url.as_deref() {
            Some(url) => self.with_ca(ChSettings::from_url(url).map_err(anyhow::Error::msg)?),
            None => self.ch(),
        }
    }

    /// `CLICKHOUSE_CA_CERT` applied, and the CA file checked now rather
    /// than at the first query.
    pub fn with_ca(&self, mut ch: ChSettings) -> anyhow::Result<ChSettings> {
        if ch.ca_cert.is_none() {
            ch.ca_cert.clone_from(&self.clickhouse_ca_cert);
        }
        if ch.ca_cert.is_some() && !ch.url.starts_with("https://") {
            anyhow::bail!("CLICKHOUSE_CA_CERT is set but CLICKHOUSE_URL is not https://");
        }
        ch.check_tls().map_err(anyhow::Error::msg)?;
        Ok(ch)
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
        Ok(tally_projection::deployment::resolve(pool, self.reporting_tz.as_deref(), by).await?)
    }

    pub async fn ingest_config(
        &self,
        pool: &sqlx::PgPool,
        batch_size: i64,
    ) -> anyhow::Result<tally_ingest::IngestConfig> {
        Ok(tally_ingest::IngestConfig {
            batch_size,
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
