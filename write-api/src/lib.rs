//! The command side of Tally: a thin axum API over the Order aggregate.
//!
//! A request is authenticated, its body parsed into domain types, the
//! domain decides, and `store` writes the normalised rows and exactly one
//! outbox event in one transaction. Responses are acknowledgements (`201`
//! with an id), never the order's read view: reads belong to `dashboards`.
//!
//! [`Application::build`] binds the listener and returns the port, so tests
//! run the real service on port 0 (zero2prod's `startup.rs` pattern).

pub mod context;
pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Router, middleware};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tally_ops::Shutdown;
use tally_ops::auth::{self, AuthState, KeyCache, Role};
use tally_ops::http::{ReadinessCheck, ops_routes, serve};
use tokio::net::TcpListener;

use crate::error::ApiError;

/// Settings of the write API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// How long an Idempotency-Key and its response are kept.
    pub idempotency_retention: Duration,
    /// How often expired Idempotency-Keys are deleted.
    pub idempotency_cleanup_interval: Duration,
    /// Request timeout and most requests in flight (`tally_ops::http`).
    pub limits: tally_ops::http::Limits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            idempotency_retention: Duration::from_secs(24 * 3600),
            idempotency_cleanup_interval: Duration::from_secs(600),
            limits: tally_ops::http::Limits::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: metrics::Metrics,
}

/// A JSON body extractor whose errors are problem details and name the
/// offending field (`items[0].quantity: invalid type …`). It keeps the raw
/// bytes: the Idempotency-Key fingerprint is over what was sent.
pub struct JsonBody<T> {
    pub value: T,
    pub bytes: axum::body::Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::BodyTooLarge)?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(|value| JsonBody {
                value,
                bytes: bytes.clone(),
            })
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    ApiError::MalformedBody(inner.to_string())
                } else {
                    ApiError::MalformedBody(format!("{path}: {inner}"))
                }
            })
    }
}

/// Every command route; the OpenAPI test checks each is documented.
pub const COMMAND_ROUTES: [&str; 5] = [
    "/v1/orders",
    "/v1/orders/{id}/payments",
    "/v1/orders/{id}/shipments",
    "/v1/orders/{id}/cancellation",
    "/v1/orders/{id}/refunds",
];

/// The router, without binding: commands under `/v1`, `/openapi.json`.
/// Once `draining` fires, new commands get `503` while in-flight ones finish.
pub fn router(
    config: &ApiConfig,
    pool: PgPool,
    metrics: metrics::Metrics,
    draining: Shutdown,
) -> Router<()> {
    let state = AppState {
        pool: pool.clone(),
        metrics: metrics.clone(),
    };
    let writers = AuthState {
        pool: pool.clone(),
        cache: KeyCache::default(),
        role: Role::OrdersWrite,
    };
    let [place, pay, ship, cancel, refund] = COMMAND_ROUTES;
    let commands = Router::new()
        .route(place, post(orders::place_order))
        .route(pay, post(orders::capture_payment))
        .route(ship, post(orders::ship_order))
        .route(cancel, post(orders::cancel_order))
        .route(refund, post(orders::refund_order))
        .route_layer(middleware::from_fn_with_state(writers, auth::require_role))
        .route_layer(middleware::from_fn_with_state(
            draining,
            refuse_while_draining,
        ))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(
            config.body_limit_bytes,
        ));
    let doc = Arc::new(openapi::document());
    let routes = commands.route(
        "/openapi.json",
        get(move || async move { axum::Json(doc.as_ref().clone()) }),
    );
    tally_ops::http::edge(routes, config.limits, &metrics.http)
}

async fn refuse_while_draining(
    State(draining): State<Shutdown>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if draining.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    Ok(next.run(req).await)
}

/// A readiness check: PostgreSQL answers and has every migration.
pub fn readiness(pool: PgPool) -> ReadinessCheck {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            match tally_migrations::postgres::is_up_to_date(&pool).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    Err("PostgreSQL migrations are not applied; run `tally migrate`".into())
                }
                Err(e) => Err(format!("PostgreSQL: {e}")),
            }
        })
    })
}

/// A bound, ready-to-run write API.
pub struct Application {
    listener: TcpListener,
    router: Router,
    draining: Shutdown,
    pool: PgPool,
    config: ApiConfig,
}

impl Application {
    /// Binds `config.listen`. `metrics` must be registered on `registry`,
    /// which `/metrics` then serves.
    pub async fn build(
        config: &ApiConfig,
        pool: PgPool,
        metrics: metrics::Metrics,
        registry: Arc<Registry>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let draining = Shutdown::new();
        let router = router(config, pool.clone(), metrics, draining.clone())
            .merge(ops_routes(registry, readiness(pool.clone())));
        Ok(Application {
            listener,
            router,
            draining,
            pool,
            config: config.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown`; then new commands get `503` and in-flight
    /// ones finish. Also expires old Idempotency-Keys.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> std::io::Result<()> {
        let housekeeping = tokio::spawn(housekeeping(
            self.pool.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        let draining = self.draining.clone();
        let gate = shutdown.clone();
        tokio::spawn(async move {
            gate.cancelled().await;
            draining.cancel();
        });
        let served = serve(self.listener, self.router, shutdown).await;
        let _ = housekeeping.await;
        served
    }
}

async fn housekeeping(pool: PgPool, config: ApiConfig, shutdown: Shutdown) {
    let every = config.idempotency_cleanup_interval;
    let mut cleanup = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = cleanup.tick() => match idempotency::expire(&pool, config.idempotency_retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "expiring idempotency keys failed"),
            },
        }
    }
}
