//! The finance read side: a JSON API and a web page over the ClickHouse
//! aggregates.
//!
//! It only reads, only from ClickHouse, and only the aggregate tables (plus
//! the watermark); it should connect as a read-only ClickHouse user. Every
//! response says how fresh the data is. Amounts are exact minor units per
//! currency, with a decimal string beside them; currencies are never summed
//! together.

mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clickhouse::Row;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tally_domain::money::format_minor;
use tally_domain::{Currency, MerchantId};
use tally_ops::http::{ReadinessCheck, ops_routes, serve};
use tally_ops::problem::InvalidParam;
use tally_ops::{Problem, Shutdown};
use time::{Date, OffsetDateTime};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

#[derive(Clone, Debug)]
pub struct DashboardsConfig {
    pub listen: SocketAddr,
    /// Longest date range one request may ask for.
    pub max_span_days: i64,
}

impl Default for DashboardsConfig {
    fn default() -> Self {
        DashboardsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_span_days: 366,
        }
    }
}

#[derive(Clone)]
struct AppState {
    ch: clickhouse::Client,
    max_span_days: i64,
}

#[derive(Debug, thiserror::Error)]
enum DashError {
    #[error("invalid query")]
    Invalid(Vec<InvalidParam>),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        match self {
            DashError::Invalid(params) => {
                Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid query")
                    .detail(
                        params
                            .iter()
                            .map(|p| format!("{}: {}", p.name, p.reason))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                    .invalid_params(params)
                    .into_response()
            }
            DashError::ClickHouse(e) => {
                tracing::error!(error = %e, "ClickHouse query failed");
                Problem::unavailable("the analytics database").into_response()
            }
        }
    }
}

/// `GET /v1/revenue/daily` query string.
#[derive(Deserialize)]
pub struct DailyQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub currency: Option<String>,
    pub merchant_id: Option<String>,
}

#[derive(Row, Deserialize)]
struct DailyAgg {
    #[serde(with = "clickhouse::serde::time::date")]
    day: Date,
    currency: [u8; 3],
    orders_placed: i64,
    gross_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    orders_cancelled: i64,
    items_sold: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DailyRevenue {
    pub day: String,
    pub currency: String,
    pub orders_placed: i64,
    pub gross_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub net_minor: i64,
    pub orders_cancelled: i64,
    pub items_sold: i64,
    pub gross: String,
    pub captured: String,
    pub refunded: String,
    pub net: String,
}

/// How complete the read side is.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Freshness {
    /// Every event written before this instant is counted (RFC 3339), or
    /// `null` if the ingest has never reported.
    pub complete_up_to: Option<String>,
    pub lag_seconds: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DailyResponse {
    pub from: String,
    pub to: String,
    pub freshness: Freshness,
    pub rows: Vec<DailyRevenue>,
}

fn parse_date(name: &str, v: &str, errs: &mut Vec<InvalidParam>) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(v, fmt)
        .map_err(|_| {
            errs.push(InvalidParam {
                name: name.into(),
                reason: format!("`{v}` is not a date of the form YYYY-MM-DD"),
            })
        })
        .ok()
}

async fn freshness(ch: &clickhouse::Client) -> Result<Freshness, clickhouse::error::Error> {
    let us: i64 = ch
        .query("SELECT max(watermark_us) FROM ingest_watermark")
        .fetch_one()
        .await?;
    if us <= 0 {
        return Ok(Freshness {
            complete_up_to: None,
            lag_seconds: None,
        });
    }
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok();
    Ok(Freshness {
        complete_up_to: at.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        lag_seconds: at.map(|t| (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)),
    })
}

