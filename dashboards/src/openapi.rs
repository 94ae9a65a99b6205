//! The read API's OpenAPI 3.1 document (finance aggregates and order
//! queries), served at `/openapi.json`.
//!
//! Written out rather than derived: the read API is seven `GET`s whose
//! query string `params.rs` parses by hand, and the document must state
//! exactly what that parser accepts (bounds, enums, patterns), so it is
//! built from the same constants. Rules that span parameters (`from` not
//! after `to`, a span of at most `max_span_days`, `currency` required by
//! the ranking) cannot be said in a parameter's schema: they are in the
//! descriptions, and the contract test's generator honours them
//! (`tests/contract/hooks.py`).

use serde_json::{Value, json};
use tally_domain::Currency;

use crate::order_query::{DEFAULT_PAGE, MAX_PAGE};
use crate::params::{FIRST_DAY, LAST_DAY, MAX_MERCHANTS, MAX_TOP};

/// A merchant or customer id: a slug (`tally_domain`'s rule).
const SLUG_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$";

/// The order operations: one order, and the two lists.
fn order_ops() -> (Value, Value, Value) {
    let fresh_headers = json!({
        "Tally-Data-Complete-Up-To": {"schema": {"type": "string", "format": "date-time"}},
        "Tally-Data-Lag-Seconds": {"schema": {"type": "string"}}
    });
    let mut one = problem_responses_for("orders:read");
    one["200"] = json!({
        "description": "The order's latest projected state",
        "headers": fresh_headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrderResponse"}}}
    });
    one["404"] = json!({
        "description": "No order with this id is projected (yet: pass the command's consistency token as `after` to wait for it)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let mut headers = fresh_headers.clone();
    headers["Tally-Next-Cursor"] = json!({
        "description": "The next page's cursor (as `next_cursor`); absent on the last page",
        "schema": {"type": "string"}
    });
    let mut list = problem_responses_for("orders:read");
    list["200"] = json!({
        "description": "A page of orders, newest first; `format=csv` sends the same page as CSV",
        "headers": headers,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/OrderPage"}},
            "text/csv": {"schema": {"type": "string"}}
        }
    });
    let list_params = |owner: &str, description: &str| {
        json!([
            {"name": owner, "in": "path", "required": true, "description": description,
             "schema": {"type": "string", "pattern": SLUG_PATTERN}},
            {"$ref": "#/components/parameters/status"},
            {"$ref": "#/components/parameters/currency"},
            {"$ref": "#/components/parameters/orders_from"},
            {"$ref": "#/components/parameters/orders_to"},
            {"$ref": "#/components/parameters/page_limit"},
            {"$ref": "#/components/parameters/cursor"},
            {"$ref": "#/components/parameters/format"},
            {"$ref": "#/components/parameters/after"},
        ])
    };
    let op = |summary: &str, params: Value, responses: Value| {
        json!({"get": {
            "summary": summary, "parameters": params, "responses": responses,
            "security": [{"api_key": []}]
        }})
    };
    (
        op(
            "One order's latest projected state: status, amounts, times, version",
            json!([
                {"name": "order_id", "in": "path", "required": true,
                 "description": "The id the place-order acknowledgement returned",
                 "schema": {"type": "string", "format": "uuid"}},
                {"$ref": "#/components/parameters/after"},
            ]),
            one,
        ),
        op(
            "A merchant's orders, newest first, a page at a time",
            list_params("merchant_id", "The merchant"),
            list.clone(),
        ),
        op(
            "A customer's order history, newest first, a page at a time",
            list_params("customer_id", "The customer"),
            list,
        ),
    )
}

/// Days from [`FIRST_DAY`] (2000) to the end of the year before
/// [`LAST_DAY`]'s, as a pattern; `format: date` rules out 31 February.
const DATE_PATTERN: &str =
    "^(20[0-9]{2}|21[0-3][0-9]|214[0-8])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

fn problem_responses() -> Value {
    problem_responses_for("finance:read")
}

fn problem_responses_for(role: &str) -> Value {
    let problem = json!({
        "description": "",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let with = |d: &str| {
        let mut p = problem.clone();
        p["description"] = json!(d);
        p
    };
    json!({
        "400": with("A parameter is invalid; `invalid_params` names each one"),
        "401": with("Missing or unknown API key"),
        "403": with(&format!("The key lacks `{role}`")),
        "425": with("The read named a consistency token (`?after=` or `Tally-Consistency-Token`) whose write the read side had not projected within the wait allowed (`Prefer: wait=<seconds>`, default 1, at most 5); retry after `Retry-After`"),
        "503": with("ClickHouse or the key store unavailable, too many requests in flight, or the request timed out; retry after `Retry-After`"),
    })
}

fn table_op(summary: &str, body: &str, extra: &[Value]) -> Value {
    let mut params = vec![
        json!({"$ref": "#/components/parameters/from"}),
        json!({"$ref": "#/components/parameters/to"}),
        json!({"$ref": "#/components/parameters/merchant_id"}),
        json!({"$ref": "#/components/parameters/format"}),
    ];
    params.extend(extra.iter().cloned());
    let mut responses = problem_responses();
    responses["200"] = json!({
        "description": "The table; `format=csv` sends the same rows as CSV",
        "headers": {
            "Tally-Data-Complete-Up-To": {"schema": {"type": "string", "format": "date-time"}},
            "Tally-Data-Lag-Seconds": {"schema": {"type": "string"}}
        },
        "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}},
            "text/csv": {"schema": {"type": "string"}}
        }
    });
    json!({
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": responses,
            "security": [{"api_key": []}]
        }
    })
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn object(props: Value) -> Value {
    let required: Vec<String> = props
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "required": required, "properties": props})
}

