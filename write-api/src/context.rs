//! What every command handler takes besides its path and body, in one
//! extractor: the service's state, the authenticated caller, the
//! `Idempotency-Key` and `If-Match` headers, and the request path the
//! idempotency fingerprint covers. A handler's signature then says only
//! what differs between commands.
//!
//! The headers are parsed here but their errors are raised by the handler,
//! in the order the API has always reported them (a malformed body first,
//! then the key, then `If-Match`), so moving them did not change an answer.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use tally_ops::auth::Caller;

use crate::AppState;
use crate::error::ApiError;
use crate::idempotency::{self, Begin, CommandResponse, IdempotencyKey};

pub struct CommandContext {
    pub(crate) state: AppState,
    caller: Caller,
    key: Option<Result<IdempotencyKey, ApiError>>,
    if_match: Option<Result<Option<u32>, ApiError>>,
    path: String,
}

impl FromRequestParts<AppState> for CommandContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Internal("a command route without the authentication layer".into())
        })?;
        Ok(CommandContext {
            state: state.clone(),
            caller,
            key: Some(IdempotencyKey::from_headers(&parts.headers)),
            if_match: Some(if_match(&parts.headers)),
            path: parts.uri.path().to_owned(),
        })
    }
}

/// An order version as an entity tag.
pub(crate) fn etag(version: u32) -> String {
    format!("\"{version}\"")
}

/// `If-Match: "3"` (or `3`), if sent.
fn if_match(headers: &HeaderMap) -> Result<Option<u32>, ApiError> {
    match headers.get(header::IF_MATCH) {
        // An empty header says nothing: as if it were not sent.
        None => Ok(None),
        Some(v) if v.as_bytes().trim_ascii().is_empty() => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|s| s.parse::<u32>().ok())
            .map(Some)
            .ok_or(ApiError::BadIfMatch),
    }
}

impl CommandContext {
    /// The request's `Idempotency-Key`, or why it is unusable.
    pub(crate) fn idempotency_key(&mut self) -> Result<IdempotencyKey, ApiError> {
        self.key
            .take()
            .unwrap_or(Err(ApiError::Internal("Idempotency-Key read twice".into())))
    }

    /// The version `If-Match` asks for, if any.
    pub(crate) fn expected_version(&mut self) -> Result<Option<u32>, ApiError> {
        self.if_match
            .take()
            .unwrap_or(Err(ApiError::Internal("If-Match read twice".into())))
    }

    /// Runs a command under its Idempotency-Key: replays a stored response,
    /// or runs `decide_and_write` in the key's transaction and stores its
    /// outcome there. Transient errors roll everything back and are not
    /// stored.
    pub(crate) async fn run(
        &self,
        key: IdempotencyKey,
        body: &[u8],
        decide_and_write: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<CommandResponse, ApiError>,
    ) -> Result<Response, ApiError> {
        let fingerprint = idempotency::fingerprint("POST", &self.path, body);
        let state = &self.state;
        match idempotency::begin(&state.pool, self.caller.key_id, &key, &fingerprint).await? {
            Begin::Replay(stored) => {
                state.metrics.replays.inc();
                Ok(stored.into_response_with(true))
            }
            Begin::Proceed(mut tx) => {
                let response = match decide_and_write(&mut tx).await {
                    Ok(r) => r,
                    Err(e) if e.is_final() => CommandResponse {
                        status: e.to_problem().status,
                        body: serde_json::to_value(e.to_problem()).unwrap_or_default(),
                        location: None,
                        etag: None,
                        consistency_token: None,
                    },
                    Err(e) => {
                        if matches!(e, ApiError::VersionConflict { .. }) {
                            state.metrics.conflicts.inc();
                        }
                        // Explicitly: see `idempotency::begin` on lazy rollbacks.
                        tx.rollback().await?;
                        return Err(e);
                    }
                };
                idempotency::store(tx, self.caller.key_id, &key, &fingerprint, &response).await?;
                Ok(response.into_response_with(false))
            }
        }
    }
}
