//! Order queries against real stores: every field of every order equals
//! its write-model row; lists page by keyset, newest first, each order
//! once, while orders arrive and a rebuild swaps the tables underneath; a
//! status filter sees only an order's newest version even while its
//! versions sit in unmerged parts; bad input and missing roles are
//! problem details.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tally_ops::auth::{Role, create_key};
use tally_projection::FactRow;
use tally_rebuild::run::{Mode, RunOptions, run};
use tally_tests::load::drive;
use tally_tests::{
    Ingest, TestApp, TestDb, assert_projections_exact, ingest_drained, init_logs, order_body,
    spawn_app, spawn_app_on,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.dash(path).await;
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Every page of `path` (a list endpoint with its query), following
/// `next_cursor`; the ids in the order served.
async fn all_pages(app: &TestApp, path: &str) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_owned(),
        };
        let (status, body) = get_json(app, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        out.extend(body["orders"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

fn ids(orders: &[Value]) -> Vec<String> {
    orders
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Newest first: `placed_at` never grows down a list.
fn assert_newest_first(orders: &[Value]) {
    let times: Vec<OffsetDateTime> = orders
        .iter()
        .map(|o| OffsetDateTime::parse(o["placed_at"].as_str().unwrap(), &Rfc3339).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );
}

/// One order as the write model has it, in the read API's terms.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    merchant_id: String,
    customer_id: String,
    currency: String,
    status: String,
    placed_at: String,
    placed_day: String,
    item_count: u64,
    total_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    updated_at: String,
    version: u32,
}

impl Expected {
    fn of_view(o: &Value) -> Expected {
        Expected {
            merchant_id: o["merchant_id"].as_str().unwrap().into(),
            customer_id: o["customer_id"].as_str().unwrap().into(),
            currency: o["currency"].as_str().unwrap().into(),
            status: o["status"].as_str().unwrap().into(),
            placed_at: o["placed_at"].as_str().unwrap().into(),
            placed_day: o["placed_day"].as_str().unwrap().into(),
            item_count: o["item_count"].as_u64().unwrap(),
            total_minor: o["total_minor"].as_i64().unwrap(),
            captured_minor: o["captured_minor"].as_i64().unwrap(),
            refunded_minor: o["refunded_minor"].as_i64().unwrap(),
            updated_at: o["updated_at"].as_str().unwrap().into(),
            version: u32::try_from(o["version"].as_u64().unwrap()).unwrap(),
        }
    }
}

/// Every order of the write model, by id (ClickHouse keeps whole seconds;
/// the deployment's zone is UTC).
async fn write_model(db: &TestDb) -> BTreeMap<String, Expected> {
    type Row = (
        Uuid,
        String,
        String,
        String,
        String,
        OffsetDateTime,
        i64,
        i64,
        i64,
        i64,
        OffsetDateTime,
        i32,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT o.order_id, o.merchant_id, o.customer_id, o.currency, o.status, o.placed_at,
                o.item_count, o.total_minor,
                COALESCE((SELECT amount_minor FROM payments p WHERE p.order_id = o.order_id), 0),
                COALESCE((SELECT sum(amount_minor) FROM refunds r WHERE r.order_id = o.order_id), 0)::int8,
                o.updated_at, o.version
         FROM orders o",
    )
    .fetch_all(&db.pg)
    .await
    .unwrap();
    let secs = |t: OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap()
            .to_offset(time::UtcOffset::UTC)
    };
    rows.into_iter()
        .map(|r| {
            (
                r.0.hyphenated().to_string(),
                Expected {
                    merchant_id: r.1,
                    customer_id: r.2,
                    currency: r.3,
                    status: r.4,
                    placed_at: secs(r.5).format(&Rfc3339).unwrap(),
                    placed_day: secs(r.5).date().to_string(),
                    item_count: u64::try_from(r.6).unwrap(),
                    total_minor: r.7,
                    captured_minor: r.8,
                    refunded_minor: r.9,
                    updated_at: secs(r.10).format(&Rfc3339).unwrap(),
                    version: u32::try_from(r.11).unwrap(),
                },
            )
        })
        .collect()
}

/// Every order's projected fields equal its write-model row, by id, in
/// its merchant's list and in its customer's; filters select exactly what
/// the write model says they should.
#[tokio::test]
async fn order_queries_equal_the_write_tables_exactly() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    let r = drive(&app, 240, 4, 41).await;
    assert!(r.orders >= 240, "{r:?}");
    // The load's customers are mostly one-order; one with a history that
    // takes several pages.
    for i in 0..12 {
        app.place(&order_body("m-history", "EUR", &[("sku", 1, 100 + i)]))
            .await;
    }
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(30)).await);
    assert_projections_exact(&app.db).await;
    let expected = write_model(&app.db).await;

    let mut by_id = 0;
    for (id, want) in &expected {
        let (status, body) = get_json(&app, &format!("/v1/orders/{id}")).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["order"]["order_id"], id.as_str());
        assert_eq!(&Expected::of_view(&body["order"]), want, "{id}");
        by_id += 1;
    }

    let merchants: BTreeSet<&str> = expected.values().map(|e| e.merchant_id.as_str()).collect();
    let mut listed = BTreeSet::new();
    for m in &merchants {
        let orders = all_pages(&app, &format!("/v1/merchants/{m}/orders?limit=7")).await;
        assert_newest_first(&orders);
        let got = ids(&orders);
        let want: BTreeSet<String> = expected
            .iter()
            .filter(|(_, e)| e.merchant_id == *m)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(got.len(), want.len(), "{m}: no order twice");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want, "{m}");
        for o in &orders {
            let id = o["order_id"].as_str().unwrap();
            assert_eq!(&Expected::of_view(o), &expected[id], "{id} in {m}'s list");
        }
        listed.extend(got);
        // Filters on what changes (status) and what does not (currency).
        for status in ["placed", "paid", "shipped", "cancelled"] {
            for currency in ["EUR", "USD", "JPY"] {
                let got: BTreeSet<String> = ids(&all_pages(
                    &app,
                    &format!(
                        "/v1/merchants/{m}/orders?status={status}&currency={currency}&limit=500"
                    ),
                )
                .await)
                .into_iter()
                .collect();
                let want: BTreeSet<String> = expected
                    .iter()
                    .filter(|(_, e)| {
                        e.merchant_id == *m && e.status == status && e.currency == currency
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(got, want, "{m} {status} {currency}");
            }
        }
    }
    assert_eq!(
        listed.len(),
        expected.len(),
        "every order in its merchant's list"
    );

    let customers: BTreeSet<&str> = expected.values().map(|e| e.customer_id.as_str()).collect();
    let mut histories = 0;
    for c in &customers {
        let orders = all_pages(&app, &format!("/v1/customers/{c}/orders?limit=5")).await;
        assert_newest_first(&orders);
        let got = ids(&orders);
        let want: BTreeSet<String> = expected
            .iter()
            .filter(|(_, e)| e.customer_id == *c)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(got.len(), want.len(), "{c}: no order twice");
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "{c}");
        histories += want.len();
    }
    assert_eq!(histories, expected.len());

    // A day range: the orders of the newest order's day alone.
    let (m, day) = expected
        .values()
        .map(|e| (e.merchant_id.clone(), e.placed_day.clone()))
        .next()
        .unwrap();
    let got: BTreeSet<String> = ids(&all_pages(
        &app,
        &format!("/v1/merchants/{m}/orders?from={day}&to={day}"),
    )
    .await)
    .into_iter()
    .collect();
    let want: BTreeSet<String> = expected
        .iter()
        .filter(|(_, e)| e.merchant_id == m && e.placed_day == day)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(got, want);

    // CSV: the same page, a header and one line per order.
    let res = app
        .dash(&format!("/v1/merchants/{m}/orders?limit=3&format=csv"))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(res.headers().contains_key("tally-next-cursor"));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("order_id,merchant_id,customer_id,currency,status"));
    println!(
        "exact: {by_id} orders by id, {} in {} merchants' lists, {histories} in {} customers' histories, 0 mismatches",
        listed.len(),
        merchants.len(),
        customers.len()
    );
    app.stop().await;
}

