//! The dashboard page and its assets, embedded in the binary: no CDN, no
//! files to deploy, works offline. Chart.js is vendored from npm (see
//! `assets/vendor/README.md`). The page itself holds no data and needs no
//! key; every number comes from the `finance:read` API.

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
