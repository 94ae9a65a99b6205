//! The write API's errors and their one mapping to HTTP problem details.
//!
//! | error                         | status | `type` slug              |
//! |-------------------------------|--------|--------------------------|
//! | malformed / wrong-typed JSON  | 400    | `malformed-body`         |
//! | field validation              | 400    | `validation`             |
//! | `ZeroTotal`, `TotalTooLarge`  | 400    | `validation`             |
//! | missing `Idempotency-Key`     | 400    | `idempotency-key`        |
//! | missing / unknown API key     | 401    | `unauthenticated`        |
//! | key lacks the role            | 403    | `forbidden`              |
//! | order not found               | 404    | `not-found`              |
//! | `InvalidTransition`           | 409    | `invalid-transition`     |
//! | version changed meanwhile     | 409    | `version-conflict` (+ `current_version`) |
//! | same key still in flight      | 409    | `idempotency-in-flight`  |
//! | `If-Match` is stale           | 412    | `precondition-failed` (+ `current_version`) |
//! | body over the limit           | 413    | `body-too-large`         |
//! | not `application/json`        | 415    | `unsupported-media-type` |
//! | amount rules                  | 422    | `amount-rule`            |
//! | same key, different request   | 422    | `idempotency-key-reused` |
//! | shutting down                 | 503    | `unavailable`            |
//! | PostgreSQL down / pool full   | 503    | `unavailable`            |
//! | anything else                 | 500    | `internal` (cause logged, not sent) |

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_domain::DomainError;
use tally_ops::Problem;
use tally_ops::problem::InvalidParam;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Validation(Vec<InvalidParam>),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("invalid Idempotency-Key: {0}")]
    IdempotencyKey(&'static str),
    #[error("a request with this Idempotency-Key is still in flight")]
    IdempotencyInFlight,
    #[error("Idempotency-Key reused for a different request")]
    IdempotencyMismatch,
    #[error("no order {0}")]
    OrderNotFound(String),
    #[error("order changed concurrently; now at version {current}")]
    VersionConflict { current: u32 },
    #[error("If-Match version {expected} is stale; the order is at version {current}")]
    PreconditionFailed { expected: u32, current: u32 },
    #[error("invalid If-Match header")]
    BadIfMatch,
    #[error("shutting down")]
    ShuttingDown,
    #[error("internal: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(_) => ApiError::BodyTooLarge,
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl ApiError {
    pub fn to_problem(&self) -> Problem {
        match self {
            ApiError::MalformedBody(msg) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            )
            .detail(msg.clone()),
            ApiError::BodyTooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            )
            .detail("the request body exceeds the configured limit"),
            ApiError::UnsupportedMediaType => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail("send the body as JSON with `Content-Type: application/json`"),
            ApiError::Validation(params) => {
                Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid request")
                    .detail(match params.as_slice() {
                        [one] => format!("{}: {}", one.name, one.reason),
                        many => format!("{} fields are invalid", many.len()),
                    })
                    .invalid_params(params.clone())
            }
            ApiError::Domain(e @ (DomainError::ZeroTotal | DomainError::TotalTooLarge { .. })) => {
                Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid request")
                    .detail(e.to_string())
                    .invalid_params(vec![InvalidParam {
                        name: "items".into(),
                        reason: e.to_string(),
                    }])
            }
            ApiError::Domain(e @ DomainError::InvalidTransition { .. }) => Problem::new(
                StatusCode::CONFLICT,
                "invalid-transition",
                "Not allowed in the order's current state",
            )
            .detail(e.to_string()),
            ApiError::Domain(
                e @ (DomainError::CaptureAmountMismatch { .. }
                | DomainError::RefundExceedsCaptured { .. }),
            ) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "amount-rule",
                "Amount not allowed",
            )
            .detail(e.to_string()),
            ApiError::IdempotencyKey(why) => {
                Problem::new(StatusCode::BAD_REQUEST, "idempotency-key", "Idempotency-Key required").detail(*why)
            }
            ApiError::IdempotencyInFlight => Problem::new(
                StatusCode::CONFLICT,
                "idempotency-in-flight",
                "A request with this Idempotency-Key is in flight",
            )
            .detail("the first request with this key has not finished; retry after it has")
            .retry_after(1),
            ApiError::IdempotencyMismatch => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused for a different request",
            )
            .detail("this key was first used with a different method, path or body; use a new key for a new request"),
            ApiError::OrderNotFound(id) => Problem::not_found(format!("there is no order with id `{id}`")),
            ApiError::VersionConflict { current } => {
                Problem::new(StatusCode::CONFLICT, "version-conflict", "The order changed meanwhile")
                    .detail(format!(
                        "another command changed the order first (now at version {current}); re-read it and retry"
                    ))
                    .extension("current_version", (*current).into())
            }
            ApiError::PreconditionFailed { expected, current } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "If-Match does not match the order's version",
            )
            .detail(format!("you sent If-Match {expected}, but the order is at version {current}"))
            .extension("current_version", (*current).into()),
            ApiError::BadIfMatch => Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid request")
                .detail("If-Match must be an order version, e.g. `If-Match: \"3\"`"),
            ApiError::ShuttingDown => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                .detail("the server is shutting down; retry against another instance or shortly")
                .retry_after(1),
            ApiError::Internal(_) => Problem::internal(),
            ApiError::Database(e) if is_unavailable(e) => {
                Problem::unavailable("the write database")
            }
            ApiError::Database(_) => Problem::internal(),
        }
    }
}

impl ApiError {
    /// Whether this outcome is stored against the Idempotency-Key and
    /// replayed: it depends only on the request and the state it met.
    pub fn is_final(&self) -> bool {
        matches!(self, ApiError::Domain(_))
    }
}

/// Errors that mean "PostgreSQL is down or saturated": the client should
/// retry, so they become 503, not 500.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // admin shutdown, crash shutdown, cannot connect now, too many connections
            Some("57P01" | "57P02" | "57P03" | "53300")
        ),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.to_problem();
        if problem.status >= 500 {
            tracing::error!(error = %self, status = problem.status, "request failed");
        }
        problem.into_response()
    }
}

/// An RFC 9457 problem, as every error response carries it: the name the
/// OpenAPI responses refer to. Its schema is `tally_ops::problem::schema()`,
/// put in by `openapi::document`, so that it is written once, beside the
/// real type.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ProblemDoc;
