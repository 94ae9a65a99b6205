//! The local-server launcher's guarantees that do not need a second stack.

use tally_stack::{DataDirLock, StackError};

#[test]
fn a_data_directory_is_owned_by_one_process_at_a_time() {
    let dir = std::env::temp_dir().join(format!("tally-lock-{}", uuid::Uuid::new_v4()));
    let first = DataDirLock::acquire(&dir).unwrap();
    let err = DataDirLock::acquire(&dir)
        .err()
        .expect("second lock must fail");
    match &err {
        StackError::Locked { pid, .. } => assert_eq!(pid, &std::process::id().to_string()),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("already running"));
    drop(first);
    DataDirLock::acquire(&dir).expect("free again once released");
    let _ = std::fs::remove_dir_all(dir);
}

/// The local stack as another user of the machine meets it: nothing
/// readable, no way in without a password, and the services' PostgreSQL
/// role no superuser.
#[tokio::test]
async fn the_local_stack_is_locked_down() {
    use std::os::unix::fs::PermissionsExt;

    let dir = std::env::temp_dir().join(format!("tally-locked-{}", uuid::Uuid::new_v4()));
    let stack = tally_stack::LocalStack::start(&tally_stack::StackConfig {
        durable: false,
        pg_max_connections: 20,
        ..tally_stack::StackConfig::new(&dir)
    })
    .await
    .expect("start a stack of its own");
    tally_stack::StackFile {
        pid: std::process::id(),
        api_url: String::new(),
        dashboards_url: String::new(),
        api_key: "tally_x".into(),
        reader_key: "tally_y".into(),
        database_url: stack.postgres_url.clone(),
        clickhouse_url: stack.clickhouse.to_url(),
        embedded: true,
    }
    .write(&dir)
    .unwrap();

    // Permissions.
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(mode(&dir.join("secrets")), 0o700);
    let mut secret_files = vec![
        tally_stack::StackFile::path(&dir),
        dir.join("clickhouse/users.xml"),
        dir.join("clickhouse/config.xml"),
    ];
    for e in std::fs::read_dir(dir.join("secrets")).unwrap() {
        secret_files.push(e.unwrap().path());
    }
    assert!(secret_files.len() >= 7, "{secret_files:?}");
    for f in &secret_files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let users_xml = std::fs::read_to_string(dir.join("clickhouse/users.xml")).unwrap();
    assert!(
        !users_xml.contains(&stack.clickhouse.password)
            && !users_xml.contains(&stack.clickhouse_reader.password),
        "users.xml holds hashes, not passwords"
    );

    // Another OS user cannot read the secrets (needs root to become one;
    // CI runs as root).
    if nix::unistd::Uid::effective().is_root() {
        for f in &secret_files {
            let out = std::process::Command::new("runuser")
                .args(["-u", "nobody", "--", "cat"])
                .arg(f)
                .output()
                .expect("runuser");
            assert!(!out.status.success(), "nobody read {}", f.display());
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("not root: the other-user read check needs root to switch users; skipped");
    }

    // PostgreSQL: no password, no connection; the services' role owns its
    // database but is no superuser.
    use sqlx::Connection;
    let without =
        stack
            .postgres_url
            .replacen(&format!(":{}@", password_of(&stack.postgres_url)), "@", 1);
    assert!(!without.contains(&password_of(&stack.postgres_url)));
    let err = sqlx::PgConnection::connect(&without)
        .await
        .expect_err("a connection without the password is refused");
    assert!(err.to_string().contains("password"), "{err}");
    let wrong =
        stack
            .postgres_url
            .replacen(&password_of(&stack.postgres_url), "not-the-password", 1);
    assert!(sqlx::PgConnection::connect(&wrong).await.is_err());
    let mut conn = sqlx::PgConnection::connect(&stack.postgres_url)
        .await
        .expect("the services' URL connects");
    let (superuser, createrole, createdb, owner): (bool, bool, bool, String) = sqlx::query_as(
        "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, pg_get_userbyid(d.datdba)
         FROM pg_roles r, pg_database d
         WHERE r.rolname = current_user AND d.datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (superuser, createrole, createdb, owner.as_str()),
        (false, false, false, tally_stack::POSTGRES_APP_ROLE)
    );

    // ClickHouse: no password-less user; the reader reads only.
    let http = reqwest::Client::new();
    let query = |user: Option<(&str, &str)>, sql: &str| {
        let mut req = http
            .post(format!("{}/", stack.clickhouse.url))
            .body(sql.to_owned());
        if let Some((u, p)) = user {
            req = req
                .header("X-ClickHouse-User", u)
                .header("X-ClickHouse-Key", p);
        }
        req.send()
    };
    let anonymous = query(None, "SELECT 1").await.unwrap();
    assert_ne!(
        anonymous.status(),
        200,
        "the default user needs its password"
    );
    let default_blank = query(Some(("default", "")), "SELECT 1").await.unwrap();
    assert_ne!(default_blank.status(), 200);
    let admin = &stack.clickhouse;
    let ok = query(Some((&admin.user, &admin.password)), "SELECT 1")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    let reader = &stack.clickhouse_reader;
    let reads = query(Some((&reader.user, &reader.password)), "SELECT 1")
        .await
        .unwrap();
    assert_eq!(reads.status(), 200);
    let writes = query(
        Some((&reader.user, &reader.password)),
        "CREATE TABLE default.nope (x UInt8) ENGINE = Memory",
    )
    .await
    .unwrap();
    assert_ne!(writes.status(), 200, "the reader cannot write");

    drop(conn);
    stack.stop().await;
    tally_stack::remove_data_dir(&dir);
}

fn password_of(url: &str) -> String {
    let rest = &url[url.find("://").unwrap() + 3..];
    let userinfo = &rest[..rest.find('@').unwrap()];
    userinfo.split_once(':').unwrap().1.to_owned()
}
