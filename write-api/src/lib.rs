//! The command side of Tally: a thin axum API over the Order aggregate.
//!
//! A request is authenticated, its body parsed into domain types, the
//! domain decides, and `store` writes the normalised rows and exactly one
//! outbox event in one transaction. Responses are acknowledgements (`201`
//! with an id), never the order's read view: reads belong to `dashboards`.
//!
//! [`Application::build`] binds the listener and returns the port, so tests
//! run the real service on port 0 (zero2prod's `startup.rs` pattern).

pub mod auth;
pub mod error;
pub mod metrics;
pub mod orders;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::routing::post;
use axum::{Router, middleware};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tally_ops::Shutdown;
use tally_ops::http::{ReadinessCheck, ops_routes, serve};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::auth::{AuthState, KeyCache, Role};
use crate::error::ApiError;

/// Settings of the write API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: metrics::Metrics,
}

/// A JSON body extractor whose errors are problem details and name the
/// offending field (`items[0].quantity: invalid type …`).
pub struct JsonBody<T>(pub T);

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
            .map(JsonBody)
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

/// The router, without binding: commands under `/v1`, ops endpoints at the root.
pub fn router(config: &ApiConfig, pool: PgPool, metrics: metrics::Metrics) -> Router<()> {
    let state = AppState {
        pool: pool.clone(),
        metrics: metrics.clone(),
    };
    let writers = AuthState {
        pool: pool.clone(),
        cache: KeyCache::default(),
        role: Role::OrdersWrite,
    };
    let commands = Router::new()
        .route("/v1/orders", post(orders::place_order))
        .route_layer(middleware::from_fn_with_state(writers, auth::require_role))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(
            config.body_limit_bytes,
        ));
    commands
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .layer(TraceLayer::new_for_http())
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
        let router =
            router(config, pool.clone(), metrics).merge(ops_routes(registry, readiness(pool)));
        Ok(Application { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> std::io::Result<()> {
        serve(self.listener, self.router, shutdown).await
    }
}
