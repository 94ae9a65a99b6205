//! Connection settings for PostgreSQL and ClickHouse, and the one place
//! that turns them into a pool or a client.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// How to reach the PostgreSQL write store.
#[derive(Clone, Debug)]
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

/// How to reach the ClickHouse read store (HTTP interface).
#[derive(Clone, Debug)]
pub struct ChSettings {
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl ChSettings {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        ChSettings {
            url: url.into(),
            user: "default".into(),
            password: String::new(),
            database: database.into(),
        }
    }

    /// Parses `http://user:password@host:port/database`; user, password and
    /// database are optional (`default`, empty, `tally`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("CLICKHOUSE_URL must start with http:// (got `{url}`)"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(format!("CLICKHOUSE_URL has no host (got `{url}`)"));
        }
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (u.to_owned(), p.to_owned()),
                None => (u.to_owned(), String::new()),
            },
            None => ("default".to_owned(), String::new()),
        };
        let database = path.split('?').next().unwrap_or("").trim_matches('/');
        Ok(ChSettings {
            url: format!("http://{host}"),
            user,
            password,
            database: if database.is_empty() {
                "tally".into()
            } else {
                database.into()
            },
        })
    }

    /// The URL form accepted by [`ChSettings::from_url`].
    pub fn to_url(&self) -> String {
        let host = self.url.trim_start_matches("http://");
        if self.password.is_empty() {
            format!("http://{}@{host}/{}", self.user, self.database)
        } else {
            format!(
                "http://{}:{}@{host}/{}",
                self.user, self.password, self.database
            )
        }
    }

    /// A client bound to the database. Validation is off because
    /// ClickHouse 18.16 lacks RowBinaryWithNamesAndTypes; the row types are
    /// checked against the real schema by the integration tests instead.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client not bound to a database, for `CREATE DATABASE`.
    pub fn server_client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_validation(false)
    }

    pub fn with_database(&self, database: impl Into<String>) -> Self {
        ChSettings {
            database: database.into(),
            ..self.clone()
        }
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
        assert!(ChSettings::from_url("https://x").is_err());
        assert!(ChSettings::from_url("http:///db").is_err());
    }
}
