//! Read-your-writes: every command's acknowledgement carries a consistency
//! token, and a read that sends it back answers only once the read side
//! includes that write, or says `425` with `Retry-After` when it could not
//! wait that long. The ingest's worker runs as in production, nothing
//! sleeps: the token alone tells the reader when to read.

use serde_json::Value;
use tally_tests::load::drive;
use tally_tests::{Ingest, TestApp, order_body, spawn_app};

const TOKEN: &str = "tally-consistency-token";

fn token_of(res: &reqwest::Response) -> String {
    res.headers()
        .get(TOKEN)
        .unwrap_or_else(|| panic!("no {TOKEN} on a {} answer", res.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `GET` on the dashboards with the app's key and these headers.
async fn read(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app
        .http
        .get(format!("{}{path}", app.dashboards_url))
        .bearer_auth(&app.api_key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// Orders placed for `merchant` today, as the daily aggregate says after
/// the read waited for `token`.
async fn orders_seen(app: &TestApp, merchant: &str, token: &str) -> (u16, i64) {
    let res = read(
        app,
        &format!("/v1/revenue/daily?merchant_id={merchant}&after={token}"),
        &[("prefer", "wait=5")],
    )
    .await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    let orders = body["rows"].as_array().map_or(0, |rows| {
        rows.iter()
            .map(|r| r["orders_placed"].as_i64().unwrap())
            .sum()
    });
    (status, orders)
}

/// 1 000 place-then-read pairs, 8 clients at a time, while other clients
/// drive whole order lifecycles: every read includes its own order, both
/// the order by id and the day's aggregate.
#[tokio::test]
async fn a_client_reads_its_own_write_with_the_token_and_never_misses() {
    let app = spawn_app(Ingest::Running).await;
    let background = {
        let app = app.handle();
        tokio::spawn(async move { drive(&app, 600, 4, 23).await })
    };
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let app = app.handle();
            tokio::spawn(async move {
                let mut misses = Vec::new();
                for i in 0..125 {
                    let merchant = format!("ryw-{c}-{i}");
                    let res = app
                        .post_order(&order_body(&merchant, "EUR", &[("sku", 1, 100 + i)]))
                        .await;
                    assert_eq!(res.status(), 201);
                    let token = token_of(&res);
                    let order: Value = res.json().await.unwrap();
                    let id = order["order_id"].as_str().unwrap();
                    // The order itself, by id, and in the aggregate.
                    let by_id = read(
                        &app,
                        &format!("/v1/orders/{id}?after={token}"),
                        &[("prefer", "wait=5")],
                    )
                    .await;
                    let status = by_id.status().as_u16();
                    let found: Value = by_id.json().await.unwrap();
                    if status != 200 || found["order"]["order_id"] != id {
                        misses.push((format!("{merchant} by id"), status, 0));
                    }
                    let (status, orders) = orders_seen(&app, &merchant, &token).await;
                    if (status, orders) != (200, 1) {
                        misses.push((merchant, status, orders));
                    }
                }
                misses
            })
        })
        .collect();
    let mut misses = Vec::new();
    for c in clients {
        misses.extend(c.await.unwrap());
    }
    background.await.unwrap();
    assert!(
        misses.is_empty(),
        "{} of 1000 reads missed their own write: {misses:?}",
        misses.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn every_acknowledgement_carries_a_token_and_a_replay_the_same_one() {
    let app = spawn_app(Ingest::Manual).await;
    let body = order_body("m-tok", "EUR", &[("sku", 2, 500)]);
    let first = app.command("/v1/orders", &body, "tok-1").await;
    assert_eq!(first.status(), 201);
    let placed = token_of(&first);
    let order: Value = first.json().await.unwrap();
    let again = app.command("/v1/orders", &body, "tok-1").await;
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(token_of(&again), placed, "a replay names the same write");
    let capture = app
        .command(
            &format!(
                "/v1/orders/{}/payments",
                order["order_id"].as_str().unwrap()
            ),
            &serde_json::json!({"amount_minor": 1000}),
            "tok-2",
        )
        .await;
    assert_eq!(capture.status(), 202);
    let captured = token_of(&capture);
    let us = |t: &str| i64::from_str_radix(t.strip_prefix("1.").unwrap(), 16).unwrap();
    assert!(us(&captured) > us(&placed), "{captured} after {placed}");

    // Not projected yet (no worker runs): the read waits, then says so.
    let res = read(
        &app,
        "/v1/freshness",
        &[(TOKEN, captured.as_str()), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(res.status(), 425);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://tally.dev/problems/not-yet-consistent"
    );

    // Projected: the same read answers, and includes the write.
    app.db
        .ingest_worker(tally_ingest::IngestConfig::default())
        .drain()
        .await
        .unwrap();
    let (status, orders) = orders_seen(&app, "m-tok", &captured).await;
    assert_eq!((status, orders), (200, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_token_or_wait_is_a_400_naming_it() {
    let app = spawn_app(Ingest::Manual).await;
    let res = read(
        &app,
        "/v1/revenue/daily?after=yesterday",
        &[("prefer", "wait=soon")],
    )
    .await;
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    let names: Vec<&str> = problem["invalid_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["after", "Prefer"]);
    app.stop().await;
}
