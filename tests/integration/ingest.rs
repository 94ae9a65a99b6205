//! The ingest worker against real stores: counted once, recovered after a
//! failed push, poison events parked, nothing skipped when commits land out
//! of id order, and several workers at once.

use std::time::Duration;

use tally_domain::OrderId;
use tally_ingest::{ClaimFrom, IngestConfig};
use tally_projection::FactRow;
use tally_tests::{Ingest, TestDb, init_logs, order_body, spawn_app};

fn config(batch_size: i64) -> IngestConfig {
    IngestConfig {
        batch_size,
        pending_grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn place(db: impl sqlx::PgExecutor<'_>, merchant: &str, price: i64) -> OrderId {
    tally_tests::place_direct(db, merchant, price).await
}

pub(crate) async fn place_at(
    db: impl sqlx::PgExecutor<'_>,
    merchant: &str,
    price: i64,
    at: time::OffsetDateTime,
) -> OrderId {
    tally_tests::place_direct_at(db, merchant, price, at).await
}

async fn fact_count(db: &TestDb) -> u64 {
    db.ch
        .client()
        .query("SELECT count() FROM order_facts FINAL")
        .fetch_one()
        .await
        .unwrap()
}

async fn assert_matches_oracle(db: &TestDb) {
    let report = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), "UTC")
        .await
        .unwrap();
    assert!(
        report.is_clean(),
        "projection differs from the write store: {report:?}"
    );
}

#[tokio::test]
async fn draining_twice_counts_every_event_once() {
    init_logs();
    let db = TestDb::new().await;
    for i in 0..25 {
        place(&db.pg, &format!("m{}", i % 3), 100 + i).await;
    }
    let mut w = db.ingest_worker(config(7));
    let first = w.drain().await.unwrap();
    assert_eq!((first.claimed, first.projected, first.batches), (25, 25, 4));
    let second = w.drain().await.unwrap();
    assert_eq!(second.claimed, 0);
    assert_eq!(fact_count(&db).await, 25);
    assert_matches_oracle(&db).await;
}

#[tokio::test]
async fn a_push_that_fails_after_commit_is_recovered_exactly() {
    init_logs();
    let db = TestDb::new().await;
    let ch = db.ch.client();
    place(&db.pg, "m1", 500).await;
    place(&db.pg, "m2", 700).await;
    // Fault: the daily table is gone when the worker pushes to it, which is
    // after the totals were committed in PostgreSQL.
    ch.query("RENAME TABLE daily_revenue TO daily_revenue_away")
        .execute()
        .await
        .unwrap();
    let mut w = db.ingest_worker(config(100));
    assert!(w.drain().await.is_err(), "the push must fail");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_pending_pushes")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(pending, 1, "the unpushed cells are remembered");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "the events were consumed once");

    ch.query("RENAME TABLE daily_revenue_away TO daily_revenue")
        .execute()
        .await
        .unwrap();
    place(&db.pg, "m1", 1).await;
    w.drain().await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_pending_pushes")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    assert_matches_oracle(&db).await;
    // And repeating every push again changes nothing (versions, not deltas).
    sqlx::query(
        "INSERT INTO ingest_pending_pushes (batch_id, days, merchant_ids, currencies, oldest_created_at)
         SELECT gen_random_uuid(), array_agg(day), array_agg(merchant_id), array_agg(currency::text), now()
         FROM ingest_daily_totals",
    )
    .execute(&db.pg)
    .await
    .unwrap();
    w.drain().await.unwrap();
    assert_matches_oracle(&db).await;
}

#[tokio::test]
async fn a_poison_event_is_parked_and_the_rest_flows() {
    let db = TestDb::new().await;
    place(&db.pg, "m1", 100).await;
    tally_tests::insert_undecodable_event(&db.pg).await;
    place(&db.pg, "m1", 200).await;
    let out = db.ingest_worker(config(100)).drain().await.unwrap();
    assert_eq!((out.claimed, out.projected, out.dead_lettered), (3, 2, 1));
    let (n, error): (i64, String) =
        sqlx::query_as("SELECT count(*) OVER (), error FROM ingest_dead_letters")
            .fetch_one(&db.pg)
            .await
            .unwrap();
    assert_eq!(n, 1);
    assert!(error.contains("payload"), "{error}");
    assert_eq!(fact_count(&db).await, 2);
    assert_matches_oracle(&db).await;
}