/// An order's versions in separate, unmerged parts: the lookup answers the
/// newest, and a status filter matches only the newest's status, on every
/// engine the suite runs.
#[tokio::test]
async fn reads_see_only_the_newest_version_while_parts_are_unmerged() {
    init_logs();
    let app = spawn_app(Ingest::Manual).await;
    let ch = app.db.ch.client();
    let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let id = Uuid::now_v7();
    let row = |version: u32, status: &str, captured: i64| FactRow {
        order_id: id,
        version,
        merchant_id: "m-versions".into(),
        customer_id: "c-versions".into(),
        currency: *b"EUR",
        status: status.into(),
        placed_at: at,
        placed_day: at.date(),
        item_count: 1,
        total_minor: 900,
        captured_minor: captured,
        refunded_minor: 0,
        updated_at: at,
    };
    // Newest first, so no merge order can make the last insert win.
    for r in [
        row(3, "shipped", 900),
        row(1, "placed", 0),
        row(2, "paid", 900),
    ] {
        tally_projection::insert_facts(&ch, str::to_owned, &[r])
            .await
            .unwrap();
    }
    let parts: u64 = ch
        .query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'order_facts' AND active")
        .fetch_one()
        .await
        .unwrap();
    assert!(parts >= 3, "three unmerged parts ({parts})");
    let (status, body) = get_json(&app, &format!("/v1/orders/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["order"]["version"].as_u64(),
            body["order"]["status"].as_str()
        ),
        (Some(3), Some("shipped"))
    );
    for (path, owner) in [
        ("/v1/merchants/m-versions/orders", "merchant"),
        ("/v1/customers/c-versions/orders", "customer"),
    ] {
        let all = all_pages(&app, path).await;
        assert_eq!(ids(&all), [id.hyphenated().to_string()], "{owner}: once");
        assert_eq!(all[0]["version"], 3);
        for (status, n) in [("placed", 0), ("paid", 0), ("shipped", 1)] {
            let got = all_pages(&app, &format!("{path}?status={status}")).await;
            assert_eq!(got.len(), n, "{owner} status={status}: {got:?}");
        }
    }
    app.stop().await;
}

