//! The command API's contract for bad input: problem details, the right
//! 4xx, and nothing written.

use tally_ops::auth::{Role, create_key};
use tally_tests::{Ingest, TestApp, order_body, spawn_app};

async fn counts(app: &TestApp) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items),
                (SELECT count(*) FROM addresses), (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&app.db.pg)
    .await
    .unwrap()
}

async fn problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_valid_order_writes_every_table_and_one_event() {
    let app = spawn_app(Ingest::Manual).await;
    let res = app
        .post_order(&order_body("m-1", "EUR", &[("a", 2, 100), ("b", 1, 5)]))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(counts(&app).await, (1, 2, 1, 1));
    let (event_type, version, payload): (String, i32, serde_json::Value) =
        sqlx::query_as("SELECT event_type, aggregate_version, payload FROM outbox")
            .fetch_one(&app.db.pg)
            .await
            .unwrap();
    assert_eq!((event_type.as_str(), version), ("OrderPlaced", 1));
    assert_eq!(payload["order"]["total"], 205);
    let (placed_at, occurred_at): (time::OffsetDateTime, time::OffsetDateTime) =
        sqlx::query_as("SELECT o.placed_at, x.occurred_at FROM orders o, outbox x")
            .fetch_one(&app.db.pg)
            .await
            .unwrap();
    assert_eq!(
        placed_at, occurred_at,
        "the row and the event carry the same instant"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_problem_and_writes_nothing() {
    let app = spawn_app(Ingest::Manual).await;
    let url = format!("{}/v1/orders", app.api_url);
    let post = |body: String| {
        app.http
            .post(&url)
            .bearer_auth(&app.api_key)
            .header("content-type", "application/json")
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .body(body)
            .send()
    };

    // Each field rule, with the offending field named.
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (order_body("m", "EUR", &[]), "items"),
        (order_body("m", "EUR", &[("a", 0, 1)]), "items[0].quantity"),
        (order_body("m", "EUR", &[("a", -2, 1)]), "items[0].quantity"),
        (
            order_body("m", "EUR", &[("a", 1, -1)]),
            "items[0].unit_price_minor",
        ),
        (order_body("m", "XXX", &[("a", 1, 1)]), "currency"),
        (
            order_body("bad merchant", "EUR", &[("a", 1, 1)]),
            "merchant_id",
        ),
        (
            order_body("m", "EUR", &[("a", 1_000_000, 1_000_000)]),
            "items",
        ),
        (order_body("m", "EUR", &[("a", 1, 0)]), "items"),
        (order_body("m", "EUR", &vec![("a", 1, 1); 101]), "items"),
        // The money bound (Amount::MAX, 999 999 999 999 minor units): the
        // price of one line of the poison-event reproduction, and a total
        // of lines each within it.
        (
            order_body("m", "EUR", &[("a", 1, 4_611_686_018_427_387_904)]),
            "items[0].unit_price_minor",
        ),
        (
            order_body("m", "EUR", &[("a", 1, 1_000_000_000_000)]),
            "items[0].unit_price_minor",
        ),
        (
            order_body("m", "EUR", &[("a", 1, 999_999_999_999), ("b", 1, 1)]),
            "items",
        ),
    ];
    for (body, field) in cases {
        let p = problem(post(body.to_string()).await.unwrap(), 400).await;
        let names: Vec<&str> = p["invalid_params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [field], "{p}");
        assert_eq!(p["type"], "https://tally.dev/problems/validation");
    }

    // Malformed JSON, wrong types, unknown fields, overflowing numbers.
    let mut unknown = order_body("m", "EUR", &[("a", 1, 1)]);
    unknown["discount"] = serde_json::json!(5);
    let mut wrong_type = order_body("m", "EUR", &[("a", 1, 1)]);
    wrong_type["items"][0]["quantity"] = serde_json::json!("two");
    let overflow = order_body("m", "EUR", &[("a", 1, 1)]).to_string().replace(
        "\"unit_price_minor\":1",
        "\"unit_price_minor\":99999999999999999999",
    );
    for (body, needle) in [
        ("{not json".to_owned(), ""),
        (unknown.to_string(), "unknown field `discount`"),
        (wrong_type.to_string(), "items[0].quantity"),
        (overflow, "items[0].unit_price_minor"),
    ] {
        let p = problem(post(body).await.unwrap(), 400).await;
        assert_eq!(p["type"], "https://tally.dev/problems/malformed-body");
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }

    // Oversized body: 413 (limit 64 KiB).
    let big = order_body("m", "EUR", &[("a", 1, 1)])
        .to_string()
        .replace("Ada Lovelace", &"x".repeat(70_000));
    problem(post(big).await.unwrap(), 413).await;

    // Not JSON: 415.
    let res = app
        .http
        .post(&url)
        .bearer_auth(&app.api_key)
        .body("x")
        .send()
        .await
        .unwrap();
    problem(res, 415).await;

    assert_eq!(counts(&app).await, (0, 0, 0, 0), "no partial write");
    app.stop().await;
}

#[tokio::test]
async fn commands_need_a_key_with_the_orders_write_role() {
    let app = spawn_app(Ingest::Manual).await;
    let url = format!("{}/v1/orders", app.api_url);
    let body = order_body("m", "EUR", &[("a", 1, 1)]);

    let p = problem(app.http.post(&url).json(&body).send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "https://tally.dev/problems/unauthenticated");
    let p = problem(
        app.http
            .post(&url)
            .bearer_auth("tally_0000")
            .json(&body)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("unknown"), "{p}");

    let (_, reader) = create_key(&app.db.pg, "reader", &[Role::FinanceRead])
        .await
        .unwrap();
    let p = problem(
        app.http
            .post(&url)
            .bearer_auth(&reader)
            .json(&body)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("orders:write"),
        "{p}"
    );

    let (_, writer) = create_key(&app.db.pg, "writer", &[Role::OrdersWrite])
        .await
        .unwrap();
    let res = app
        .http
        .post(&url)
        .bearer_auth(&writer)
        .header("idempotency-key", "k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn postgres_unavailable_is_a_503_with_retry_after_not_a_hang() {
    let app = spawn_app(Ingest::Manual).await;
    // Warm the key cache, then make the pool unable to reach the database.
    assert_eq!(
        app.post_order(&order_body("m", "EUR", &[("a", 1, 1)]))
            .await
            .status(),
        201
    );
    app.db.pg.close().await;
    let started = std::time::Instant::now();
    let res = app
        .post_order(&order_body("m", "EUR", &[("a", 1, 1)]))
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(res.headers()["retry-after"], "1");
    problem(res, 503).await;
    app.shutdown.cancel();
}

/// Slowloris: a client that opens a connection and never finishes its
/// request head is cut off after the header-read timeout, instead of
/// holding the connection for ever.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Ingest::Manual).await;
    let addr = app.api_url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /v1/orders HTTP/1.1\r\nHost: tally\r\nX-Dribble: a")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        tally_ops::http::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(10),
        conn.read_to_end(&mut buf),
    )
    .await
    .expect("the server closes the connection");
    let waited = started.elapsed();
    assert!(read.is_ok() || read.is_err(), "closed either way");
    assert!(
        waited + std::time::Duration::from_millis(500) >= tally_ops::http::HEADER_READ_TIMEOUT,
        "not before the timeout: {waited:?}"
    );
    // Other clients were served meanwhile, and still are.
    let res = app
        .http
        .get(format!("{}/livez", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.stop().await;
}
