//! Metrics every service exports the same way, so one dashboard and one set
//! of alert rules fit all of them: what build is running, how full each
//! PostgreSQL pool is, and how ClickHouse requests fail.
//!
//! Pool figures are read at scrape time (a [`Collector`]), not sampled by a
//! task: a scrape always sees the pool as it is. sqlx does not expose how
//! many tasks wait for a connection; a pool is saturated when it holds its
//! maximum and none is idle, which the dashboard shows from these three.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

/// `tally_build_info{version, git_sha} 1`: which build answers, for
/// dashboards and for correlating a regression with a deploy.
pub fn register_build_info(registry: &mut Registry, version: &str, git_sha: &str) {
    registry.register(
        "tally_build",
        "The running build: version and git commit",
        Info::new(vec![
            ("version".to_owned(), version.to_owned()),
            ("git_sha".to_owned(), git_sha.to_owned()),
        ]),
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: &'static str,
}

/// `tally_pg_pool_{connections,idle_connections,max_connections}{pool}`,
/// one series per named pool, read when scraped.
#[derive(Debug)]
pub struct PgPools(Vec<(&'static str, PgPool)>);

impl PgPools {
    /// Registers the pools under their names (the service that uses each).
    pub fn register(registry: &mut Registry, pools: Vec<(&'static str, PgPool)>) {
        registry.register_collector(Box::new(PgPools(pools)));
    }
}

impl Collector for PgPools {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Read = fn(&PgPool) -> i64;
        let figures: [(&str, &str, Read); 3] = [
            (
                "tally_pg_pool_connections",
                "Connections the PostgreSQL pool holds",
                |p| i64::from(p.size()),
            ),
            (
                "tally_pg_pool_idle_connections",
                "Idle connections in the PostgreSQL pool",
                |p| i64::try_from(p.num_idle()).unwrap_or(i64::MAX),
            ),
            (
                "tally_pg_pool_max_connections",
                "Most connections the PostgreSQL pool may hold",
                |p| i64::from(p.options().get_max_connections()),
            ),
        ];
        for (name, help, read) in figures {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (pool, p) in &self.0 {
                let gauge = ConstGauge::new(read(p));
                gauge.encode(family.encode_family(&PoolLabel { pool })?)?;
            }
        }
        Ok(())
    }
}

/// A `kind` label: of a ClickHouse error here, of a run in the rebuild's
/// metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// ClickHouse requests that failed, by kind: `timeout`, `network`,
/// `server` (ClickHouse answered with an exception), `data` (a row or
/// schema it could not encode or decode), `other`. Every kind exists from
/// the start, so `rate()` works before the first failure.
#[derive(Clone, Debug)]
pub struct ClickHouseErrors(Family<KindLabel, Counter>);

impl ClickHouseErrors {
    pub const KINDS: [&'static str; 5] = ["timeout", "network", "server", "data", "other"];

    /// Registers `<prefix>_clickhouse_errors_total` on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<KindLabel, Counter>::default();
        for kind in Self::KINDS {
            let _ = family.get_or_create(&KindLabel { kind });
        }
        registry.register(
            "clickhouse_errors",
            "ClickHouse requests that failed, by kind (timeout, network, server, data, other)",
            family.clone(),
        );
        ClickHouseErrors(family)
    }

    pub fn record(&self, e: &clickhouse::error::Error) {
        self.record_kind(kind_of(e));
    }

    /// One failure of a kind [`kind_of`] named earlier.
    pub fn record_kind(&self, kind: &'static str) {
        self.0.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Put on a response whose request failed in ClickHouse, for a middleware
/// holding [`ClickHouseErrors`] to count.
#[derive(Clone, Copy, Debug)]
pub struct ClickHouseFailure(pub &'static str);

/// Middleware: counts the responses marked with a [`ClickHouseFailure`].
pub async fn count_clickhouse_failures(
    axum::extract::State(errors): axum::extract::State<ClickHouseErrors>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let res = next.run(req).await;
    if let Some(ClickHouseFailure(kind)) = res.extensions().get::<ClickHouseFailure>() {
        errors.record_kind(kind);
    }
    res
}

pub fn kind_of(e: &clickhouse::error::Error) -> &'static str {
    use clickhouse::error::Error as E;
    match e {
        E::TimedOut => "timeout",
        E::Network(_) => "network",
        E::BadResponse(_) => "server",
        E::RowNotFound
        | E::SequenceMustHaveLength
        | E::DeserializeAnyNotSupported
        | E::NotEnoughData
        | E::InvalidUtf8Encoding(_)
        | E::InvalidTagEncoding(_)
        | E::VariantDiscriminatorIsOutOfBound(_)
        | E::DataFormat(_)
        | E::InvalidColumnsHeader(_)
        | E::SchemaMismatch(_) => "data",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_a_series_from_the_start() {
        let mut r = Registry::default();
        let errors = ClickHouseErrors::register(&mut r);
        errors.record(&clickhouse::error::Error::TimedOut);
        errors.record(&clickhouse::error::Error::BadResponse("Code: 60".into()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for kind in ClickHouseErrors::KINDS {
            let want = if kind == "timeout" || kind == "server" {
                1
            } else {
                0
            };
            assert!(
                text.contains(&format!(
                    "clickhouse_errors_total{{kind=\"{kind}\"}} {want}"
                )),
                "{kind}: {text}"
            );
        }
    }

    #[test]
    fn build_info_is_one_series_with_version_and_commit() {
        let mut r = Registry::default();
        register_build_info(&mut r, "1.2.3", "abc123");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("tally_build_info{version=\"1.2.3\",git_sha=\"abc123\"} 1"),
            "{text}"
        );
    }
}
