//! The `tally-bench` binary as an operator meets it: it never touches
//! stores it did not start unless each is named.

use tally_tests::{TestDb, output_text, run_binary};

#[tokio::test]
async fn a_benchmark_refuses_stores_it_did_not_start_unless_each_is_named() {
    let db = TestDb::new().await;
    tally_tests::place_direct(&db.pg, "m-1", 100).await;
    let refused = run_binary(
        env!("CARGO_BIN_EXE_tally-bench"),
        &db,
        &["drain", "--quick", "--no-record"],
    );
    assert_ne!(refused.status.code(), Some(0), "{}", output_text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    let pg_db = db.pg_settings.url.rsplit('/').next().unwrap();
    assert!(err.contains(&format!("--wipe-database {pg_db}")), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(left, 1, "nothing was truncated");
}
