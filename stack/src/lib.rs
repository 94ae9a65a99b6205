//! Local PostgreSQL and ClickHouse servers as child processes, for
//! `tally up` and for the test suite.
//!
//! This is what makes "no configuration" work: given only a data directory,
//! [`LocalStack::start`] initialises (once) and starts both servers on free
//! loopback ports, waits until they answer, and hands back their URLs.
//! Production never uses it: there `DATABASE_URL` and `CLICKHOUSE_URL` point
//! at real servers.
//!
//! Children are started in their own process group (a terminal's Ctrl-C
//! reaches only `tally`, which then stops them in order) and with a
//! parent-death signal, so they cannot outlive a `tally` that was killed.

mod chdb_harness;
mod child;
mod clickhouse_server;
pub mod cluster;
mod lock;
mod postgres_server;
pub mod secrets;
pub mod tls;
mod zookeeper;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_ops::ChSettings;

pub use chdb_harness::start_chdb;
pub use child::ChildServer;
pub use clickhouse_server::{
    READER_USER, https_port as clickhouse_https_port, native_port as clickhouse_native_port,
    start_clickhouse,
};
pub use cluster::{CLUSTER_NAME, ClusterNode, ClusterShape, LocalCluster};
pub use lock::DataDirLock;
pub use postgres_server::find_bin_dir as find_postgres_bin_dir;
pub use postgres_server::start_on as start_postgres;
pub use postgres_server::{ADMIN_ROLE as POSTGRES_ADMIN_ROLE, APP_ROLE as POSTGRES_APP_ROLE};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{0}")]
    Missing(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        server: &'static str,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "another tally is already running on data directory {dir} (pid {pid}). \
         Stop it (Ctrl-C in its terminal, or `kill {pid}`), or pass a different --data-dir"
    )]
    Locked { dir: PathBuf, pid: String },
    #[error("{0}")]
    Setup(String),
}

impl StackError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
        let what = what.into();
        move |source| StackError::Io { what, source }
    }
}

/// Where the stack keeps its files, and how big to make PostgreSQL.
#[derive(Clone, Debug)]
pub struct StackConfig {
    pub data_dir: PathBuf,
    /// PostgreSQL `max_connections`; the test suite needs more than a
    /// developer's `tally up`.
    pub pg_max_connections: u32,
    /// `false` turns off fsync for test servers: a killed process still
    /// loses nothing, only a crashed machine would.
    pub durable: bool,
    /// A replicated ClickHouse of this shape instead of one server.
    pub clickhouse_cluster: Option<ClusterShape>,
}

impl StackConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StackConfig {
            data_dir: data_dir.into(),
            pg_max_connections: 200,
            durable: true,
            clickhouse_cluster: None,
        }
    }
}

/// Running local servers. Dropping it does not stop them; call
/// [`LocalStack::stop`] (or let the process exit: the parent-death signal
/// stops them).
pub struct LocalStack {
    /// The services' role ([`POSTGRES_APP_ROLE`]), with its password.
    pub postgres_url: String,
    /// The superuser, for set-up only (creating databases in tests).
    pub postgres_admin_url: String,
    /// Admin access to ClickHouse (migrations, ingest).
    pub clickhouse: ChSettings,
    /// The read-only ClickHouse user the dashboards use.
    pub clickhouse_reader: ChSettings,
    /// The servers' TLS files: PostgreSQL takes TLS on its port,
    /// ClickHouse serves HTTPS on [`LocalStack::clickhouse_https`].
    pub tls: tls::TlsFiles,
    /// `https://localhost:<port>`, ClickHouse's HTTPS interface.
    pub clickhouse_https: String,
    /// The replicated ClickHouse, when one was asked for: then
    /// `clickhouse` and `clickhouse_reader` are its first node's.
    pub cluster: Option<LocalCluster>,
    postgres: ChildServer,
    clickhouse_server: Option<ChildServer>,
}

