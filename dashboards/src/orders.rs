//! Order queries: one order by id, a merchant's orders, a customer's
//! history. Served from ClickHouse's fact tables only, never from the
//! write store: a read that must include a write just made passes its
//! consistency token (`consistency.rs`), as for every read.
//!
//! Each question reads the fact table sorted for it
//! (`tally_projection::FACT_TABLES`: by merchant, by customer, by id), so
//! it reads the granules of one key, not the table. Every answer is exact:
//! each order's newest version, once, even while its versions sit in
//! unmerged parts. One order is read with `FINAL` (its key finds one
//! granule). A list is not: ClickHouse 18.16 merges a `FINAL` read on one
//! thread across every part the key touches, a part per month, which made
//! a customer's history 34–54 ms where reading the same rows took 6–8
//! (100 000 orders). Instead the inner query takes the key's rows,
//! narrowed by what an order never changes (currency, days, the cursor's
//! position), and keeps the newest version of each order (`ORDER BY
//! order_id, version DESC LIMIT 1 BY order_id`); the outer one filters on
//! what does change (`status`), sorts newest first and cuts the page.
//! ClickHouse pushes no filter below a `LIMIT BY`, so the status filter
//! sees current statuses only — the integration tests hold both engines
//! to that with versions in separate parts.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_domain::money::format_minor;
use tally_domain::{CustomerId, MerchantId};
use tally_ops::problem::InvalidParam;
use tally_projection::FactRow;
use time::format_description::well_known::Rfc3339;

use crate::error::DashError;
use crate::order_query::{Cursor, OrderFilter, RawOrderQuery, order_id};
use crate::params::Format;
use crate::views::{Csv, Freshness};
use crate::{AppState, freshness_headers};

/// One order as the read side last projected it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order_id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub currency: String,
    pub status: String,
    pub placed_at: String,
    /// The reporting day the order counts on.
    pub placed_day: String,
    pub item_count: u64,
    pub total_minor: i64,
    pub total: String,
    pub captured_minor: i64,
    pub captured: String,
    pub refunded_minor: i64,
    pub refunded: String,
    pub updated_at: String,
    /// The order's version in the write model (one per command applied).
    pub version: u32,
}

