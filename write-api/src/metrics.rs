//! The write API's Prometheus metrics, registered on the registry the
//! binary passes in (no global recorder, so every test app has its own).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            http: HttpMetrics::default(),
            events_appended: Family::default(),
            replays: Counter::default(),
            conflicts: Counter::default(),
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
        m
    }
}
