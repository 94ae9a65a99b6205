//! The operator commands as operators run them: the real `tally` binary,
//! its exit codes (0 no drift, 1 drift, 2 could not verify), JSON output and
//! the CSV report.

use std::process::Output;

use tally_ingest::DailyRow;
use tally_tests::{TestDb, init_logs};

fn tally(db: &TestDb, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", &db.pg_settings.url)
        .env("CLICKHOUSE_URL", db.ch.to_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tally")
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
async fn verify_exit_codes_json_and_report() {
    init_logs();
    let db = TestDb::new().await;
    for i in 0..3 {
        tally_tests::place_direct(&db.pg, &format!("m-{i}"), 1000 + i).await;
    }
    db.ingest_worker(tally_ingest::IngestConfig::default())
        .drain()
        .await
        .unwrap();

    let clean = tally(&db, &["verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("result: no drift"));

    let ch = db.ch.client();
    let mut bad: DailyRow = ch
        .query("SELECT ?fields FROM daily_revenue FINAL WHERE merchant_id = 'm-1'")
        .fetch_one()
        .await
        .unwrap();
    bad.refunded_minor += 99;
    bad.version += 1;
    tally_ingest::insert_rows(&ch, "daily_revenue", &[bad])
        .await
        .unwrap();

    let report = std::env::temp_dir().join(format!("tally-cli-{}.csv", uuid::Uuid::now_v7()));
    let drift = tally(
        &db,
        &[
            "verify",
            "--format",
            "json",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(drift.status.code(), Some(1), "{}", text(&drift));
    let json: serde_json::Value = serde_json::from_slice(&drift.stdout).expect("JSON on stdout");
    assert_eq!(json["daily"]["different"], 1, "{json}");
    assert_eq!(
        json["daily"]["drift_by_currency"]["EUR"]["refunded_minor"],
        99
    );
    let csv = std::fs::read_to_string(&report).unwrap();
    assert_eq!(csv.lines().count(), 2, "header and one field: {csv}");
    assert!(csv.contains(",refunded_minor,0,99,99"), "{csv}");
    let _ = std::fs::remove_file(&report);

    let since = tally(&db, &["verify", "--since", "yesterday"]);
    assert_eq!(since.status.code(), Some(2), "{}", text(&since));
    assert!(String::from_utf8_lossy(&since.stderr).contains("use YYYY-MM-DD"));

    let repair = tally(&db, &["verify", "--repair"]);
    assert_eq!(repair.status.code(), Some(1), "{}", text(&repair));
    assert!(String::from_utf8_lossy(&repair.stdout).contains("repaired"));
    let after = tally(&db, &["verify"]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));

    let history = tally(&db, &["rebuild", "history"]);
    assert_eq!(history.status.code(), Some(0), "{}", text(&history));
    let h = String::from_utf8_lossy(&history.stdout);
    assert_eq!(h.matches("verified").count(), 3, "{h}");
    assert!(h.contains("swapped"), "{h}");

    let bad_url = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["verify"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("CLICKHOUSE_URL", db.ch.to_url())
        .output()
        .unwrap();
    assert_eq!(bad_url.status.code(), Some(2), "{}", text(&bad_url));
}
