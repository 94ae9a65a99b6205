//! Command handlers for orders. Each one parses its body into domain
//! types, lets the domain decide, and hands the resulting event to
//! [`crate::store`] to be written with its rows in one transaction. They
//! answer with an acknowledgement, never with the order itself.

use axum::extract::Path;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tally_domain::order;
use tally_domain::{
    Address, Amount, CountryCode, Currency, CustomerId, EventEnvelope, EventId, LineItem,
    LineItems, MerchantId, Order, OrderCommand, OrderEvent, OrderId, ParseError, PaymentId,
    PlaceOrder, Quantity, RefundId, ShipmentId, Sku, Text,
};
use tally_ops::problem::InvalidParam;
use tally_projection::watermark::ConsistencyToken;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::context::CommandContext;
use crate::error::ApiError;
use crate::idempotency::CommandResponse;
use crate::metrics::EventLabels;
use crate::{JsonBody, store};

/// Body of `POST /v1/orders`. Unknown fields are refused, so a typo is an
/// error, not a silently dropped value.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub merchant_id: String,
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub customer_id: String,
    /// An active ISO 4217 code, upper case.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// The order total (Σ quantity × unit_price_minor) may be at most
    /// 999 999 999 999 minor units, like each price.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItemRequest>,
    pub shipping_address: AddressRequest,
}

/// A JSON integer as JSON Schema counts them: `212` and `212.0` alike (a
/// number whose fraction is zero is an integer there, and clients that
/// hold amounts in doubles send it). Exact only below 2^53, so larger
/// floats, and any fraction, are refused like any other type error.
fn json_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Number::deserialize(d)? {
        n if n.is_i64() => n.as_i64().ok_or_else(|| D::Error::custom("not an integer")),
        n => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Ok(f as i64),
            _ => Err(D::Error::custom(format!(
                "invalid type: `{n}` is not a whole number that fits 64 bits"
            ))),
        },
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItemRequest {
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "json_integer")]
    pub quantity: i64,
    /// Minor units of the order's currency; at most 999 999 999 999 (the
    /// twelve digits card networks carry).
    #[schema(minimum = 0, maximum = 999_999_999_999_i64)]
    #[serde(deserialize_with = "json_integer")]
    pub unit_price_minor: i64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(min_length = 1, max_length = 200)]
    pub line1: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub line2: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub city: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub region: Option<String>,
    #[schema(min_length = 1, max_length = 20)]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = "^[A-Z]{2}$", example = "GB")]
    pub country: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrderPlaced {
    /// The new order's id (UUIDv7).
    #[schema(value_type = String, format = Uuid)]
    pub order_id: OrderId,
}

/// Body of `POST /v1/orders/{id}/payments`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Must equal the order total, in minor units of the order's currency.
    #[schema(minimum = 1, maximum = 999_999_999_999_i64)]
    #[serde(deserialize_with = "json_integer")]
    pub amount_minor: i64,
}

/// Body of `POST /v1/orders/{id}/shipments`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub carrier: String,
    #[schema(min_length = 1, max_length = 100)]
    pub tracking_number: String,
}

/// Body of `POST /v1/orders/{id}/cancellation`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Body of `POST /v1/orders/{id}/refunds`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// At most what was captured and not yet refunded.
    #[schema(minimum = 1, maximum = 999_999_999_999_i64)]
    #[serde(deserialize_with = "json_integer")]
    pub amount_minor: i64,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    pub reason: Option<String>,
}

/// The acknowledgement of a command on an existing order (`202`).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub order_id: OrderId,
    /// The order's version after the command; send it as `If-Match` to
    /// make the next command conditional on nothing else having happened.
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub payment_id: Option<PaymentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub shipment_id: Option<ShipmentId>,
    /// Set by a refund, and by a cancellation that refunded a capture.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub refund_id: Option<RefundId>,
}

/// Collects every field error of a request instead of stopping at the first.
#[derive(Default)]
pub(crate) struct Errors(Vec<InvalidParam>);

impl Errors {
    pub(crate) fn check<T>(
        &mut self,
        name: impl Into<String>,
        r: Result<T, ParseError>,
    ) -> Option<T> {
        r.map_err(|e| {
            self.0.push(InvalidParam {
                name: name.into(),
                reason: e.message().to_owned(),
            });
        })
        .ok()
    }

    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(ApiError::Validation(self.0)),
        }
    }
}

