//! Rebuild, verification, rollback and reconciliation against real stores:
//! drift injected into the live projections is reported row by row and
//! repaired; a rebuild under concurrent load loses and doubles nothing at
//! the seam; a rollback puts the old tables back, moved forward; a crashed
//! swap holds the ingest until the next run completes it.

use std::collections::BTreeSet;
use std::time::Duration;

use tally_projection::{DailyRow, FactRow};
use tally_rebuild::RebuildError;
use tally_rebuild::compare::Kind;
use tally_rebuild::run::{Mode, RunOptions, RunOutcome, history, rollback, run};
use tally_tests::load::drive;
use tally_tests::{
    Ingest, TestApp, TestDb, assert_projections_exact, eventually, ingest_drained, init_logs,
    spawn_app,
};

/// Small chunks, so every test crosses chunk boundaries.
fn opts() -> RunOptions {
    RunOptions {
        chunk_rows: 7,
        insert_rows: 50,
        ..RunOptions::default()
    }
}

/// Waits until the running ingest has consumed the outbox and pushed
/// everything, then checks the projections against the write store.
async fn settle(db: &TestDb) {
    assert!(
        ingest_drained(&db.pg, Duration::from_secs(30)).await,
        "the ingest drains the outbox within 30 s"
    );
    assert_projections_exact(db).await;
}

async fn verify(db: &TestDb, mode: Mode) -> RunOutcome {
    run(&db.pg, &db.ch.client(), mode, &opts())
        .await
        .expect("run")
}