/// 2^62 minor units: each fits 64 bits, two of them in one daily cell do
/// not (the reproduction in the "safe by default" issue).
const HALF_OF_I64: i64 = 4_611_686_018_427_387_904;

/// An order of `merchant` whose event (and write-model rows) carry
/// [`HALF_OF_I64`] as its price and total: what the API accepted before it
/// bounded money, written as it would have written it.
async fn place_poison(db: &TestDb, merchant: &str) -> OrderId {
    let id = place(&db.pg, merchant, 100).await;
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE aggregate_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&db.pg)
            .await
            .unwrap();
    fn inflate(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.as_i64() == Some(100) => *v = HALF_OF_I64.into(),
            serde_json::Value::Array(a) => a.iter_mut().for_each(inflate),
            serde_json::Value::Object(o) => o.values_mut().for_each(inflate),
            _ => {}
        }
    }
    let mut inflated = payload.clone();
    inflate(&mut inflated);
    assert_ne!(payload, inflated, "the payload carries the price");
    sqlx::query("UPDATE outbox SET payload = $2 WHERE aggregate_id = $1")
        .bind(id.as_uuid())
        .bind(&inflated)
        .execute(&db.pg)
        .await
        .unwrap();
    sqlx::query("UPDATE order_items SET unit_price_minor = $2 WHERE order_id = $1")
        .bind(id.as_uuid())
        .bind(HALF_OF_I64)
        .execute(&db.pg)
        .await
        .unwrap();
    id
}

async fn dead_letters(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("SELECT reason, error FROM ingest_dead_letters ORDER BY outbox_id")
        .fetch_all(&db.pg)
        .await
        .unwrap()
}

async fn cell_net(db: &TestDb, merchant: &str) -> Option<i64> {
    db.ch
        .client()
        .query("SELECT captured_minor + gross_minor FROM daily_revenue FINAL WHERE merchant_id = ?")
        .bind(merchant)
        .fetch_optional()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cell_that_would_overflow_in_postgres_parks_one_event_and_the_rest_flows() {
    init_logs();
    let db = TestDb::new().await;
    // The first poison order fits, and is counted.
    place_poison(&db, "acme").await;
    let mut w = db.ingest_worker(config(100));
    assert_eq!(w.drain().await.unwrap().projected, 1);
    // The second takes the running total past 64 bits: before, the upsert
    // failed with `bigint out of range`, the batch was retried for ever and
    // the watermark stopped for every merchant. It comes in one batch with
    // ordinary orders of other merchants.
    let poison = place_poison(&db, "acme").await;
    for i in 0..5 {
        place(&db.pg, &format!("m{i}"), 1_000 + i).await;
    }
    let out = w.drain().await.unwrap();
    assert_eq!(
        (out.claimed, out.projected, out.dead_lettered),
        (6, 5, 1),
        "{out:?}"
    );
    let parked = dead_letters(&db).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, "data");
    assert!(parked[0].1.contains("out of range"), "{parked:?}");
    let parked_order: uuid::Uuid =
        sqlx::query_scalar("SELECT aggregate_id FROM ingest_dead_letters")
            .fetch_one(&db.pg)
            .await
            .unwrap();
    assert_eq!(parked_order, poison.as_uuid(), "exactly the event at fault");
    for i in 0..5 {
        assert_eq!(cell_net(&db, &format!("m{i}")).await, Some(1_000 + i));
    }
    // The dead letter holds the watermark back, and says so.
    let f = tally_ingest::watermark::measure(&db.pg).await.unwrap();
    assert_eq!(f.held_by, tally_ingest::watermark::Holder::DeadLetter);
    assert_eq!(f.dead_letters, 1);

    // Retried unchanged, it fails again, alone.
    assert_eq!(
        tally_ingest::dead_letters::retry(&db.pg, None)
            .await
            .unwrap(),
        1
    );
    place(&db.pg, "m0", 1).await;
    let out = w.drain().await.unwrap();
    assert_eq!((out.projected, out.dead_lettered), (1, 1), "{out:?}");

    // After a fix (here: the operator corrects the first order's cell,
    // as after voiding it), a retry counts it and frees the watermark.
    sqlx::query("UPDATE ingest_daily_totals SET gross_minor = 0 WHERE merchant_id = 'acme'")
        .execute(&db.pg)
        .await
        .unwrap();
    assert_eq!(
        tally_ingest::dead_letters::retry(&db.pg, None)
            .await
            .unwrap(),
        1
    );
    let out = w.drain().await.unwrap();
    assert_eq!((out.projected, out.dead_lettered), (1, 0), "{out:?}");
    assert!(dead_letters(&db).await.is_empty());
    assert_eq!(cell_net(&db, "acme").await, Some(HALF_OF_I64));
    let f = tally_ingest::watermark::measure(&db.pg).await.unwrap();
    assert_ne!(f.held_by, tally_ingest::watermark::Holder::DeadLetter);
}

