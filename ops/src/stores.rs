//! Connection settings for PostgreSQL and ClickHouse, and the one place
//! that turns them into a pool or a client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// How to reach the PostgreSQL write store. TLS is the URL's: `sslmode`
/// (`require`, `verify-ca`, `verify-full`) and `sslrootcert`, as libpq
/// takes them (rustls underneath).
#[derive(Clone)]
pub struct PgSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before giving up:
    /// the bound on "PostgreSQL saturated" latency.
    pub acquire_timeout: Duration,
    /// `application_name`, visible in `pg_stat_activity`.
    pub application_name: String,
    /// Statements slower than this are logged as warnings. Services keep
    /// the default; batch jobs (rebuild) run long statements by design.
    pub slow_statement: Duration,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl PgSettings {
    pub fn new(url: impl Into<String>, application_name: impl Into<String>) -> Self {
        PgSettings {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            application_name: application_name.into(),
            slow_statement: Duration::from_secs(1),
        }
    }

    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(self
            .url
            .parse::<PgConnectOptions>()?
            .application_name(&self.application_name)
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, self.slow_statement))
    }

    /// For batch work (rebuilds, bulk seeding), whose statements take
    /// seconds by design: a slow-statement warning there is not news.
    pub fn batch(self) -> Self {
        PgSettings {
            slow_statement: Duration::from_secs(600),
            ..self
        }
    }

    /// A pool that connects lazily: a service starts even if PostgreSQL is
    /// down, reports not-ready, and answers 503 until it is back.
    pub fn pool(&self) -> Result<PgPool, sqlx::Error> {
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(self.connect_options()?))
    }

    /// A pool that has proven it can connect.
    pub async fn connect(&self) -> Result<PgPool, sqlx::Error> {
        let pool = self.pool()?;
        pool.acquire().await?;
        Ok(pool)
    }
}

/// How to reach the ClickHouse read store (HTTP or HTTPS interface).
#[derive(Clone)]
pub struct ChSettings {
    /// `http://host:port` or `https://host:port`, nothing else.
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
    /// PEM file of the CA(s) to trust for `https://`, besides the public
    /// web roots (`ca_cert=` in the URL, or `CLICKHOUSE_CA_CERT`).
    pub ca_cert: Option<PathBuf>,
}

/// Passwords never reach a log line or an error message.
impl std::fmt::Debug for ChSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChSettings")
            .field("url", &self.url)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("database", &self.database)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

impl ChSettings {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ChSettings {
            url: url.into(),
            user: "default".into(),
            password: String::new(),
            database: database.into(),
            ca_cert: None,
        }
    }

    /// Parses `http[s]://user:password@host:port/database?ca_cert=/path`;
    /// user, password (percent-encoded) and database are optional
    /// (`default`, empty, `tally`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let shown = redact_url(url);
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("CLICKHOUSE_URL is not a URL ({e}): `{shown}`"))?;
        let scheme = parsed.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "CLICKHOUSE_URL must start with http:// or https:// (got `{shown}`)"
            ));
        }
        // The URL standard reads `http:///db` as host `db`; an operator
        // who wrote that forgot the host.
        let authority_empty = url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.starts_with('/') || rest.starts_with('@'));
        let host = match parsed.host_str() {
            _ if authority_empty => {
                return Err(format!("CLICKHOUSE_URL has no host (got `{shown}`)"));
            }
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(format!("CLICKHOUSE_URL has no host (got `{shown}`)")),
        };
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        let decode = |s: &str| {
            percent_decode(s).map_err(|_| {
                format!("CLICKHOUSE_URL's user or password is not valid percent-encoded UTF-8 (`{shown}`)")
            })
        };
        let user = match parsed.username() {
            "" => "default".to_owned(),
            u => decode(u)?,
        };
        let password = decode(parsed.password().unwrap_or(""))?;
        let database = parsed.path().trim_matches('/');
        let mut ca_cert = None;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "ca_cert" => ca_cert = Some(PathBuf::from(v.as_ref())),
                other => {
                    return Err(format!(
                        "CLICKHOUSE_URL has an unknown parameter `{other}` (known: ca_cert)"
                    ));
                }
            }
        }
        if ca_cert.is_some() && scheme == "http" {
            return Err(format!(
                "CLICKHOUSE_URL sets ca_cert but is not https:// (`{shown}`)"
            ));
        }
        Ok(ChSettings {
            url: format!("{scheme}://{host}{port}"),
            user,
            password,
            database: if database.is_empty() {
                "tally".into()
            } else {
                database.into()
            },
            ca_cert,
        })
    }

    /// The URL form accepted by [`ChSettings::from_url`].
    pub fn to_url(&self) -> String {
        let (scheme, host) = self.url.split_once("://").unwrap_or(("http", &self.url));
        let enc = |s: &str| crate::percent_encode(s, b"");
        let auth = if self.password.is_empty() {
            enc(&self.user)
        } else {
            format!("{}:{}", enc(&self.user), enc(&self.password))
        };
        let ca = self
            .ca_cert
            .as_ref()
            .map(|p| format!("?ca_cert={}", enc(&p.to_string_lossy())))
            .unwrap_or_default();
        format!("{scheme}://{auth}@{host}/{}{ca}", self.database)
    }

    /// A client bound to the database. Validation is off because
    /// ClickHouse 18.16 lacks RowBinaryWithNamesAndTypes; the row types are
    /// checked against the real schema by the integration tests instead.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client not bound to a database, for `CREATE DATABASE`.
    pub fn server_client(&self) -> clickhouse::Client {
        // An unreadable CA file was reported by `check_tls` at start-up;
        // here it leaves only the public roots, so connections fail.
        let client = http_client(self.ca_cert.as_deref())
            .or_else(|e| {
                tracing::error!(error = %e, "ClickHouse TLS settings");
                http_client(None)
            })
            .unwrap_or_default();
        client
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_validation(false)
    }

    /// Whether the CA file (if any) can be read: checked at start-up so a
    /// wrong path is an error with the fix, not a stream of TLS failures.
    pub fn check_tls(&self) -> Result<(), String> {
        http_client(self.ca_cert.as_deref()).map(drop)
    }

    pub fn with_database(&self, database: impl Into<String>) -> Self {
        ChSettings {
            database: database.into(),
            ..self.clone()
        }
    }
}