async fn wait_for_mutations(db: &TestDb) {
    eventually(Duration::from_secs(20), || async {
        let pending: u64 = db
            .ch
            .client()
            .query("SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
            .fetch_one()
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await
    .expect("ClickHouse finishes the delete mutation");
}

fn cell_key(r: &DailyRow) -> String {
    format!(
        "{}/{}/{}",
        r.day,
        r.merchant_id,
        String::from_utf8_lossy(&r.currency)
    )
}

/// Keys of the differing rows, from the CSV report.
fn report_keys(path: &std::path::Path) -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(path).expect("report written");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(tally_rebuild::report::CsvReport::HEADER));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect()
}

async fn load(app: &TestApp, orders: usize, seed: u64) {
    let r = drive(app, orders, 4, seed).await;
    assert!(r.orders >= orders as u64, "{r:?}");
}

#[tokio::test]
async fn verify_reports_exactly_the_injected_drift_and_repair_removes_it() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    load(&app, 60, 5).await;
    settle(&app.db).await;
    let ch = app.db.ch.client();

    let clean = verify(&app.db, Mode::Verify).await;
    assert!(!clean.has_drift(), "{clean:#?}");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert_eq!(clean.facts.compared, orders as u64);
    assert_eq!(clean.fact_copies.len(), 2, "{clean:#?}");
    for (name, copy) in &clean.fact_copies {
        assert_eq!(copy.compared, orders as u64, "{name}");
    }
    assert_eq!(clean.orders, orders as u64);
    assert!(
        clean.daily.compared > 7,
        "crosses chunks: {}",
        clean.daily.compared
    );

    // Three kinds of drift in each projection.
    let cells: Vec<DailyRow> = ch
        .query(
            "SELECT ?fields FROM daily_revenue FINAL ORDER BY day, merchant_id, currency LIMIT 2",
        )
        .fetch_all()
        .await
        .unwrap();
    let mut changed = cells[0].clone();
    changed.gross_minor += 123;
    changed.version += 1;
    let deleted = cells[1].clone();
    let mut ghost = cells[0].clone();
    ghost.merchant_id = "m-ghost".into();
    ch.query("ALTER TABLE daily_revenue DELETE WHERE day = toDate(?) AND merchant_id = ? AND currency = ?")
        .bind(deleted.day.to_string())
        .bind(&deleted.merchant_id)
        .bind(String::from_utf8_lossy(&deleted.currency).into_owned())
        .execute()
        .await
        .unwrap();
    let facts: Vec<FactRow> = ch
        .query("SELECT ?fields FROM order_facts FINAL ORDER BY order_id LIMIT 3")
        .fetch_all()
        .await
        .unwrap();
    let mut changed_fact = facts[0].clone();
    changed_fact.captured_minor += 1;
    changed_fact.version += 1;
    let deleted_fact = facts[1].clone();
    // Only a column the comparison hashes: no money, not even the version.
    let renamed_fact = facts[2].clone();
    ch.query("ALTER TABLE order_facts UPDATE customer_id = concat(customer_id, '-renamed') WHERE order_id = toUUID(?)")
        .bind(renamed_fact.order_id.to_string())
        .execute()
        .await
        .unwrap();
    let mut ghost_fact = facts[0].clone();
    ghost_fact.order_id = uuid::Uuid::now_v7();
    ch.query("ALTER TABLE order_facts DELETE WHERE order_id = toUUID(?)")
        .bind(deleted_fact.order_id.to_string())
        .execute()
        .await
        .unwrap();
    // A copy drifts on its own: an order gone from the by-id table only.
    ch.query("ALTER TABLE order_facts_by_id DELETE WHERE order_id = toUUID(?)")
        .bind(changed_fact.order_id.to_string())
        .execute()
        .await
        .unwrap();
    wait_for_mutations(&app.db).await;
    tally_projection::insert_rows(&ch, "daily_revenue", &[changed.clone(), ghost.clone()])
        .await
        .unwrap();
    tally_projection::insert_rows(
        &ch,
        "order_facts",
        &[changed_fact.clone(), ghost_fact.clone()],
    )
    .await
    .unwrap();

    let report = std::env::temp_dir().join(format!("tally-drift-{}.csv", uuid::Uuid::now_v7()));
    let drifted = run(
        &app.db.pg,
        &ch,
        Mode::Verify,
        &RunOptions {
            report_file: Some(report.clone()),
            ..opts()
        },
    )
    .await
    .unwrap();
    let d = &drifted.daily;
    assert_eq!((d.missing, d.extra, d.different), (1, 1, 1), "{d:#?}");
    let f = &drifted.facts;
    assert_eq!((f.missing, f.extra, f.different), (1, 1, 2), "{f:#?}");
    let by_id = &drifted.fact_copies["order_facts_by_id"];
    assert_eq!(
        (by_id.missing, by_id.extra, by_id.different),
        (1, 0, 0),
        "{by_id:#?}"
    );
    let by_customer = &drifted.fact_copies["order_facts_by_customer"];
    assert_eq!(by_customer.differing(), 0, "{by_customer:#?}");
    assert_eq!(
        d.matching + 2,
        clean.daily.matching,
        "every other cell matches"
    );
    assert!(!drifted.swapped);
    let cur = String::from_utf8_lossy(&changed.currency).into_owned();
    let deleted_same_currency = if deleted.currency == changed.currency {
        deleted.gross_minor
    } else {
        0
    };
    assert_eq!(
        d.drift_by_currency[&cur]["gross_minor"],
        i128::from(123 + ghost.gross_minor + deleted_same_currency),
        "changed by 123, plus the ghost's and the deleted cell's whole amounts"
    );
    let by_key: Vec<(String, Kind)> = d
        .worst
        .iter()
        .chain(f.worst.iter())
        .map(|r| (r.key.clone(), r.kind))
        .collect();
    for want in [
        (cell_key(&changed), Kind::Different),
        (cell_key(&deleted), Kind::Missing),
        (cell_key(&ghost), Kind::Extra),
        (changed_fact.order_id.to_string(), Kind::Different),
        (deleted_fact.order_id.to_string(), Kind::Missing),
        (ghost_fact.order_id.to_string(), Kind::Extra),
        (renamed_fact.order_id.to_string(), Kind::Different),
    ] {
        assert!(by_key.contains(&want), "{want:?} not in {by_key:?}");
    }
    let keys: BTreeSet<String> = report_keys(&report)
        .into_iter()
        .map(|(_, _, k)| k)
        .collect();
    assert_eq!(keys.len(), 7, "exactly the seven injected rows: {keys:?}");
    let _ = std::fs::remove_file(&report);

    let repaired = verify(&app.db, Mode::Repair).await;
    assert!(repaired.swapped && repaired.has_drift());
    let after = verify(&app.db, Mode::Verify).await;
    assert!(!after.has_drift(), "{after:#?}");

    // The ingest carries on from the repaired tables.
    load(&app, 20, 6).await;
    settle(&app.db).await;
    app.stop().await;
}

