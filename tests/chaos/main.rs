//! The chaos suite: real `tally` processes killed at random under load, then
//! every projection compared exactly with the write tables.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use tally_tests::{Ingest, TestApp, assert_projections_exact, spawn_app};

fn ingest_process(
    app: &TestApp,
    clickhouse_url: &str,
    batch_size: u32,
    claim_from: tally_ingest::ClaimFrom,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "ingest",
            "--batch-size",
            &batch_size.to_string(),
            "--ops-listen",
            "127.0.0.1:0",
            "--claim-from",
            claim_from.as_str(),
        ])
        .env("DATABASE_URL", &app.db.pg_settings.url)
        .env("CLICKHOUSE_URL", clickhouse_url)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start `tally ingest`")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.db.pg).await.unwrap()
}

/// Order traffic in rounds until `stop` fires: load that lasts as long as
/// the outage, not a fixed amount.
fn load_until(
    app: &TestApp,
    stop: &tally_ops::Shutdown,
    seed: u64,
) -> tokio::task::JoinHandle<tally_tests::load::LoadOutcome> {
    let (handle, stop) = (app.handle(), stop.clone());
    tokio::spawn(async move {
        let mut total = tally_tests::load::LoadOutcome::default();
        let mut round = 0;
        while !stop.is_cancelled() {
            let o = tally_tests::load::drive(&handle, 40, 4, seed + round).await;
            total.commands += o.commands;
            total.retries += o.retries;
            total.orders += o.orders;
            round += 1;
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ingest_workers_lose_and_double_nothing() {
    tally_tests::init_logs();
    let app = spawn_app(Ingest::Manual).await;
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let load = {
        let handle = app.handle();
        tokio::spawn(async move { tally_tests::load::drive(&handle, 400, 8, seed).await })
    };

    // A slow ClickHouse, so that kills land inside inserts and between a
    // batch's commit and its push, not only in idle time.
    let upstream = app.db.ch.url.trim_start_matches("http://").parse().unwrap();
    let proxy = tally_tests::proxy::FaultProxy::start(upstream).await;
    proxy.delay_responses(Duration::from_millis(60));
    let slow_clickhouse = tally_ops::ChSettings {
        url: proxy.url(),
        ..app.db.ch.clone()
    }
    .to_url();

    // Rebuilds and swaps in the middle of it all: the journal and the seam
    // must survive workers dying mid-batch.
    // Small comparison chunks make each run take seconds, so workers
    // commit (and die) while it builds.
    let rebuilds = {
        let db_pg = app.db.pg.clone();
        let ch = app.db.ch.client();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let opts = tally_rebuild::run::RunOptions {
                    chunk_rows: 10,
                    ..Default::default()
                };
                done.push(
                    tally_rebuild::run::run(&db_pg, &ch, tally_rebuild::run::Mode::Rebuild, &opts)
                        .await
                        .expect("rebuild during chaos"),
                );
            }
            done
        })
    };

    let started = Instant::now();
    let (mut kills, mut kills_with_pending, mut duplicate_fact_rows) = (0, 0, 0);
    let mut seen_pending = std::collections::HashSet::new();
    // Recovery after a kill: from the restart until the oldest event that
    // was waiting at that moment has been projected (its outbox row gone).
    // One entry per kill: "idle" (nothing waited), the time, or "killed
    // first" when the next kill came sooner.
    let mut per_kill: Vec<String> = Vec::new();
    let mut recoveries = Vec::new();
    while kills < 25 {
        let waiting: Option<i64> = sqlx::query_scalar("SELECT min(id) FROM outbox")
            .fetch_one(&app.db.pg)
            .await
            .unwrap();
        let restarted = Instant::now();
        let mut worker = ingest_process(
            &app,
            &slow_clickhouse,
            rng.gen_range(5..60),
            // Both ends in turn: neither may lose or double an event.
            tally_ingest::ClaimFrom::alternating(kills),
        );
        let life = Duration::from_millis(rng.gen_range(150..700));
        let recovered_before = recoveries.len();
        if let Some(id) = waiting {
            while restarted.elapsed() < life {
                let still: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)")
                        .bind(id)
                        .fetch_one(&app.db.pg)
                        .await
                        .unwrap();
                if !still {
                    recoveries.push(restarted.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        per_kill.push(match (waiting, recoveries.get(recovered_before)) {
            (None, _) => "idle".into(),
            (Some(_), Some(d)) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
            (Some(_), None) => "killed first".into(),
        });
        tokio::time::sleep(life.saturating_sub(restarted.elapsed())).await;
        kill(Pid::from_raw(worker.id() as i32), Signal::SIGKILL).unwrap();
        worker.wait().unwrap();
        kills += 1;
        // One worker at a time, and recovery only removes pending rows: a
        // row that is new since the last kill was left by this worker,
        // which died between its commit and its push.
        let pending: std::collections::HashSet<uuid::Uuid> =
            sqlx::query_scalar("SELECT batch_id FROM ingest_pending_pushes")
                .fetch_all(&app.db.pg)
                .await
                .unwrap()
                .into_iter()
                .collect();
        if pending.difference(&seen_pending).next().is_some() {
            kills_with_pending += 1;
        }
        seen_pending = pending;
        let raw: u64 = app
            .db
            .ch
            .client()
            .query("SELECT count() FROM order_facts")
            .fetch_one()
            .await
            .unwrap();
        let settled: u64 = app
            .db
            .ch
            .client()
            .query("SELECT count() FROM order_facts FINAL")
            .fetch_one()
            .await
            .unwrap();
        // Two reads, two instants: rows inserted or merged in between can
        // make `raw` the smaller one.
        duplicate_fact_rows = duplicate_fact_rows.max(raw.saturating_sub(settled)); // merges collapse them later
    }
    let outcome = load.await.unwrap();
    let rebuilt = rebuilds.await.unwrap();

    // Recovery: one clean worker drains what is left.
    let mut w = app.db.ingest_worker(Default::default());
    w.drain().await.unwrap();
    let events = count(&app, "SELECT sum(version)::int8 FROM orders").await;
    println!(
        "chaos: seed {seed}, {} commands ({} client retries), {events} events, {kills} SIGKILLs \
         ({kills_with_pending} between commit and push, {duplicate_fact_rows} fact rows re-sent), {:.1} s",
        outcome.commands,
        outcome.retries,
        started.elapsed().as_secs_f64()
    );
    println!("chaos: recovery after each kill: {}", per_kill.join(", "));
    recoveries.sort();
    if let (Some(first), Some(last)) = (recoveries.first(), recoveries.last()) {
        println!(
            "chaos: after {} of {kills} kills the restarted worker projected the oldest waiting event before \
             the next kill: {:.0} ms median ({:.0}–{:.0} ms) from restart; the others were killed sooner",
            recoveries.len(),
            recoveries[recoveries.len() / 2].as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
            last.as_secs_f64() * 1e3
        );
    }
    let replayed: u64 = rebuilt.iter().map(|r| r.replayed_events).sum();
    println!("chaos: {replayed} events consumed during rebuilds and replayed at their swaps");
    for r in &rebuilt {
        println!(
            "chaos: rebuild #{} swapped {}, {} events replayed at the seam, ingest paused {} ms, drift rows {}",
            r.run_id,
            r.swapped,
            r.replayed_events,
            r.ingest_paused_ms,
            r.differing()
        );
        assert!(r.swapped);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 0);
    assert!(
        kills_with_pending > 0,
        "no kill landed between a commit and its push; the test proved less than it claims"
    );
    assert_projections_exact(&app.db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_under_load_then_restarted_loses_and_doubles_nothing() {
    tally_tests::init_logs();
    let app = spawn_app(Ingest::Manual).await;
    // A ClickHouse of this test's own, so that stopping it harms no other test.
    let dir = std::env::temp_dir().join(format!("tally-chaos-ch-{}", uuid::Uuid::new_v4()));
    let (server, admin, _) = tally_stack::start_clickhouse(&dir, None)
        .await
        .expect("start ClickHouse");
    let port: u16 = admin.url.rsplit(':').next().unwrap().parse().unwrap();
    let ch = admin.with_database("chaos");
    tally_migrations::clickhouse::run(&ch).await.unwrap();
    let db = tally_tests::TestDb {
        ch: ch.clone(),
        ..app.db.clone()
    };

    let shutdown = tally_ops::Shutdown::new();
    let worker = db.ingest_worker(tally_ingest::IngestConfig {
        max_backoff: Duration::from_millis(500),
        ..Default::default()
    });
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let keep_loading = tally_ops::Shutdown::new();
    let load = load_until(&app, &keep_loading, 11);

    tokio::time::sleep(Duration::from_millis(700)).await;
    server.stop().await;
    let stopped_at = Instant::now();
    // Commands keep working while the read side is down.
    let placed = app
        .post_order(&tally_tests::order_body("m-down", "EUR", &[("a", 1, 100)]))
        .await;
    assert_eq!(
        placed.status(),
        201,
        "the command API does not depend on ClickHouse"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let backlog = count(&app, "SELECT count(*) FROM outbox").await;
    assert!(
        backlog > 100,
        "events wait in the outbox while ClickHouse is down (only {backlog})"
    );

    let (server, _, _) = tally_stack::start_clickhouse(&dir, Some(port))
        .await
        .expect("restart ClickHouse");
    let down_for = stopped_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    keep_loading.cancel();
    let outcome = load.await.unwrap();
    let recovered = tally_tests::ingest_drained(&app.db.pg, Duration::from_secs(30)).await;
    assert!(
        recovered,
        "the worker resumed by itself and drained the backlog"
    );
    println!(
        "chaos: ClickHouse down {:.1} s with {backlog} events waiting; {} commands; recovered {:.1} s after restart",
        down_for.as_secs_f64(),
        outcome.commands,
        stopped_at
            .elapsed()
            .checked_sub(down_for)
            .unwrap()
            .as_secs_f64()
    );
    shutdown.cancel();
    worker_task.await.unwrap().unwrap();
    assert_projections_exact(&db).await;
    server.stop().await;
    tally_stack::remove_data_dir(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_and_doubles_nothing() {
    tally_tests::init_logs();
    // A PostgreSQL of this test's own, so that restarting it harms no other
    // test; ClickHouse is the shared one (a database of its own).
    let dir = std::env::temp_dir().join(format!("tally-chaos-pg-{}", uuid::Uuid::new_v4()));
    let (server, url) = tally_stack::start_postgres(&dir, 100, false, None)
        .await
        .expect("start PostgreSQL");
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|s| s.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let mut pg_settings = tally_ops::PgSettings::new(&url, "tally-chaos");
    pg_settings.max_connections = 10;
    let pg = pg_settings.connect().await.expect("connect");
    let ch = tally_tests::TestDb::fresh_clickhouse();
    tally_migrations::migrate(&pg, &ch).await.expect("migrate");
    let db = tally_tests::TestDb {
        pg,
        pg_settings,
        ch_reader: tally_tests::TestDb::clickhouse_reader(&ch),
        ch,
    };
    let app = tally_tests::spawn_app_on(db, Ingest::Running).await;

    let keep_loading = tally_ops::Shutdown::new();
    let load = load_until(&app, &keep_loading, 21);
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.stop().await;
    let stopped_at = Instant::now();
    // The API stays up and says "try again", with a hint when.
    let down = app
        .post_order(&tally_tests::order_body("m-down", "EUR", &[("a", 1, 100)]))
        .await;
    assert_eq!(
        down.status(),
        503,
        "commands are refused while PostgreSQL is down"
    );
    assert!(down.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (server, _) = tally_stack::start_postgres(&dir, 100, false, Some(port))
        .await
        .expect("restart PostgreSQL on the same port");
    let down_for = stopped_at.elapsed();
    // Commands succeed again without restarting the services.
    let back = tally_tests::eventually(Duration::from_secs(20), || async {
        let r = app
            .post_order(&tally_tests::order_body("m-back", "EUR", &[("a", 1, 100)]))
            .await;
        (r.status() == 201).then_some(())
    })
    .await;
    assert!(back.is_some(), "the API recovers by itself");
    let recovered_in = stopped_at.elapsed().saturating_sub(down_for);
    tokio::time::sleep(Duration::from_millis(800)).await;
    keep_loading.cancel();
    let outcome = load.await.unwrap();

    // Every lifecycle the clients completed is one order, however many
    // times its commands were retried across the outage.
    let orders = count(
        &app,
        "SELECT count(*) FROM orders WHERE merchant_id NOT IN ('m-down', 'm-back')",
    )
    .await;
    assert_eq!(
        orders as u64, outcome.orders,
        "one order per client lifecycle ({} retries)",
        outcome.retries
    );
    let drained = tally_tests::ingest_drained(&app.db.pg, Duration::from_secs(30)).await;
    assert!(drained, "the ingest reconnects and drains");
    println!(
        "chaos: PostgreSQL down {:.1} s; {} commands, {} retried by clients, {orders} orders; \
         commands accepted again {:.1} s after restart",
        down_for.as_secs_f64(),
        outcome.commands,
        outcome.retries,
        recovered_in.as_secs_f64()
    );
    assert!(outcome.retries > 0, "the outage was felt by the clients");
    assert_projections_exact(&app.db).await;
    app.stop().await;
    server.stop().await;
    tally_stack::remove_data_dir(&dir);
}
