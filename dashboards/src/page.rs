//! The dashboard page and its assets, embedded in the binary: no CDN, no
//! files to deploy, works offline. Chart.js is vendored from npm (see
//! `assets/vendor/README.md`). The page itself holds no data and needs no
//! key; every number comes from the `finance:read` API.
//!
//! Every response of the dashboards carries [`security_headers`]: the page
//! runs only its own scripts (no inline script, no `eval`), cannot be
//! framed, and no response is content-sniffed.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const CHART_JS: &str = include_str!("../assets/vendor/chart.umd.min.js");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
}

/// The page's Content-Security-Policy: its own origin only, no inline
/// script or style attribute, no framing, no plugins, no base rewriting.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// Middleware: the security headers on every response.
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/assets/chart.umd.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHART_JS) }),
        )
}
