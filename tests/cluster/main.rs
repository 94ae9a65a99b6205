//! The read side on a replicated ClickHouse (`1x2`: one shard, two
//! replicas, one ZooKeeper), all real servers started by `tally-stack`:
//! migrations make every table replicated on every node; a replica or
//! ZooKeeper SIGKILLed under load loses and doubles nothing, and afterwards
//! every projection on every replica equals the write store exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally_tests::cluster::{self, ClusterDb};
use tally_tests::{Ingest, ingest_drained, load, spawn_app_on};

#[tokio::test]
async fn migrations_make_every_table_replicated_on_every_node_and_record_it_on_each() {
    let guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    // A second and third starter at once: the PostgreSQL lock makes them
    // take turns, and they find nothing left to do.
    let pg = db.replicas[0].pg.clone();
    let (a, b) = tokio::join!(
        tally_migrations::migrate_cluster(&pg, &db.cluster),
        tally_migrations::migrate_cluster(&pg, &db.cluster),
    );
    a.expect("second starter");
    b.expect("third starter");
    for r in &db.replicas {
        let engines: Vec<(String, String)> = r
            .ch
            .client()
            .query("SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name")
            .fetch_all()
            .await
            .expect("tables");
        let names: Vec<&str> = engines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "daily_revenue",
                "ingest_watermark",
                "order_facts",
                "order_facts_by_customer",
                "order_facts_by_id",
                "schema_migrations"
            ],
            "{}",
            r.ch.url
        );
        for (name, engine) in &engines {
            if name == "schema_migrations" {
                // Each node's own record of what it applied.
                assert_eq!(engine, "MergeTree");
            } else {
                assert!(
                    engine.starts_with("Replicated"),
                    "{name} on {} is {engine}",
                    r.ch.url
                );
            }
        }
        let versions: Vec<u32> =
            r.ch.client()
                .query("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all()
                .await
                .expect("versions");
        assert_eq!(
            versions,
            (1..=tally_migrations::clickhouse::MIGRATIONS.len() as u32).collect::<Vec<_>>(),
            "each migration recorded once on {}",
            r.ch.url
        );
        assert!(
            tally_migrations::clickhouse::is_up_to_date(&r.ch)
                .await
                .unwrap()
        );
    }
    // Replication works: a row written on one node is read on the other.
    db.replicas[0]
        .ch
        .client()
        .query("INSERT INTO ingest_watermark VALUES ('probe', 42, now())")
        .execute()
        .await
        .expect("insert on the first replica");
    let seen = tally_tests::eventually(Duration::from_secs(30), || async {
        let n: u64 = db.replicas[1]
            .ch
            .client()
            .query("SELECT count() FROM ingest_watermark WHERE stream = 'probe'")
            .fetch_one()
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the second replica never saw the row");
}

/// Steady load through the real services, whose ClickHouse is the first
/// replica; the second is SIGKILLed mid-load and restarted while the load
/// goes on. It catches up from its peer, and both replicas then hold
/// exactly what the write store says.
#[tokio::test]
async fn a_replica_killed_under_load_catches_up_and_every_replica_is_exact() {
    let mut guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let app = spawn_app_on(db.replicas[0].clone(), Ingest::Running).await;

    let first = load::drive(&app, 150, 8, 1).await;
    guard.kill_node(1).await;
    let during = load::drive(&app, 150, 8, 2).await;
    let dash = app.dash("/v1/revenue/daily?currency=EUR&days=30").await;
    assert_eq!(
        dash.status(),
        200,
        "the dashboards read the live replica while the other is down"
    );
    assert!(
        ingest_drained(&app.db.pg, Duration::from_secs(60)).await,
        "the ingest keeps projecting through the live replica"
    );
    guard.restart_node(1).await.expect("restart the replica");
    let after = load::drive(&app, 100, 8, 3).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    let compared = db.assert_every_replica_exact().await;
    let orders = first.orders + during.orders + after.orders;
    println!(
        "replica kill: 1 SIGKILL, {orders} orders ({} commands) placed, {} during the outage; \
         exact on {} replicas: {:?}",
        first.commands + during.commands + after.commands,
        during.orders,
        db.replicas.len(),
        compared
            .iter()
            .map(|c| (c.orders, c.cells))
            .collect::<Vec<_>>()
    );
    assert_eq!(compared[0].orders as u64, orders);
    app.stop().await;
}

/// ZooKeeper SIGKILLed under load: replicated tables turn read-only, the
/// ingest's inserts fail and it backs off with the events kept in the
/// outbox; once ZooKeeper is back it projects them, once each.
#[tokio::test]
async fn zookeeper_killed_under_load_delays_the_ingest_and_loses_nothing() {
    let mut guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let app = spawn_app_on(db.replicas[0].clone(), Ingest::Running).await;

    let first = load::drive(&app, 100, 8, 11).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    guard.kill_zookeeper().await;
    let during = load::drive(&app, 150, 8, 12).await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db.pg)
        .await
        .expect("outbox");
    guard.restart_zookeeper().await.expect("restart ZooKeeper");
    let after = load::drive(&app, 100, 8, 13).await;
    assert!(
        ingest_drained(&app.db.pg, Duration::from_secs(120)).await,
        "the ingest did not resume after ZooKeeper came back"
    );
    let compared = db.assert_every_replica_exact().await;
    let orders = first.orders + during.orders + after.orders;
    println!(
        "ZooKeeper kill: 1 SIGKILL, {orders} orders placed, {} while it was down \
         ({waiting} events waited in the outbox); exact on {} replicas",
        during.orders,
        db.replicas.len()
    );
    assert_eq!(compared[1].orders as u64, orders);
    app.stop().await;
}