#[tokio::test]
async fn rebuild_under_concurrent_load_loses_and_doubles_nothing() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    load(&app, 40, 7).await;
    settle(&app.db).await;

    // Drift in the ingest's own running totals: the next push of that cell
    // would carry it into ClickHouse. A rebuild must fix the source too.
    sqlx::query(
        "UPDATE ingest_daily_totals SET gross_minor = gross_minor + 7
         WHERE (day, merchant_id, currency) IN (SELECT day, merchant_id, currency FROM ingest_daily_totals LIMIT 1)",
    )
    .execute(&app.db.pg)
    .await
    .unwrap();

    let traffic = {
        let app = app.handle();
        tokio::spawn(async move { drive(&app, 600, 6, 8).await })
    };
    // Alternately over the cells' memory budget and within it.
    let in_memory = RunOptions {
        chunk_rows: 100_000,
        ..opts()
    };
    let mut runs = Vec::new();
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let o = if i % 2 == 0 {
            opts()
        } else {
            in_memory.clone()
        };
        runs.push(
            run(&app.db.pg, &app.db.ch.client(), Mode::Rebuild, &o)
                .await
                .expect("run"),
        );
    }
    let report = traffic.await.unwrap();
    assert!(report.orders >= 600, "{report:?}");
    for r in &runs {
        assert!(r.swapped, "run #{} swapped", r.run_id);
    }
    assert_eq!(
        runs[0].ingest_totals_drift, 1,
        "the corrupted running total is found at the snapshot"
    );
    assert_eq!(runs[1].ingest_totals_drift, 0, "and aligned by the swap");
    assert!(
        runs.iter().any(|r| r.replayed_events > 0),
        "the ingest consumed events during a run, so the seam was exercised: {:?}",
        runs.iter().map(|r| r.replayed_events).collect::<Vec<_>>()
    );
    // Later runs, on repaired tables, find nothing though commands and
    // ingest kept going: the snapshot and the frozen copy are the same instant.
    for r in &runs[2..] {
        assert!(!r.has_drift(), "no drift at the seam under load: {r:#?}");
    }
    settle(&app.db).await;
    let last = verify(&app.db, Mode::Verify).await;
    assert!(!last.has_drift(), "{last:#?}");
    let totals_drift: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM ingest_daily_totals t FULL JOIN ({}) o
           ON (o.day, o.merchant_id, o.currency) = (t.day, t.merchant_id, t.currency)
         WHERE o.gross_minor IS DISTINCT FROM t.gross_minor::numeric
            OR o.captured_minor IS DISTINCT FROM t.captured_minor::numeric",
        "SELECT day, merchant_id, currency, sum(gross)::numeric AS gross_minor, sum(captured)::numeric AS captured_minor FROM (
            SELECT placed_at::date AS day, merchant_id, currency,
                   (SELECT sum(quantity::int8 * unit_price_minor) FROM order_items i WHERE i.order_id = o.order_id) AS gross, 0 AS captured
            FROM orders o
            UNION ALL
            SELECT p.captured_at::date, o.merchant_id, o.currency, 0, p.amount_minor FROM payments p JOIN orders o USING (order_id)
         ) c GROUP BY 1, 2, 3"
    ))
    .fetch_one(&app.db.pg)
    .await
    .unwrap();
    assert_eq!(
        totals_drift, 0,
        "the ingest's running totals equal the write store"
    );
    app.stop().await;
}

/// Events still in the outbox at the snapshot are not in the live
/// projections yet. Both ways of summing the cells (in memory, and partly
/// in PostgreSQL past the memory budget) must leave them out, or every
/// verification under traffic would report drift that is not there.
#[tokio::test]
async fn events_still_in_the_outbox_are_left_out_whether_the_cells_spill_or_not() {
    init_logs();
    let app = spawn_app(Ingest::Manual).await;
    let drain = || async {
        app.db
            .ingest_worker(tally_ingest::IngestConfig {
                pending_grace: Duration::ZERO,
                ..Default::default()
            })
            .drain()
            .await
            .unwrap();
    };
    load(&app, 40, 21).await;
    drain().await;
    // More orders, payments and refunds, on the same merchants and days.
    load(&app, 25, 22).await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert!(pending > 25, "a backlog is waiting: {pending}");

    let spilled = RunOptions {
        chunk_rows: 2,
        ..opts()
    };
    let in_memory = RunOptions {
        chunk_rows: 100_000,
        ..opts()
    };
    for o in [&spilled, &in_memory] {
        let r = run(&app.db.pg, &app.db.ch.client(), Mode::Verify, o)
            .await
            .unwrap();
        assert!(
            r.cells > spilled.cells_in_memory() as u64,
            "the small budget spills"
        );
        assert!(!r.has_drift(), "chunk_rows {}: {r:#?}", o.chunk_rows);
        assert!(r.orders_not_compared >= 25, "{}", r.orders_not_compared);
    }
    drain().await;
    for o in [&spilled, &in_memory] {
        let r = run(&app.db.pg, &app.db.ch.client(), Mode::Verify, o)
            .await
            .unwrap();
        assert!(!r.has_drift(), "chunk_rows {}: {r:#?}", o.chunk_rows);
        assert_eq!(r.orders_not_compared, 0);
    }
    assert_projections_exact(&app.db).await;
    app.stop().await;
}

