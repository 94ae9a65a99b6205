//! Where the two stores are, as flags with environment variables: shared by
//! every binary that reaches them (`tally`, `tally-bench`), so that a store
//! is named the same way everywhere and its settings are resolved in one
//! place. Behind the `cli` feature: the services themselves take resolved
//! [`PgSettings`]/[`ChSettings`], never flags.

use std::path::PathBuf;

use clap::Args;

use crate::stores::{ChCluster, ChSettings, PgSettings};

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
    /// The replicated ClickHouse cluster (its `remote_servers` name) that
    /// CLICKHOUSE_URL's servers form; then CLICKHOUSE_URL (and
    /// CLICKHOUSE_READER_URL) list one URL per replica, comma-separated.
    #[arg(long, env = "TALLY_CLICKHOUSE_CLUSTER", global = true)]
    pub clickhouse_cluster_name: Option<String>,
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

    /// ClickHouse: the one server, or a cluster's first replica.
    pub fn ch(&self) -> Result<ChSettings, FlagError> {
        Ok(self.ch_replicas()?.swap_remove(0))
    }

    /// Every server CLICKHOUSE_URL names: one, or a cluster's replicas.
    pub fn ch_replicas(&self) -> Result<Vec<ChSettings>, FlagError> {
        let urls = self.clickhouse_url.as_deref().ok_or_else(|| {
            FlagError(
                "CLICKHOUSE_URL is not set: point it at ClickHouse (e.g. http://127.0.0.1:8123/tally), \
                 or use `tally up`, which starts one"
                    .into(),
            )
        })?;
        self.replicas_of("CLICKHOUSE_URL", urls)
    }

    /// The dashboards' read-only user, or [`ch`](Self::ch)'s.
    pub fn ch_reader(&self) -> Result<ChSettings, FlagError> {
        Ok(self.ch_reader_replicas()?.swap_remove(0))
    }

    /// The read-only user on every replica (CLICKHOUSE_READER_URL, or
    /// CLICKHOUSE_URL's).
    pub fn ch_reader_replicas(&self) -> Result<Vec<ChSettings>, FlagError> {
        match self.clickhouse_reader_url.as_deref() {
            Some(urls) => self.replicas_of("CLICKHOUSE_READER_URL", urls),
            None => self.ch_replicas(),
        }
    }

    /// The replicated cluster, when TALLY_CLICKHOUSE_CLUSTER names one:
    /// its name and CLICKHOUSE_URL's replicas (one shard).
    pub fn ch_cluster(&self) -> Result<Option<ChCluster>, FlagError> {
        match &self.clickhouse_cluster_name {
            None => Ok(None),
            Some(name) => Ok(Some(ChCluster {
                name: name.clone(),
                shards: vec![self.ch_replicas()?],
            })),
        }
    }

    fn replicas_of(&self, var: &str, urls: &str) -> Result<Vec<ChSettings>, FlagError> {
        let list: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if list.is_empty() {
            return Err(FlagError(format!(
                "{var} is empty: name a ClickHouse server"
            )));
        }
        match &self.clickhouse_cluster_name {
            None if list.len() > 1 => {
                return Err(FlagError(format!(
                    "{var} names {} servers: set TALLY_CLICKHOUSE_CLUSTER to the replicated \
                     cluster they form (its remote_servers name), or name one server",
                    list.len()
                )));
            }
            Some(name)
                if name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                return Err(FlagError(format!(
                    "TALLY_CLICKHOUSE_CLUSTER must be the cluster's remote_servers name \
                     (letters, digits, _), not {name:?}"
                )));
            }
            _ => {}
        }
        list.into_iter()
            .map(|u| self.with_ca(ChSettings::from_url(u).map_err(FlagError)?))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(urls: &str, cluster: Option<&str>) -> StoreFlags {
        StoreFlags {
            clickhouse_url: Some(urls.into()),
            clickhouse_cluster_name: cluster.map(Into::into),
            ..StoreFlags::default()
        }
    }

    #[test]
    fn a_cluster_lists_its_replicas_and_several_urls_need_a_cluster() {
        let two = "http://u:p@ch1:8123/tally, http://u:p@ch2:8123/tally";
        let e = flags(two, None).ch_replicas().unwrap_err().to_string();
        assert!(e.contains("TALLY_CLICKHOUSE_CLUSTER"), "{e}");
        let f = flags(two, Some("tally"));
        let urls: Vec<String> = f
            .ch_replicas()
            .unwrap()
            .into_iter()
            .map(|r| r.url)
            .collect();
        assert_eq!(urls, ["http://ch1:8123", "http://ch2:8123"]);
        assert_eq!(f.ch().unwrap().url, "http://ch1:8123");
        let c = f.ch_cluster().unwrap().unwrap();
        assert_eq!(
            (c.name.as_str(), c.shards.len(), c.shards[0].len()),
            ("tally", 1, 2)
        );
        assert!(
            flags(two, None).ch_cluster().unwrap().is_none(),
            "no cluster named"
        );
        assert!(
            flags("http://ch1:8123/tally", None)
                .ch_cluster()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_cluster_name_is_an_identifier_and_a_list_is_not_empty() {
        let e = flags("http://ch1:8123", Some("a b"))
            .ch_replicas()
            .unwrap_err();
        assert!(e.to_string().contains("remote_servers name"), "{e}");
        let e = flags(" , ", Some("tally")).ch_replicas().unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }
}