/// A rebuild on the cluster: its copies are replicated tables on every
/// node, its swap reaches both replicas through ZooKeeper's log, and a
/// rollback brings the previous tables back on both.
#[tokio::test]
async fn a_rebuild_swaps_and_rolls_back_on_every_replica() {
    use tally_rebuild::run::{Mode, RunOptions, rollback, run};
    let guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let app = spawn_app_on(db.replicas[0].clone(), Ingest::Running).await;
    load::drive(&app, 120, 8, 21).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);

    // A ghost cell on the first replica: drift the rebuild removes.
    let ch = db.replicas[0].ch.client();
    let mut ghost: tally_projection::DailyRow = ch
        .query("SELECT ?fields FROM daily_revenue FINAL LIMIT 1")
        .fetch_one()
        .await
        .expect("a cell");
    ghost.merchant_id = "m-ghost".into();
    tally_projection::insert_rows(&ch, "daily_revenue", std::slice::from_ref(&ghost))
        .await
        .expect("ghost");
    let opts = RunOptions::default();
    let rebuilt = run(&app.db.pg, &ch, Mode::Rebuild, &opts)
        .await
        .expect("rebuild on the cluster");
    assert_eq!(rebuilt.daily.extra, 1, "{rebuilt:#?}");
    load::drive(&app, 60, 8, 22).await; // events after the swap
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    db.assert_every_replica_exact().await;
    for r in &db.replicas {
        let copies: Vec<(String, String)> = r
            .ch
            .client()
            .query("SELECT name, engine FROM system.tables WHERE database = currentDatabase() AND name LIKE '%_previous' ORDER BY name")
            .fetch_all()
            .await
            .expect("copies");
        assert_eq!(
            copies.len(),
            4,
            "the previous tables on {}: {copies:?}",
            r.ch.url
        );
        assert!(
            copies.iter().all(|(_, e)| e.starts_with("Replicated")),
            "{copies:?}"
        );
    }

    // The rollback brings the ghost back, on both replicas.
    rollback(&app.db.pg, &ch, &opts).await.expect("rollback");
    assert!(db.replicated(Duration::from_secs(120)).await);
    for r in &db.replicas {
        let ghosts: u64 =
            r.ch.client()
                .query("SELECT count() FROM daily_revenue WHERE merchant_id = 'm-ghost'")
                .fetch_one()
                .await
                .expect("ghosts");
        assert_eq!(ghosts, 1, "the ghost is back on {}", r.ch.url);
    }
    println!(
        "rebuild on 1x2: swapped run {} (1 drifting cell removed), rolled back; both replicas agree",
        rebuilt.run_id
    );
    app.stop().await;
}