impl OrderView {
    fn of(r: FactRow) -> Result<OrderView, DashError> {
        let c = crate::store::currency(r.currency).map_err(DashError::Data)?;
        let time = |t: time::OffsetDateTime| {
            t.format(&Rfc3339)
                .map_err(|e| DashError::Data(format!("time {t}: {e}")))
        };
        Ok(OrderView {
            order_id: r.order_id.hyphenated().to_string(),
            merchant_id: r.merchant_id,
            customer_id: r.customer_id,
            currency: c.code().to_owned(),
            status: r.status,
            placed_at: time(r.placed_at)?,
            placed_day: r.placed_day.to_string(),
            item_count: r.item_count,
            total_minor: r.total_minor,
            total: format_minor(r.total_minor, c),
            captured_minor: r.captured_minor,
            captured: format_minor(r.captured_minor, c),
            refunded_minor: r.refunded_minor,
            refunded: format_minor(r.refunded_minor, c),
            updated_at: time(r.updated_at)?,
            version: r.version,
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderResponse {
    pub freshness: Freshness,
    pub order: OrderView,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderPage {
    pub freshness: Freshness,
    pub orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl OrderPage {
    fn csv(&self) -> String {
        let mut c = Csv::default();
        c.row([
            "order_id",
            "merchant_id",
            "customer_id",
            "currency",
            "status",
            "placed_at",
            "placed_day",
            "item_count",
            "total_minor",
            "captured_minor",
            "refunded_minor",
            "total",
            "captured",
            "refunded",
            "updated_at",
            "version",
        ]);
        for o in &self.orders {
            c.row([
                o.order_id.clone(),
                o.merchant_id.clone(),
                o.customer_id.clone(),
                o.currency.clone(),
                o.status.clone(),
                o.placed_at.clone(),
                o.placed_day.clone(),
                o.item_count.to_string(),
                o.total_minor.to_string(),
                o.captured_minor.to_string(),
                o.refunded_minor.to_string(),
                o.total.clone(),
                o.captured.clone(),
                o.refunded.clone(),
                o.updated_at.clone(),
                o.version.to_string(),
            ]);
        }
        c.into_string()
    }
}

/// Which orders a list is of: the fact table sorted for the question and
/// the key it is sorted by.
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    Merchant(&'a MerchantId),
    Customer(&'a CustomerId),
}

impl Owner<'_> {
    fn table_and_key(self) -> (&'static str, &'static str, String) {
        match self {
            Owner::Merchant(m) => ("order_facts", "merchant_id", m.as_str().to_owned()),
            Owner::Customer(c) => (
                "order_facts_by_customer",
                "customer_id",
                c.as_str().to_owned(),
            ),
        }
    }
}

/// One order by id; the parameter is its hyphenated id.
pub const ONE_SQL: &str = "SELECT ?fields FROM order_facts_by_id FINAL WHERE order_id = toUUID(?)";

/// The order `id`'s latest projected row, if it is projected.
pub async fn one(
    ch: &clickhouse::Client,
    id: uuid::Uuid,
) -> Result<Option<FactRow>, clickhouse::error::Error> {
    ch.query(ONE_SQL)
        .bind(id.hyphenated().to_string())
        .fetch_optional()
        .await
}

/// `sql` with its parameters and the fact columns written in, by the
/// client's own escaping: what the benchmark hands to `clickhouse-client`.
pub fn inline(sql: &str, binds: &[String]) -> String {
    let columns = <FactRow as clickhouse::Row>::COLUMN_NAMES.join(", ");
    let sql = sql.replacen("?fields", &columns, 1);
    binds
        .iter()
        .fold(clickhouse::Client::default().query(&sql), |q, b| {
            q.bind(b.as_str())
        })
        .sql_display()
        .to_string()
}

/// The SQL of one page (with its parameters in order), newest first; one
/// row more than the page, to know whether another follows.
pub fn page_sql(owner: Owner<'_>, f: &OrderFilter) -> (String, Vec<String>) {
    let (table, key, value) = owner.table_and_key();
    // The inner query's columns are the row's, in its order; the outer
    // one passes them on.
    let mut sql = format!("SELECT * FROM (SELECT ?fields FROM {table} WHERE {key} = ?");
    let mut binds = vec![value];
    if let Some(c) = f.currency {
        sql.push_str(" AND currency = ?");
        binds.push(c.code().to_owned());
    }
    if let Some(d) = f.from {
        sql.push_str(" AND placed_day >= toDate(?)");
        binds.push(d.to_string());
    }
    if let Some(d) = f.to {
        sql.push_str(" AND placed_day <= toDate(?)");
        binds.push(d.to_string());
    }
    if let Some(c) = f.cursor {
        // Numbers and a hex UUID, parsed: safe to inline.
        sql.push_str(&format!(
            " AND placed_day <= toDate('{day}') AND (placed_at < toDateTime({at}) \
             OR (placed_at = toDateTime({at}) AND order_id < toUUID('{id}')))",
            day = c.placed_day,
            at = c.placed_at,
            id = c.order_id.hyphenated(),
        ));
    }
    sql.push_str(" ORDER BY order_id, version DESC LIMIT 1 BY order_id)");
    if let Some(s) = f.status {
        sql.push_str(" WHERE status = ?");
        binds.push(s.as_str().to_owned());
    }
    sql.push_str(&format!(
        " ORDER BY placed_at DESC, order_id DESC LIMIT {}",
        f.limit + 1
    ));
    (sql, binds)
}

/// One page of `owner`'s orders, and the cursor after it if more follow.
pub async fn page(
    ch: &clickhouse::Client,
    owner: Owner<'_>,
    f: &OrderFilter,
) -> Result<(Vec<FactRow>, Option<Cursor>), clickhouse::error::Error> {
    let (sql, binds) = page_sql(owner, f);
    let mut q = ch.query(&sql);
    for b in binds {
        q = q.bind(b);
    }
    let mut rows: Vec<FactRow> = q.fetch_all().await?;
    let more = rows.len() > f.limit as usize;
    rows.truncate(f.limit as usize);
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|r| Cursor::of(r.placed_at, r.placed_day, r.order_id));
    Ok((rows, next))
}

fn query(q: Result<Query<RawOrderQuery>, QueryRejection>) -> Result<OrderFilter, DashError> {
    let Query(raw) = q.map_err(|e| {
        DashError::Invalid(vec![InvalidParam {
            name: "query".into(),
            reason: e.body_text(),
        }])
    })?;
    OrderFilter::parse(&raw).map_err(DashError::Invalid)
}

fn path_segment(
    name: &str,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, DashError> {
    path.map(|Path(raw)| raw).map_err(|e| {
        DashError::Invalid(vec![InvalidParam {
            name: name.into(),
            reason: e.body_text(),
        }])
    })
}

fn path_id<T>(
    name: &str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, tally_domain::ParseError>,
) -> Result<T, DashError> {
    parse(raw).map_err(|e| {
        DashError::Invalid(vec![InvalidParam {
            name: name.into(),
            reason: format!("`{raw}`: {}", e.message()),
        }])
    })
}

/// `GET /v1/orders/{order_id}`.
pub(crate) async fn get_order(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, DashError> {
    let s = s.pinned();
    let raw = path_segment("order_id", path)?;
    let id = order_id(&raw).map_err(DashError::Invalid)?;
    let fresh = s.freshness().await?;
    let row = one(&s.ch, id).await?;
    let Some(row) = row else {
        return Err(DashError::OrderNotFound {
            id: id.hyphenated().to_string(),
            complete_up_to: fresh.complete_up_to,
        });
    };
    let body = OrderResponse {
        order: OrderView::of(row)?,
        freshness: fresh,
    };
    Ok((freshness_headers(&body.freshness), Json(body)).into_response())
}

/// `GET /v1/merchants/{merchant_id}/orders`.
pub(crate) async fn merchant_orders(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<RawOrderQuery>, QueryRejection>,
) -> Result<Response, DashError> {
    let raw = path_segment("merchant_id", path)?;
    let merchant = path_id("merchant_id", &raw, MerchantId::parse);
    let (merchant, f) = both(merchant, query(q))?;
    list(
        &s,
        Owner::Merchant(&merchant),
        &f,
        "merchant",
        merchant.as_str(),
    )
    .await
}

/// `GET /v1/customers/{customer_id}/orders`.
pub(crate) async fn customer_orders(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<RawOrderQuery>, QueryRejection>,
) -> Result<Response, DashError> {
    let raw = path_segment("customer_id", path)?;
    let customer = path_id("customer_id", &raw, CustomerId::parse);
    let (customer, f) = both(customer, query(q))?;
    list(
        &s,
        Owner::Customer(&customer),
        &f,
        "customer",
        customer.as_str(),
    )
    .await
}

/// Both results, or every invalid parameter of both.
fn both<A, B>(a: Result<A, DashError>, b: Result<B, DashError>) -> Result<(A, B), DashError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(DashError::Invalid(mut x)), Err(DashError::Invalid(y))) => {
            x.extend(y);
            Err(DashError::Invalid(x))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

async fn list(
    s: &AppState,
    owner: Owner<'_>,
    f: &OrderFilter,
    kind: &str,
    id: &str,
) -> Result<Response, DashError> {
    let s = &s.clone().pinned();
    let fresh = s.freshness().await?;
    let (rows, next) = page(&s.ch, owner, f).await?;
    let body = OrderPage {
        orders: rows
            .into_iter()
            .map(OrderView::of)
            .collect::<Result<_, _>>()?,
        next_cursor: next.map(|c| c.encode()),
        freshness: fresh,
    };
    let mut headers = freshness_headers(&body.freshness);
    if let Some(v) = body
        .next_cursor
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert("tally-next-cursor", v);
    }
    Ok(match f.format {
        Format::Json => (headers, Json(body)).into_response(),
        Format::Csv => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            // Ids are slugs (letters, digits, `_.-`): safe in the name.
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"orders-{kind}-{id}.csv\""))
            {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
            (headers, body.csv()).into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order_query::RawOrderQuery;

    #[test]
    fn a_page_binds_every_value_and_inlines_only_parsed_ones() {
        let m = MerchantId::parse("m-1").unwrap();
        let raw = RawOrderQuery {
            status: Some("paid".into()),
            currency: Some("EUR".into()),
            from: Some("2026-01-01".into()),
            to: Some("2026-01-31".into()),
            cursor: Some(
                Cursor {
                    placed_at: 1_767_225_600,
                    placed_day: time::macros::date!(2026 - 01 - 01),
                    order_id: uuid::Uuid::nil(),
                }
                .encode(),
            ),
            ..RawOrderQuery::default()
        };
        let f = OrderFilter::parse(&raw).unwrap();
        let (sql, binds) = page_sql(Owner::Merchant(&m), &f);
        assert_eq!(binds, ["m-1", "EUR", "2026-01-01", "2026-01-31", "paid"]);
        assert_eq!(
            sql.matches('?').count(),
            binds.len() + 1,
            "?fields too: {sql}"
        );
        assert!(
            sql.starts_with("SELECT * FROM (SELECT ?fields FROM order_facts WHERE merchant_id = ?")
        );
        assert!(
            sql.contains("LIMIT 1 BY order_id) WHERE status = ?"),
            "the status is tested after the newest version is chosen: {sql}"
        );
        assert!(sql.contains("toDateTime(1767225600)"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY placed_at DESC, order_id DESC LIMIT 51"),
            "{sql}"
        );
        let c = CustomerId::parse("c-9").unwrap();
        let (sql, binds) = page_sql(
            Owner::Customer(&c),
            &OrderFilter::parse(&RawOrderQuery::default()).unwrap(),
        );
        assert_eq!(binds, ["c-9"]);
        assert!(sql.contains("FROM order_facts_by_customer WHERE customer_id = ?"));
    }
}
