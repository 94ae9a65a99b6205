//! The finance read API over a real ClickHouse: exact figures from known
//! aggregate cells (including a superseded version of a cell, which must not
//! count), CSV exports equal to the JSON, the `finance:read` role, the
//! read-only ClickHouse user, and every kind of bad input as a 400.

use serde_json::Value;
use tally_dashboards::views::{DailyResponse, SummaryResponse, TopResponse};
use tally_ops::auth::{Role, create_key};
use tally_projection::DailyRow;
use tally_tests::{Ingest, TestApp, spawn_app};
use time::macros::date;

fn cell(day: time::Date, merchant: &str, currency: &str, v: [i64; 6], version: u64) -> DailyRow {
    DailyRow::new(
        day,
        merchant.into(),
        currency.as_bytes().try_into().unwrap(),
        &tally_domain::DailyMeasures::from_values(v),
        version,
    )
}

/// June 2025 (30 days) is the period asked for; May 2–31 is the period
/// before it.
fn jun1() -> time::Date {
    date!(2025 - 06 - 01)
}

async fn seed(app: &TestApp) {
    let ch = app.db.ch.client();
    let jun1 = jun1();
    let jun2 = date!(2025 - 06 - 02);
    let may10 = date!(2025 - 05 - 10);
    let rows = [
        // orders, gross, captured, refunded, cancelled, items
        cell(jun1, "m-a", "EUR", [3, 9_000, 7_000, 1_000, 0, 5], 2),
        cell(jun1, "m-a", "EUR", [1, 1, 1, 1, 1, 1], 1), // superseded: must not count
        cell(jun2, "m-a", "EUR", [1, 500, 0, 0, 1, 1], 1),
        cell(jun1, "m-b", "EUR", [2, 3_000, 3_000, 0, 0, 2], 4),
        cell(jun2, "m-c", "EUR", [1, 1_000, 1_000, 0, 0, 1], 1),
        cell(jun1, "m-a", "USD", [1, 250, 250, 0, 0, 1], 1),
        cell(jun2, "m-b", "JPY", [1, 1_500, 1_500, 0, 0, 3], 1),
        cell(may10, "m-a", "EUR", [2, 4_000, 4_000, 0, 0, 2], 1),
        cell(may10, "m-b", "EUR", [1, 2_000, 2_000, 0, 0, 1], 1),
        // Outside both periods.
        cell(date!(2025 - 07 - 01), "m-a", "EUR", [9, 9, 9, 0, 0, 9], 1),
        cell(date!(2025 - 05 - 01), "m-a", "EUR", [9, 9, 9, 0, 0, 9], 1),
    ];
    // One insert per row, merges stopped: separate parts, so the superseded
    // version stays there and only a deduplicating read hides it.
    ch.query("SYSTEM STOP MERGES daily_revenue")
        .execute()
        .await
        .unwrap();
    for r in rows {
        tally_projection::insert_rows(&ch, "daily_revenue", &[r])
            .await
            .unwrap();
    }
    let parts: u64 = ch
        .query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'daily_revenue' AND active")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        parts > 1,
        "the superseded cell must sit in a part of its own"
    );
    ch.query("INSERT INTO ingest_watermark VALUES ('test', 1750000000000000, now())")
        .execute()
        .await
        .unwrap();
}

const JUNE: &str = "from=2025-06-01&to=2025-06-30";

/// The second line (first data row) of a CSV download.
async fn csv_row(app: &TestApp, path: &str) -> String {
    let csv = app.dash(path).await.text().await.unwrap();
    csv.lines().nth(1).unwrap_or_default().to_owned()
}

async fn json<T: serde::de::DeserializeOwned>(app: &TestApp, path: &str) -> T {
    let r = app.dash(path).await;
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(
        r.headers()["tally-data-complete-up-to"],
        "2025-06-15T15:06:40Z"
    );
    assert!(r.headers().contains_key("tally-data-lag-seconds"));
    r.json().await.unwrap()
}