fn optional<const N: usize>(
    e: &mut Errors,
    name: &str,
    v: &Option<String>,
) -> Option<Option<Text<N>>> {
    match v {
        None => Some(None),
        Some(s) => e.check(name, Text::parse(s)).map(Some),
    }
}

impl PlaceOrderRequest {
    /// Parses into a domain command, reporting every invalid field.
    pub fn parse(self, order_id: OrderId) -> Result<PlaceOrder, ApiError> {
        let mut e = Errors::default();
        let merchant_id = e.check("merchant_id", MerchantId::parse(&self.merchant_id));
        let customer_id = e.check("customer_id", CustomerId::parse(&self.customer_id));
        let currency = e.check("currency", Currency::parse(&self.currency));
        let lines: Vec<Option<LineItem>> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let sku = e.check(format!("items[{i}].sku"), Sku::parse(&it.sku));
                let quantity =
                    e.check(format!("items[{i}].quantity"), Quantity::parse(it.quantity));
                let unit_price = e.check(
                    format!("items[{i}].unit_price_minor"),
                    Amount::parse(it.unit_price_minor),
                );
                Some(LineItem {
                    sku: sku?,
                    quantity: quantity?,
                    unit_price: unit_price?,
                })
            })
            .collect();
        let items = lines
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(|l| e.check("items", LineItems::parse(l)));
        let a = &self.shipping_address;
        let address = (|| {
            Some(Address {
                name: e.check("shipping_address.name", Text::parse(&a.name))?,
                line1: e.check("shipping_address.line1", Text::parse(&a.line1))?,
                line2: optional(&mut e, "shipping_address.line2", &a.line2)?,
                city: e.check("shipping_address.city", Text::parse(&a.city))?,
                region: optional(&mut e, "shipping_address.region", &a.region)?,
                postal_code: e
                    .check("shipping_address.postal_code", Text::parse(&a.postal_code))?,
                country: e.check("shipping_address.country", CountryCode::parse(&a.country))?,
            })
        })();
        let cmd = (|| {
            Some(PlaceOrder {
                order_id,
                merchant_id: merchant_id?,
                customer_id: customer_id?,
                currency: currency?,
                items: items?,
                shipping_address: address?,
            })
        })();
        e.finish(cmd)
    }
}