#[tokio::test]
async fn a_cell_that_would_overflow_within_one_batch_parks_the_event_that_tips_it() {
    let db = TestDb::new().await;
    place(&db.pg, "before", 10).await;
    place_poison(&db, "acme").await;
    let tipping = place_poison(&db, "acme").await;
    place(&db.pg, "after", 20).await;
    let out = db.ingest_worker(config(100)).drain().await.unwrap();
    assert_eq!(
        (out.claimed, out.projected, out.dead_lettered),
        (4, 3, 1),
        "{out:?}"
    );
    let parked = dead_letters(&db).await;
    assert_eq!(parked[0].0, "overflow", "{parked:?}");
    let parked_order: uuid::Uuid =
        sqlx::query_scalar("SELECT aggregate_id FROM ingest_dead_letters")
            .fetch_one(&db.pg)
            .await
            .unwrap();
    assert_eq!(parked_order, tipping.as_uuid());
    assert_eq!(cell_net(&db, "acme").await, Some(HALF_OF_I64));
    assert_eq!(cell_net(&db, "before").await, Some(10));
    assert_eq!(cell_net(&db, "after").await, Some(20));
}

#[tokio::test]
async fn a_running_worker_shows_the_next_order_within_seconds_after_a_poison_event() {
    init_logs();
    let db = TestDb::new().await;
    // Written before the worker starts: `place_poison` rewrites an event
    // a running worker could claim first.
    place_poison(&db, "acme").await;
    place_poison(&db, "acme").await;
    let shutdown = tally_ops::Shutdown::new();
    let worker = db.ingest_worker(IngestConfig {
        idle_poll: Duration::from_millis(200),
        ..config(100)
    });
    let run = tokio::spawn(worker.run(shutdown.clone()));
    place(&db.pg, "next", 42).await;
    let seen = tally_tests::eventually(Duration::from_secs(10), || async {
        cell_net(&db, "next").await.filter(|n| *n == 42)
    })
    .await;
    assert_eq!(
        seen,
        Some(42),
        "the order after the poison event is projected"
    );
    assert!(tally_tests::ingest_drained(&db.pg, Duration::from_secs(10)).await);
    assert_eq!(dead_letters(&db).await.len(), 1);
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn rows_committed_out_of_id_order_are_not_skipped() {
    let db = TestDb::new().await;
    // A takes the lower outbox id but commits last.
    let mut a = db.pg.begin().await.unwrap();
    place(&mut *a, "slow", 100).await;
    let a_started: time::OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    place(&db.pg, "fast", 200).await;

    let mut w = db.ingest_worker(config(100));
    assert_eq!(w.drain().await.unwrap().projected, 1);
    // While A is open the watermark cannot pass A's start.
    let f = tally_ingest::watermark::measure(&db.pg).await.unwrap();
    assert!(
        f.watermark <= a_started,
        "watermark {} passed an open transaction started {}",
        f.watermark,
        a_started
    );

    a.commit().await.unwrap();
    assert_eq!(w.drain().await.unwrap().projected, 1);
    assert_eq!(fact_count(&db).await, 2);
    assert_matches_oracle(&db).await;
}

async fn concurrent_workers_count_each_event_once(workers: usize) {
    init_logs();
    let db = TestDb::new().await;
    for i in 0..200 {
        place(&db.pg, &format!("m{}", i % 5), 10 + i).await;
    }
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let mut w = db.ingest_worker(IngestConfig {
                claim_from: ClaimFrom::alternating(i),
                ..config(9)
            });
            tokio::spawn(async move { w.drain().await.unwrap() })
        })
        .collect();
    let mut claimed = 0;
    let mut busy = 0;
    for t in tasks {
        let out = t.await.unwrap();
        claimed += out.claimed;
        busy += usize::from(out.claimed > 0);
    }
    assert_eq!(claimed, 200, "every event claimed by exactly one worker");
    assert!(
        busy > 1,
        "the workers shared the work ({busy} of {workers} claimed any)"
    );
    assert_eq!(fact_count(&db).await, 200);
    assert_matches_oracle(&db).await;
}