#[tokio::test]
async fn rollback_restores_the_previous_tables_moved_forward_by_later_events() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    load(&app, 30, 9).await;
    settle(&app.db).await;
    let ch = app.db.ch.client();

    // Nothing to roll back yet.
    let err = rollback(&app.db.pg, &ch, &opts()).await.unwrap_err();
    assert!(matches!(err, RebuildError::Refused(_)), "{err}");

    // A ghost cell the rebuild removes and the rollback brings back.
    let mut ghost: DailyRow = ch
        .query("SELECT ?fields FROM daily_revenue FINAL LIMIT 1")
        .fetch_one()
        .await
        .unwrap();
    ghost.merchant_id = "m-ghost".into();
    tally_projection::insert_rows(&ch, "daily_revenue", std::slice::from_ref(&ghost))
        .await
        .unwrap();
    let rebuilt = verify(&app.db, Mode::Rebuild).await;
    assert_eq!(rebuilt.daily.extra, 1);
    assert!(!verify(&app.db, Mode::Verify).await.has_drift());

    load(&app, 25, 10).await; // events after the swap
    settle(&app.db).await;
    let rolled = rollback(&app.db.pg, &ch, &opts()).await.unwrap();
    assert_eq!(rolled.rolled_back_run, rebuilt.run_id);

    // The previous tables are back (with the ghost) and include every
    // event consumed since: only the ghost differs from the write store.
    let after = verify(&app.db, Mode::Verify).await;
    assert_eq!(
        (
            after.daily.extra,
            after.daily.missing,
            after.daily.different
        ),
        (1, 0, 0),
        "{after:#?}"
    );
    assert_eq!(after.facts.differing(), 0, "{after:#?}");
    assert_eq!(after.daily.worst[0].key, cell_key(&ghost));

    let again = rollback(&app.db.pg, &ch, &opts()).await.unwrap_err();
    assert!(matches!(again, RebuildError::Refused(_)), "{again}");

    let h = history(&app.db.pg, 10).await.unwrap();
    let states: Vec<(&str, &str)> = h
        .iter()
        .map(|r| (r.kind.as_str(), r.state.as_str()))
        .collect();
    assert!(states.contains(&("rollback", "swapped")), "{states:?}");
    assert!(states.contains(&("rebuild", "rolled_back")), "{states:?}");
    assert!(states.contains(&("verify", "verified")), "{states:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_second_run_is_skipped_and_recorded_while_one_holds_the_lock() {
    init_logs();
    let db = TestDb::new().await;
    let mut holder = sqlx::PgConnection::connect(&db.pg_settings.url)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(tally_rebuild::run::RUN_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let err = run(&db.pg, &db.ch.client(), Mode::Rebuild, &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, RebuildError::Busy(_)), "{err}");
    let h = history(&db.pg, 5).await.unwrap();
    assert_eq!(h[0].state, "skipped");
    assert!(
        h[0].message
            .as_deref()
            .unwrap_or("")
            .contains("holds the lock")
    );
    drop(holder);
    let ok = run(&db.pg, &db.ch.client(), Mode::Rebuild, &opts())
        .await
        .unwrap();
    assert!(ok.swapped && !ok.has_drift());
}

use sqlx::Connection as _;

