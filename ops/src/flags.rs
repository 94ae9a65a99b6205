//! Where the two stores are, as flags with environment variables: shared by
//! every binary that reaches them (`tally`, `tally-bench`), so that a store
//! is named the same way everywhere and its settings are resolved in one
//! place. Behind the `cli` feature: the services themselves take resolved
//! [`PgSettings`]/[`ChSettings`], never flags.

use std::path::PathBuf;

use clap::Args;

use crate::stores::{ChSettings, PgSettings};

#[derive(Args, Clone, Debug, Default)]
pub struct StoreFlags {
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
    /// PostgreSQL connections per pool.
    #[arg(
        long,
        env = "TALLY_PG_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub pg_max_connections: u32,
}

/// A store that is not named, or named wrongly; the message says the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

impl StoreFlags {
    /// Both stores were named (`tally up` and the benchmarks start their
    /// own otherwise).
    pub fn both_given(&self) -> bool {
        self.database_url.is_some() && self.clickhouse_url.is_some()
    }

    /// The write store, connecting as `app` (its `application_name`).
    pub fn pg(&self, app: &str) -> Result<PgSettings, FlagError> {
        let url = self.database_url.clone().ok_or_else(|| {
            FlagError(
                "DATABASE_URL is not set: point it at the write database \
                 (e.g. postgres://tally@127.0.0.1:5432/tally), or use `tally up`, which starts one"
                    .into(),
            )
        })?;
        Ok(self.pg_at(url, app))
    }

    /// The write store at `url` (one `tally up` started, say), with the
    /// pool size configured here.
    pub fn pg_at(&self, url: String, app: &str) -> PgSettings {
        PgSettings {
            max_connections: self.pg_max_connections,
            ..PgSettings::new(url, app)
        }
    }

    pub fn ch(&self) -> Result<ChSettings, FlagError> {
        let url = self.clickhouse_url.as_deref().ok_or_else(|| {
            FlagError(
                "CLICKHOUSE_URL is not set: point it at ClickHouse (e.g. http://127.0.0.1:8123/tally), \
                 or use `tally up`, which starts one"
                    .into(),
            )
        })?;
        self.with_ca(ChSettings::from_url(url).map_err(FlagError)?)
    }

    /// The dashboards' read-only user, or [`ch`](Self::ch)'s.
    pub fn ch_reader(&self) -> Result<ChSettings, FlagError> {
        match self.clickhouse_reader_url.as_deref() {
            Some(url) => self.with_ca(ChSettings::from_url(url).map_err(FlagError)?),
            None => self.ch(),
        }
    }

    /// `CLICKHOUSE_CA_CERT` applied, and the CA file checked now rather
    /// than at the first query.
    pub fn with_ca(&self, mut ch: ChSettings) -> Result<ChSettings, FlagError> {
        if ch.ca_cert.is_none() {
            ch.ca_cert.clone_from(&self.clickhouse_ca_cert);
        }
        if ch.ca_cert.is_some() && !ch.url.starts_with("https://") {
            return Err(FlagError(
                "CLICKHOUSE_CA_CERT is set but CLICKHOUSE_URL is not https://: use an https URL, \
                 or unset the CA"
                    .into(),
            ));
        }
        ch.check_tls().map_err(FlagError)?;
        Ok(ch)
    }
}
