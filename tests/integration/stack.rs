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
    let stack = small_stack(&dir).await.expect("start a stack of its own");
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

/// A stack of the test's own, small and without fsync.
async fn small_stack(
    dir: &std::path::Path,
) -> Result<tally_stack::LocalStack, tally_stack::StackError> {
    tally_stack::LocalStack::start(&tally_stack::StackConfig {
        durable: false,
        pg_max_connections: 20,
        ..tally_stack::StackConfig::new(dir)
    })
    .await
}

fn password_of(url: &str) -> String {
    let rest = &url[url.find("://").unwrap() + 3..];
    let userinfo = &rest[..rest.find('@').unwrap()];
    userinfo.split_once(':').unwrap().1.to_owned()
}

/// A data directory made by an older tally (a world-traversable directory,
/// the cluster inside it, `trust` authentication, `tally` a superuser) is
/// brought to the locked-down state on its first start, with its data.
#[tokio::test]
async fn an_older_trusting_cluster_is_locked_down_on_first_start_with_its_data() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use sqlx::Connection;

    let dir = std::env::temp_dir().join(format!("tally-legacy-{}", uuid::Uuid::new_v4()));
    let cluster = dir.join("postgres");
    std::fs::create_dir_all(&cluster).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cluster, std::fs::Permissions::from_mode(0o700)).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    let bin = tally_stack::find_postgres_bin_dir().unwrap();
    // As the old launcher did it (as the postgres user when we are root).
    let as_owner = |program: &str| {
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        } else {
            Command::new(bin.join(program))
        };
        cmd.arg("-D").arg(&cluster);
        cmd
    };
    if root {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&cluster, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    let ok = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut initdb = as_owner("initdb");
    initdb.args([
        "-U",
        "tally",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]);
    ok(initdb);
    let port = tally_stack::free_port().unwrap();
    let log = std::env::temp_dir().join(format!("tally-legacy-{port}.log"));
    let mut start = as_owner("pg_ctl");
    start
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            cluster.display()
        ))
        .arg("-l")
        .arg(if root {
            "/dev/null".into()
        } else {
            log.clone()
        })
        .args(["-w", "start"]);
    ok(start);
    let old = format!("postgres://tally@127.0.0.1:{port}/postgres");
    let mut c = sqlx::PgConnection::connect(&old).await.unwrap();
    sqlx::query("CREATE DATABASE tally")
        .execute(&mut c)
        .await
        .unwrap();
    let mut c = sqlx::PgConnection::connect(&old.replace("/postgres", "/tally"))
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .execute(&mut c)
        .await
        .unwrap();
    drop(c);
    let mut stop = as_owner("pg_ctl");
    stop.args(["-m", "fast", "-w", "stop"]);
    ok(stop);

    let stack = small_stack(&dir)
        .await
        .expect("the old data directory starts");
    let mut conn = sqlx::PgConnection::connect(&stack.postgres_url)
        .await
        .unwrap();
    let (kept, superuser): (i32, bool) = sqlx::query_as(
        "SELECT (SELECT n FROM kept), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (kept, superuser),
        (42, false),
        "the data stayed; tally is no superuser"
    );
    let no_password = format!(
        "postgres://tally@127.0.0.1:{}/tally",
        port_of(&stack.postgres_url)
    );
    assert!(
        sqlx::PgConnection::connect(&no_password).await.is_err(),
        "trust is gone"
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(conn);
    stack.stop().await;
    tally_stack::remove_data_dir(&dir);
    let _ = std::fs::remove_file(log);
}

fn port_of(url: &str) -> String {
    let after_at = &url[url.rfind('@').unwrap() + 1..];
    after_at.split(['/', ':']).nth(1).unwrap().to_owned()
}
