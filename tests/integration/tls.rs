//! Encrypted connections to both stores, verified: PostgreSQL with
//! `sslmode=verify-full` and ClickHouse over `https://`, each trusting only
//! the local stack's CA. The write API, the ingest, a rebuild and the
//! dashboards all run over them, and the figures are exact; a client
//! given another CA is refused with an error that names the certificate
//! and not the password. TLS is a server feature, so on both test runs
//! ClickHouse here is the local 18.16 server's HTTPS port.

use std::time::Duration;

use tally_rebuild::run::{Mode, RunOptions, run};
use tally_tests::load::drive;
use tally_tests::{Ingest, TestDb, assert_projections_exact, ingest_drained, spawn_app_on};

#[tokio::test]
async fn every_service_runs_over_verified_tls_and_another_ca_is_refused() {
    let plain = TestDb::new().await;
    let db = plain
        .over_tls()
        .await
        .expect("the TLS test needs the local test stack (unset TALLY_TEST_DATABASE_URL)");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert!(ssl, "the PostgreSQL session is encrypted");
    assert!(db.ch.url.starts_with("https://"), "{:?}", db.ch);

    let app = spawn_app_on(db.clone(), Ingest::Running).await;
    let report = drive(&app, 40, 4, 17).await;
    assert!(report.orders >= 40, "{report:?}");
    assert!(ingest_drained(&app.db.pg, Duration::from_secs(30)).await);
    assert_projections_exact(&app.db).await;
    let rebuilt = run(
        &app.db.pg,
        &app.db.ch.client(),
        Mode::Rebuild,
        &RunOptions::default(),
    )
    .await
    .expect("a rebuild over TLS");
    assert!(rebuilt.swapped && !rebuilt.has_drift(), "{rebuilt:#?}");
    let summary = app.dash("/v1/revenue/summary?currency=EUR").await;
    assert_eq!(summary.status(), 200, "the dashboards read over HTTPS");
    app.stop().await;

    // Another CA: both refuse, saying why, never showing the password.
    let dir = std::env::temp_dir().join(format!("tally-tls-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let (other_ca, _, _) = tally_stack::tls::throwaway().unwrap();
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, other_ca).unwrap();

    let wrong_pg = tally_ops::PgSettings::new(
        db.pg_settings
            .url
            .replace(&*db_root(&db), &other.display().to_string()),
        "tally-tests-tls",
    );
    let err = wrong_pg
        .connect()
        .await
        .expect_err("another CA is refused")
        .to_string();
    let pg_password = db
        .pg_settings
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(pg_password), "{err}");

    let wrong_ch = tally_ops::ChSettings {
        ca_cert: Some(other.clone()),
        ..db.ch.clone()
    };
    let err = wrong_ch
        .client()
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .expect_err("another CA is refused");
    let err = tally_ops::error_chain(&err);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(&db.ch.password), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `sslrootcert` path in the TLS URL.
fn db_root(db: &TestDb) -> String {
    db.pg_settings
        .url
        .split("sslrootcert=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned()
}
