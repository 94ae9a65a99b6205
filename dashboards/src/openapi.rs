//! The finance read API's OpenAPI 3.1 document, served at `/openapi.json`.
//!
//! Written out rather than derived: the read API is four `GET`s whose
//! query string `params.rs` parses by hand, and the document must state
//! exactly what that parser accepts (bounds, enums, patterns), so it is
//! built from the same constants. Rules that span parameters (`from` not
//! after `to`, a span of at most `max_span_days`, `currency` required by
//! the ranking) cannot be said in a parameter's schema: they are in the
//! descriptions, and the contract test's generator honours them
//! (`tests/contract/hooks.py`).

use serde_json::{Value, json};
use tally_domain::Currency;

use crate::params::{FIRST_DAY, LAST_DAY, MAX_MERCHANTS, MAX_TOP};

/// Days from [`FIRST_DAY`] (2000) to the end of the year before
/// [`LAST_DAY`]'s, as a pattern; `format: date` rules out 31 February.
const DATE_PATTERN: &str =
    "^(20[0-9]{2}|21[0-3][0-9]|214[0-8])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

fn problem_responses() -> Value {
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
        "403": with("The key lacks `finance:read`"),
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
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tally finance read API",
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
                 (default 1, at most 5) before answering 425 with `Retry-After`."
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
            "/v1/freshness": {"get": {
                "summary": "The freshness watermark alone",
                "responses": freshness_responses,
                "security": [{"api_key": []}]
            }},
        },
        "components": {
            "securitySchemes": {"api_key": {
                "type": "http", "scheme": "bearer", "bearerFormat": "tally_<64 hex>",
                "description": "An API key with the `finance:read` role (`tally keys create --role finance:read`)"
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
                "Problem": tally_ops::problem::schema(),
            }
        }
    })
}