#[tokio::test]
async fn an_interrupted_swap_holds_the_ingest_until_the_next_run_completes_it() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    load(&app, 10, 11).await;
    settle(&app.db).await;
    let ch = app.db.ch.client();
    // What a crash between the PostgreSQL commit and the partition swap
    // leaves: a `swapping` run and its shadow tables.
    tally_rebuild::tables::freeze_live(&ch, tally_rebuild::tables::Copy::Shadow)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rebuild_runs (kind, trigger, state, swapped, host) VALUES ('rebuild', 'test', 'swapping', true, 'crashed')",
    )
    .execute(&app.db.pg)
    .await
    .unwrap();

    load(&app, 10, 12).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db.pg)
        .await
        .unwrap();
    assert!(
        waiting > 0,
        "the ingest claims nothing during an interrupted swap"
    );

    let next = verify(&app.db, Mode::Verify).await;
    let h = history(&app.db.pg, 5).await.unwrap();
    assert!(
        h.iter()
            .any(|r| r.host == "crashed" && r.state == "swapped"),
        "{h:#?}"
    );
    assert!(!next.has_drift(), "{next:#?}");
    settle(&app.db).await;
    app.stop().await;
}

#[tokio::test]
async fn reconciliation_checks_complete_days_and_reports_drift_per_currency() {
    init_logs();
    let db = TestDb::new().await;
    let ch = db.ch.client();
    let zone = tally_projection::ReportingZone::utc();
    // Orders three days ago, projected by a worker.
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    for i in 0..5 {
        crate::ingest::place_at(&db.pg, &format!("m-{i}"), 1000 + i, past).await;
    }
    let mut worker = db.ingest_worker(tally_ingest::IngestConfig::default());
    worker.drain().await.unwrap();

    let since = zone.day(past) - time::Duration::days(1);
    let clean = tally_rebuild::reconcile::reconcile(
        &db.pg,
        &ch,
        &zone,
        since,
        &mut tally_rebuild::compare::Sink::worst_only(),
    )
    .await
    .unwrap();
    assert_eq!(clean.daily.compared, 5);
    assert!(!clean.has_drift());

    let mut bad: DailyRow = ch
        .query("SELECT ?fields FROM daily_revenue FINAL WHERE merchant_id = 'm-2'")
        .fetch_one()
        .await
        .unwrap();
    bad.captured_minor += 250;
    bad.version += 1;
    tally_projection::insert_rows(&ch, "daily_revenue", &[bad])
        .await
        .unwrap();

    let metrics = std::sync::Arc::new(tally_rebuild::reconcile::ReconcileMetrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let drift = tally_rebuild::reconcile::reconcile_recent(&db.pg, &ch, &zone, 7, &metrics)
        .await
        .unwrap();
    assert_eq!(drift.daily.different, 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("tally_reconcile_drift_minor{currency=\"EUR\"} 250"),
        "{text}"
    );
}

#[tokio::test]
async fn bulk_seeded_orders_reach_clickhouse_only_through_a_rebuild() {
    init_logs();
    let db = TestDb::new().await;
    let cfg = tally_loadgen::bulk::BulkConfig {
        orders: 2_500,
        merchants: 20,
        days: 40,
        chunk: 1_000,
        ..Default::default()
    };
    tally_loadgen::bulk::seed_write_store(&db.pg, &cfg, 0, |_| {})
        .await
        .expect("the bulk rows satisfy the write model's constraints");
    let (orders, outbox): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox)")
            .fetch_one(&db.pg)
            .await
            .unwrap();
    assert_eq!((orders, outbox), (2_500, 0));

    // Slices of a few merchants each (125 orders per merchant).
    let ranges = RunOptions {
        chunk_rows: 300,
        ..opts()
    };
    let first = run(&db.pg, &db.ch.client(), Mode::Rebuild, &ranges)
        .await
        .unwrap();
    assert!(first.swapped);
    assert_eq!(first.facts.missing, 2_500, "everything was missing before");
    assert_eq!(first.orders_not_compared, 0);
    // Checked by the harness's own, independent SQL.
    assert_projections_exact(&db).await;
    // More cells than that run could hold in memory: it summed part of
    // them in PostgreSQL. With room for all, the cells go straight from
    // memory; both must give the same tables.
    assert!(
        first.cells > ranges.cells_in_memory() as u64,
        "{} cells",
        first.cells
    );
    let roomy = RunOptions {
        chunk_rows: 100_000,
        ..opts()
    };
    let in_memory = run(&db.pg, &db.ch.client(), Mode::Rebuild, &roomy)
        .await
        .unwrap();
    assert!(!in_memory.has_drift(), "{in_memory:#?}");
    assert_eq!(in_memory.cells, first.cells);
    assert_projections_exact(&db).await;
    let again = verify(&db, Mode::Verify).await;
    assert!(!again.has_drift(), "{again:#?}");
}

