//! API keys: creation, hashing, and the per-request check.
//!
//! Shared by the write API (`orders:write`) and the dashboards
//! (`finance:read`): one key store, one way to be refused.
//!
//! A key is `tally_` + 64 hex characters (256 random bits). Only its SHA-256
//! is stored; the plaintext is shown once, when it is created. Verified keys
//! are cached for [`CACHE_TTL`] so that authentication costs no database
//! round trip on the hot path; a revoked key stops working within that time.
//!
//! Unknown keys must not be a way to exhaust the database pool the
//! commands share: a refused key is remembered for [`REFUSED_TTL`], and at
//! most [`LOOKUPS_AT_ONCE`] uncached lookups run at once per service; a
//! request that finds them busy for a second gets `503` with `Retry-After`.
//! A flood of made-up keys thus holds at most two connections, and keys
//! already verified never wait for it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::Problem;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a refused key is refused without asking the database again.
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Uncached key lookups one service runs at once.
pub const LOOKUPS_AT_ONCE: usize = 2;
const KEY_PREFIX: &str = "tally_";

/// What a key may do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    /// Send commands (place, capture, ship, cancel, refund).
    OrdersWrite,
    /// Read the finance dashboards and their API.
    FinanceRead,
    /// Read orders: one by id, a merchant's, a customer's history.
    OrdersRead,
    /// Operate the pipeline (rebuilds, dead letters).
    OpsAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::OrdersWrite,
        Role::OrdersRead,
        Role::FinanceRead,
        Role::OpsAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrdersWrite => "orders:write",
            Role::FinanceRead => "finance:read",
            Role::OrdersRead => "orders:read",
            Role::OpsAdmin => "ops:admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role `{s}`; expected one of {}", all.join(", "))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: Uuid,
    pub roles: Vec<String>,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key with `roles` and returns its plaintext (shown once).
pub async fn create_key(
    pool: &PgPool,
    name: &str,
    roles: &[Role],
) -> Result<(Uuid, String), sqlx::Error> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let id = Uuid::now_v7();
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    sqlx::query("INSERT INTO api_keys (key_id, name, key_hash, roles) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(hash(&key))
        .bind(&roles)
        .execute(pool)
        .await?;
    Ok((id, key))
}

/// A key as operators see it: never its secret, which is not stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub key_id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: time::OffsetDateTime,
    pub revoked_at: Option<time::OffsetDateTime>,
}

/// Every key, oldest first (revoked ones too, unless `active_only`).
pub async fn list_keys(pool: &PgPool, active_only: bool) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key_id, name, roles, created_at, revoked_at FROM api_keys
         WHERE NOT $1 OR revoked_at IS NULL ORDER BY created_at, key_id",
    )
    .bind(active_only)
    .fetch_all(pool)
    .await
}

/// Revokes a key. Services that verified it within [`CACHE_TTL`] keep
/// accepting it until their cache entry expires; none does past that.
/// `None`: no such key; `Some(false)`: it was revoked already.
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<(bool,)> = sqlx::query_as(
        "WITH k AS (SELECT key_id, revoked_at IS NULL AS active FROM api_keys WHERE key_id = $1),
              r AS (UPDATE api_keys SET revoked_at = now()
                    WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id)
         SELECT active FROM k",
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(active,)| active))
}

/// Whether `key` exists, is not revoked, and has `role` (uncached).
pub async fn key_has_role(pool: &PgPool, key: &str, role: Role) -> Result<bool, sqlx::Error> {
    Ok(lookup(pool, key)
        .await?
        .is_some_and(|c| c.roles.iter().any(|r| r == role.as_str())))
}

async fn lookup(pool: &PgPool, key: &str) -> Result<Option<Caller>, sqlx::Error> {
    let row: Option<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT key_id, roles FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(key))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(key_id, roles)| Caller { key_id, roles }))
}

