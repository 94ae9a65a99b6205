//! The ingest worker's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use tally_ops::telemetry::ClickHouseErrors;

use crate::dead_letters::Reason;
use crate::watermark::Holder;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub events: Family<EventTypeLabel, Counter>,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub clickhouse_errors: ClickHouseErrors,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub backlog_rows: Gauge,
    pub backlog_oldest_seconds: Gauge<f64, AtomicU64>,
    pub oldest_transaction_seconds: Gauge<f64, AtomicU64>,
    pub freshness_lag_seconds: Gauge<f64, AtomicU64>,
    pub dead_letter_rows: Gauge,
    /// 1 for what holds the watermark where it is, 0 for the rest.
    pub watermark_held_by: Family<CauseLabel, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("tally_ingest");
        let m = Metrics {
            clickhouse_errors: ClickHouseErrors::register(r),
            events: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            dead_letters: Family::default(),
            backlog_rows: Gauge::default(),
            backlog_oldest_seconds: Gauge::default(),
            oldest_transaction_seconds: Gauge::default(),
            freshness_lag_seconds: Gauge::default(),
            dead_letter_rows: Gauge::default(),
            watermark_held_by: Family::default(),
        };
        // Every series exists from the start, so a rule can say "rate > 0"
        // without waiting for the first dead letter to create it.
        for r in Reason::ALL {
            let _ = m
                .dead_letters
                .get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        for cause in Holder::ALL {
            let _ = m.watermark_held_by.get_or_create(&CauseLabel {
                cause: cause.as_str(),
            });
        }
        r.register(
            "events_projected",
            "Events projected into ClickHouse, by type",
            m.events.clone(),
        );
        r.register(
            "batch_size_events",
            "Outbox rows claimed per batch",
            m.batch_size.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Time to claim, project and commit one batch",
            m.batch_duration.clone(),
        );

        r.register(
            "dead_lettered",
            "Events moved to the dead-letter table, by reason (decode, overflow, data, constraint)",
            m.dead_letters.clone(),
        );
        r.register(
            "outbox_backlog_rows",
            "Outbox rows not yet projected",
            m.backlog_rows.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unprojected outbox row",
            m.backlog_oldest_seconds.clone(),
        );
        r.register(
            "oldest_transaction_age_seconds",
            "Age of the oldest open transaction on the write database; it holds the watermark back",
            m.oldest_transaction_seconds.clone(),
        );
        r.register(
            "freshness_lag_seconds",
            "Now minus the freshness watermark",
            m.freshness_lag_seconds.clone(),
        );
        r.register(
            "dead_letter_rows",
            "Events waiting in the dead-letter table",
            m.dead_letter_rows.clone(),
        );
        r.register(
            "watermark_held_by",
            "1 for what holds the freshness watermark back now (nothing, transaction, backlog, \
             pending_push, dead_letter), 0 for the others",
            m.watermark_held_by.clone(),
        );
        m
    }

    /// Counts a failed ClickHouse request by kind.
    pub fn clickhouse_failed(&self, e: &tally_projection::InsertError) {
        use tally_projection::InsertError;
        match e {
            InsertError::Timeout(_) => self.clickhouse_errors.record_kind("timeout"),
            InsertError::Failed { source, .. } => self.clickhouse_errors.record(source),
        }
    }

    pub fn dead_lettered(&self, reason: Reason) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn held_by(&self, holder: Holder) {
        for h in Holder::ALL {
            self.watermark_held_by
                .get_or_create(&CauseLabel { cause: h.as_str() })
                .set(i64::from(h == holder));
        }
    }
}