/// The replica both the ingest and the dashboards use is SIGKILLed under
/// load, with readers polling: the ingest moves to the other replica and
/// keeps projecting, the dashboards answer from it (a read in flight is
/// retried there, not failed), and once the killed replica is back and
/// caught up (rows only it had acknowledged come back with it) both
/// replicas equal the write store exactly.
#[tokio::test]
async fn the_replica_in_use_killed_under_load_fails_over_and_loses_nothing() {
    let mut guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let writers: Vec<_> = db.replicas.iter().map(|r| r.ch.clone()).collect();
    let readers: Vec<_> = db.replicas.iter().map(|r| r.ch_reader.clone()).collect();
    let app = tally_tests::spawn_app_on_replicas(
        db.replicas[0].clone(),
        &writers,
        &readers,
        Ingest::Running,
    )
    .await;
    let first = load::drive(&app, 120, 8, 31).await;

    // Readers poll the dashboards throughout the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (app, stop) = (app.handle(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let r = app.dash("/v1/revenue/daily?days=30").await;
                if r.status() == 200 {
                    ok += 1;
                } else {
                    failed.push(r.status().as_u16());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    guard.kill_node(0).await;
    let during = load::drive(&app, 150, 8, 32).await;
    assert!(
        ingest_drained(&app.db.pg, Duration::from_secs(60)).await,
        "the ingest did not move to the live replica"
    );
    // Not yet everything is on the live replica: replication is
    // asynchronous, and batches the killed replica acknowledged before its
    // peer fetched them come back with it (the comparison after the
    // restart holds every replica to every row). Counted, for the record.
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .expect("orders");
    let on_live: u64 = db.replicas[1]
        .ch
        .client()
        .query("SELECT uniqExact(order_id) FROM order_facts")
        .fetch_one()
        .await
        .expect("facts on the live replica");
    stop.store(true, Ordering::SeqCst);
    let (reads_ok, reads_failed) = poller.await.expect("poller");

    guard.restart_node(0).await.expect("restart the replica");
    let after = load::drive(&app, 80, 8, 33).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    db.assert_every_replica_exact().await;
    let orders = first.orders + during.orders + after.orders;
    println!(
        "failover: 1 SIGKILL of the replica in use, {orders} orders placed, {} while it was down; \
         dashboard reads during the outage: {reads_ok} answered 200, failed: {reads_failed:?}; \
         during the outage the live replica held {on_live} of {placed} orders (the rest were \
         acknowledged by the killed one only); exact on both replicas afterwards",
        during.orders
    );
    assert!(reads_ok > 0);
    assert!(
        reads_failed.is_empty(),
        "a read failed instead of moving to the live replica: {reads_failed:?}"
    );
    app.stop().await;
}

/// Each table replicates on its own: a replica the ingest does not write
/// to can hold the newest watermark before the rows it covers. Replica 2
/// is kept from fetching `order_facts_by_id` while the ingest writes to
/// replica 1 and the dashboards read replica 2: a read with the token
/// waits (425), never answers "not found", and freshness claims nothing
/// that replica lacks; once it fetches again the read answers the order.
#[tokio::test]
async fn a_replica_that_lacks_rows_the_watermark_covers_does_not_vouch_for_them() {
    let guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let (r1, r2) = (&db.replicas[0], &db.replicas[1]);
    let app = tally_tests::spawn_app_on_replicas(
        r1.clone(),
        std::slice::from_ref(&r1.ch),
        &[r2.ch_reader.clone(), r2.ch_reader.clone()],
        Ingest::Running,
    )
    .await;
    load::drive(&app, 20, 4, 41).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    assert!(db.replicated(Duration::from_secs(60)).await);

    r2.ch
        .client()
        .query("SYSTEM STOP FETCHES order_facts_by_id")
        .execute()
        .await
        .expect("stop fetches on replica 2");
    let placed = app
        .post_order(&tally_tests::order_body(
            "m-held",
            "EUR",
            &[("sku", 1, 700)],
        ))
        .await;
    assert_eq!(placed.status(), 201);
    let token = placed.headers()["tally-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = placed.json::<serde_json::Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(30)).await);
    // The watermark covering the order reaches replica 2; the order's row
    // in order_facts_by_id does not.
    let token_us = i64::from_str_radix(token.trim_start_matches("1."), 16).expect("token");
    let reached = tally_tests::eventually(Duration::from_secs(30), || async {
        let us = tally_projection::watermark::published_micros(&r2.ch.client())
            .await
            .ok()?;
        (us > token_us).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the watermark never reached replica 2");

    let with_token = app.dash(&format!("/v1/orders/{id}?after={token}")).await;
    assert_eq!(
        with_token.status(),
        425,
        "replica 2 lacks the row: the read must wait, not answer"
    );
    let without = app.dash(&format!("/v1/orders/{id}")).await;
    assert_eq!(without.status(), 404);
    // Freshness read there claims nothing at or after the order's write.
    let fresh: serde_json::Value = app.dash("/v1/freshness").await.json().await.unwrap();
    let claimed = fresh["complete_up_to"].as_str().unwrap_or("").to_owned();
    let claimed_us =
        time::OffsetDateTime::parse(&claimed, &time::format_description::well_known::Rfc3339)
            .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000) as i64);
    assert!(
        claimed_us <= token_us,
        "replica 2 claims completeness up to {claimed} past the order it lacks ({fresh})"
    );

    r2.ch
        .client()
        .query("SYSTEM START FETCHES order_facts_by_id")
        .execute()
        .await
        .expect("start fetches");
    // The held entry is retried on ClickHouse's own backoff: seconds.
    let read = tally_tests::eventually(Duration::from_secs(60), || async {
        let r = app.dash(&format!("/v1/orders/{id}?after={token}")).await;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(read.is_some(), "once fetched, the read answers");
    println!(
        "held replica: the read with the token waited (425) and the read without it said \
         404 with freshness up to {claimed:?}, before the order's write; after fetching: 200"
    );
    app.stop().await;
}

/// A replica SIGKILLed while a rebuild runs under load: the run ends
/// (swapped, or failed within the bounded `ON CLUSTER` wait), a run
/// started while the replica is known to be down is refused at once with
/// the fix, and once it is back the next run completes; every replica then
/// equals the write store exactly.
#[tokio::test]
async fn a_replica_lost_during_a_rebuild_is_waited_for_and_the_next_run_completes() {
    use tally_rebuild::RebuildError;
    use tally_rebuild::run::{Mode, RunOptions, run};
    let mut guard = cluster::take().await;
    let db = ClusterDb::new(&guard).await;
    let app = spawn_app_on(db.replicas[0].clone(), Ingest::Running).await;
    load::drive(&app, 150, 8, 51).await;
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    let ch = db.replicas[0].ch.client();
    let opts = RunOptions::default();

    let started = std::time::Instant::now();
    let rebuild = {
        let (pg, ch, opts) = (app.db.pg.clone(), ch.clone(), opts.clone());
        tokio::spawn(async move { run(&pg, &ch, Mode::Rebuild, &opts).await })
    };
    let during = load::drive(&app, 40, 4, 52).await;
    guard.kill_node(1).await;
    let first = rebuild.await.expect("rebuild task");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(
            u64::from(tally_rebuild::tables::CLUSTER_DDL_TIMEOUT_SECS) * 6 + 30
        ),
        "the run hung: {took:?}"
    );

    // Once ZooKeeper has noticed the replica is gone, a run is refused at once.
    let refused = tally_tests::eventually(Duration::from_secs(60), || async {
        match run(&app.db.pg, &ch, Mode::Rebuild, &opts).await {
            Err(RebuildError::Refused(why)) => Some(why),
            _ => None,
        }
    })
    .await
    .expect("a run while a replica is down is refused");
    assert!(refused.contains("replicas"), "{refused}");

    guard.restart_node(1).await.expect("restart the replica");
    let next = tally_tests::eventually(Duration::from_secs(90), || async {
        run(&app.db.pg, &ch, Mode::Rebuild, &opts).await.ok()
    })
    .await
    .expect("the next run completes once every replica is back");
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(60)).await);
    let compared = db.assert_every_replica_exact().await;
    println!(
        "replica lost mid-rebuild: the running rebuild ended in {took:?} ({}), {} orders placed \
         meanwhile; a run with the replica down was refused (\"{refused}\"); the next run {} \
         swapped; exact on both replicas: {:?}",
        match &first {
            Ok(o) => format!("run {} finished", o.run_id),
            Err(e) => format!("failed: {e}"),
        },
        during.orders,
        next.run_id,
        compared
            .iter()
            .map(|c| (c.orders, c.cells))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}
