//! The endpoints every service exposes to operators (`/livez`, `/readyz`,
//! `/metrics`) and the graceful `serve` loop they all run in.
//!
//! Every server is bounded against slow or flooding clients, whoever they
//! are (authentication comes after): a connection has
//! [`HEADER_READ_TIMEOUT`] to send its request head (slowloris), a request
//! has [`Limits::request_timeout`] from its head to its response, and at
//! most [`Limits::max_in_flight`] requests are handled at once; one more is
//! refused at once with a `503` problem rather than queued behind the
//! database pool (load shedding). Metric labels take only bounded values:
//! a route template, a known method or `other`, a status.
//!
//! Every request carries an id ([`edge`]): the caller's `x-request-id` if it
//! sent one, else a new UUID. It is echoed in the response, recorded on the
//! request's log span, and becomes a problem's `instance`, so a client's
//! error report leads straight to the server's log lines.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::Shutdown;

/// A readiness probe: `Ok` when the service can do its job, otherwise why not.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    ready: ReadinessCheck,
}

/// `/livez` (the process answers), `/readyz` (its dependencies answer) and
/// `/metrics` (Prometheus text format).
pub fn ops_routes(registry: Arc<Registry>, ready: ReadinessCheck) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

async fn readyz(State(s): State<OpsState>) -> Response {
    match (s.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// How long a connection may take to send a request's head (line and
/// headers). Past it the connection is closed: a client dribbling bytes
/// cannot hold a connection, or its task, for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish once shutdown fires.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` until `shutdown` fires, then stops accepting and lets
/// in-flight requests finish (for at most 30 s). HTTP/1.1, with
/// [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 30 s of draining; closing them");
    }
    Ok(())
}

/// What one service lets its clients make it do ([`guard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a request's head to its response.
    pub request_timeout: Duration,
    /// Requests handled at once; one more gets `503 overloaded`.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(30),
            max_in_flight: 512,
        }
    }
}

#[derive(Clone)]
struct Guard {
    in_flight: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Longest caller-chosen request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

#[derive(Clone, Copy, Default)]
struct NewRequestId;

impl tower_http::request_id::MakeRequestId for NewRequestId {
    fn make_request_id<B>(
        &mut self,
        _: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        Some(tower_http::request_id::RequestId::new(
            header::HeaderValue::from_str(&id).ok()?,
        ))
    }
}

/// A caller's id is kept if it is short printable ASCII; anything else is
/// replaced, so ids are safe in logs and in a problem's `instance`.
async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let ok = req.headers().get("x-request-id").is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
    });
    if !ok {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

/// The id `SetRequestIdLayer` gave the request (empty before it ran).
fn request_id_of<B>(req: &axum::http::Request<B>) -> &str {
    req.extensions()
        .get::<tower_http::request_id::RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
}

/// Runs the rest of the request with its id in [`current_request_id`].
async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = request_id_of(&req).to_owned();
    REQUEST_ID.scope(id, next.run(req)).await
}

fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request_id_of(req);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path(), MatchedPath::as_str);
    tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route)
}

/// A service's public router as every service serves it: [`guard`]ed,
/// counted and timed ([`track`]), traced, and with a request id.
pub fn edge(router: Router, limits: Limits, metrics: &HttpMetrics) -> Router {
    use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
    guard(router, limits)
        .layer(axum::middleware::from_fn_with_state(metrics.clone(), track))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::middleware::from_fn(scope_request_id))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(axum::middleware::from_fn(sanitize_request_id))
}

/// Wraps `router` in [`Limits`]: load shedding past `max_in_flight`, and a
/// `503` problem when a request outlives `request_timeout` (its handler is
/// dropped, which rolls back any transaction it held).
pub fn guard(router: Router, limits: Limits) -> Router {
    let g = Guard {
        in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.max(1))),
        timeout: limits.request_timeout,
    };
    router.layer(axum::middleware::from_fn_with_state(g, guard_request))
}

async fn guard_request(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Ok(_permit) = g.in_flight.clone().try_acquire_owned() else {
        return crate::Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many requests in flight",
        )
        .detail("the server is handling as many requests as it accepts at once; retry shortly")
        .retry_after(1)
        .into_response();
    };
    match tokio::time::timeout(g.timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => crate::Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
        )
        .detail(format!(
            "the request took longer than {} s and was abandoned; nothing it started was kept",
            g.timeout.as_secs()
        ))
        .retry_after(1)
        .into_response(),
    }
}

/// The method as a metric label: the ones the services answer, or `other`
/// (a client can send any token as a method; each would be a new series).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

/// Requests by route template and status, and their latency: the same
/// two series under each service's prefix.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            in_flight: Gauge::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "HTTP request latency by route",
            self.latency.clone(),
        );
        r.register(
            "requests_in_flight",
            "HTTP requests being handled now",
            self.in_flight.clone(),
        );
    }
}

/// Counts a request in flight until dropped (also when the request is
/// abandoned midway).
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts and times every request by its route template.
pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    m.in_flight.inc();
    let in_flight = InFlight(m.in_flight.clone());
    let res = next.run(req).await;
    drop(in_flight);
    m.latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn slow_router(limits: Limits, release: Arc<tokio::sync::Notify>) -> Router {
        let r = Router::new().route(
            "/slow",
            get(move || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    "done"
                }
            }),
        );
        guard(r, limits)
    }

    fn get_slow() -> Request {
        Request::builder().uri("/slow").body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn one_request_over_the_limit_is_shed_with_a_problem() {
        let release = Arc::new(tokio::sync::Notify::new());
        let limits = Limits {
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1,
        };
        let app = slow_router(limits, release.clone());
        let first = tokio::spawn(app.clone().oneshot(get_slow()));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = app.clone().oneshot(get_slow()).await.unwrap();
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()["retry-after"], "1");
        assert_eq!(second.headers()["content-type"], "application/problem+json");
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        // The permit came back with the first response.
        let third = tokio::spawn(app.oneshot(get_slow()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.notify_one();
        assert_eq!(third.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_gets_a_problem_not_a_hang() {
        let limits = Limits {
            request_timeout: Duration::from_millis(100),
            max_in_flight: 4,
        };
        let app = slow_router(limits, Arc::new(tokio::sync::Notify::new()));
        let res = tokio::time::timeout(Duration::from_secs(5), app.oneshot(get_slow()))
            .await
            .expect("answered within the timeout")
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("problems/timeout"));
    }

    #[test]
    fn made_up_methods_share_one_label() {
        use axum::http::Method;
        for m in ["M1", "M2", "BREW", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::POST), "POST");
    }
}