/// A replicated read side: the cluster's name (its `remote_servers`
/// entry, `TALLY_CLICKHOUSE_CLUSTER`) and the admin settings of every
/// replica, shard by shard. The single-server mode has none of this.
#[derive(Clone, Debug)]
pub struct ChCluster {
    pub name: String,
    pub shards: Vec<Vec<ChSettings>>,
}

impl ChCluster {
    /// Every node, shard by shard, with its shard's index (0-based).
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &ChSettings)> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(i, replicas)| replicas.iter().map(move |r| (i, r)))
    }

    /// The same cluster with every node's database set to `database`.
    pub fn with_database(&self, database: &str) -> Self {
        ChCluster {
            name: self.name.clone(),
            shards: self
                .shards
                .iter()
                .map(|r| r.iter().map(|s| s.with_database(database)).collect())
                .collect(),
        }
    }
}

/// The replicas of one shard and the one this process uses now. Every
/// unit of work takes the current one once ([`Replicas::current`]) and
/// does all of its reading or writing there: the dashboards' parts lookup
/// and the query it plans must meet the same replica. A replica that
/// cannot be reached is reported with [`Replicas::failed`], which moves
/// the whole process on to the next; there is no health polling: a
/// replica is tried again when the others fail in turn.
pub struct Replicas {
    nodes: Vec<(String, clickhouse::Client)>,
    current: std::sync::atomic::AtomicUsize,
}

/// One replica, as taken for a unit of work.
#[derive(Clone)]
pub struct Pinned {
    pub index: usize,
    pub url: String,
    pub client: clickhouse::Client,
}

impl Replicas {
    /// One client per replica; the first is used first.
    pub fn new(replicas: &[ChSettings]) -> std::sync::Arc<Replicas> {
        Self::from_clients(
            replicas
                .iter()
                .map(|r| (r.url.clone(), r.client()))
                .collect(),
        )
    }

    /// A single server (no failover), for callers holding a client.
    pub fn single(client: clickhouse::Client) -> std::sync::Arc<Replicas> {
        Self::from_clients(vec![(String::new(), client)])
    }

