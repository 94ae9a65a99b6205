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
            "order_facts_by_customer",
            "order_facts_by_id",
            "schema_migrations"
        ]
    );
}

/// A database at version 1 with data: applies 0001 by hand and records it,
/// as a build from before 0002 would have left it.
async fn at_version_1(ch: &tally_ops::ChSettings) -> clickhouse::Client {
    let server = ch.server_client();
    server
        .query(&format!("CREATE DATABASE {}", ch.database))
        .execute()
        .await
        .unwrap();
    let c = ch.client();
    c.query(
        "CREATE TABLE schema_migrations (version UInt32, name String, checksum String, applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version",
    )
    .execute()
    .await
    .unwrap();
    for s in tally_migrations::clickhouse::statements(MIGRATIONS[0].sql) {
        c.query(&s.sql).execute().await.unwrap();
    }
    c.query("INSERT INTO schema_migrations VALUES (1, ?, ?, now())")
        .bind(MIGRATIONS[0].name)
        .bind(tally_migrations::clickhouse::checksum(MIGRATIONS[0].sql))
        .execute()
        .await
        .unwrap();
    c.query(
        "INSERT INTO daily_revenue SELECT toDate('2026-01-01') + number % 40, concat('m-', toString(number % 7)), \
         toFixedString(arrayElement(['EUR', 'USD'], number % 2 + 1), 3), 1, number, number, 0, 0, 1, 1 FROM numbers(500)",
    )
    .execute()
    .await
    .unwrap();
    c
}

async fn sorting_and_sum(c: &clickhouse::Client) -> (String, u64, i64) {
    let create: String = c
        .query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = 'daily_revenue'")
        .fetch_one()
        .await
        .unwrap();
    let (n, sum): (u64, i64) = c
        .query("SELECT count(), sum(gross_minor) FROM daily_revenue FINAL")
        .fetch_one()
        .await
        .unwrap();
    (create, n, sum)
}

#[tokio::test]
async fn migration_2_rekeys_daily_revenue_keeping_every_cell() {
    let ch = TestDb::fresh_clickhouse();
    let c = at_version_1(&ch).await;
    let (before, n, sum) = sorting_and_sum(&c).await;
    assert!(
        before.contains("ORDER BY (day, merchant_id, currency)"),
        "{before}"
    );
    run(&ch).await.unwrap();
    let (after, n2, sum2) = sorting_and_sum(&c).await;
    assert!(
        after.contains("ORDER BY (currency, day, merchant_id)"),
        "{after}"
    );
    assert_eq!((n2, sum2), (n, sum));
    let left: u64 = c
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name LIKE 'daily_revenue_v%'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(left, 0, "no copies left behind");
}

#[tokio::test]
async fn migration_2_finishes_after_a_crash_behind_its_rename() {
    let ch = TestDb::fresh_clickhouse();
    let c = at_version_1(&ch).await;
    let (_, n, sum) = sorting_and_sum(&c).await;
    // Crash right after the RENAME: the new table holds the first copy, and
    // the ingest had written one more cell to the old one in between.
    let stmts = tally_migrations::clickhouse::statements(MIGRATIONS[1].sql);
    for s in &stmts[..2] {
        c.query(&s.sql).execute().await.unwrap();
    }
    c.query(
        "INSERT INTO daily_revenue VALUES ('2026-03-01', 'm-late', 'EUR', 1, 1000, 0, 0, 0, 1, 1)",
    )
    .execute()
    .await
    .unwrap();
    c.query(&stmts[2].sql).execute().await.unwrap();
    run(&ch).await.unwrap();
    let (after, n2, sum2) = sorting_and_sum(&c).await;
    assert!(
        after.contains("ORDER BY (currency, day, merchant_id)"),
        "{after}"
    );
    assert_eq!((n2, sum2), (n + 1, sum + 1000), "the late cell survives");
}

/// Facts projected before migration 3 reach its two new tables, and
/// running its statements again (a crash halfway, a second starter)
/// changes nothing readers see.
#[tokio::test]
async fn migration_3_copies_existing_facts_to_the_customer_and_id_tables() {
    let ch = TestDb::fresh_clickhouse();
    let c = at_version_1(&ch).await;
    // 300 orders, a third of them with a second, newer version.
    c.query(
        "INSERT INTO order_facts SELECT \
         toUUID(concat('00000000-0000-7000-8000-', toString(100000000000 + number % 300))), \
         toUInt32(1 + intDiv(number, 300)), concat('m-', toString(number % 300 % 7)), \
         concat('c-', toString(number % 300 % 50)), 'EUR', if(number < 300, 'placed', 'paid'), \
         toDateTime('2026-01-01 00:00:00', 'UTC') + number % 300, toDate('2026-01-01'), 1, \
         100 + number % 300, if(number < 300, 0, 100 + number % 300), 0, \
         toDateTime('2026-01-02 00:00:00', 'UTC') FROM numbers(400)",
    )
    .execute()
    .await
    .unwrap();
    run(&ch).await.unwrap();
    let view = |table: &'static str| {
        let c = c.clone();
        async move {
            c.query(&format!(
                "SELECT count(), sum(captured_minor), sum(version), \
                 groupBitXor(cityHash64(toString(order_id), status, customer_id)) FROM {table} FINAL"
            ))
            .fetch_one::<(u64, i64, u64, u64)>()
            .await
            .unwrap()
        }
    };
    let facts = view("order_facts").await;
    assert_eq!(facts.0, 300);
    assert_eq!(view("order_facts_by_customer").await, facts);
    assert_eq!(view("order_facts_by_id").await, facts);
    for s in tally_migrations::clickhouse::statements(MIGRATIONS[2].sql) {
        c.query(&s.sql).execute().await.unwrap();
    }
    assert_eq!(view("order_facts_by_customer").await, facts);
    assert_eq!(view("order_facts_by_id").await, facts);
}
