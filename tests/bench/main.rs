//! The `tally-bench` binary as an operator meets it: it never touches
//! stores it did not start unless each is named.

use std::process::Output;

use tally_tests::TestDb;

fn tally_bench(db: &TestDb, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(args)
        .env("DATABASE_URL", &db.pg_settings.url)
        .env("CLICKHOUSE_URL", db.ch.to_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tally-bench")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_benchmark_refuses_stores_it_did_not_start_unless_each_is_named() {
    let db = TestDb::new().await;
    tally_tests::place_direct(&db.pg, "m-1", 100).await;
    let refused = tally_bench(&db, &["drain", "--quick", "--no-record"]);
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    let pg_db = db.pg_settings.url.rsplit('/').next().unwrap();
    assert!(err.contains(&format!("--wipe-database {pg_db}")), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(left, 1, "nothing was truncated");
}