/// 10 000 orders of one merchant, paged 500 at a time while new orders for
/// it arrive and a rebuild regenerates and swaps every table mid-way: each
/// of the 10 000 is served exactly once, and nothing twice.
#[tokio::test]
async fn paging_serves_each_order_once_while_orders_arrive_and_a_rebuild_swaps() {
    init_logs();
    let db = TestDb::new().await;
    let cfg = tally_loadgen::bulk::BulkConfig {
        orders: 10_000,
        merchants: 1,
        days: 20,
        chunk: 5_000,
        ..Default::default()
    };
    tally_loadgen::bulk::seed_write_store(&db.pg, &cfg, 0, |_| {})
        .await
        .unwrap();
    let first = run(
        &db.pg,
        &db.ch.client(),
        Mode::Rebuild,
        &RunOptions::default(),
    )
    .await
    .unwrap();
    assert!(first.swapped);
    let bulk: BTreeSet<String> = sqlx::query_scalar::<_, Uuid>("SELECT order_id FROM orders")
        .fetch_all(&db.pg)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.hyphenated().to_string())
        .collect();
    assert_eq!(bulk.len(), 10_000);
    let merchant = "m-00000";

    let app = spawn_app_on(db, Ingest::Running).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let arrivals = {
        let (app, stop) = (app.handle(), stop.clone());
        tokio::spawn(async move {
            let mut placed = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                app.place(&order_body(merchant, "EUR", &[("sku", 1, 250)]))
                    .await;
                placed += 1;
            }
            placed
        })
    };
    let mut served: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut rebuild = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/merchants/{merchant}/orders?limit=500&cursor={c}"),
            None => format!("/v1/merchants/{merchant}/orders?limit=500"),
        };
        let (status, body) = get_json(&app, &path).await;
        assert_eq!(status, 200, "{body}");
        let page = body["orders"].as_array().unwrap();
        assert_newest_first(page);
        served.extend(ids(page));
        pages += 1;
        if pages == 4 {
            let (pg, ch) = (app.db.pg.clone(), app.db.ch.client());
            rebuild = Some(tokio::spawn(async move {
                run(&pg, &ch, Mode::Rebuild, &RunOptions::default()).await
            }));
        }
        if pages == 12
            && let Some(r) = rebuild.take()
        {
            let outcome = r.await.unwrap().expect("rebuild during paging");
            assert!(outcome.swapped && !outcome.has_drift(), "{outcome:#?}");
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let placed = arrivals.await.unwrap();
    assert!(
        rebuild.is_none(),
        "the rebuild finished while pages were read"
    );
    let unique: BTreeSet<&String> = served.iter().collect();
    assert_eq!(unique.len(), served.len(), "no order served twice");
    let missed: Vec<&String> = bulk.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missed.is_empty(), "{} of 10 000 never served", missed.len());
    println!(
        "paged {} orders in {pages} pages while {placed} arrived and a rebuild swapped: 10 000 of 10 000 once",
        served.len()
    );
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(30)).await);
    assert_projections_exact(&app.db).await;
    app.stop().await;
}

