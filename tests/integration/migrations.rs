//! Both migration runners against real servers.

use tally_migrations::clickhouse::{ChMigrateError, MIGRATIONS, run};
use tally_tests::TestDb;

#[tokio::test]
async fn clickhouse_migrations_apply_once_and_refuse_edited_files() {
    let ch = TestDb::fresh_clickhouse();
    run(&ch).await.unwrap();
    run(&ch).await.unwrap(); // a second run is a no-op
    let applied: u64 = ch
        .client()
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(applied, MIGRATIONS.len() as u64);
    assert!(
        tally_migrations::clickhouse::is_up_to_date(&ch)
            .await
            .unwrap()
    );

    // Pretend version 1 was applied from a different file.
    ch.client()
        .query(
            "INSERT INTO schema_migrations VALUES (1, '0001_projections.sql', 'deadbeef', now())",
        )
        .execute()
        .await
        .unwrap();
    let err = run(&ch).await.unwrap_err();
    assert!(
        matches!(err, ChMigrateError::Changed { version: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("must not be edited"), "{err}");
}

#[tokio::test]
async fn clickhouse_refuses_a_database_from_a_newer_build() {
    let ch = TestDb::fresh_clickhouse();
    run(&ch).await.unwrap();
    ch.client()
        .query("INSERT INTO schema_migrations VALUES (999, '0999_future.sql', 'x', now())")
        .execute()
        .await
        .unwrap();
    assert!(matches!(
        run(&ch).await.unwrap_err(),
        ChMigrateError::Unknown(_, 999)
    ));
}

#[tokio::test]
async fn migrate_builds_both_stores_from_nothing_and_is_idempotent() {
    let pg = TestDb::empty_postgres().await;
    let ch = TestDb::fresh_clickhouse();
    assert!(
        tally_migrations::postgres::is_up_to_date(&pg)
            .await
            .is_err(),
        "no migrations table yet"
    );
    tally_migrations::migrate(&pg, &ch).await.unwrap();
    tally_migrations::migrate(&pg, &ch).await.unwrap();
    assert!(
        tally_migrations::postgres::is_up_to_date(&pg)
            .await
            .unwrap()
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pg)
    .await
    .unwrap();
    for t in [
        "addresses",
        "orders",
        "order_items",
        "payments",
        "shipments",
        "refunds",
        "outbox",
        "idempotency_keys",
        "api_keys",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    let ch_tables: Vec<String> = ch
        .client()
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&ch.database)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        ch_tables,
        [
            "daily_revenue",
            "ingest_watermark",
            "order_facts",
            "schema_migrations"
        ]
    );
}
