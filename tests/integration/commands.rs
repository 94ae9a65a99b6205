//! The command API's lifecycle, idempotency and concurrency guarantees,
//! against real PostgreSQL (and ClickHouse for the projection checks).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use tally_tests::{Ingest, TestApp, order_body, spawn_app};

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn status_and_body(res: reqwest::Response) -> (u16, Value) {
    let s = res.status().as_u16();
    (s, res.json().await.unwrap_or(Value::Null))
}

async fn cmd(app: &TestApp, path: String, body: Value) -> (u16, Value) {
    status_and_body(app.command(&path, &body, &key()).await).await
}

#[tokio::test]
async fn the_full_lifecycle_writes_each_table_and_one_event_per_command() {
    let app = spawn_app(Ingest::Manual).await;
    let id = app
        .place(&order_body(
            "acme",
            "EUR",
            &[("mug", 2, 1250), ("tea", 1, 500)],
        ))
        .await; // total 3000
    let o = |p: &str| format!("/v1/orders/{id}/{p}");

    let (s, p) = cmd(
        &app,
        o("shipments"),
        json!({"carrier": "DHL", "tracking_number": "1"}),
    )
    .await;
    assert_eq!(
        (s, p["type"].as_str()),
        (409, Some("https://tally.dev/problems/invalid-transition")),
        "ship before capture"
    );
    let (s, p) = cmd(&app, o("refunds"), json!({"amount_minor": 1})).await;
    assert_eq!(s, 409, "refund before capture: {p}");
    let (s, p) = cmd(&app, o("payments"), json!({"amount_minor": 2999})).await;
    assert_eq!(
        (s, p["type"].as_str()),
        (422, Some("https://tally.dev/problems/amount-rule"))
    );

    let (s, ack) = cmd(&app, o("payments"), json!({"amount_minor": 3000})).await;
    assert_eq!(s, 202, "{ack}");
    assert_eq!(ack["version"], 2);
    assert!(ack["payment_id"].is_string());
    let (s, _) = cmd(&app, o("payments"), json!({"amount_minor": 3000})).await;
    assert_eq!(s, 409, "capture once");

    let (s, ack) = cmd(
        &app,
        o("shipments"),
        json!({"carrier": "DHL", "tracking_number": "JD01"}),
    )
    .await;
    assert_eq!((s, ack["version"].as_u64()), (202, Some(3)));
    let (s, ack) = cmd(
        &app,
        o("refunds"),
        json!({"amount_minor": 1000, "reason": "broken mug"}),
    )
    .await;
    assert_eq!((s, ack["version"].as_u64()), (202, Some(4)));
    assert!(ack["refund_id"].is_string());
    let (s, p) = cmd(&app, o("refunds"), json!({"amount_minor": 2001})).await;
    assert_eq!(s, 422, "more than the 2000 still refundable: {p}");
    let (s, _) = cmd(&app, o("cancellation"), json!({"reason": "too late"})).await;
    assert_eq!(s, 409, "cancel after shipping");

    let events: Vec<(String, i32)> = sqlx::query_as(
        "SELECT event_type, aggregate_version FROM outbox ORDER BY aggregate_version",
    )
    .fetch_all(&app.db.pg)
    .await
    .unwrap();
    let expected = [
        ("OrderPlaced", 1),
        ("PaymentCaptured", 2),
        ("OrderShipped", 3),
        ("OrderRefunded", 4),
    ];
    assert_eq!(
        events
            .iter()
            .map(|(t, v)| (t.as_str(), *v))
            .collect::<Vec<_>>(),
        expected,
        "refusals write nothing"
    );
    let (status, version, payments, shipments, refunds): (String, i32, i64, i64, i64) = sqlx::query_as(
        "SELECT status, version, (SELECT count(*) FROM payments), (SELECT count(*) FROM shipments),
                (SELECT coalesce(sum(amount_minor), 0)::int8 FROM refunds) FROM orders",
    )
    .fetch_one(&app.db.pg)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), version, payments, shipments, refunds),
        ("shipped", 4, 1, 1, 1000)
    );

    // And the read side agrees with the write store.
    app.db
        .ingest_worker(Default::default())
        .drain()
        .await
        .unwrap();
    let report = tally_rebuild::verify_daily(&app.db.pg, &app.db.ch.client(), "UTC")
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    let net: i64 = app
        .db
        .ch
        .client()
        .query("SELECT sum(captured_minor - refunded_minor) FROM daily_revenue FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(net, 2000);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_the_capture() {
    let app = spawn_app(Ingest::Manual).await;
    let id = app
        .place(&order_body("acme", "EUR", &[("a", 1, 700)]))
        .await;
    assert_eq!(
        cmd(
            &app,
            format!("/v1/orders/{id}/payments"),
            json!({"amount_minor": 700})
        )
        .await
        .0,
        202
    );
    let (s, ack) = cmd(
        &app,
        format!("/v1/orders/{id}/cancellation"),
        json!({"reason": "changed mind"}),
    )
    .await;
    assert_eq!(s, 202);
    assert!(ack["refund_id"].is_string(), "{ack}");
    let (cause, amount, status): (String, i64, String) = sqlx::query_as(
        "SELECT r.cause, r.amount_minor, o.status FROM refunds r JOIN orders o USING (order_id)",
    )
    .fetch_one(&app.db.pg)
    .await
    .unwrap();
    assert_eq!(
        (cause.as_str(), amount, status.as_str()),
        ("cancellation", 700, "cancelled")
    );
    app.db
        .ingest_worker(Default::default())
        .drain()
        .await
        .unwrap();
    let report = tally_rebuild::verify_daily(&app.db.pg, &app.db.ch.client(), "UTC")
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_reuse_and_are_scoped_per_api_key() {
    let app = spawn_app(Ingest::Manual).await;
    let body = order_body("acme", "EUR", &[("a", 1, 100)]);
    let first = app.command("/v1/orders", &body, "key-1").await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();

    let again = app.command("/v1/orders", &body, "key-1").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "same body as the first response"
    );
    let metrics = app.get_text(&format!("{}/metrics", app.api_url)).await;
    assert!(
        metrics.contains("tally_api_idempotent_replays_total 1"),
        "replays are exported: {metrics}"
    );
    assert!(
        metrics.contains("tally_pg_pool_connections{pool=\"test\"} "),
        "{metrics}"
    );

    let other = order_body("acme", "EUR", &[("a", 2, 100)]);
    let (s, p) = status_and_body(app.command("/v1/orders", &other, "key-1").await).await;
    assert_eq!(
        (s, p["type"].as_str()),
        (
            422,
            Some("https://tally.dev/problems/idempotency-key-reused")
        ),
        "{p}"
    );

    let missing = app
        .http
        .post(format!("{}/v1/orders", app.api_url))
        .bearer_auth(&app.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, p) = status_and_body(missing).await;
    assert_eq!(
        (s, p["type"].as_str()),
        (400, Some("https://tally.dev/problems/idempotency-key"))
    );

    // The same key from another API key is another request.
    let (_, other_key) =
        tally_ops::auth::create_key(&app.db.pg, "other", &[tally_ops::auth::Role::OrdersWrite])
            .await
            .unwrap();
    let res = app
        .http
        .post(format!("{}/v1/orders", app.api_url))
        .bearer_auth(&other_key)
        .header("idempotency-key", "key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_ne!(res.json::<Value>().await.unwrap(), first);

    // A refused command is an outcome too: replayed, not re-run.
    let id = first["order_id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}/shipments");
    let ship = json!({"carrier": "DHL", "tracking_number": "1"});
    assert_eq!(app.command(&path, &ship, "ship-1").await.status(), 409);
    assert_eq!(
        cmd(
            &app,
            format!("/v1/orders/{id}/payments"),
            json!({"amount_minor": 100})
        )
        .await
        .0,
        202
    );
    let replay = app.command(&path, &ship, "ship-1").await;
    assert_eq!(
        (
            replay.status().as_u16(),
            replay.headers()["idempotent-replayed"].to_str().unwrap()
        ),
        (409, "true")
    );

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(orders, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_requests_with_one_key_make_one_order() {
    let app = spawn_app(Ingest::Manual).await;
    let body = order_body("acme", "EUR", &[("a", 1, 100)]);
    let requests = (0..100).map(|_| app.command("/v1/orders", &body, "the-one-key"));
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = HashSet::new();
    let mut in_flight = 0;
    for r in responses {
        match r.status().as_u16() {
            201 => {
                ids.insert(
                    r.json::<Value>().await.unwrap()["order_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            409 => {
                let p: Value = r.json().await.unwrap();
                assert_eq!(
                    p["type"],
                    "https://tally.dev/problems/idempotency-in-flight"
                );
                in_flight += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success names the same order");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(
        (orders, events),
        (1, 1),
        "{in_flight} requests saw the first in flight"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_refunds_never_exceed_the_capture() {
    let app = spawn_app(Ingest::Manual).await;
    let id = app.place(&order_body("acme", "EUR", &[("a", 1, 40)])).await;
    assert_eq!(
        cmd(
            &app,
            format!("/v1/orders/{id}/payments"),
            json!({"amount_minor": 40})
        )
        .await
        .0,
        202
    );
    let path = format!("/v1/orders/{id}/refunds");
    let one = json!({"amount_minor": 1});
    let mut accepted = 0;
    // Clients retry conflicts, as the 409's detail tells them to.
    for _round in 0..30 {
        let keys: Vec<String> = (0..100).map(|_| key()).collect();
        let requests = keys.iter().map(|k| app.command(&path, &one, k));
        let statuses: Vec<u16> = futures_util::future::join_all(requests)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert!(
            statuses.iter().all(|s| [202, 409, 422].contains(s)),
            "{statuses:?}"
        );
        accepted += statuses.iter().filter(|s| **s == 202).count();
        if statuses.contains(&422) {
            break;
        }
    }
    let refunded: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(amount_minor), 0)::int8 FROM refunds")
            .fetch_one(&app.db.pg)
            .await
            .unwrap();
    assert_eq!(refunded, 40, "refunded exactly the capture, never more");
    assert_eq!(accepted, 40);
    let version: i32 = sqlx::query_scalar("SELECT version FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(version, 42, "one version per accepted command");
    app.stop().await;
}

#[tokio::test]
async fn if_match_makes_a_command_conditional() {
    let app = spawn_app(Ingest::Manual).await;
    let id = app.place(&order_body("acme", "EUR", &[("a", 1, 40)])).await;
    let url = format!("{}/v1/orders/{id}/payments", app.api_url);
    let send = |if_match: &'static str| {
        app.http
            .post(&url)
            .bearer_auth(&app.api_key)
            .header("idempotency-key", key())
            .header("if-match", if_match)
            .json(&json!({"amount_minor": 40}))
            .send()
    };
    let (s, p) = status_and_body(send("\"7\"").await.unwrap()).await;
    assert_eq!((s, p["current_version"].as_u64()), (412, Some(1)), "{p}");
    let (s, p) = status_and_body(send("nonsense").await.unwrap()).await;
    assert_eq!(s, 400, "{p}");
    let res = send("\"1\"").await.unwrap();
    assert_eq!(res.headers()["etag"], "\"2\"");
    assert_eq!(res.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn unknown_orders_are_404_and_bodies_are_validated() {
    let app = spawn_app(Ingest::Manual).await;
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        let (s, p) = cmd(
            &app,
            format!("/v1/orders/{id}/payments"),
            json!({"amount_minor": 1}),
        )
        .await;
        assert_eq!(
            (s, p["type"].as_str()),
            (404, Some("https://tally.dev/problems/not-found"))
        );
    }
    let id = app.place(&order_body("acme", "EUR", &[("a", 1, 40)])).await;
    for (path, body, field) in [
        ("payments", json!({"amount_minor": 0}), "amount_minor"),
        ("payments", json!({"amount_minor": -5}), "amount_minor"),
        ("refunds", json!({"amount_minor": 0}), "amount_minor"),
        (
            "shipments",
            json!({"carrier": " ", "tracking_number": "x"}),
            "carrier",
        ),
        ("cancellation", json!({"reason": ""}), "reason"),
    ] {
        let (s, p) = cmd(&app, format!("/v1/orders/{id}/{path}"), body).await;
        assert_eq!(
            (s, p["invalid_params"][0]["name"].as_str()),
            (400, Some(field)),
            "{p}"
        );
    }
    let (s, _) = cmd(
        &app,
        format!("/v1/orders/{id}/payments"),
        json!({"amount_minor": 40, "tip": 1}),
    )
    .await;
    assert_eq!(s, 400, "unknown fields are refused");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_command() {
    let app = spawn_app(Ingest::Manual).await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.api_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for route in tally_write_api::COMMAND_ROUTES {
        let op = &doc["paths"][route]["post"];
        assert!(op.is_object(), "{route} is not documented");
        for status in ["400", "401", "403", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{route} lacks {status}"
            );
        }
    }
    for schema in [
        "PlaceOrderRequest",
        "CommandAccepted",
        "ProblemDoc",
        "RefundRequest",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_draining_server_refuses_new_commands_with_503() {
    use tower::ServiceExt;
    let db = tally_tests::TestDb::new().await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = tally_write_api::metrics::Metrics::register(&mut registry);
    let draining = tally_ops::Shutdown::new();
    draining.cancel();
    let router = tally_write_api::router(&Default::default(), db.pg.clone(), metrics, draining);
    let req = axum::http::Request::post("/v1/orders")
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
}

#[tokio::test]
async fn expired_idempotency_keys_are_forgotten() {
    let app = spawn_app(Ingest::Manual).await;
    let body = order_body("acme", "EUR", &[("a", 1, 100)]);
    assert_eq!(
        app.command("/v1/orders", &body, "old-key").await.status(),
        201
    );
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.db.pg)
        .await
        .unwrap();
    let deleted = tally_write_api::idempotency::expire(&app.db.pg, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let again = app.command("/v1/orders", &body, "old-key").await;
    assert!(again.headers().get("idempotent-replayed").is_none());
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(orders, 2);
    app.stop().await;
}
