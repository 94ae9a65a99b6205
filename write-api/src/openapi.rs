//! The OpenAPI 3 document, generated from the handlers' annotations and
//! the request/response types, served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// An RFC 9457 problem, as every error response carries it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// Stable URI of the error kind, e.g. `https://tally.dev/problems/validation`.
    #[schema(rename = "type")]
    type_uri: String,
    title: String,
    status: u16,
    detail: Option<String>,
    /// For validation errors: each offending field (`items[2].quantity`) and why.
    invalid_params: Option<Vec<InvalidParamDoc>>,
    /// On version conflicts and stale If-Match: the order's version now.
    current_version: Option<u32>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct InvalidParamDoc {
    name: String,
    reason: String,
}

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
        ProblemDoc, InvalidParamDoc,
    )),
    modifiers(&BearerKey),
    tags((name = "commands", description = "Order lifecycle commands")),
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