async fn daily_revenue(
    State(s): State<AppState>,
    Query(q): Query<DailyQuery>,
) -> Result<axum::Json<DailyResponse>, DashError> {
    let mut errs = Vec::new();
    let today = OffsetDateTime::now_utc().date();
    let to =
        q.to.as_deref()
            .map_or(Some(today), |v| parse_date("to", v, &mut errs));
    let from = match (&q.from, to) {
        (Some(v), _) => parse_date("from", v, &mut errs),
        (None, Some(to)) => to.checked_sub(time::Duration::days(29)),
        (None, None) => None,
    };
    let currency = q.currency.as_deref().and_then(|c| {
        Currency::parse(c)
            .map_err(|e| {
                errs.push(InvalidParam {
                    name: "currency".into(),
                    reason: e.message().into(),
                })
            })
            .ok()
    });
    let merchant = q.merchant_id.as_deref().and_then(|m| {
        MerchantId::parse(m)
            .map_err(|e| {
                errs.push(InvalidParam {
                    name: "merchant_id".into(),
                    reason: e.message().into(),
                })
            })
            .ok()
    });
    if let (Some(from), Some(to)) = (from, to) {
        let span = (to - from).whole_days() + 1;
        if span < 1 {
            errs.push(InvalidParam {
                name: "from".into(),
                reason: "must not be after `to`".into(),
            });
        } else if span > s.max_span_days {
            errs.push(InvalidParam {
                name: "to".into(),
                reason: format!(
                    "the range spans {span} days; at most {} are allowed",
                    s.max_span_days
                ),
            });
        }
    }
    let (Some(from), Some(to), true) = (from, to, errs.is_empty()) else {
        return Err(DashError::Invalid(errs));
    };

    // Every user value is bound (client-side escaped); the SQL text is fixed.
    let mut sql = String::from(
        "SELECT day, currency, sum(orders_placed), sum(gross_minor), sum(captured_minor),
                sum(refunded_minor), sum(orders_cancelled), sum(items_sold)
         FROM daily_revenue FINAL
         WHERE day >= toDate(?) AND day <= toDate(?)",
    );
    if currency.is_some() {
        sql.push_str(" AND currency = ?");
    }
    if merchant.is_some() {
        sql.push_str(" AND merchant_id = ?");
    }
    sql.push_str(" GROUP BY day, currency ORDER BY day, currency");
    let mut query = s.ch.query(&sql).bind(from.to_string()).bind(to.to_string());
    if let Some(c) = currency {
        query = query.bind(c.code());
    }
    if let Some(m) = &merchant {
        query = query.bind(m.as_str());
    }
    let rows: Vec<DailyAgg> = query.fetch_all().await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let code = String::from_utf8_lossy(&r.currency).into_owned();
            let cur = Currency::parse(&code).ok();
            let fmt =
                |minor: i64| cur.map_or_else(|| minor.to_string(), |c| format_minor(minor, c));
            let net = r.captured_minor - r.refunded_minor;
            DailyRevenue {
                day: r.day.to_string(),
                currency: code.clone(),
                orders_placed: r.orders_placed,
                gross_minor: r.gross_minor,
                captured_minor: r.captured_minor,
                refunded_minor: r.refunded_minor,
                net_minor: net,
                orders_cancelled: r.orders_cancelled,
                items_sold: r.items_sold,
                gross: fmt(r.gross_minor),
                captured: fmt(r.captured_minor),
                refunded: fmt(r.refunded_minor),
                net: fmt(net),
            }
        })
        .collect();
    Ok(axum::Json(DailyResponse {
        from: from.to_string(),
        to: to.to_string(),
        freshness: freshness(&s.ch).await?,
        rows,
    }))
}

/// Ready when ClickHouse answers and has our tables.
pub fn readiness(ch: clickhouse::Client) -> ReadinessCheck {
    Arc::new(move || {
        let ch = ch.clone();
        Box::pin(async move {
            ch.query("SELECT count() FROM daily_revenue WHERE 0")
                .fetch_one::<u64>()
                .await
                .map(|_| ())
                .map_err(|e| format!("ClickHouse: {e}"))
        })
    })
}

pub fn router(config: &DashboardsConfig, ch: clickhouse::Client) -> Router {
    let state = AppState {
        ch,
        max_span_days: config.max_span_days,
    };
    Router::new()
        .route("/", get(|| async { Html(page::INDEX) }))
        .route("/v1/revenue/daily", get(daily_revenue))
        .with_state(state)
        .layer(TraceLayer::new_for_http())
}

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(
        config: &DashboardsConfig,
        ch: clickhouse::Client,
        registry: Arc<Registry>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let router = router(config, ch.clone()).merge(ops_routes(registry, readiness(ch)));
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