/// Now, truncated to the microsecond precision PostgreSQL stores, so the
/// event's timestamp and the row's are the same value.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// `POST /v1/orders`: place an order.
#[utoipa::path(post, path = "/v1/orders", tag = "commands",
    request_body = PlaceOrderRequest,
    params(("Idempotency-Key" = String, Header, description = "Unique per request (1 to 255 printable ASCII characters, e.g. a UUID); reuse only to retry it", min_length = 1, max_length = 255, pattern = "^[!#-~]{1,255}$")),
    responses(
        (status = 201, description = "Placed; `Location` names the order", body = OrderPlaced,
            headers(("Tally-Consistency-Token" = String, description = "Send it with a read (`?after=` or this header) to read this write: the read side answers once it includes it. Opaque; the same on a replay"))),
        (status = 400, description = "Invalid body or missing Idempotency-Key", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks `orders:write`", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Same Idempotency-Key still in flight", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused for another request", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, too many requests in flight, or the request timed out; retry after `Retry-After`", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn place_order(
    mut ctx: CommandContext,
    body: JsonBody<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let key = ctx.idempotency_key()?;
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let cmd = body.value.parse(order_id)?;
    let metrics = &ctx.state.metrics;
    let response = ctx
        .run(key, &body.bytes, async |conn| {
            let event = order::place(&cmd)?;
            let at = now();
            let after = Order::from_placed(order_id, &event, at)
                .ok_or_else(|| ApiError::Internal("place did not produce OrderPlaced".into()))?;
            let envelope =
                EventEnvelope::record(EventId::from_uuid(Uuid::now_v7()), at, event, after);
            let written_us = store::insert_placed_order(&mut *conn, &cmd, &envelope).await?;
            metrics
                .events_appended
                .get_or_create(&EventLabels {
                    event_type: envelope.event_type(),
                })
                .inc();
            Ok(CommandResponse {
                status: 201,
                body: serde_json::to_value(OrderPlaced { order_id }).unwrap_or_default(),
                location: Some(format!("/v1/orders/{order_id}")),
                etag: Some(crate::context::etag(1)),
                consistency_token: Some(ConsistencyToken::from_micros(written_us).to_string()),
            })
        })
        .await?;
    Ok(response)
}

/// The common path of the four commands on an existing order: load,
/// check If-Match, decide, write guarded by the version, acknowledge.
async fn on_existing_order(
    mut ctx: CommandContext,
    body: &[u8],
    raw_id: &str,
    cmd: Result<OrderCommand, ApiError>,
) -> Result<Response, ApiError> {
    let key = ctx.idempotency_key()?;
    let expected = ctx.expected_version()?;
    let order_id =
        OrderId::parse(raw_id).map_err(|_| ApiError::OrderNotFound(raw_id.to_owned()))?;
    let cmd = cmd?;
    let metrics = &ctx.state.metrics;
    ctx.run(key, body, async |conn| {
        let order = store::load_order(&mut *conn, order_id)
            .await?
            .ok_or_else(|| ApiError::OrderNotFound(order_id.to_string()))?;
        if let Some(expected) = expected
            && expected != order.version.get()
        {
            return Err(ApiError::PreconditionFailed {
                expected,
                current: order.version.get(),
            });
        }
        let event = order.handle(&cmd)?;
        let mut after = order.clone();
        after.apply(&event);
        let envelope =
            EventEnvelope::record(EventId::from_uuid(Uuid::now_v7()), now(), event, after);
        let Some(written_us) = store::apply_event(&mut *conn, &envelope).await? else {
            // Same connection: a second one from the pool while holding
            // this one can starve the pool under contention.
            let current = store::current_version(&mut *conn, order_id).await?;
            return Err(ApiError::VersionConflict { current });
        };
        metrics
            .events_appended
            .get_or_create(&EventLabels {
                event_type: envelope.event_type(),
            })
            .inc();
        let mut ack = CommandAccepted {
            order_id,
            version: envelope.aggregate_version.get(),
            payment_id: None,
            shipment_id: None,
            refund_id: None,
        };
        match &envelope.event {
            OrderEvent::PaymentCaptured { payment_id, .. } => {
                ack.payment_id = Some(*payment_id);
            }
            OrderEvent::OrderShipped { shipment_id, .. } => {
                ack.shipment_id = Some(*shipment_id);
            }
            OrderEvent::OrderCancelled { refund, .. } => {
                ack.refund_id = refund.map(|r| r.refund_id);
            }
            OrderEvent::OrderRefunded { refund_id, .. } => ack.refund_id = Some(*refund_id),
            OrderEvent::OrderPlaced { .. } => {}
        }
        Ok(CommandResponse {
            status: 202,
            body: serde_json::to_value(&ack).unwrap_or_default(),
            location: None,
            etag: Some(crate::context::etag(ack.version)),
            consistency_token: Some(ConsistencyToken::from_micros(written_us).to_string()),
        })
    })
    .await
}

fn one<T>(name: &str, r: Result<T, ParseError>) -> Result<T, ApiError> {
    let mut e = Errors::default();
    let v = e.check(name, r);
    e.finish(v)
}

fn new_uuid() -> Uuid {
    Uuid::now_v7()
}

macro_rules! command_doc {
    ($fn:ident, $path:literal, $body:ty, $summary:literal) => {
        #[utoipa::path(post, path = $path, tag = "commands", summary = $summary,
            request_body = $body,
            params(
                ("id" = String, Path, description = "Order id"),
                ("Idempotency-Key" = String, Header, description = "Unique per request (1 to 255 printable ASCII characters, e.g. a UUID); reuse only to retry it", min_length = 1, max_length = 255, pattern = "^[!#-~]{1,255}$"),
                ("If-Match" = Option<String>, Header, description = "Apply only if the order is still at this version (its `ETag`, e.g. `\"3\"`)", pattern = "^\"[0-9]{1,9}\"$"),
            ),
            responses(
                (status = 202, description = "Accepted", body = CommandAccepted,
                    headers(("Tally-Consistency-Token" = String, description = "Send it with a read (`?after=` or this header) to read this write: the read side answers once it includes it. Opaque; the same on a replay"))),
                (status = 400, description = "Invalid body or missing Idempotency-Key", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 401, description = "Missing or unknown API key", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 403, description = "Key lacks `orders:write`", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 404, description = "No such order", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 409, description = "Not allowed in the order's state, changed concurrently, or key in flight", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 412, description = "If-Match is stale", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 413, description = "Body over the limit (64 KiB)", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 415, description = "Body is not JSON", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 422, description = "Amount rule broken, or Idempotency-Key reused", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
                (status = 503, description = "Database unavailable, too many requests in flight, or the request timed out; retry after `Retry-After`", body = crate::error::ProblemDoc, content_type = "application/problem+json"),
            ),
            security(("api_key" = [])))]
        #[allow(dead_code)]
        fn $fn() {}
    };
}

command_doc!(
    capture_payment_doc,
    "/v1/orders/{id}/payments",
    CaptureRequest,
    "Capture the payment (amount = order total, once)"
);
command_doc!(
    ship_order_doc,
    "/v1/orders/{id}/shipments",
    ShipRequest,
    "Ship a paid order"
);
command_doc!(
    cancel_order_doc,
    "/v1/orders/{id}/cancellation",
    CancelRequest,
    "Cancel before shipping (refunds a capture)"
);
command_doc!(
    refund_order_doc,
    "/v1/orders/{id}/refunds",
    RefundRequest,
    "Refund part or all of the capture"
);

/// `POST /v1/orders/{id}/payments`.
pub async fn capture_payment(
    ctx: CommandContext,
    Path(id): Path<String>,
    body: JsonBody<CaptureRequest>,
) -> Result<Response, ApiError> {
    let cmd = one(
        "amount_minor",
        Amount::parse_positive(body.value.amount_minor),
    )
    .map(|amount| OrderCommand::CapturePayment {
        payment_id: PaymentId::from_uuid(new_uuid()),
        amount,
    });
    on_existing_order(ctx, &body.bytes, &id, cmd).await
}

/// `POST /v1/orders/{id}/shipments`.
pub async fn ship_order(
    ctx: CommandContext,
    Path(id): Path<String>,
    body: JsonBody<ShipRequest>,
) -> Result<Response, ApiError> {
    let mut e = Errors::default();
    let carrier = e.check("carrier", Text::parse(&body.value.carrier));
    let tracking = e.check("tracking_number", Text::parse(&body.value.tracking_number));
    let cmd = e
        .finish(carrier.zip(tracking))
        .map(|(carrier, tracking_number)| OrderCommand::Ship {
            shipment_id: ShipmentId::from_uuid(new_uuid()),
            carrier,
            tracking_number,
        });
    on_existing_order(ctx, &body.bytes, &id, cmd).await
}

/// `POST /v1/orders/{id}/cancellation`.
pub async fn cancel_order(
    ctx: CommandContext,
    Path(id): Path<String>,
    body: JsonBody<CancelRequest>,
) -> Result<Response, ApiError> {
    let cmd = one("reason", Text::parse(&body.value.reason)).map(|reason| OrderCommand::Cancel {
        reason,
        refund_id: RefundId::from_uuid(new_uuid()),
    });
    on_existing_order(ctx, &body.bytes, &id, cmd).await
}

/// `POST /v1/orders/{id}/refunds`.
pub async fn refund_order(
    ctx: CommandContext,
    Path(id): Path<String>,
    body: JsonBody<RefundRequest>,
) -> Result<Response, ApiError> {
    let mut e = Errors::default();
    let amount = e.check(
        "amount_minor",
        Amount::parse_positive(body.value.amount_minor),
    );
    let reason = match &body.value.reason {
        None => Some(None),
        Some(r) => e.check("reason", Text::parse(r)).map(Some),
    };
    let cmd = e
        .finish(amount.zip(reason))
        .map(|(amount, reason)| OrderCommand::Refund {
            refund_id: RefundId::from_uuid(new_uuid()),
            amount,
            reason,
        });
    on_existing_order(ctx, &body.bytes, &id, cmd).await
}
