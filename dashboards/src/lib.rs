//! The read side: the finance aggregates (a JSON API and a web page) and
//! the order queries (`orders.rs`).
//!
//! Data comes only from ClickHouse's projections (`daily_revenue`, the fact
//! tables, the watermark), through a read-only ClickHouse user. PostgreSQL
//! is touched for one thing: checking the caller's API key for
//! `finance:read` or `orders:read` (cached, shared with the write API in
//! `tally_ops::auth`). Every response
//! says how fresh the data is, in its body and in `Tally-Data-*` headers.
//! Amounts are exact minor units per currency with a decimal string beside
//! them; currencies are never summed together.

pub mod consistency;
mod error;
pub mod openapi;
pub mod order_query;
pub mod orders;
mod page;
pub mod params;
pub mod part_sums;
pub mod plan;
pub mod store;
pub mod sums;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tally_ops::auth::{self, AuthState, KeyCache, Role};
use tally_ops::http::{HttpMetrics, ReadinessCheck, ops_routes, serve};
use tally_ops::problem::InvalidParam;
use tally_ops::telemetry::{ClickHouseErrors, count_clickhouse_failures};
use tally_ops::{Replicas, Shutdown};
use time::OffsetDateTime;
use tokio::net::TcpListener;

pub use crate::error::DashError;
use crate::params::{Filter, Format, Needs, RawQuery};
use crate::part_sums::{CacheMetrics, PartSums};
use crate::views::{
    CurrencySummary, DailyResponse, DailyRevenue, Freshness, SummaryResponse, Table, TopMerchant,
    TopResponse, file_name, percent,
};
use tally_domain::money::format_minor;

#[derive(Clone, Debug)]
pub struct DashboardsConfig {
    pub listen: SocketAddr,
    /// Longest date range one request may ask for.
    pub max_span_days: i64,
    /// Most sums the cache of merged parts' sums holds (about 32 bytes
    /// each); 0 turns the cache off.
    pub cache_rows: usize,
    /// How often the cache looks for new and vanished parts.
    pub cache_refresh: Duration,
    /// Request timeout and most requests in flight (`tally_ops::http`).
    pub limits: tally_ops::http::Limits,
}

impl Default for DashboardsConfig {
    fn default() -> Self {
        DashboardsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_span_days: 366,
            cache_rows: 4_000_000,
            cache_refresh: Duration::from_secs(2),
            limits: tally_ops::http::Limits::default(),
        }
    }
}

/// The dashboards' Prometheus metrics (`tally_dashboards_*`).
#[derive(Clone)]
pub struct Metrics {
    http: HttpMetrics,
    reads: store::ReadStats,
    cache: CacheMetrics,
    clickhouse_errors: ClickHouseErrors,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let http = HttpMetrics::default();
        let reads = store::ReadStats::default();
        let r = registry.sub_registry_with_prefix("tally_dashboards");
        http.register(r);
        r.register(
            "read_retries",
            "Reads repeated because daily_revenue's parts changed during them",
            reads.retries.clone(),
        );
        r.register(
            "read_fallbacks",
            "Reads that gave up on the plan and used FINAL throughout (slow)",
            reads.fallbacks.clone(),
        );
        let cache = CacheMetrics::default();
        r.register(
            "cache_parts",
            "Merged daily_revenue parts whose sums are cached",
            cache.parts.clone(),
        );
        r.register(
            "cache_rows",
            "Sums held by the cache (per merchant and week, per day), about 32 bytes each",
            cache.rows.clone(),
        );
        r.register(
            "cache_fills",
            "Parts read into the cache",
            cache.fills.clone(),
        );
        r.register(
            "days_cached",
            "Days of reads answered from cached part sums",
            cache.days_cached.clone(),
        );
        r.register(
            "days_live",
            "Days of reads read live from daily_revenue",
            cache.days_live.clone(),
        );
        let clickhouse_errors = ClickHouseErrors::register(r);
        Metrics {
            http,
            reads,
            cache,
            clickhouse_errors,
        }
    }
}

#[derive(Clone)]
struct AppState {
    /// The replica this request reads: set by [`AppState::pinned`], which
    /// every handler calls first, so that everything one answer is made of
    /// (freshness, parts, rows) comes from one replica.
    ch: clickhouse::Client,
    /// Which replica `ch` is.
    pinned: usize,
    replicas: Arc<Replicas>,
    watermark: Arc<consistency::WatermarkWatch>,
    reads: store::ReadStats,
    cache: Arc<PartSums>,
    max_span_days: i64,
}