#[tokio::test]
async fn two_concurrent_workers_count_each_event_once() {
    concurrent_workers_count_each_event_once(2).await;
}

#[tokio::test]
async fn four_concurrent_workers_count_each_event_once() {
    concurrent_workers_count_each_event_once(4).await;
}

#[tokio::test]
async fn fact_rows_round_trip_through_clickhouse_unchanged() {
    let app = spawn_app(Ingest::Manual).await;
    app.post_order(&order_body("acme", "KWD", &[("x", 3, 1234)]))
        .await;
    app.db.ingest_worker(config(10)).drain().await.unwrap();
    let rows: Vec<FactRow> = app
        .db
        .ch
        .client()
        .query("SELECT ?fields FROM order_facts FINAL")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.merchant_id.as_str(), &r.currency, r.status.as_str()),
        ("acme", b"KWD", "placed")
    );
    assert_eq!((r.item_count, r.total_minor, r.version), (3, 3702, 1));
    let (placed_at,): (time::OffsetDateTime,) = sqlx::query_as("SELECT placed_at FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(r.placed_at.unix_timestamp(), placed_at.unix_timestamp());
    app.stop().await;
}

#[tokio::test]
async fn reporting_days_follow_the_configured_time_zone() {
    let db = TestDb::new().await;
    place_at(
        &db.pg,
        "m1",
        100,
        time::macros::datetime!(2026-11-23 23:30 UTC),
    )
    .await;
    let zone = tally_projection::ReportingZone::parse("Europe/Berlin").unwrap();
    let mut w = db.ingest_worker(IngestConfig {
        reporting_zone: zone,
        ..config(10)
    });
    w.drain().await.unwrap();
    let day: String = db
        .ch
        .client()
        .query("SELECT toString(day) FROM daily_revenue FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        day, "2026-11-24",
        "23:30 UTC is 00:30 the next day in Berlin"
    );
    let berlin = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), "Europe/Berlin")
        .await
        .unwrap();
    assert!(
        berlin.is_clean(),
        "the SQL oracle agrees in the same zone: {berlin:?}"
    );
    let utc = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), "UTC")
        .await
        .unwrap();
    assert_eq!(
        (utc.missing.len(), utc.extra.len()),
        (1, 1),
        "and not in another"
    );
}