/// A rebuild computed in another calendar than the deployment's is never
/// swapped in, even when started through the library with its own zone.
#[tokio::test]
async fn a_rebuild_in_another_zone_than_the_deployments_is_not_swapped_in() {
    let db = TestDb::new().await;
    let kathmandu = tally_projection::ReportingZone::parse("Asia/Kathmandu").unwrap();
    tally_projection::deployment::resolve(&db.pg, Some(&kathmandu), "test")
        .await
        .unwrap();
    for i in 0..5 {
        tally_tests::place_direct(&db.pg, &format!("m-{i}"), 100 + i).await;
    }
    db.ingest_worker(tally_ingest::IngestConfig {
        reporting_zone: kathmandu,
        ..Default::default()
    })
    .drain()
    .await
    .unwrap();
    let opts = tally_rebuild::run::RunOptions::default(); // UTC
    let err = tally_rebuild::run::run(
        &db.pg,
        &db.ch.client(),
        tally_rebuild::run::Mode::Rebuild,
        &opts,
    )
    .await
    .expect_err("refused");
    assert!(
        err.to_string()
            .contains("deployment reports in Asia/Kathmandu"),
        "{err}"
    );
    let swapped: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild_runs WHERE swapped")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(swapped, 0);
    let report = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), "Asia/Kathmandu")
        .await
        .unwrap();
    assert!(
        report.is_clean(),
        "the live tables are untouched: {report:?}"
    );
}

