//! RFC 9457 problem details: the only error body any Tally HTTP endpoint
//! returns.
//!
//! Policy: `type` is a stable URI per error kind (clients switch on it),
//! `title` is fixed per type, `detail` is for humans, and 5xx bodies never
//! contain internal error text: the cause is logged, not sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One invalid input field (RFC 9457 §3's `invalid-params` extension).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvalidParam {
    /// JSON path of the field, e.g. `items[2].quantity`.
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid_params: Vec<InvalidParam>,
    /// This occurrence: the request's id as a URN (`urn:tally:request:<id>`,
    /// the `x-request-id` the response carries), filled in when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension members (e.g. `current_version` on a conflict).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
}

/// Problem types are documented at `https://tally.dev/problems/<slug>`.
pub const TYPE_BASE: &str = "https://tally.dev/problems/";

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            type_uri: format!("{TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            invalid_params: Vec::new(),
            instance: None,
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn invalid_params(mut self, params: Vec<InvalidParam>) -> Self {
        self.invalid_params = params;
        self
    }

    pub fn extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 503 for a dependency that is down or saturated; clients retry.
    pub fn unavailable(what: &str) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(format!("{what} is unavailable or saturated; retry shortly"))
        .retry_after(1)
    }

    /// 500 with no internal detail; the caller logs the cause.
    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail("the server failed to handle the request; the cause has been logged")
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }
}

/// The JSON Schema of a serialised [`Problem`], for the OpenAPI documents:
/// next to the type so that the two are changed together (a test checks a
/// fully populated problem against it).
pub fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "format": "uri", "description": "Stable URI of the error kind, e.g. `https://tally.dev/problems/validation`"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri", "description": "This occurrence: `urn:tally:request:<id>`, where `<id>` is the response's `x-request-id` (quote it when reporting a problem)"},
            "invalid_params": {
                "type": "array",
                "description": "For validation errors: each offending field (`items[2].quantity`) and why",
                "items": {
                    "type": "object",
                    "required": ["name", "reason"],
                    "properties": {"name": {"type": "string"}, "reason": {"type": "string"}}
                }
            },
            "current_version": {"type": "integer", "minimum": 1, "description": "On version conflicts and stale If-Match: the order's version now"}
        },
        "additionalProperties": false
    })
}

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        if self.instance.is_none() {
            self.instance = crate::http::current_request_id()
                .filter(|id| !id.is_empty())
                .map(|id| format!("urn:tally:request:{}", urn_safe(&id)));
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after_secs;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// A request id as URN text: printable ASCII kept, except what a URI may
/// not hold unescaped, which is percent-encoded.
fn urn_safe(id: &str) -> String {
    crate::percent_encode(id, b":@!$&'()*+,;=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_escaped_into_a_valid_urn() {
        assert_eq!(urn_safe("0190-abc_X.~"), "0190-abc_X.~");
        assert_eq!(urn_safe("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
    }

    #[test]
    fn the_schema_names_every_member_a_problem_can_carry() {
        let p = Problem::new(StatusCode::CONFLICT, "version-conflict", "x")
            .detail("d")
            .invalid_params(vec![InvalidParam {
                name: "n".into(),
                reason: "r".into(),
            }])
            .extension("current_version", 3.into());
        let p = Problem {
            instance: Some("urn:tally:request:1".into()),
            ..p
        };
        let v = serde_json::to_value(&p).unwrap();
        let schema = schema();
        let props = schema["properties"].as_object().unwrap();
        for key in v.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "{key} is not in the schema");
        }
        for key in schema["required"].as_array().unwrap() {
            assert!(v.get(key.as_str().unwrap()).is_some(), "{key}");
        }
    }
}