    fn from_clients(nodes: Vec<(String, clickhouse::Client)>) -> std::sync::Arc<Replicas> {
        assert!(!nodes.is_empty(), "Replicas needs at least one replica");
        std::sync::Arc::new(Replicas {
            nodes,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The replica to use now.
    pub fn current(&self) -> Pinned {
        let index = self.current.load(std::sync::atomic::Ordering::SeqCst) % self.nodes.len();
        let (url, client) = &self.nodes[index];
        Pinned {
            index,
            url: url.clone(),
            client: client.clone(),
        }
    }

    /// Replica `index` could not be reached: unless another caller has
    /// moved on already, the next one becomes current. Returns whether
    /// there is another replica to try.
    pub fn failed(&self, index: usize) -> bool {
        let n = self.nodes.len();
        if n < 2 {
            return false;
        }
        let next = (index + 1) % n;
        if self
            .current
            .compare_exchange(
                index,
                next,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_ok()
        {
            tracing::warn!(
                from = %self.nodes[index].0,
                to = %self.nodes[next].0,
                "ClickHouse replica unreachable; moving to the next"
            );
        }
        true
    }
}

/// Whether `e` says the server could not be reached or did not answer in
/// time (another replica may), rather than that it refused the query.
pub fn unreachable(e: &clickhouse::error::Error) -> bool {
    matches!(
        e,
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
    )
}

/// The HTTP(S) client under every ClickHouse client: rustls (no OpenSSL to
/// install), the public web roots plus `ca_cert`'s certificates, and the
/// `clickhouse` crate's own defaults (TCP keep-alive 60 s, idle pooled
/// connections closed after 2 s, before ClickHouse's 3 s).
fn http_client(ca_cert: Option<&Path>) -> Result<clickhouse::Client, String> {
    use hyper_util::client::legacy::connect::HttpConnector;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("reading the ClickHouse CA file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading the ClickHouse CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the ClickHouse CA file {} holds no PEM certificate",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("a certificate in {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(clickhouse::Client::with_http_client(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector),
    ))
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|e| e.utf8_error())
}

/// `url` with its password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// Whether `table` exists in the client's database.
pub async fn clickhouse_table_exists(
    ch: &clickhouse::Client,
    table: &str,
) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = ch
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?")
        .bind(table)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_urls_parse_with_and_without_credentials() {
        let s = ChSettings::from_url("http://127.0.0.1:8123").unwrap();
        assert_eq!(
            (
                s.url.as_str(),
                s.user.as_str(),
                s.password.as_str(),
                s.database.as_str()
            ),
            ("http://127.0.0.1:8123", "default", "", "tally")
        );
        let s = ChSettings::from_url("http://reader:s3cret@ch:9000/analytics").unwrap();
        assert_eq!(
            (
                s.url.as_str(),
                s.user.as_str(),
                s.password.as_str(),
                s.database.as_str()
            ),
            ("http://ch:9000", "reader", "s3cret", "analytics")
        );
        assert_eq!(
            ChSettings::from_url(&s.to_url()).unwrap().password,
            "s3cret"
        );
        assert!(ChSettings::from_url("ftp://x").is_err());
        assert!(ChSettings::from_url("http:///db").is_err());
        assert!(ChSettings::from_url("http://h/db?ca_cert=/ca.pem").is_err());
        assert!(ChSettings::from_url("https://h/db?colour=red").is_err());
    }

    #[test]
    fn clickhouse_urls_take_https_a_ca_and_percent_encoded_credentials() {
        let s = ChSettings::from_url(
            "https://tally%40acme:p%40ss%3Aw%2Frd%20x+y@abc.clickhouse.cloud:8443/finance?ca_cert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(s.url, "https://abc.clickhouse.cloud:8443");
        assert_eq!(
            (s.user.as_str(), s.password.as_str()),
            ("tally@acme", "p@ss:w/rd x+y")
        );
        assert_eq!(s.database, "finance");
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let again = ChSettings::from_url(&s.to_url()).unwrap();
        assert_eq!(
            (
                again.url,
                again.user,
                again.password,
                again.database,
                again.ca_cert
            ),
            (
                s.url.clone(),
                s.user.clone(),
                s.password.clone(),
                s.database.clone(),
                s.ca_cert.clone()
            )
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("p@ss") && shown.contains("***"), "{shown}");
        let err = ChSettings::from_url("ftp://u:hunter2@h").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("tally-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let s = ChSettings {
            ca_cert: Some(empty.clone()),
            ..ChSettings::new("https://h:8443", "tally")
        };
        let err = s.check_tls().unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = ChSettings {
            ca_cert: Some(dir.join("missing.pem")),
            ..s
        };
        assert!(missing.check_tls().unwrap_err().contains("missing.pem"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn postgres_settings_do_not_show_their_password() {
        let s = PgSettings::new(
            "postgres://tally:hunter2@db:5432/tally?sslmode=verify-full",
            "x",
        );
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("sslmode=verify-full"),
            "{shown}"
        );
    }
}
