//! The walking skeleton end to end: command → outbox → ingest → ClickHouse
//! → dashboards JSON, with the real worker loop and no fixed sleeps.

use std::time::Duration;

use tally_dashboards::views::DailyResponse;
use tally_tests::{Ingest, eventually, init_logs, order_body, spawn_app};

#[tokio::test]
async fn a_placed_order_reaches_the_daily_revenue_api() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;

    let res = app
        .post_order(&order_body(
            "acme",
            "EUR",
            &[("mug", 2, 1250), ("tea", 1, 499)],
        ))
        .await;
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "acknowledgement only: {body}"
    );
    assert_eq!(location, format!("/v1/orders/{order_id}"));

    let res = app
        .post_order(&order_body("acme", "EUR", &[("mug", 1, 1000)]))
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_order(&order_body("acme", "JPY", &[("mug", 3, 500)]))
        .await;
    assert_eq!(res.status(), 201);

    let acknowledged = time::OffsetDateTime::now_utc();

    // The watermark's promise: once "complete up to" passes the moment the
    // commands were acknowledged, all three must be counted.
    let url = format!("{}/v1/revenue/daily", app.dashboards_url);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let daily = eventually(Duration::from_secs(10), || async {
        let r: DailyResponse = app
            .http
            .get(&url)
            .bearer_auth(&app.api_key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let w = r.freshness.complete_up_to.as_deref()?;
        let w =
            time::OffsetDateTime::parse(w, &time::format_description::well_known::Rfc3339).ok()?;
        (w > acknowledged).then_some(r)
    })
    .await
    .expect("the watermark passes the acknowledged commands within 10 s");
    let orders: i128 = daily.rows.iter().map(|row| row.orders_placed).sum();
    assert_eq!(
        orders, 3,
        "complete up to {:?}",
        daily.freshness.complete_up_to
    );
    assert!(daily.freshness.lag_seconds.is_some_and(|l| l < 10.0));

    assert_eq!(
        daily.rows.len(),
        2,
        "one row per currency, never summed together: {:?}",
        daily.rows
    );
    let eur = daily.rows.iter().find(|r| r.currency == "EUR").unwrap();
    assert_eq!(
        (
            eur.day.as_str(),
            eur.orders_placed,
            eur.gross_minor,
            eur.items_sold
        ),
        (today.as_str(), 2, 3999, 4)
    );
    assert_eq!(eur.gross, "39.99");
    let jpy = daily.rows.iter().find(|r| r.currency == "JPY").unwrap();
    assert_eq!((jpy.gross_minor, jpy.gross.as_str()), (1500, "1500"));

    // The projection equals the oracle recomputed from the write tables.
    let report = tally_rebuild::verify_daily(&app.db.pg, &app.db.ch.client(), "UTC")
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.matching, 2);

    // Filters are bound parameters; a bad one is a 400 problem.
    let r: DailyResponse = app
        .dash("/v1/revenue/daily?currency=JPY")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 1);
    let bad = app
        .dash("/v1/revenue/daily?currency=X'&from=2026-13-01")
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = bad.json().await.unwrap();
    let names: Vec<&str> = p["invalid_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from", "currency"]);

    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_page_and_ops_endpoints_answer() {
    let app = spawn_app(Ingest::Manual).await;
    let page = app
        .http
        .get(format!("{}/", app.dashboards_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    for base in [&app.api_url, &app.dashboards_url] {
        for path in ["/livez", "/readyz"] {
            let r = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
    let metrics = app.get_text(&format!("{}/metrics", app.api_url)).await;
    assert!(
        metrics.contains("tally_ingest_outbox_backlog_rows"),
        "{metrics}"
    );
    app.stop().await;
}
