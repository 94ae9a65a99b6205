//! The write API's Prometheus metrics, registered on the registry the
//! binary passes in (no global recorder, so every test app has its own).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tally_ops::http::HttpMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub http: HttpMetrics,
    pub events_appended: Family<EventLabels, Counter>,
    pub replays: Counter,
    pub conflicts: Counter,
    pub pool_size: Gauge,
    pub pool_idle: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            http: HttpMetrics::default(),
            events_appended: Family::default(),
            replays: Counter::default(),
            conflicts: Counter::default(),
            pool_size: Gauge::default(),
            pool_idle: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("tally_api");
        m.http.register(r);
        r.register(
            "events_appended",
            "Domain events appended to the outbox",
            m.events_appended.clone(),
        );
        r.register(
            "idempotent_replays",
            "Commands answered from their Idempotency-Key's stored response, without writing",
            m.replays.clone(),
        );
        r.register(
            "version_conflicts",
            "Commands refused because another command changed the order first (409)",
            m.conflicts.clone(),
        );
        r.register(
            "pg_pool_connections",
            "Connections the write API's PostgreSQL pool holds",
            m.pool_size.clone(),
        );
        r.register(
            "pg_pool_idle_connections",
            "Idle connections in the write API's PostgreSQL pool",
            m.pool_idle.clone(),
        );
        m
    }
}
