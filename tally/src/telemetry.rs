//! The metric registry every role serves starts here, so that each one
//! says which build it is and how full its PostgreSQL pool is; the roles
//! add their own families. `tally metrics` prints what a role's registry
//! defines, which the stack test holds against a live scrape.

use prometheus_client::registry::Registry;
use sqlx::PgPool;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("TALLY_GIT_SHA");

/// A registry with `tally_build_info` and the pools' gauges, each pool
/// labelled with the service that uses it.
pub fn registry(pools: Vec<(&'static str, PgPool)>) -> Registry {
    let mut r = Registry::default();
    tally_ops::telemetry::register_build_info(&mut r, VERSION, GIT_SHA);
    tally_ops::telemetry::PgPools::register(&mut r, pools);
    r
}

/// The process roles that serve `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Ingest,
    Dashboards,
    Scheduler,
    /// `tally up`: every service in one process, one registry.
    Up,
}

impl Role {
    fn has(self, part: Role) -> bool {
        self == part || self == Role::Up
    }

    /// The name the role's PostgreSQL pool is labelled with.
    fn pool_name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Ingest => "ingest",
            Role::Dashboards => "dashboards",
            Role::Scheduler => "scheduler",
            Role::Up => "up",
        }
    }
}

/// The metric handles a role's code updates.
pub struct Metrics {
    pub registry: Registry,
    pub api: Option<tally_write_api::metrics::Metrics>,
    pub ingest: Option<tally_ingest::Metrics>,
    pub dashboards: Option<tally_dashboards::Metrics>,
    pub scheduler: Option<std::sync::Arc<tally_rebuild::SchedulerMetrics>>,
}

/// Everything `role` exports, built the one way every role builds it.
pub fn for_role(role: Role, pool: PgPool) -> Metrics {
    let mut registry = registry(vec![(role.pool_name(), pool)]);
    let r = &mut registry;
    let api = role
        .has(Role::Api)
        .then(|| tally_write_api::metrics::Metrics::register(r));
    let ingest = role
        .has(Role::Ingest)
        .then(|| tally_ingest::Metrics::register(r));
    let dashboards = role
        .has(Role::Dashboards)
        .then(|| tally_dashboards::Metrics::register(r));
    let scheduler = role
        .has(Role::Scheduler)
        .then(|| tally_rebuild::SchedulerMetrics::register(r));
    Metrics {
        registry,
        api,
        ingest,
        dashboards,
        scheduler,
    }
}

/// `tally metrics --role R`: the families R's `/metrics` carries, one per
/// line (`name type`), as encoded (counters with `_total`).
pub fn families(role: Role) -> anyhow::Result<Vec<(String, String)>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://localhost/unused")
        .map_err(|e| anyhow::anyhow!("a pool for listing: {e}"))?;
    let m = for_role(role, pool);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect())
}
