//! Command handlers for orders. Each one parses its body into domain
//! types, lets the domain decide, and hands the resulting event to
//! [`crate::store`] to be written with its rows in one transaction. They
//! answer with an acknowledgement, never with the order itself.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_domain::order;
use tally_domain::{
    Address, Amount, CountryCode, Currency, CustomerId, EventEnvelope, EventId, LineItem,
    LineItems, MerchantId, Order, OrderId, ParseError, PlaceOrder, Quantity, Sku, Text,
};
use tally_ops::problem::InvalidParam;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::store;

/// Body of `POST /v1/orders`. Unknown fields are refused, so a typo is an
/// error, not a silently dropped value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub merchant_id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<LineItemRequest>,
    pub shipping_address: AddressRequest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItemRequest {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
}

#[derive(Serialize)]
pub struct OrderPlaced {
    pub order_id: OrderId,
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
            })
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

/// `POST /v1/orders`: place an order. `201` with the new order's id.
pub async fn place_order(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
    body: crate::JsonBody<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let cmd = body.0.parse(order_id)?;
    let event = order::place(&cmd)?;
    let at = now();
    let order_after = Order::from_placed(order_id, &event, at).ok_or_else(|| {
        ApiError::MalformedBody("internal: place did not produce OrderPlaced".into())
    })?;
    let envelope =
        EventEnvelope::record(EventId::from_uuid(Uuid::now_v7()), at, event, order_after);
    store::insert_placed_order(&state.pool, &cmd, &envelope).await?;
    state
        .metrics
        .events_appended
        .get_or_create(&crate::metrics::EventLabels {
            event_type: "OrderPlaced",
        })
        .inc();

    let mut res = (StatusCode::CREATED, axum::Json(OrderPlaced { order_id })).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/orders/{order_id}")) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}