#[tokio::test]
async fn daily_revenue_is_exact_per_day_and_currency_and_filters_by_merchant() {
    let app = spawn_app(Ingest::Manual).await;
    seed(&app).await;
    let d: DailyResponse = json(&app, &format!("/v1/revenue/daily?{JUNE}")).await;
    let got: Vec<(&str, &str, i128, i128, i128, &str)> = d
        .rows
        .iter()
        .map(|r| {
            (
                r.day.as_str(),
                r.currency.as_str(),
                r.orders_placed,
                r.gross_minor,
                r.net_minor,
                r.net.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2025-06-01", "EUR", 5, 12_000, 9_000, "90.00"),
            ("2025-06-01", "USD", 1, 250, 250, "2.50"),
            ("2025-06-02", "EUR", 2, 1_500, 1_000, "10.00"),
            ("2025-06-02", "JPY", 1, 1_500, 1_500, "1500"),
        ]
    );
    let first = &d.rows[0];
    assert_eq!(
        (
            first.captured_minor,
            first.refunded_minor,
            first.items_sold,
            first.orders_cancelled
        ),
        (10_000, 1_000, 7, 0)
    );
    assert_eq!(
        (first.average_order_minor, first.average_order.as_deref()),
        (Some(2_400), Some("24.00"))
    );
    assert_eq!(
        d.freshness.complete_up_to.as_deref(),
        Some("2025-06-15T15:06:40Z")
    );

    // Merged into one part per month, the same answer, now read without
    // FINAL; a newer version of one cell then lands in a part of its own and
    // replaces the merged row instead of adding to it.
    let ch = app.db.ch.client();
    for sql in [
        "SYSTEM START MERGES daily_revenue",
        "OPTIMIZE TABLE daily_revenue FINAL",
        "SYSTEM STOP MERGES daily_revenue",
    ] {
        ch.query(sql).execute().await.unwrap();
    }
    let again: DailyResponse = json(&app, &format!("/v1/revenue/daily?{JUNE}")).await;
    assert_eq!(again.rows, d.rows);
    tally_projection::insert_rows(
        &ch,
        "daily_revenue",
        &[cell(jun1(), "m-b", "EUR", [2, 3_000, 5_000, 0, 0, 2], 5)],
    )
    .await
    .unwrap();
    let newer: DailyResponse = json(&app, &format!("/v1/revenue/daily?{JUNE}")).await;
    assert_eq!(
        (newer.rows[0].captured_minor, newer.rows[0].net_minor),
        (12_000, 11_000)
    );
    assert_eq!(newer.rows[1..], d.rows[1..]);
    ch.query("INSERT INTO daily_revenue SELECT * FROM daily_revenue WHERE currency = 'USD'")
        .execute()
        .await
        .unwrap(); // a whole copy of a day's rows: no double count either
    let copied: DailyResponse = json(&app, &format!("/v1/revenue/daily?{JUNE}")).await;
    assert_eq!(copied.rows, newer.rows);

    let d: DailyResponse = json(
        &app,
        &format!("/v1/revenue/daily?{JUNE}&currency=eur&merchant_id=m-b,m-c"),
    )
    .await;
    let got: Vec<(&str, i128)> = d
        .rows
        .iter()
        .map(|r| (r.day.as_str(), r.net_minor))
        .collect();
    assert_eq!(got, [("2025-06-01", 5_000), ("2025-06-02", 1_000)]);

    // The CSV is the same table.
    let r = app
        .dash(&format!("/v1/revenue/daily?{JUNE}&currency=EUR&format=csv"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"daily-revenue_EUR_2025-06-01_2025-06-30.csv\""
    );
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("day,currency,orders_placed,"));
    assert_eq!(
        lines[1],
        "2025-06-01,EUR,5,0,7,12000,12000,1000,11000,2400,120.00,120.00,10.00,110.00,24.00"
    );
    app.stop().await;
}

#[tokio::test]
async fn top_merchants_rank_by_net_with_shares_of_the_whole_currency() {
    let app = spawn_app(Ingest::Manual).await;
    seed(&app).await;
    let t: TopResponse = json(&app, &format!("/v1/merchants/top?{JUNE}&currency=EUR")).await;
    // m-a: 6 000 + 0, m-b: 3 000, m-c: 1 000 → 10 000 in all.
    assert_eq!(
        (t.total_net_minor, t.total_net.as_str(), t.merchants),
        (10_000, "100.00", 3)
    );
    let got: Vec<(u32, &str, i128, Option<&str>)> = t
        .rows
        .iter()
        .map(|r| {
            (
                r.rank,
                r.merchant_id.as_str(),
                r.net_minor,
                r.share_percent.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "m-a", 6_000, Some("60.00")),
            (2, "m-b", 3_000, Some("30.00")),
            (3, "m-c", 1_000, Some("10.00")),
        ]
    );
    assert_eq!((t.rows[0].gross_minor, t.rows[0].orders_placed), (9_500, 4));

    // A limit cuts the list, not the base of the shares.
    let t: TopResponse = json(
        &app,
        &format!("/v1/merchants/top?{JUNE}&currency=EUR&limit=1"),
    )
    .await;
    assert_eq!(
        (t.rows.len(), t.total_net_minor, t.merchants),
        (1, 10_000, 3)
    );

    assert_eq!(
        csv_row(
            &app,
            &format!("/v1/merchants/top?{JUNE}&currency=EUR&format=csv")
        )
        .await,
        "1,m-a,EUR,6000,60.00,9500,95.00,4,60.00"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_summary_compares_with_the_previous_period_of_equal_length() {
    let app = spawn_app(Ingest::Manual).await;
    seed(&app).await;
    let s: SummaryResponse = json(&app, &format!("/v1/revenue/summary?{JUNE}")).await;
    assert_eq!(
        (s.previous_from.as_str(), s.previous_to.as_str()),
        ("2025-05-02", "2025-05-31")
    );
    let codes: Vec<&str> = s.currencies.iter().map(|c| c.currency.as_str()).collect();
    assert_eq!(
        codes,
        ["EUR", "JPY", "USD"],
        "one entry per currency, never summed"
    );
    let eur = &s.currencies[0];
    let m = |name: &str| eur.measures.iter().find(|m| m.measure == name).unwrap();
    let net = m("net");
    assert_eq!(
        (net.current, net.previous, net.change),
        (10_000, 6_000, 4_000)
    );
    assert_eq!(
        (
            net.current_formatted.as_str(),
            net.change_formatted.as_str(),
            net.change_percent.as_deref()
        ),
        ("100.00", "40.00", Some("66.7"))
    );
    let refunded = m("refunded");
    assert_eq!(
        (refunded.current, refunded.change_percent.as_deref()),
        (1_000, None)
    );
    let orders = m("orders_placed");
    assert_eq!(
        (orders.unit.as_str(), orders.current, orders.previous),
        ("count", 7, 3)
    );
    let usd = &s.currencies[2];
    assert_eq!(usd.measures[0].previous, 0);
    assert_eq!(usd.measures[0].change_percent, None);

    // Filters apply to both periods.
    let s: SummaryResponse = json(
        &app,
        &format!("/v1/revenue/summary?{JUNE}&currency=EUR&merchant_id=m-b"),
    )
    .await;
    assert_eq!(s.currencies.len(), 1);
    let net = &s.currencies[0].measures[0];
    assert_eq!((net.current, net.previous), (3_000, 2_000));

    assert_eq!(
        csv_row(
            &app,
            &format!("/v1/revenue/summary?{JUNE}&currency=EUR&format=csv")
        )
        .await,
        "EUR,net,minor,10000,6000,4000,100.00,60.00,40.00,66.7"
    );
    app.stop().await;
}

#[tokio::test]
async fn reading_needs_the_finance_read_role_but_the_page_does_not() {
    let app = spawn_app(Ingest::Manual).await;
    let url = format!("{}/v1/revenue/daily", app.dashboards_url);
    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (_, writer) = create_key(&app.db.pg, "writer", &[Role::OrdersWrite])
        .await
        .unwrap();
    let r = app
        .http
        .get(&url)
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("finance:read"),
        "{p}"
    );
    let (_, reader) = create_key(&app.db.pg, "analyst", &[Role::FinanceRead])
        .await
        .unwrap();
    for path in [
        "/v1/revenue/daily",
        "/v1/revenue/summary",
        "/v1/merchants/top?currency=EUR",
        "/v1/freshness",
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.dashboards_url))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // No data before the first batch: the freshness says so.
    let f: Value = app.dash("/v1/freshness").await.json().await.unwrap();
    assert_eq!(f["complete_up_to"], Value::Null);

    // The page and its assets hold no data and load without a key, from
    // the binary itself.
    for (path, needle) in [
        ("/", "/assets/chart.umd.min.js"),
        ("/assets/app.js", "/v1/merchants/top"),
        ("/assets/app.css", ".tiles"),
        ("/assets/chart.umd.min.js", "Chart.js v4.6.1"),
    ] {
        let r = app
            .http
            .get(format!("{}{path}", app.dashboards_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    let metrics = app
        .get_text(&format!("{}/metrics", app.dashboards_url))
        .await;
    assert!(
        metrics.contains("tally_dashboards_request_duration_seconds_count{method=\"GET\",route=\"/v1/revenue/daily\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_400_problem_naming_each_field() {
    let app = spawn_app(Ingest::Manual).await;
    let cases: [(&str, &[&str]); 8] = [
        ("/v1/revenue/daily?from=2025-01-01&to=2026-01-03", &["to"]),
        ("/v1/revenue/daily?from=2026-02-01&to=2026-01-01", &["from"]),
        ("/v1/revenue/daily?currency=XYZ", &["currency"]),
        (
            "/v1/revenue/summary?merchant_id=ok,not%20ok",
            &["merchant_id"],
        ),
        ("/v1/merchants/top", &["currency"]),
        ("/v1/merchants/top?currency=EUR&limit=1000", &["limit"]),
        (
            "/v1/revenue/daily?format=xml&from=1.2.2026",
            &["from", "format"],
        ),
        ("/v1/revenue/daily?currency=EUR&currency=USD", &["query"]),
    ];
    for (path, names) in cases {
        let r = app.dash(path).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        let got: Vec<&str> = p["invalid_params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, names, "{path}: {p}");
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }
    // An injection attempt is refused before any SQL exists.
    let r = app
        .dash("/v1/revenue/daily?merchant_id=x'%20OR%20'1'='1")
        .await;
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_dashboards_clickhouse_user_cannot_write() {
    let app = spawn_app(Ingest::Manual).await;
    let reader = app.db.ch_reader.client();
    let n: u64 = reader
        .query("SELECT count() FROM daily_revenue")
        .fetch_one()
        .await
        .expect("the reader reads");
    assert_eq!(n, 0);
    let err = reader
        .query("INSERT INTO ingest_watermark VALUES ('x', 1, now())")
        .execute()
        .await
        .expect_err("the reader must not write");
    assert!(err.to_string().to_lowercase().contains("readonly"), "{err}");
    let err = reader
        .query("DROP TABLE daily_revenue")
        .execute()
        .await
        .expect_err("the reader must not drop");
    assert!(err.to_string().to_lowercase().contains("readonly"), "{err}");
    app.stop().await;
}

/// While the real ingest rewrites today's cell batch after batch (new parts,
/// merges underneath), every read is exact for some instant: never more
/// orders than were sent, never fewer than a read before, and gross always
/// the sum of those orders. A cell counted twice would show as twice the
/// orders.
#[tokio::test]
async fn reads_stay_exact_while_the_ingest_writes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    let app = spawn_app(Ingest::Running).await;
    let sent = Arc::new(AtomicI64::new(0));
    // Writes go on until enough reads overlapped them, however fast each
    // side is on this engine (at least 120 orders each, at most 3 000).
    let enough = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let placers: Vec<_> = (0..2)
        .map(|_| {
            let (app, sent, enough) = (app.handle(), sent.clone(), enough.clone());
            tokio::spawn(async move {
                for i in 0..3_000 {
                    if i >= 120 && enough.load(Ordering::SeqCst) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    app.place(&tally_tests::order_body(
                        "m-busy",
                        "EUR",
                        &[("sku", 1, 1_000)],
                    ))
                    .await;
                }
            })
        })
        .collect();
    let mut reads = 0;
    let mut last = 0;
    while placers.iter().any(|p| !p.is_finished()) {
        let s: SummaryResponse = json_unchecked(&app, "/v1/revenue/summary?currency=EUR").await;
        let upper = sent.load(Ordering::SeqCst);
        let orders = s.currencies.first().map_or(0, |c| c.measures[4].current);
        let gross = s.currencies.first().map_or(0, |c| c.measures[3].current);
        assert!(
            orders <= i128::from(upper),
            "read {orders} orders with only {upper} sent"
        );
        assert!(orders >= last, "went back from {last} to {orders}");
        assert_eq!(gross, orders * 1_000, "gross is not the sum of the orders");
        last = orders;
        reads += 1;
        if reads >= 10 {
            enough.store(true, Ordering::SeqCst);
        }
    }
    for p in placers {
        p.await.unwrap();
    }
    assert!(reads >= 10, "only {reads} reads overlapped the writes");
    let metrics = app
        .get_text(&format!("{}/metrics", app.dashboards_url))
        .await;
    assert!(
        metrics.contains("tally_dashboards_read_retries_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_dashboards_read_fallbacks_total"),
        "{metrics}"
    );
    let retries = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_dashboards_read_retries_total "))
        .unwrap_or("?");
    eprintln!("{reads} reads during the writes, {retries} retried");
    assert!(
        tally_tests::ingest_drained(&app.db.pg, std::time::Duration::from_secs(20)).await,
        "ingest drained"
    );
    let s: SummaryResponse = json_unchecked(&app, "/v1/revenue/summary?currency=EUR").await;
    assert_eq!(
        s.currencies[0].measures[4].current,
        i128::from(sent.load(Ordering::SeqCst))
    );
    app.stop().await;
}

async fn json_unchecked<T: serde::de::DeserializeOwned>(app: &TestApp, path: &str) -> T {
    let r = app.dash(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// The ranking out of `daily_revenue FINAL` with plain SQL and a sort in
/// Rust: the oracle for the cached one.
async fn ranking_oracle(
    ch: &clickhouse::Client,
    f: &tally_dashboards::params::Filter,
) -> tally_dashboards::store::TopRow {
    let only: Vec<&str> = f
        .merchants
        .iter()
        .map(tally_domain::MerchantId::as_str)
        .collect();
    // Plain 64-bit sums, read as the test's own rows: independent of the
    // halves the service reads (test figures are far from 64 bits).
    let rows: Vec<(String, i64, i64, i64)> = ch
        .query(
            "SELECT merchant_id, sum(captured_minor) - sum(refunded_minor), sum(orders_placed), sum(gross_minor) \
             FROM daily_revenue FINAL WHERE currency = ? AND day >= toDate(?) AND day <= toDate(?) \
               AND (? = '' OR has(splitByChar(',', ?), merchant_id)) \
             GROUP BY merchant_id",
        )
        .bind(f.currency.unwrap().code())
        .bind(f.range.from.to_string())
        .bind(f.range.to.to_string())
        .bind(only.join(","))
        .bind(only.join(","))
        .fetch_all()
        .await
        .unwrap();
    let mut rows: Vec<tally_dashboards::store::MerchantRow> = rows
        .into_iter()
        .map(
            |(merchant_id, net, orders, gross)| tally_dashboards::store::MerchantRow {
                merchant_id,
                net: net.into(),
                orders: orders.into(),
                gross: gross.into(),
            },
        )
        .collect();
    let total_net_minor = rows.iter().map(|r| r.net).sum();
    let merchants = rows.len() as u64;
    rows.sort_by(|a, b| b.net.cmp(&a.net).then(a.merchant_id.cmp(&b.merchant_id)));
    rows.truncate(f.limit as usize);
    tally_dashboards::store::TopRow {
        total_net_minor,
        merchants,
        top: rows
            .into_iter()
            .map(|r| (r.merchant_id, r.net, r.orders, r.gross))
            .collect(),
    }
}

/// Per day and currency out of `daily_revenue FINAL`: the oracle for the
/// daily view, and (summed in Rust) for the summary.
async fn daily_oracle(
    ch: &clickhouse::Client,
    f: &tally_dashboards::params::Filter,
    range: tally_dashboards::params::DayRange,
) -> Vec<tally_dashboards::store::DailyRow> {
    let only: Vec<&str> = f
        .merchants
        .iter()
        .map(tally_domain::MerchantId::as_str)
        .collect();
    let currency = f.currency.as_ref().map_or("", |c| c.code());
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Plain {
        day: u16,
        currency: [u8; 3],
        m: [i64; 6],
    }
    let rows: Vec<Plain> = ch.query(
        "SELECT toUInt16(day), currency, sum(orders_placed), sum(orders_cancelled), sum(items_sold), \
                sum(gross_minor), sum(captured_minor), sum(refunded_minor) \
         FROM daily_revenue FINAL WHERE day >= toDate(?) AND day <= toDate(?) \
           AND (? = '' OR currency = ?) AND (? = '' OR has(splitByChar(',', ?), merchant_id)) \
         GROUP BY day, currency ORDER BY day, currency",
    )
    .bind(range.from.to_string())
    .bind(range.to.to_string())
    .bind(currency)
    .bind(currency)
    .bind(only.join(","))
    .bind(only.join(","))
    .fetch_all()
    .await
    .unwrap();
    let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1).unwrap();
    rows.into_iter()
        .map(
            |Plain {
                 day,
                 currency,
                 m: [o, c, i, g, cap, r],
             }| tally_dashboards::store::DailyRow {
                day: epoch + time::Duration::days(day.into()),
                currency,
                sums: tally_dashboards::store::Sums {
                    orders_placed: o.into(),
                    orders_cancelled: c.into(),
                    items_sold: i.into(),
                    gross_minor: g.into(),
                    captured_minor: cap.into(),
                    refunded_minor: r.into(),
                },
            },
        )
        .collect()
}

async fn periods_oracle(
    ch: &clickhouse::Client,
    f: &tally_dashboards::params::Filter,
) -> Vec<tally_dashboards::store::PeriodRow> {
    let mut by = std::collections::BTreeMap::new();
    for r in daily_oracle(ch, f, f.range.with_previous()).await {
        let p = by
            .entry(r.currency)
            .or_insert_with(|| tally_dashboards::store::PeriodRow {
                currency: r.currency,
                current: Default::default(),
                previous: Default::default(),
            });
        if r.day >= f.range.from {
            p.current += r.sums;
        } else {
            p.previous += r.sums;
        }
    }
    by.into_values().collect()
}

/// Reads answered partly from the cached sums of merged parts (rankings,
/// daily rows, summaries) equal the oracle's: with the range cut mid-week,
/// with and without a currency, with a merchant filter, after a late write
/// lands beside a cached part, and after a merge replaces the cached parts
/// with new ones.
#[tokio::test]
async fn reads_from_cached_part_sums_equal_a_full_final_read() {
    use tally_dashboards::params::{Filter, Needs, RawQuery};
    use tally_dashboards::part_sums::{CacheMetrics, PartSums};
    use tally_dashboards::store;

    let db = tally_tests::TestDb::new().await;
    let (ch, reader) = (db.ch.client(), db.ch_reader.client());
    // 40 merchants × 3 currencies × Aug-Oct 2026; merchants come in pairs
    // with equal figures, so ties are broken by id; a third of the nets are
    // negative (refunds above captures).
    ch.query(
        "INSERT INTO daily_revenue
         SELECT toDate('2026-08-01') + intDiv(number, 120) AS day,
                concat('m-', toString(intDiv(number % 120, 3))) AS merchant_id,
                toFixedString(arrayElement(['EUR', 'USD', 'GBP'], (number % 3) + 1), 3) AS currency,
                toInt64(1 + cityHash64(day, intDiv(number % 120, 6), currency) % 9) AS orders_placed,
                toInt64(orders_placed * 1000 + cityHash64(day, intDiv(number % 120, 6), currency, 1) % 5000) AS gross_minor,
                toInt64(intDiv(gross_minor * 9, 10)) AS captured_minor,
                toInt64(if(cityHash64(day, intDiv(number % 120, 6), currency, 2) % 3 = 0, captured_minor + 7, 100)) AS refunded_minor,
                toInt64(0) AS orders_cancelled,
                orders_placed AS items_sold,
                toUInt64(1) AS version
         FROM numbers(92 * 120)",
    )
    .execute()
    .await
    .unwrap();
    for sql in [
        "OPTIMIZE TABLE daily_revenue FINAL",
        "SYSTEM STOP MERGES daily_revenue",
    ] {
        ch.query(sql).execute().await.unwrap();
    }
    let metrics = CacheMetrics::default();
    let cache = PartSums::new(1_000_000, metrics.clone());
    let stats = store::ReadStats::default();
    let since = date!(2026 - 01 - 01);
    let filled = cache.refresh(&reader, since).await.unwrap();
    assert_eq!((filled.filled, filled.dropped), (3, 0), "one part a month");

    let cases = [
        ("2026-08-03", "2026-10-25", "EUR", "", "10"), // whole weeks
        ("2026-08-05", "2026-10-20", "USD", "", "5"),  // cut mid-week
        ("2026-08-01", "2026-10-31", "GBP", "", "100"),
        ("2026-08-10", "2026-09-30", "EUR", "m-3,m-4,m-17,m-99", "10"),
        ("2026-09-02", "2026-09-03", "EUR", "", "10"), // no whole week
    ];
    let check = |round: &'static str| {
        let (cache, stats, reader, ch) = (&cache, &stats, &reader, &ch);
        async move {
            for (from, to, currency, merchants, limit) in cases {
                let raw = RawQuery {
                    from: Some(from.into()),
                    to: Some(to.into()),
                    currency: Some(currency.into()),
                    merchant_id: (!merchants.is_empty()).then(|| merchants.into()),
                    limit: Some(limit.into()),
                    ..RawQuery::default()
                };
                let f = Filter::parse(&raw, date!(2026 - 11 - 23), 366, Needs { currency: true })
                    .unwrap();
                let case = format!("{round}: {from}..{to} {currency} [{merchants}] top {limit}");
                let got = store::top_merchants(reader, stats, cache, &f)
                    .await
                    .unwrap();
                assert_eq!(got, ranking_oracle(ch, &f).await, "{case}");
                assert!(got.merchants > 0);
                for f in [
                    f.clone(),
                    Filter {
                        currency: None,
                        ..f
                    },
                ] {
                    let got = store::daily(reader, stats, cache, &f).await.unwrap();
                    assert_eq!(got, daily_oracle(ch, &f, f.range).await, "daily {case}");
                    assert!(!got.is_empty());
                    let got = store::periods(reader, stats, cache, &f).await.unwrap();
                    assert_eq!(got, periods_oracle(ch, &f).await, "summary {case}");
                }
            }
        }
    };
    check("merged").await;
    let cached = metrics.days_cached.get();
    // The rankings alone of the first four cases: all 84 days; Aug 10 -
    // Oct 18; all 92 (Aug 1-2 and Oct 26-31 are whole weeks of their
    // parts); Aug 10 - Sep 27. The daily and summary reads add more.
    assert!(cached >= 84 + 70 + 92 + 49, "{cached} days from the cache");

    // A late write for Sep 16 in a part of its own: that week is read live
    // (with FINAL), the others still come from the cache.
    ch.query(
        "INSERT INTO daily_revenue SELECT day, merchant_id, currency, orders_placed, gross_minor + 5000, \
                captured_minor + 4000, refunded_minor, orders_cancelled, items_sold, version + 1 \
         FROM daily_revenue WHERE day = toDate('2026-09-16') AND currency = 'EUR' AND merchant_id IN ('m-3', 'm-30')",
    )
    .execute()
    .await
    .unwrap();
    let before = metrics.days_cached.get();
    check("late write").await;
    assert!(
        metrics.days_cached.get() > before,
        "the cache still answers the clean weeks"
    );

    // Merged again: September's part has a new name; the cached one is
    // dropped and the new one read.
    for sql in [
        "SYSTEM START MERGES daily_revenue",
        "OPTIMIZE TABLE daily_revenue PARTITION 202609 FINAL",
    ] {
        ch.query(sql).execute().await.unwrap();
    }
    check("merged, not refreshed").await;
    let again = cache.refresh(&reader, since).await.unwrap();
    assert_eq!((again.filled, again.dropped), (1, 1));
    check("refreshed").await;
    assert_eq!(metrics.parts.get(), 3);
}

/// Cells near 2^62 whose sums over a day, a range and all merchants pass
/// 2^63 and 2^64: every figure is the exact 128-bit sum, never wrapped
/// (before, ClickHouse's `sum(Int64)` and the Rust sums could wrap). Once
/// from merged parts (cached, then read without FINAL) and once from parts
/// read live.
#[tokio::test]
async fn sums_past_64_bits_are_exact_not_wrapped() {
    const BIG: i64 = 4_611_686_018_427_387_904; // 2^62
    let app = spawn_app(Ingest::Manual).await;
    let ch = app.db.ch.client();
    let (d1, d2, d3) = (
        date!(2025 - 06 - 01),
        date!(2025 - 06 - 02),
        date!(2025 - 06 - 03),
    );
    let rows = [
        // orders, gross, captured, refunded, cancelled, items
        cell(d1, "m-x", "EUR", [1, BIG, BIG, 0, 0, 1], 1),
        cell(d1, "m-y", "EUR", [1, BIG, BIG, 0, 0, 1], 1),
        cell(d2, "m-x", "EUR", [1, BIG, BIG, 0, 0, 1], 1),
        cell(d3, "m-x", "EUR", [1, BIG, BIG, 0, 0, 1], 1),
    ];
    for r in rows {
        tally_projection::insert_rows(&ch, "daily_revenue", &[r])
            .await
            .unwrap();
    }
    let two_63 = "9223372036854775808";
    let two_64 = "18446744073709551616";
    let three_62 = "13835058055282163712";
    let check = |label: &'static str| {
        let app = &app;
        async move {
            let daily = app
                .dash("/v1/revenue/daily?from=2025-06-01&to=2025-06-03&currency=EUR")
                .await
                .text()
                .await
                .unwrap();
            assert!(
                daily.contains(&format!("\"captured_minor\":{two_63}")),
                "{label}: day 1 is 2^63: {daily}"
            );
            assert!(
                daily.contains("\"net\":\"92233720368547758.08\""),
                "{label}: {daily}"
            );
            let summary = app
                .dash("/v1/revenue/summary?from=2025-06-01&to=2025-06-03&currency=EUR")
                .await
                .text()
                .await
                .unwrap();
            assert!(
                summary.contains(&format!("\"current\":{two_64}")),
                "{label}: the range is 2^64: {summary}"
            );
            let top = app
                .dash("/v1/merchants/top?from=2025-06-01&to=2025-06-03&currency=EUR")
                .await
                .text()
                .await
                .unwrap();
            assert!(
                top.contains(&format!("\"total_net_minor\":{two_64}")),
                "{label}: {top}"
            );
            let v: Value = serde_json::from_str(&top).unwrap();
            assert_eq!(v["rows"][0]["merchant_id"], "m-x", "{label}: {top}");
            assert!(
                top.contains(&format!("\"net_minor\":{three_62}")),
                "{label}: {top}"
            );
            assert_eq!(v["rows"][0]["share_percent"], "75.00", "{label}");
        }
    };
    check("separate parts, read live").await;
    ch.query("OPTIMIZE TABLE daily_revenue FINAL")
        .execute()
        .await
        .unwrap();
    check("merged").await;
}

/// Query strings as a careless or hostile client sends them, against every
/// read endpoint of a running server: each answer is a 200 or a 400
/// problem, never a 5xx and never a dropped connection (before, a
/// `to=-9999-01-01` panicked in date arithmetic and the connection died).
#[tokio::test]
async fn no_query_string_makes_the_read_api_fail_or_drop_the_connection() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    let app = spawn_app(Ingest::Manual).await;
    seed(&app).await;
    let date = prop_oneof![
        (-99_999i32..=99_999, 0u8..=13, 0u8..=32)
            .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        (1990i32..=2160, 1u8..=12, 1u8..=28).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        Just("-9999-01-01".to_owned()),
        Just("9999-12-31".to_owned()),
        Just("2148-12-31".to_owned()),
        Just("2149-01-01".to_owned()),
        Just("2000-01-01".to_owned()),
        ".{0,12}",
    ];
    let text = prop_oneof![
        ".{0,16}",
        "[A-Za-z]{3}",
        "[a-z0-9-]{1,70}(,[a-z0-9-]{0,70}){0,110}",
        Just("EUR".to_owned()),
        Just("0".to_owned()),
        Just("101".to_owned()),
        Just("csv".to_owned()),
    ];
    let query = (
        proptest::option::of(date.clone()),
        proptest::option::of(date),
        proptest::option::of(text.clone()),
        proptest::option::of(text.clone()),
        proptest::option::of(text.clone()),
        proptest::option::of(text),
    );
    let endpoints = [
        "/v1/revenue/daily",
        "/v1/revenue/summary",
        "/v1/merchants/top",
        "/v1/freshness",
    ];
    let mut runner = TestRunner::new(Config::default());
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..400 {
        let (from, to, currency, merchant_id, limit, format) =
            query.new_tree(&mut runner).unwrap().current();
        let pairs: Vec<(&str, String)> = [
            ("from", from),
            ("to", to),
            ("currency", currency),
            ("merchant_id", merchant_id),
            ("limit", limit),
            ("format", format),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let endpoint = endpoints[i % endpoints.len()];
        let res = app
            .http
            .get(format!("{}{endpoint}", app.dashboards_url))
            .bearer_auth(&app.api_key)
            .query(&pairs)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{endpoint} {pairs:?}: the connection failed: {e}"));
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert!(
            status == 200 || status == 400,
            "{endpoint} {pairs:?}: {status} {body}"
        );
        if status == 400 {
            let p: Value = serde_json::from_str(&body).unwrap();
            assert!(
                !p["invalid_params"].as_array().unwrap().is_empty(),
                "{body}"
            );
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    // The generator reaches both answers, or the test proves little.
    assert!(statuses.len() == 2, "{statuses:?}");
    println!("read API under generated queries: {statuses:?}");
}

/// The page's and the API's security headers, and a CSV download whose
/// cells cannot become spreadsheet formulas.
#[tokio::test]
async fn every_dashboards_response_carries_the_security_headers() {
    let app = spawn_app(Ingest::Manual).await;
    seed(&app).await;
    for path in ["/", "/assets/app.js", "/v1/freshness"] {
        let res = app
            .http
            .get(format!("{}{path}", app.dashboards_url))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
    }
    let page = app.get_text(&format!("{}/", app.dashboards_url)).await;
    assert!(
        !page.contains("<script>")
            && !page.contains("<style")
            && !page.contains("style=")
            && !["onclick=", "onload=", "onchange=", "onsubmit="]
                .iter()
                .any(|h| page.contains(h)),
        "the page has no inline script or style for the policy to block"
    );
}

/// Metric labels stay bounded whatever methods clients invent.
#[tokio::test]
async fn made_up_methods_do_not_create_metric_series() {
    let app = spawn_app(Ingest::Manual).await;
    for i in 0..200 {
        let m = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        let _ = app
            .http
            .request(m, format!("{}/v1/freshness", app.dashboards_url))
            .send()
            .await
            .unwrap();
    }
    let metrics = app.get_text(&format!("{}/metrics", app.api_url)).await;
    assert!(
        !metrics.contains("method=\"M1"),
        "a made-up method became a label"
    );
    assert!(
        metrics.contains("method=\"other\""),
        "they are counted as `other`"
    );
}