impl AppState {
    /// This state with the current replica pinned for one request.
    fn pinned(self) -> AppState {
        let replica = self.replicas.current();
        AppState {
            ch: replica.client,
            pinned: replica.index,
            ..self
        }
    }

    fn filter(
        &self,
        q: Result<Query<RawQuery>, QueryRejection>,
        needs: Needs,
    ) -> Result<Filter, DashError> {
        let Query(raw) = q.map_err(|e| {
            DashError::Invalid(vec![InvalidParam {
                name: "query".into(),
                reason: e.body_text(),
            }])
        })?;
        let today = OffsetDateTime::now_utc().date();
        Filter::parse(&raw, today, self.max_span_days, needs).map_err(DashError::Invalid)
    }

    /// The published watermark. Read *before* the data it describes: it
    /// only grows, and is published only after what it covers is in
    /// ClickHouse, so data read after it holds at least everything it
    /// claims. Read concurrently, it could be published after the data
    /// read began and claim events that read missed.
    ///
    /// On a replica (one of several) the watermark counts only once the
    /// replica holds the rows it covers (`replica_caught_up`): a few short
    /// waits for replication, then the last watermark vouched for.
    async fn freshness(&self) -> Result<Freshness, clickhouse::error::Error> {
        use tally_projection::watermark::published_micros;
        let mut us = published_micros(&self.ch).await?;
        let mut waits = 0;
        while !self.watermark.vouches(self.pinned, &self.ch, us).await? {
            waits += 1;
            if waits > 5 {
                us = self.watermark.last_seen();
                break;
            }
            tokio::time::sleep(consistency::POLL).await;
            us = published_micros(&self.ch).await?;
        }
        let wm = tally_projection::watermark::instant(us);
        Ok(Freshness::at(wm, OffsetDateTime::now_utc()))
    }
}

/// `Tally-Data-*` headers for `fresh`, and no caching.
fn freshness_headers(fresh: &Freshness) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(v) = fresh
        .complete_up_to
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("tally-data-complete-up-to", v);
    }
    if let Some(v) = fresh
        .lag_seconds
        .and_then(|l| HeaderValue::from_str(&format!("{l:.3}")).ok())
    {
        headers.insert("tally-data-lag-seconds", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// The table as JSON or CSV (a download named `file`), with the freshness
/// headers.
fn respond(format: Format, body: &impl Table, file: String) -> Response {
    let mut headers = freshness_headers(body.freshness());
    match format {
        Format::Json => (headers, Json(body)).into_response(),
        Format::Csv => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
            (headers, body.csv()).into_response()
        }
    }
}

/// `GET /v1/revenue/daily`: per day and currency.
async fn daily_revenue(
    State(s): State<AppState>,
    q: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, DashError> {
    let s = s.pinned();
    let f = s.filter(q, Needs::default())?;
    let fresh = s.freshness().await?;
    let rows = store::daily(&s.ch, &s.reads, &s.cache, &f).await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let c = store::currency(r.currency).map_err(DashError::Data)?;
            Ok(DailyRevenue::new(r.day.to_string(), c, &r.sums))
        })
        .collect::<Result<Vec<_>, DashError>>()?;
    let body = DailyResponse {
        from: f.range.from.to_string(),
        to: f.range.to.to_string(),
        freshness: fresh,
        rows,
    };
    let file = file_name("daily-revenue", f.range, f.currency);
    Ok(respond(f.format, &body, file))
}