impl LocalStack {
    /// Initialises (first time only) and starts PostgreSQL and ClickHouse
    /// under `config.data_dir`, and waits until both answer.
    pub async fn start(config: &StackConfig) -> Result<LocalStack, StackError> {
        secrets::private_dir(&config.data_dir)?;
        let data_dir = std::fs::canonicalize(&config.data_dir).map_err(StackError::io(format!(
            "resolving {}",
            config.data_dir.display()
        )))?;
        let (pg, ch) = tokio::join!(
            postgres_server::start(&data_dir, config.pg_max_connections, config.durable),
            start_read_side(&data_dir, config.clickhouse_cluster),
        );
        let started = match (pg, ch) {
            (Ok(pg), Ok(ch)) => (pg, ch),
            (Err(e), Ok(ch)) => {
                ch.stop().await;
                return Err(e);
            }
            (Ok(pg), Err(e)) => {
                pg.server.stop().await;
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
        };
        let (pg, read_side) = started;
        let tls = tls::ensure(&data_dir)?;
        let https_dir = match &read_side {
            ReadSide::Single(..) => data_dir.join("clickhouse"),
            ReadSide::Cluster(c) => c.nodes[0].dir().to_owned(),
        };
        let https = clickhouse_server::https_port_in(&https_dir)
            .ok_or_else(|| StackError::Setup("ClickHouse's config has no https_port".into()))?;
        let (clickhouse_server, clickhouse, clickhouse_reader, cluster) = match read_side {
            ReadSide::Single(server, admin, reader) => (Some(server), admin, reader, None),
            ReadSide::Cluster(c) => {
                let (admin, reader) = (c.nodes[0].admin.clone(), c.nodes[0].reader.clone());
                (None, admin, reader, Some(c))
            }
        };
        Ok(LocalStack {
            tls,
            clickhouse_https: format!("https://localhost:{https}"),
            postgres_url: pg.app_url,
            postgres_admin_url: pg.admin_url,
            postgres: pg.server,
            clickhouse,
            clickhouse_reader,
            clickhouse_server,
            cluster,
        })
    }

    /// Stops both servers gracefully (PostgreSQL fast shutdown, ClickHouse
    /// SIGTERM), escalating to SIGKILL after a timeout.
    pub async fn stop(self) {
        let read_side = async {
            if let Some(server) = &self.clickhouse_server {
                server.stop().await;
            }
            if let Some(cluster) = self.cluster {
                cluster.stop().await;
            }
        };
        tokio::join!(self.postgres.stop(), read_side);
    }

    /// PostgreSQL URL of another database on the same server.
    pub fn postgres_url_for(&self, database: &str) -> String {
        replace_database(&self.postgres_url, database)
    }
}

/// One ClickHouse server, or a cluster of them.
enum ReadSide {
    Single(ChildServer, ChSettings, ChSettings),
    Cluster(LocalCluster),
}

impl ReadSide {
    async fn stop(self) {
        match self {
            ReadSide::Single(server, ..) => server.stop().await,
            ReadSide::Cluster(c) => c.stop().await,
        }
    }
}

async fn start_read_side(
    data_dir: &Path,
    cluster: Option<ClusterShape>,
) -> Result<ReadSide, StackError> {
    Ok(match cluster {
        None => {
            let (server, admin, reader) = clickhouse_server::start(data_dir).await?;
            ReadSide::Single(server, admin, reader)
        }
        Some(shape) => ReadSide::Cluster(LocalCluster::start(data_dir, shape).await?),
    })
}

/// Deletes a stopped stack's data directory, and its PostgreSQL cluster
/// where that lives outside it (run as root, the cluster cannot live in a
/// `0700` directory: `postgres_server.rs`).
pub fn remove_data_dir(data_dir: &Path) {
    if let Ok(note) = std::fs::read_to_string(data_dir.join("postgres.location"))
        && let Some(cluster) = note.lines().next().filter(|l| l.starts_with('/'))
    {
        let _ = std::fs::remove_dir_all(cluster);
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Replaces the database path segment of a `postgres://` URL.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// `<data dir>/stack.json`: how scripts, the load generator and operators
/// find a running `tally up`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackFile {
    pub pid: u32,
    pub api_url: String,
    pub dashboards_url: String,
    /// Every role: for the tour and operator commands.
    pub api_key: String,
    /// `finance:read` only: what the printed dashboard link carries.
    #[serde(default)]
    pub reader_key: String,
    pub database_url: String,
    pub clickhouse_url: String,
    /// Whether `tally up` started the servers itself.
    pub embedded: bool,
}

impl StackFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("stack.json")
    }

    /// Writes the file readable by its owner only: it holds passwords.
    pub fn write(&self, data_dir: &Path) -> Result<(), StackError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| StackError::Setup(e.to_string()))?;
        secrets::write_private(&Self::path(data_dir), &json)
    }

    pub fn read(data_dir: &Path) -> Result<StackFile, StackError> {
        let path = Self::path(data_dir);
        let bytes = std::fs::read(&path).map_err(StackError::io(format!(
            "reading {} (is `tally up` running?)",
            path.display()
        )))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StackError::Setup(format!("{}: {e}", path.display())))
    }

    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(Self::path(data_dir));
    }
}

/// Asks the kernel for a free loopback port. Another process may take it
/// before the server binds; the servers then fail to start and say so.
pub fn free_port() -> Result<u16, StackError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(StackError::io("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(StackError::io("finding a free port"))?
        .port())
}

/// `n` distinct free loopback ports: all are held open while they are
/// chosen, so none is handed out twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>, StackError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StackError::io("finding free ports"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(StackError::io("finding free ports"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_the_database_of_a_url() {
        assert_eq!(
            replace_database("postgres://u@h:5/db", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:5", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