/// Order queries need `orders:read`; bad input is a 400 naming each
/// parameter; an order not (yet) projected is a 404 that says how to wait
/// for it.
#[tokio::test]
async fn order_queries_refuse_bad_input_and_missing_roles_with_problems() {
    let app = spawn_app(Ingest::Manual).await;
    let (_, finance) = create_key(&app.db.pg, "finance only", &[Role::FinanceRead])
        .await
        .unwrap();
    let res = app
        .http
        .get(format!("{}/v1/merchants/m-1/orders", app.dashboards_url))
        .bearer_auth(&finance)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("orders:read"),
        "{body}"
    );
    let (_, reader) = create_key(&app.db.pg, "orders reader", &[Role::OrdersRead])
        .await
        .unwrap();
    let res = app
        .http
        .get(format!("{}/v1/merchants/m-1/orders", app.dashboards_url))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(format!("{}/v1/revenue/daily", app.dashboards_url))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "orders:read is not finance:read");

    let missing = Uuid::now_v7();
    let (status, body) = get_json(&app, &format!("/v1/orders/{missing}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["type"].as_str().unwrap().ends_with("order-not-found"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("?after="),
        "{body}"
    );

    for (path, names) in [
        ("/v1/orders/not-a-uuid", vec!["order_id"]),
        (
            "/v1/merchants/-bad/orders?limit=0",
            vec!["merchant_id", "limit"],
        ),
        (
            "/v1/customers/c-1/orders?status=lost&cursor=x&from=2026-02-02&to=2026-02-01&format=xml",
            vec!["status", "from", "cursor", "format"],
        ),
        (
            "/v1/merchants/m-1/orders?limit=501&currency=ZZZ",
            vec!["currency", "limit"],
        ),
    ] {
        let res = app.dash(path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: Value = res.json().await.unwrap();
        let got: Vec<&str> = body["invalid_params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, names, "{path}: {body}");
    }
    app.stop().await;
}

/// Without a token a read answers at once, and its freshness is the truth:
/// every order whose acknowledgement's token is older than the answer's
/// `complete_up_to` is in the answer, read after read, while orders keep
/// arriving.
#[tokio::test]
async fn without_a_token_an_answers_freshness_is_the_truth() {
    let app = spawn_app(Ingest::Running).await;
    let placed: std::sync::Arc<tokio::sync::Mutex<Vec<(String, i64)>>> = Default::default();
    let placer = {
        let (app, placed) = (app.handle(), placed.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let res = app
                    .post_order(&order_body("m-truth", "EUR", &[("sku", 1, 100 + i)]))
                    .await;
                assert_eq!(res.status(), 201);
                let token = res.headers()["tally-consistency-token"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let us = i64::from_str_radix(token.strip_prefix("1.").unwrap(), 16).unwrap();
                let body: Value = res.json().await.unwrap();
                let id = body["order_id"].as_str().unwrap().to_owned();
                placed.lock().await.push((id, us));
            }
        })
    };
    let (mut reads, mut claims) = (0, 0usize);
    while !placer.is_finished() || reads < 5 {
        // Orders acknowledged before the read was sent.
        let known = placed.lock().await.clone();
        let (status, body) = get_json(&app, "/v1/merchants/m-truth/orders?limit=500").await;
        assert_eq!(status, 200, "{body}");
        reads += 1;
        let Some(w) = body["freshness"]["complete_up_to"].as_str() else {
            continue;
        };
        let w_us = i64::try_from(
            OffsetDateTime::parse(w, &Rfc3339)
                .unwrap()
                .unix_timestamp_nanos()
                / 1_000,
        )
        .unwrap();
        let served: BTreeSet<String> = ids(body["orders"].as_array().unwrap())
            .into_iter()
            .collect();
        for (id, us) in known.iter().filter(|(_, us)| *us < w_us) {
            assert!(
                served.contains(id),
                "complete up to {w}, yet order {id} (token {us} µs) is missing"
            );
            claims += 1;
        }
    }
    placer.await.unwrap();
    assert!(claims > 0, "some answer claimed some order");
    println!("{reads} reads without a token, {claims} claims of completeness checked, 0 false");
    app.stop().await;
}