#[tokio::test]
async fn dead_letters_hold_the_watermark_and_can_be_retried_after_a_fix() {
    let db = TestDb::new().await;
    let id = place(&db.pg, "m1", 100).await;
    // A producer from the future: schema version 2, which this build refuses.
    sqlx::query("UPDATE outbox SET schema_version = 2")
        .execute(&db.pg)
        .await
        .unwrap();
    let created: time::OffsetDateTime = sqlx::query_scalar("SELECT created_at FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    let mut w = db.ingest_worker(config(10));
    assert_eq!(w.drain().await.unwrap().dead_lettered, 1);
    let listed = tally_ingest::dead_letters::list(&db.pg, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].aggregate_id, id.as_uuid());
    assert!(
        listed[0].error.contains("schema version 2"),
        "{}",
        listed[0].error
    );
    let f = tally_ingest::watermark::measure(&db.pg).await.unwrap();
    assert!(
        f.watermark <= created,
        "an unprojected event holds the watermark back"
    );

    // The fix (a build that reads version 2) is simulated by rewriting it.
    sqlx::query("UPDATE ingest_dead_letters SET schema_version = 1")
        .execute(&db.pg)
        .await
        .unwrap();
    assert_eq!(
        tally_ingest::dead_letters::retry(&db.pg, Some(listed[0].outbox_id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        tally_ingest::dead_letters::retry(&db.pg, Some(listed[0].outbox_id))
            .await
            .unwrap(),
        0
    );
    let kept: time::OffsetDateTime = sqlx::query_scalar("SELECT created_at FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(kept, created, "retry keeps the original created_at");
    assert_eq!(w.drain().await.unwrap().projected, 1);
    assert_eq!(fact_count(&db).await, 1);
    assert_matches_oracle(&db).await;
    let f = tally_ingest::watermark::measure(&db.pg).await.unwrap();
    assert!(f.watermark > created);
}

#[tokio::test]
async fn lost_clickhouse_acknowledgements_neither_lose_nor_double_count() {
    init_logs();
    let db = TestDb::new().await;
    let upstream: std::net::SocketAddr = db.ch.url.trim_start_matches("http://").parse().unwrap();
    let proxy = tally_tests::proxy::FaultProxy::start(upstream).await;
    let via_proxy = tally_ops::ChSettings {
        url: proxy.url(),
        ..db.ch.clone()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = tally_ingest::Metrics::register(&mut registry);
    let mut w = tally_ingest::Worker::new(db.pg.clone(), via_proxy.client(), config(100), metrics);
    for i in 0..10 {
        place(&db.pg, &format!("m{}", i % 2), 100 + i).await;
    }
    let outbox = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&db.pg)
            .await
            .unwrap()
    };

    // 1. The facts insert lands but its acknowledgement is lost: the batch
    //    rolls back in PostgreSQL although ClickHouse has the rows.
    proxy.lose_acks_for("");
    assert!(w.drain().await.is_err());
    assert_eq!(fact_count(&db).await, 10, "the insert did land");
    assert_eq!(outbox().await, 10, "and the events are still in the outbox");

    // 2. The facts insert is acknowledged, the totals push lands but its
    //    acknowledgement is lost, after the PostgreSQL commit.
    proxy.lose_acks_for("daily_revenue");
    assert!(w.drain().await.is_err());
    assert_eq!(outbox().await, 0, "counted in PostgreSQL, once");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_pending_pushes")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(pending, 1);

    // 3. Recovery: everything re-sent; nothing lost, nothing doubled.
    proxy.heal();
    w.drain().await.unwrap();
    let raw_facts: u64 = db
        .ch
        .client()
        .query("SELECT count() FROM order_facts")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        raw_facts >= 20,
        "duplicates were really inserted ({raw_facts} rows)"
    );
    assert_eq!(fact_count(&db).await, 10);
    assert_matches_oracle(&db).await;
}

#[tokio::test]
async fn a_slow_worker_does_not_hold_up_the_others() {
    let db = TestDb::new().await;
    for i in 0..60 {
        place(&db.pg, &format!("m{}", i % 3), 100 + i).await;
    }
    let upstream: std::net::SocketAddr = db.ch.url.trim_start_matches("http://").parse().unwrap();
    let proxy = tally_tests::proxy::FaultProxy::start(upstream).await;
    proxy.delay_responses(std::time::Duration::from_millis(3000));
    let slow_ch = tally_ops::ChSettings {
        url: proxy.url(),
        ..db.ch.clone()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = tally_ingest::Metrics::register(&mut registry);
    let mut slow = tally_ingest::Worker::new(db.pg.clone(), slow_ch.client(), config(10), metrics);
    let slow_task = tokio::spawn(async move { slow.drain().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the slow one holds a batch

    let started = std::time::Instant::now();
    let fast = db.ingest_worker(config(10)).drain().await.unwrap();
    let fast_took = started.elapsed();
    assert!(
        fast.claimed >= 40,
        "the healthy worker drained the rest ({} claimed)",
        fast.claimed
    );
    assert!(
        fast_took < std::time::Duration::from_millis(2500),
        "and did not wait for the slow one ({fast_took:?})"
    );
    let slow = slow_task.await.unwrap();
    assert_eq!(fast.claimed + slow.claimed, 60);
    assert_eq!(fact_count(&db).await, 60);
    assert_matches_oracle(&db).await;
}

/// While a backlog drains, a pushed batch's pending record is deleted by
/// the next batch's transaction; a worker that runs out of work must delete
/// it before it measures the watermark, or "data as of" would stay behind
/// the last batch until the next event arrives (the grace and idle poll
/// here are far longer than the test).
#[tokio::test]
async fn a_worker_that_runs_out_of_work_publishes_a_complete_watermark() {
    let db = TestDb::new().await;
    for i in 0..25 {
        place(&db.pg, "m1", 100 + i).await;
    }
    let placed: time::OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    let placed_us = i64::try_from(placed.unix_timestamp_nanos() / 1_000).unwrap();
    let shutdown = tally_ops::Shutdown::new();
    let worker = db.ingest_worker(IngestConfig {
        batch_size: 10,
        pending_grace: Duration::from_secs(600),
        idle_poll: Duration::from_secs(600),
        ..Default::default()
    });
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_pending_pushes")
            .fetch_one(&db.pg)
            .await
            .unwrap();
        let watermark_us: i64 = db
            .ch
            .client()
            .query("SELECT max(watermark_us) FROM ingest_watermark")
            .fetch_one()
            .await
            .unwrap();
        if pending == 0 && watermark_us >= placed_us {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 10 s: {pending} pending pushes, watermark {}",
            watermark_us - placed_us
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_matches_oracle(&db).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A failure that hits every event alike (here: a constraint no row can
/// meet, as a bad schema change would add) is the deployment's fault, not
/// the events': the worker parks at most PARK_LIMIT of them, then stops and
/// backs off, leaving the rest in the outbox.
#[tokio::test]
async fn a_failure_of_every_event_does_not_empty_the_outbox_into_dead_letters() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE ingest_daily_totals ADD CONSTRAINT broken CHECK (gross_minor < 0)")
        .execute(&db.pg)
        .await
        .unwrap();
    let n = tally_ingest::PARK_LIMIT + 10;
    for i in 0..n {
        place(&db.pg, &format!("m{i}"), 100).await;
    }
    let err = db
        .ingest_worker(config(100))
        .drain()
        .await
        .expect_err("the worker stops parking");
    assert!(err.to_string().contains("not of the events"), "{err}");
    assert_eq!(dead_letters(&db).await.len(), tally_ingest::PARK_LIMIT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(left as usize, n - tally_ingest::PARK_LIMIT, "the rest wait");
    // Once the cause is fixed, a retry counts every one.
    sqlx::query("ALTER TABLE ingest_daily_totals DROP CONSTRAINT broken")
        .execute(&db.pg)
        .await
        .unwrap();
    tally_ingest::dead_letters::retry(&db.pg, None)
        .await
        .unwrap();
    let out = db.ingest_worker(config(100)).drain().await.unwrap();
    assert_eq!(out.projected, n);
    assert_matches_oracle(&db).await;
}