/// SHA-256 of a key → the caller it authenticates, until when.
type CacheMap = HashMap<Vec<u8>, (Caller, Instant)>;

/// Most entries either map holds; past it, it is cleared (a flood of
/// distinct keys is not a use case worth remembering).
const CACHE_ENTRIES: usize = 10_000;

/// Verified keys, by hash, with their expiry; refused ones likewise; and
/// the permits for uncached lookups.
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Mutex<CacheMap>>,
    refused: Arc<Mutex<HashMap<Vec<u8>, Instant>>>,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            inner: Arc::default(),
            refused: Arc::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE)),
        }
    }
}

impl KeyCache {
    async fn authenticate(&self, pool: &PgPool, key: &str) -> Result<Option<Caller>, AuthError> {
        let h = hash(key);
        let now = Instant::now();
        if let Ok(map) = self.inner.lock()
            && let Some((caller, expires)) = map.get(&h)
            && *expires > now
        {
            return Ok(Some(caller.clone()));
        }
        if let Ok(refused) = self.refused.lock()
            && refused.get(&h).is_some_and(|until| *until > now)
        {
            return Ok(None);
        }
        let Ok(Ok(_permit)) =
            tokio::time::timeout(Duration::from_secs(1), self.lookups.acquire()).await
        else {
            return Err(AuthError::Busy);
        };
        let found = lookup(pool, key).await?;
        match &found {
            Some(caller) => {
                if let Ok(mut map) = self.inner.lock() {
                    if map.len() >= CACHE_ENTRIES {
                        map.clear();
                    }
                    map.insert(h, (caller.clone(), Instant::now() + CACHE_TTL));
                }
            }
            None => {
                if let Ok(mut refused) = self.refused.lock() {
                    if refused.len() >= CACHE_ENTRIES {
                        refused.retain(|_, until| *until > now);
                        if refused.len() >= CACHE_ENTRIES {
                            refused.clear();
                        }
                    }
                    refused.insert(h, Instant::now() + REFUSED_TTL);
                }
            }
        }
        Ok(found)
    }
}

/// State for [`require_role`].
#[derive(Clone)]
pub struct AuthState {
    pub pool: PgPool,
    pub cache: KeyCache,
    pub role: Role,
}

/// Middleware: rejects requests without a valid key holding `state.role`
/// and puts the [`Caller`] into the request's extensions.
pub async fn require_role(
    State(state): State<AuthState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AuthError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or(AuthError::Unauthenticated(
            "send `Authorization: Bearer <API key>`",
        ))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| k.starts_with(KEY_PREFIX))
        .ok_or(AuthError::Unauthenticated(
            "the Authorization header must be `Bearer tally_…`",
        ))?;
    let caller = state
        .cache
        .authenticate(&state.pool, key)
        .await?
        .ok_or(AuthError::Unauthenticated("unknown or revoked API key"))?;
    if !caller.roles.iter().any(|r| r == state.role.as_str()) {
        return Err(AuthError::Forbidden(state.role.as_str()));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Why a request was refused before reaching its handler.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    #[error("API key lacks role {0}")]
    Forbidden(&'static str),
    #[error("key store: {0}")]
    Database(#[from] sqlx::Error),
    /// Every permit for uncached key lookups stayed taken for a second.
    #[error("too many key lookups at once")]
    Busy,
}

impl AuthError {
    pub fn to_problem(&self) -> Problem {
        match self {
            AuthError::Unauthenticated(why) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            )
            .detail(*why),
            AuthError::Forbidden(role) => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                    .detail(format!("this API key lacks the `{role}` role"))
            }
            AuthError::Database(e) => {
                tracing::warn!(error = %e, "API key lookup failed");
                Problem::unavailable("the key store")
            }
            AuthError::Busy => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many key lookups at once",
            )
            .detail(
                "too many requests with keys not seen recently are being checked; retry shortly",
            )
            .retry_after(1),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}