/// `tally rebuild --change-reporting-zone` under live load: the rebuild in
/// the new zone is swapped in and recorded in one step, the running ingest
/// (started in UTC) counts in the new calendar from the next batch, and
/// afterwards every figure equals the write store's in the new calendar:
/// no event counted in both, none lost. A push of an old-calendar cell
/// still on its way to ClickHouse at the swap, for a key the new calendar
/// does not have, is outranked rather than left live.
#[tokio::test]
async fn the_reporting_zone_changes_under_load_and_every_event_counts_once_in_the_new_calendar() {
    use tally_projection::deployment;
    use time::{Duration as Span, OffsetDateTime};
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    let db = &app.db;
    deployment::resolve(&db.pg, None, "test").await.unwrap();

    // Orders every 30 minutes over one UTC day: in Kathmandu (UTC+5:45)
    // those from 18:15 on fall on the next day. One more order, late on the
    // day before and for a merchant of its own, makes a UTC cell that has
    // no Kathmandu counterpart.
    let day = OffsetDateTime::now_utc().date() - Span::days(3);
    let midnight = day.midnight().assume_utc();
    for i in 0..48 {
        tally_tests::place_direct_at(
            &db.pg,
            &format!("m-{}", i % 3),
            100 + i,
            midnight + Span::minutes(30 * i),
        )
        .await;
    }
    tally_tests::place_direct_at(&db.pg, "m-late", 777, midnight - Span::hours(1)).await;
    load(&app, 30, 11).await;
    settle(db).await;

    // That cell's push, committed and listed but still in flight at the
    // swap: a future `created_at` keeps the recovery paths off it, as a
    // push in flight is, and it reaches ClickHouse after the swap.
    let late: DailyRow = db
        .ch
        .client()
        .query("SELECT ?fields FROM daily_revenue FINAL WHERE merchant_id = 'm-late'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(late.day, day.previous_day().unwrap());
    sqlx::query(
        "INSERT INTO ingest_pending_pushes (batch_id, days, merchant_ids, currencies, oldest_created_at, created_at)
         VALUES (gen_random_uuid(), ARRAY[$1::date], ARRAY['m-late'], ARRAY['EUR'], now(), now() + interval '1 hour')",
    )
    .bind(late.day)
    .execute(&db.pg)
    .await
    .unwrap();

    let traffic = {
        let app = app.handle();
        tokio::spawn(async move { drive(&app, 400, 6, 12).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kathmandu = tally_projection::ReportingZone::parse("Asia/Kathmandu").unwrap();
    let change = RunOptions {
        zone: kathmandu.clone(),
        change_zone: true,
        ..opts()
    };
    let changed = run(&db.pg, &db.ch.client(), Mode::Rebuild, &change)
        .await
        .expect("zone change");
    assert!(changed.swapped);
    assert_eq!(changed.zone_changed_from.as_deref(), Some("UTC"));
    assert!(
        changed.has_drift(),
        "the old calendar's days differ: {changed:#?}"
    );
    assert_eq!(
        deployment::recorded(&db.pg).await.unwrap().as_deref(),
        Some("Asia/Kathmandu")
    );
    tally_projection::insert_rows(&db.ch.client(), "daily_revenue", &[late])
        .await
        .unwrap();
    let report = traffic.await.unwrap();
    assert!(report.orders >= 400, "{report:?}");

    settle_in(db, "Asia/Kathmandu").await;
    let utc = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), "UTC")
        .await
        .unwrap();
    assert!(!utc.is_clean(), "the figures moved to the new calendar");
    // The full comparison, facts' reporting days and the ingest's running
    // totals included, in the new zone.
    let after = run(
        &db.pg,
        &db.ch.client(),
        Mode::Verify,
        &RunOptions {
            zone: kathmandu,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert!(!after.has_drift(), "{after:#?}");
    let rows = history(&db.pg, 5).await.unwrap();
    let row = rows.iter().find(|r| r.run_id == changed.run_id).unwrap();
    assert_eq!(row.reporting_zone.as_deref(), Some("Asia/Kathmandu"));
    assert_eq!(
        row.message.as_deref(),
        Some("reporting zone changed from UTC to Asia/Kathmandu")
    );
    let err = rollback(&db.pg, &db.ch.client(), &opts())
        .await
        .expect_err("no rollback across calendars");
    assert!(err.to_string().contains("nothing to roll back"), "{err}");
    app.stop().await;
}

async fn settle_in(db: &TestDb, zone: &str) {
    assert!(
        ingest_drained(&db.pg, Duration::from_secs(30)).await,
        "the ingest drains the outbox within 30 s"
    );
    tally_tests::assert_projections_exact_in(db, zone).await;
}

/// A month the live tables hold but the rebuilt ones do not (rows for a
/// month the write store has no orders in) is emptied by the swap, put
/// back by a rollback, and emptied again by the next rebuild. Current
/// ClickHouse refuses `REPLACE PARTITION` from a source without the
/// partition, which is how 18.16 emptied it; the swap must not rely on it.
#[tokio::test]
async fn a_month_the_rebuild_lacks_is_emptied_by_the_swap_and_restored_by_a_rollback() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    load(&app, 20, 21).await;
    settle(&app.db).await;
    let ch = app.db.ch.client();
    let mut ghost: DailyRow = ch
        .query("SELECT ?fields FROM daily_revenue FINAL LIMIT 1")
        .fetch_one()
        .await
        .unwrap();
    ghost.day = time::macros::date!(2020 - 01 - 15);
    ghost.merchant_id = "m-ghost".into();
    tally_projection::insert_rows(&ch, "daily_revenue", &[ghost])
        .await
        .unwrap();
    let mut fact: FactRow = ch
        .query("SELECT ?fields FROM order_facts FINAL LIMIT 1")
        .fetch_one()
        .await
        .unwrap();
    fact.order_id = uuid::Uuid::now_v7();
    fact.placed_day = time::macros::date!(2020 - 01 - 15);
    tally_projection::insert_rows(&ch, "order_facts", &[fact])
        .await
        .unwrap();
    let months = |table: &'static str| {
        let ch = ch.clone();
        async move {
            tally_rebuild::tables::partitions(&ch, table)
                .await
                .unwrap()
                .contains("202001")
        }
    };
    assert!(months("daily_revenue").await && months("order_facts").await);

    let rebuilt = verify(&app.db, Mode::Rebuild).await;
    assert!(rebuilt.swapped);
    assert_eq!(
        (rebuilt.daily.extra, rebuilt.facts.extra),
        (1, 1),
        "{rebuilt:#?}"
    );
    assert!(!months("daily_revenue").await, "the ghost month is gone");
    assert!(!months("order_facts").await);
    settle(&app.db).await;

    rollback(&app.db.pg, &ch, &opts()).await.expect("rollback");
    assert!(months("daily_revenue").await, "the rollback restores it");
    assert!(months("order_facts").await);

    let again = verify(&app.db, Mode::Rebuild).await;
    assert!(again.swapped);
    assert!(!months("daily_revenue").await && !months("order_facts").await);
    settle(&app.db).await;
    app.stop().await;
}
