//! The event envelope: what the write side appends to the outbox and the
//! read side consumes.
//!
//! Every envelope carries the order's state *after* the event
//! (event-carried state transfer). That makes the order-facts projection a
//! pure "latest version wins" upsert, so redelivery and out-of-order
//! arrival can neither double-count nor regress it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::order::{Order, OrderEvent, Version};
use crate::values::{EventId, OrderId};

/// Bumped when the payload shape changes incompatibly; consumers refuse
/// versions they do not know (the event goes to the dead-letter table).
pub const SCHEMA_VERSION: u16 = 1;

/// One recorded domain event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EventEnvelope {
    pub event_id: EventId,
    pub aggregate_id: OrderId,
    pub aggregate_version: Version,
    pub occurred_at: OffsetDateTime,
    pub schema_version: u16,
    pub event: OrderEvent,
    /// The order's state after this event.
    pub order: Order,
}

/// The JSON stored in `outbox.payload`; the other envelope fields are
/// columns of their own.
#[derive(Serialize, Deserialize)]
pub struct Payload {
    pub event: OrderEvent,
    pub order: Order,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported schema version {0} (this build reads version {SCHEMA_VERSION})")]
    SchemaVersion(u16),
    #[error("payload is not a valid event: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("column event_type `{column}` disagrees with the payload's `{payload}`")]
    TypeMismatch {
        column: String,
        payload: &'static str,
    },
    #[error("aggregate version {0} is not a positive 32-bit number")]
    Version(i64),
    #[error("payload order state is for {payload} but the row is for {column}")]
    AggregateMismatch { column: OrderId, payload: OrderId },
}

impl EventEnvelope {
    /// Records `event` as the next event of `order_after` (the state once
    /// the event is applied). The caller supplies id and time.
    pub fn record(
        event_id: EventId,
        occurred_at: OffsetDateTime,
        event: OrderEvent,
        order_after: Order,
    ) -> Self {
        EventEnvelope {
            event_id,
            aggregate_id: order_after.id,
            aggregate_version: order_after.version,
            occurred_at,
            schema_version: SCHEMA_VERSION,
            event,
            order: order_after,
        }
    }

    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// The JSON payload for the outbox row.
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "event": &self.event, "order": &self.order })
    }

    /// Rebuilds an envelope from an outbox row, checking that the columns
    /// and the payload agree.
    pub fn decode(
        event_id: EventId,
        aggregate_id: OrderId,
        aggregate_version: i64,
        event_type: &str,
        schema_version: i16,
        occurred_at: OffsetDateTime,
        payload: &[u8],
    ) -> Result<Self, DecodeError> {
        let schema_version = u16::try_from(schema_version).unwrap_or(0);
        if schema_version != SCHEMA_VERSION {
            return Err(DecodeError::SchemaVersion(schema_version));
        }
        let version = u32::try_from(aggregate_version)
            .ok()
            .and_then(Version::new)
            .ok_or(DecodeError::Version(aggregate_version))?;
        let Payload { event, order } = serde_json::from_slice(payload)?;
        if event.event_type() != event_type {
            return Err(DecodeError::TypeMismatch {
                column: event_type.to_owned(),
                payload: event.event_type(),
            });
        }
        if order.id != aggregate_id {
            return Err(DecodeError::AggregateMismatch {
                column: aggregate_id,
                payload: order.id,
            });
        }
        Ok(EventEnvelope {
            event_id,
            aggregate_id,
            aggregate_version: version,
            occurred_at,
            schema_version,
            event,
            order,
        })
    }
}