/// `GET /v1/revenue/summary`: totals per currency against the previous
/// period of equal length.
async fn summary(
    State(s): State<AppState>,
    q: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, DashError> {
    let s = s.pinned();
    let f = s.filter(q, Needs::default())?;
    let fresh = s.freshness().await?;
    let rows = store::periods(&s.ch, &s.reads, &s.cache, &f).await?;
    let currencies = rows
        .iter()
        .map(|r| {
            let c = store::currency(r.currency).map_err(DashError::Data)?;
            Ok(CurrencySummary::new(c, &r.current, &r.previous))
        })
        .collect::<Result<Vec<_>, DashError>>()?;
    let prev = f.range.previous();
    let body = SummaryResponse {
        from: f.range.from.to_string(),
        to: f.range.to.to_string(),
        previous_from: prev.from.to_string(),
        previous_to: prev.to.to_string(),
        freshness: fresh,
        currencies,
    };
    let file = file_name("summary", f.range, f.currency);
    Ok(respond(f.format, &body, file))
}

/// `GET /v1/merchants/top`: merchants by net revenue in one currency.
async fn top_merchants(
    State(s): State<AppState>,
    q: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, DashError> {
    let s = s.pinned();
    let f = s.filter(q, Needs { currency: true })?;
    let Some(currency) = f.currency else {
        return Err(DashError::Data("currency missing after validation".into()));
    };
    let fresh = s.freshness().await?;
    let top = store::top_merchants(&s.ch, &s.reads, &s.cache, &f).await?;
    let total = top.total_net_minor;
    let rows = top
        .top
        .into_iter()
        .zip(1..)
        .map(|((merchant_id, net, orders, gross), rank)| TopMerchant {
            rank,
            merchant_id,
            net_minor: net,
            net: format_minor(net, currency),
            gross_minor: gross,
            gross: format_minor(gross, currency),
            orders_placed: orders,
            share_percent: if total > 0 {
                percent(net, total, 2)
            } else {
                None
            },
        })
        .collect();
    let body = TopResponse {
        from: f.range.from.to_string(),
        to: f.range.to.to_string(),
        currency: currency.code().to_owned(),
        freshness: fresh,
        total_net_minor: total,
        total_net: format_minor(total, currency),
        merchants: top.merchants,
        rows,
    };
    let file = file_name("top-merchants", f.range, f.currency);
    Ok(respond(f.format, &body, file))
}

/// `GET /v1/freshness`: the badge's poll.
async fn freshness(State(s): State<AppState>) -> Result<Response, DashError> {
    let s = s.pinned();
    let fresh = s.freshness().await?;
    Ok((freshness_headers(&fresh), Json(fresh)).into_response())
}

/// Ready when ClickHouse answers and has our tables, and the key store
/// answers.
pub fn readiness(replicas: Arc<Replicas>, pg: PgPool) -> ReadinessCheck {
    Arc::new(move || {
        let (replicas, pg) = (replicas.clone(), pg.clone());
        Box::pin(async move {
            // The current replica, or the next if it cannot be reached.
            for attempt in 0..replicas.len() {
                let replica = replicas.current();
                match tables_answer(&replica.client).await {
                    Ok(()) => break,
                    Err(e)
                        if tally_ops::stores::unreachable(&e)
                            && attempt + 1 < replicas.len()
                            && replicas.failed(replica.index) => {}
                    Err(e) => return Err(format!("ClickHouse: {}", tally_ops::error_chain(&e))),
                }
            }
            sqlx::query("SELECT 1")
                .execute(&pg)
                .await
                .map_err(|e| format!("PostgreSQL (API keys): {e}"))?;
            Ok(())
        })
    })
}

async fn tables_answer(ch: &clickhouse::Client) -> Result<(), clickhouse::error::Error> {
    for table in ["daily_revenue", "order_facts_by_id"] {
        ch.query(&format!("SELECT count() FROM {table} WHERE 0"))
            .fetch_one::<u64>()
            .await?;
    }
    Ok(())
}

pub fn router(
    config: &DashboardsConfig,
    replicas: Arc<Replicas>,
    pg: PgPool,
    cache: Arc<PartSums>,
    watermark: Arc<consistency::WatermarkWatch>,
    metrics: &Metrics,
) -> Router {
    let state = AppState {
        ch: replicas.current().client,
        pinned: replicas.current().index,
        replicas: replicas.clone(),
        watermark: watermark.clone(),
        reads: metrics.reads.clone(),
        cache,
        max_span_days: config.max_span_days,
    };
    let readers = AuthState {
        pool: pg.clone(),
        cache: KeyCache::default(),
        role: Role::FinanceRead,
    };
    let order_readers = AuthState {
        pool: pg,
        cache: KeyCache::default(),
        role: Role::OrdersRead,
    };
    let orders = Router::new()
        .route("/v1/orders/{order_id}", get(orders::get_order))
        .route(
            "/v1/merchants/{merchant_id}/orders",
            get(orders::merchant_orders),
        )
        .route(
            "/v1/customers/{customer_id}/orders",
            get(orders::customer_orders),
        )
        .route_layer(middleware::from_fn_with_state(
            watermark.clone(),
            consistency::read_after,
        ))
        .route_layer(middleware::from_fn_with_state(
            order_readers,
            auth::require_role,
        ));
    let api = Router::new()
        .route("/v1/freshness", get(freshness))
        .route("/v1/revenue/daily", get(daily_revenue))
        .route("/v1/revenue/summary", get(summary))
        .route("/v1/merchants/top", get(top_merchants))
        // Inside the authentication: only a reader may make the server wait.
        .route_layer(middleware::from_fn_with_state(
            watermark,
            consistency::read_after,
        ))
        .route_layer(middleware::from_fn_with_state(readers, auth::require_role))
        .merge(orders)
        .layer(middleware::from_fn_with_state(
            metrics.clickhouse_errors.clone(),
            count_clickhouse_failures,
        ))
        .layer(middleware::from_fn_with_state(replicas, fail_over))
        .with_state(state);
    let doc = Arc::new(openapi::document(config.max_span_days));
    let public = page::routes().route(
        "/openapi.json",
        get(move || async move { Json(doc.as_ref().clone()) }),
    );
    // Compressed: the page's script and the CSV downloads shrink several
    // times; event streams and tiny bodies are left alone.
    tally_ops::http::edge(
        public
            .merge(api)
            .layer(middleware::from_fn(page::security_headers)),
        config.limits,
        &metrics.http,
    )
    .layer(tower_http::compression::CompressionLayer::new())
}

/// Middleware: a read that could not reach its replica is answered again
/// from the next one (once per other replica), so a replica's death costs
/// the requests in flight a retry, not an error. Reads have no body, so
/// the request is rebuilt from its head.
async fn fail_over(
    State(replicas): State<Arc<Replicas>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if replicas.len() < 2 || req.method() != axum::http::Method::GET {
        return next.run(req).await;
    }
    let (head, _) = req.into_parts();
    let mut res = Response::default();
    for _ in 0..replicas.len() {
        let pinned = replicas.current().index;
        res = next
            .clone()
            .run(axum::extract::Request::from_parts(
                head.clone(),
                axum::body::Body::empty(),
            ))
            .await;
        let unreachable = res
            .extensions()
            .get::<tally_ops::telemetry::ClickHouseFailure>()
            .is_some_and(|f| matches!(f.0, "network" | "timeout"));
        if !unreachable || !replicas.failed(pinned) {
            break;
        }
    }
    res
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    replicas: Arc<Replicas>,
    cache: Arc<PartSums>,
    watermark: Arc<consistency::WatermarkWatch>,
    config: DashboardsConfig,
}

impl Application {
    /// `ch` should be a read-only ClickHouse user; `pg` is used for API
    /// keys only.
    pub async fn build(
        config: &DashboardsConfig,
        ch: clickhouse::Client,
        pg: PgPool,
        metrics: &Metrics,
        registry: Arc<Registry>,
    ) -> std::io::Result<Self> {
        Self::build_on_replicas(config, Replicas::single(ch), pg, metrics, registry).await
    }

    /// [`Application::build`] reading one replica of `replicas` at a time
    /// and moving on when it cannot be reached.
    pub async fn build_on_replicas(
        config: &DashboardsConfig,
        replicas: Arc<Replicas>,
        pg: PgPool,
        metrics: &Metrics,
        registry: Arc<Registry>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let cache = Arc::new(PartSums::new(config.cache_rows, metrics.cache.clone()));
        let watermark = consistency::WatermarkWatch::new(replicas.clone());
        let router = router(
            config,
            replicas.clone(),
            pg.clone(),
            cache.clone(),
            watermark.clone(),
            metrics,
        )
        .merge(ops_routes(registry, readiness(replicas.clone(), pg)));
        Ok(Application {
            listener,
            router,
            replicas,
            cache,
            watermark,
            config: config.clone(),
        })
    }

    /// The cache of part sums, to fill it before serving (the benchmark
    /// does).
    pub fn cache(&self) -> Arc<PartSums> {
        self.cache.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves, and keeps the cache of part sums fresh, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> std::io::Result<()> {
        let stop = shutdown.child_token();
        let warm = (self.config.cache_rows > 0).then(|| {
            let (cache, ch, stop) = (self.cache.clone(), self.replicas.clone(), stop.clone());
            let (span, every) = (self.config.max_span_days, self.config.cache_refresh);
            tokio::spawn(async move { cache.keep_warm(ch, span, every, stop).await })
        });
        let observer = tokio::spawn(self.watermark.clone().run(stop.clone()));
        let served = serve(self.listener, self.router, shutdown).await;
        stop.cancel();
        if let Some(w) = warm {
            let _ = w.await;
        }
        let _ = observer.await;
        served
    }
}
