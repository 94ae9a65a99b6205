//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header, with
//! Stripe's semantics).
//!
//! Every command carries a key, scoped to the API key that sent it. The
//! command's transaction first takes a transaction-scoped advisory lock on
//! the key (not blocking: a second request while the first is in flight
//! gets `409` at once), then looks for a stored response. Found with the
//! same request fingerprint: the stored status and body are replayed and
//! nothing is written. Found with a different fingerprint: `422`. Not
//! found: the command runs and its response is stored *in the same
//! transaction* as its rows and outbox event, so a response is stored if
//! and only if the command's effects are.
//!
//! Outcomes that depend only on the request and the state it met (success,
//! a refused transition, an amount rule) are stored; transient failures
//! (`409` version conflicts, `503`) are not, so a retry can succeed.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tally_projection::watermark::ConsistencyToken;
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
const MAX_LEN: usize = 255;

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let raw = headers
            .get(HEADER)
            .ok_or(ApiError::IdempotencyKey("every command needs an `Idempotency-Key` header (a unique string, e.g. a UUID, reused only to retry the same request)"))?;
        let s = raw
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or(ApiError::IdempotencyKey(
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters",
            ))?;
        Ok(IdempotencyKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The advisory-lock key: the first 8 bytes of SHA-256(api key id, key).
    /// A collision only makes an unrelated request see `409` and retry.
    fn lock_id(&self, api_key_id: Uuid) -> i64 {
        let mut h = Sha256::new();
        h.update(api_key_id.as_bytes());
        h.update(self.0.as_bytes());
        let d = h.finalize();
        i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// SHA-256 of what makes two requests "the same": method, path, body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().to_vec()
}

/// A command's response, as sent and as stored for replays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResponse {
    pub status: u16,
    pub body: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Sent as `Tally-Consistency-Token` (a replay sends the original's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_token: Option<String>,
}

impl CommandResponse {
    pub fn into_response_with(self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, axum::Json(&self.body)).into_response();
        let h = res.headers_mut();
        if status.is_client_error() || status.is_server_error() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
        }
        if let Some(loc) = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            h.insert(header::LOCATION, loc);
        }
        if let Some(tag) = self
            .etag
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.insert(header::ETAG, tag);
        }
        if let Some(token) = self
            .consistency_token
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            h.insert(ConsistencyToken::HEADER, token);
        }
        if replayed {
            h.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        res
    }
}

/// What [`begin`] found.
pub enum Begin {
    /// First time this key is seen: run the command in this transaction,
    /// then [`store`] its response in it.
    Proceed(Transaction<'static, Postgres>),
    /// Seen before with the same request: send this again.
    Replay(CommandResponse),
}

pub async fn begin(
    pool: &PgPool,
    api_key_id: Uuid,
    key: &IdempotencyKey,
    fingerprint: &[u8],
) -> Result<Begin, ApiError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key.lock_id(api_key_id))
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Err(ApiError::IdempotencyInFlight);
    }
    // A new statement, so a new snapshot: it sees a response committed by
    // whoever held the lock before us.
    let stored: Option<(Vec<u8>, i16, serde_json::Value)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE api_key_id = $1 AND idempotency_key = $2",
    )
    .bind(api_key_id)
    .bind(key.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((hash, _, body)) = stored else {
        return Ok(Begin::Proceed(tx));
    };
    // Roll back now, not on drop: a dropped transaction is rolled back
    // lazily, and until then its advisory lock makes the key look in flight.
    tx.rollback().await?;
    if hash != fingerprint {
        return Err(ApiError::IdempotencyMismatch);
    }
    let resp: CommandResponse = serde_json::from_value(body).map_err(|e| {
        ApiError::Internal(format!("stored idempotent response is unreadable: {e}"))
    })?;
    Ok(Begin::Replay(resp))
}

/// Stores the response in the command's transaction and commits it.
pub async fn store(
    mut tx: Transaction<'static, Postgres>,
    api_key_id: Uuid,
    key: &IdempotencyKey,
    fingerprint: &[u8],
    response: &CommandResponse,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, response_status, response_body)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(api_key_id)
    .bind(key.as_str())
    .bind(fingerprint)
    .bind(response.status as i16)
    .bind(serde_json::to_value(response).map_err(|e| ApiError::Internal(e.to_string()))?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes keys older than `retention`; run periodically.
pub async fn expire(pool: &PgPool, retention: std::time::Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_fingerprints_cover_method_path_and_body() {
        let mut h = HeaderMap::new();
        assert!(IdempotencyKey::from_headers(&h).is_err());
        h.insert(HEADER, HeaderValue::from_static("\"abc-123\""));
        assert_eq!(
            IdempotencyKey::from_headers(&h).unwrap().as_str(),
            "abc-123"
        );
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert!(IdempotencyKey::from_headers(&h).is_err());
        h.insert(HEADER, HeaderValue::from_str(&"k".repeat(256)).unwrap());
        assert!(IdempotencyKey::from_headers(&h).is_err());

        let a = fingerprint("POST", "/v1/orders", b"{}");
        assert_eq!(a, fingerprint("POST", "/v1/orders", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/orders", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/v1/orders/x/refunds", b"{}"));
    }
}
