//! The OpenAPI 3 document, generated from the handlers' annotations and
//! the request/response types, served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tally_<64 hex>")
                    .description(Some("An API key from `tally keys create`; commands need the `orders:write` role."))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally write API", description = "Commands on orders. Every command needs an `Idempotency-Key` header and answers with an acknowledgement, never the order itself. Errors are RFC 9457 problem details."),
    paths(
        crate::orders::place_order,
        crate::orders::capture_payment_doc,
        crate::orders::ship_order_doc,
        crate::orders::cancel_order_doc,
        crate::orders::refund_order_doc,
    ),
    components(schemas(
        crate::orders::PlaceOrderRequest, crate::orders::LineItemRequest, crate::orders::AddressRequest,
        crate::orders::OrderPlaced, crate::orders::CaptureRequest, crate::orders::ShipRequest,
        crate::orders::CancelRequest, crate::orders::RefundRequest, crate::orders::CommandAccepted,
        crate::error::ProblemDoc,
    )),
    modifiers(&BearerKey),
    tags((name = "commands", description = "Order lifecycle commands")),
)]
pub struct ApiDoc;

/// The document as served: what utoipa derives, plus what its attributes
/// cannot say. `If-Match` is an optional string (utoipa would make an
/// `Option` nullable, and a header has no null); an order needs a line
/// with a positive price (`contains`: its total must be above zero); a
/// currency is one of the active ISO 4217 codes (`enum`); free text has no
/// control character (`pattern`); the
/// problem schema is the one `tally_ops::problem` keeps beside the type.
/// What no schema can say (a line's quantity × price and the total are at
/// most `Amount::MAX`; a key is unique per request) is in the descriptions.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(|p| p.get_mut("post")) {
            for param in op["parameters"].as_array_mut().into_iter().flatten() {
                if param["name"] == "If-Match" {
                    param["schema"]["type"] = "string".into();
                }
            }
        }
    }
    let items = &mut doc["components"]["schemas"]["PlaceOrderRequest"]["properties"]["items"];
    items["contains"] = serde_json::json!({
        "type": "object",
        "properties": {"unit_price_minor": {"type": "integer", "minimum": 1}},
        "required": ["unit_price_minor"]
    });
    items["description"] = serde_json::json!(
        "1 to 100 lines, at least one with a price above zero. Each line's quantity × \
         unit_price_minor, and their sum (the order total), are at most 999 999 999 999 minor units."
    );
    let currency = &mut doc["components"]["schemas"]["PlaceOrderRequest"]["properties"]["currency"];
    currency["enum"] = tally_domain::Currency::all()
        .map(|c| c.code().to_owned())
        .collect();
    // Free text (`Text<N>`): no control character, and something besides
    // white space (it is trimmed before the length is counted).
    const TEXT: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";
    for (schema, fields) in [
        (
            "AddressRequest",
            &["name", "line1", "line2", "city", "region", "postal_code"][..],
        ),
        ("ShipRequest", &["carrier", "tracking_number"]),
        ("CancelRequest", &["reason"]),
        ("RefundRequest", &["reason"]),
    ] {
        for field in fields {
            doc["components"]["schemas"][schema]["properties"][field]["pattern"] = TEXT.into();
        }
    }
    doc["components"]["schemas"]["ProblemDoc"] = tally_ops::problem::schema();
    doc
}