/// The document, for a server that accepts ranges of at most
/// `max_span_days`.
pub fn document(max_span_days: i64) -> Value {
    let int = json!({"type": "integer"});
    let string = json!({"type": "string"});
    let currencies: Vec<String> = Currency::all().map(|c| c.code().to_owned()).collect();
    // Examples that make a valid range together whichever of them a client
    // (or a generator) takes: the 30 days ending today.
    let today = time::OffsetDateTime::now_utc().date();
    let month_ago = today - time::Duration::days(29);
    let date_param = |name: &str, description: String, example: time::Date| {
        json!({
            "name": name, "in": "query", "required": false, "description": description,
            "example": example.to_string(),
            "schema": {"type": "string", "format": "date", "pattern": DATE_PATTERN}
        })
    };
    let mut freshness_responses = problem_responses();
    freshness_responses["200"] = json!({
        "description": "The watermark",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Freshness"}}}
    });
    let daily = object(json!({
        "day": {"type": "string", "format": "date"},
        "currency": string,
        "orders_placed": int, "orders_cancelled": int, "items_sold": int,
        "gross_minor": int, "captured_minor": int, "refunded_minor": int, "net_minor": int,
        "average_order_minor": nullable("integer"),
        "gross": string, "captured": string, "refunded": string, "net": string,
        "average_order": nullable("string"),
    }));
    let freshness = object(json!({
        "complete_up_to": {"type": ["string", "null"], "format": "date-time"},
        "lag_seconds": nullable("number"),
    }));
    let top_merchant = object(json!({
        "rank": {"type": "integer", "minimum": 1},
        "merchant_id": string, "net_minor": int, "net": string,
        "gross_minor": int, "gross": string, "orders_placed": int,
        "share_percent": nullable("string"),
    }));
    let measure = object(json!({
        "measure": string, "unit": {"type": "string", "enum": ["minor", "count"]},
        "current": int, "previous": int, "change": int,
        "current_formatted": string, "previous_formatted": string, "change_formatted": string,
        "change_percent": nullable("string"),
    }));
    let fresh_ref = json!({"$ref": "#/components/schemas/Freshness"});
    let (order_op, merchant_orders_op, customer_orders_op) = order_ops();
    let order = object(json!({
        "order_id": {"type": "string", "format": "uuid"},
        "merchant_id": string, "customer_id": string, "currency": string,
        "status": {"type": "string", "enum": ["placed", "paid", "shipped", "cancelled"]},
        "placed_at": {"type": "string", "format": "date-time"},
        "placed_day": {"type": "string", "format": "date"},
        "item_count": {"type": "integer", "minimum": 0},
        "total_minor": int, "total": string,
        "captured_minor": int, "captured": string,
        "refunded_minor": int, "refunded": string,
        "updated_at": {"type": "string", "format": "date-time"},
        "version": {"type": "integer", "minimum": 1},
    }));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tally read API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Exact finance aggregates per day, merchant and currency, read from ClickHouse. \
                 Amounts are integers of minor units (128-bit sums: they may exceed 2^63) beside \
                 exact decimal strings; currencies are never added together. Every answer says \
                 how fresh it is. Errors are RFC 9457 problem details. Rules across parameters: \
                 `from` may not be after `to`, a range spans at most {max_span_days} days, and \
                 without `from` the range is the 30 days ending at `to` (default: today, UTC). \
                 Read your own writes: every endpoint takes the `Tally-Consistency-Token` of a \
                 command's acknowledgement, as `?after=<token>` or in that header, and answers \
                 only once it includes that write, waiting at most `Prefer: wait=<seconds>` \
                 (default 1, at most 5) before answering 425 with `Retry-After`. Orders \
                 (`orders:read`): one by id, a merchant's and a customer's, newest first, in \
                 keyset pages (`cursor` = the previous page's `next_cursor`)."
            )
        },
        "paths": {
            "/v1/revenue/daily": table_op(
                "Per day and currency: orders, items, gross, captured, refunded, net, average order",
                "DailyResponse", &[json!({"$ref": "#/components/parameters/currency"})]),
            "/v1/revenue/summary": table_op(
                "Per currency: the range against the previous range of equal length",
                "SummaryResponse", &[json!({"$ref": "#/components/parameters/currency"})]),
            "/v1/merchants/top": table_op(
                "Merchants by net revenue in one currency, with their share of its total",
                "TopResponse", &[
                    json!({"name": "currency", "in": "query", "required": true,
                           "description": "Merchants are ranked within one currency",
                           "schema": {"type": "string", "enum": currencies}}),
                    json!({"name": "limit", "in": "query", "required": false,
                           "description": "How many merchants (default 10)",
                           "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP}}),
                ]),
            "/v1/orders/{order_id}": order_op,
            "/v1/merchants/{merchant_id}/orders": merchant_orders_op,
            "/v1/customers/{customer_id}/orders": customer_orders_op,
            "/v1/freshness": {"get": {
                "summary": "The freshness watermark alone",
                "responses": freshness_responses,
                "security": [{"api_key": []}]
            }},
        },
        "components": {
            "securitySchemes": {"api_key": {
                "type": "http", "scheme": "bearer", "bearerFormat": "tally_<64 hex>",
                "description": "An API key with the `finance:read` role for the aggregates, `orders:read` for the order queries (`tally keys create --role finance:read --role orders:read`)"
            }},
            "parameters": {
                "from": date_param("from", format!(
                    "First day (inclusive), {FIRST_DAY} to {LAST_DAY}; default: 29 days before `to`"),
                    month_ago),
                "to": date_param("to", format!(
                    "Last day (inclusive), {FIRST_DAY} to {LAST_DAY}; default: today (UTC)"),
                    today),
                "currency": {"name": "currency", "in": "query", "required": false,
                    "description": "Only this currency (ISO 4217; lower case is read as upper)",
                    "schema": {"type": "string", "enum": currencies}},
                "merchant_id": {"name": "merchant_id", "in": "query", "required": false,
                    "description": format!("Only these merchants: up to {MAX_MERCHANTS} ids, comma-separated"),
                    "schema": {"type": "string", "pattern": format!(
                        "^[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}(,[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}){{0,{}}}$",
                        MAX_MERCHANTS - 1)}},
                "status": {"name": "status", "in": "query", "required": false,
                    "description": "Only orders whose current status is this",
                    "schema": {"type": "string", "enum": ["placed", "paid", "shipped", "cancelled"]}},
                "orders_from": date_param("from", format!(
                    "Only orders placed on or after this reporting day, {FIRST_DAY} to {LAST_DAY}"),
                    month_ago),
                "orders_to": date_param("to", format!(
                    "Only orders placed on or before this reporting day, {FIRST_DAY} to {LAST_DAY}"),
                    today),
                "page_limit": {"name": "limit", "in": "query", "required": false,
                    "description": format!("Orders per page (default {DEFAULT_PAGE})"),
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
                "cursor": {"name": "cursor", "in": "query", "required": false,
                    "description": "Opaque: the previous page's `next_cursor`, unchanged. Pages are keyset pages: orders placed while a client pages, and rebuilds, neither repeat nor skip an order",
                    "schema": {"type": "string"}},
                "after": {"name": "after", "in": "query", "required": false,
                    "description": "A command acknowledgement's `Tally-Consistency-Token` (or send it in that header): answer only once the read side includes that write, waiting at most `Prefer: wait=<seconds>` (default 1, at most 5), else 425",
                    "schema": {"type": "string", "pattern": "^1\\.[1-9a-f][0-9a-f]{0,14}$"}},
                "format": {"name": "format", "in": "query", "required": false,
                    "description": "`csv` for a download of the same table",
                    "schema": {"type": "string", "enum": ["json", "csv"]}},
            },
            "schemas": {
                "Freshness": freshness,
                "DailyRevenue": daily,
                "DailyResponse": object(json!({
                    "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
                    "freshness": fresh_ref,
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/DailyRevenue"}},
                })),
                "TopMerchant": top_merchant,
                "TopResponse": object(json!({
                    "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
                    "currency": string, "freshness": fresh_ref,
                    "total_net_minor": int, "total_net": string,
                    "merchants": {"type": "integer", "minimum": 0},
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/TopMerchant"}},
                })),
                "Measure": measure,
                "CurrencySummary": object(json!({
                    "currency": string,
                    "measures": {"type": "array", "items": {"$ref": "#/components/schemas/Measure"}},
                })),
                "SummaryResponse": object(json!({
                    "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
                    "previous_from": {"type": "string", "format": "date"},
                    "previous_to": {"type": "string", "format": "date"},
                    "freshness": fresh_ref,
                    "currencies": {"type": "array", "items": {"$ref": "#/components/schemas/CurrencySummary"}},
                })),
                "Order": order,
                "OrderResponse": object(json!({
                    "freshness": fresh_ref, "order": {"$ref": "#/components/schemas/Order"},
                })),
                "OrderPage": object(json!({
                    "freshness": fresh_ref,
                    "orders": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}},
                    "next_cursor": nullable("string"),
                })),
                "Problem": tally_ops::problem::schema(),
            }
        }
    })
}
