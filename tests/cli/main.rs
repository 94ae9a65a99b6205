//! The operator commands as operators run them: the real `tally` binary,
//! its exit codes (0 no drift, 1 drift, 2 could not verify), JSON output and
//! the CSV report.

mod operations;

use std::process::Output;

use tally_projection::DailyRow;
use tally_tests::{TestDb, init_logs};

fn tally(db: &TestDb, args: &[&str]) -> Output {
    tally_tests::run_binary(env!("CARGO_BIN_EXE_tally"), db, args)
}

fn text(o: &Output) -> String {
    tally_tests::output_text(o)
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
    tally_projection::insert_rows(&ch, "daily_revenue", &[bad])
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

#[tokio::test]
async fn keys_are_listed_without_secrets_and_revoked_for_good() {
    let db = TestDb::new().await;
    let created = tally(
        &db,
        &[
            "keys",
            "create",
            "--role",
            "finance:read",
            "--name",
            "auditor",
        ],
    );
    assert_eq!(created.status.code(), Some(0), "{}", text(&created));
    let key = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(key.starts_with("tally_"));
    let check = |k: String| {
        let pg = db.pg.clone();
        async move {
            tally_ops::auth::key_has_role(&pg, &k, tally_ops::auth::Role::FinanceRead)
                .await
                .unwrap()
        }
    };
    assert!(check(key.clone()).await);

    let list = tally(&db, &["keys", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    let line = listed
        .lines()
        .find(|l| l.contains("auditor"))
        .expect(&listed);
    assert!(
        line.contains("finance:read") && line.contains("active"),
        "{line}"
    );
    assert!(!listed.contains(&key), "the secret is never listed");
    let id = line.split_whitespace().next().unwrap().to_owned();

    let revoked = tally(&db, &["keys", "revoke", &id]);
    assert_eq!(revoked.status.code(), Some(0), "{}", text(&revoked));
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("within 30 s"));
    assert!(!check(key).await, "a revoked key authenticates nobody");
    let again = tally(&db, &["keys", "revoke", &id]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already revoked"));
    let active = tally(&db, &["keys", "list", "--active"]);
    assert!(!String::from_utf8_lossy(&active.stdout).contains("auditor"));
    let unknown = tally(&db, &["keys", "revoke", &uuid::Uuid::now_v7().to_string()]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("tally keys list"));
}

#[tokio::test]
async fn ingest_status_says_what_holds_the_watermark() {
    let db = TestDb::new().await;
    tally_tests::insert_undecodable_event(&db.pg).await;
    db.ingest_worker(tally_ingest::IngestConfig::default())
        .drain()
        .await
        .unwrap();
    let status = tally(&db, &["ingest", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("held back by         dead letters"), "{out}");
    assert!(out.contains("dead letters         1 (decode 1)"), "{out}");
    let listed = tally(&db, &["ingest", "dead-letters"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("reason decode"));
}

/// `tally up` as a new user meets it: URLs printed without passwords, the
/// dashboard link carrying a key that can only read, the data directory
/// and its secrets closed to everyone else.
#[tokio::test]
async fn tally_up_prints_no_password_and_links_a_read_only_key() {
    use std::os::unix::fs::PermissionsExt;

    let up = start_up(None);
    let (printed, stack, dir) = (&up.printed, &up.stack, up.dir.clone());
    let pg_password = tally_tests::url_password(&stack.database_url);
    assert!(!pg_password.is_empty());
    assert!(
        !printed.contains(pg_password),
        "a password was printed:\n{printed}"
    );
    assert!(printed.contains("postgres://tally:***@"), "{printed}");
    assert!(printed.contains("http://default:***@"), "{printed}");
    let link = printed
        .lines()
        .find(|l| l.contains("#key="))
        .expect("a dashboard link");
    let link_key = link
        .split("#key=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(link_key, stack.reader_key);
    assert_ne!(link_key, stack.api_key);
    let pg = tally_ops::PgSettings::new(&stack.database_url, "tally-cli-test")
        .connect()
        .await
        .unwrap();
    use tally_ops::auth::{Role, key_has_role};
    for role in Role::ALL {
        assert_eq!(
            key_has_role(&pg, link_key, role).await.unwrap(),
            matches!(role, Role::FinanceRead | Role::OrdersRead),
            "{role}"
        );
    }
    pg.close().await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.clone()), 0o700);
    for f in ["stack.json", "dev-api-key", "dev-reader-key"] {
        assert_eq!(mode(dir.join(f)), 0o600, "{f}");
    }
    up.stop();
}

/// A running `tally up` and what it printed up to its banner.
struct Up {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    dir: std::path::PathBuf,
    stack: tally_stack::StackFile,
    printed: String,
}

/// Starts `tally up` in a fresh data directory: against `stores` if given,
/// else on servers of its own, as a new user would.
fn start_up(stores: Option<&TestDb>) -> Up {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("tally-up-{}", uuid::Uuid::now_v7()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.args(["--data-dir", dir.to_str().unwrap(), "up"])
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--dashboards-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    match stores {
        Some(db) => cmd
            .env("DATABASE_URL", &db.pg_settings.url)
            .env("CLICKHOUSE_URL", db.ch.to_url()),
        None => cmd.env_remove("DATABASE_URL").env_remove("CLICKHOUSE_URL"),
    };
    let mut child = cmd.spawn().expect("start tally up");
    // Read on a thread of its own until the end: `tally up` goes on
    // writing after the banner, and a closed pipe would fail it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = String::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(120)) {
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("Press Ctrl-C"),
        "tally up did not come up:\n{printed}"
    );
    let stack = tally_stack::StackFile::read(&dir).expect("stack.json");
    Up {
        child,
        reader,
        dir,
        stack,
        printed,
    }
}

impl Up {
    /// Ctrl-C, which must stop it cleanly; then its data directory goes.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "tally up stops cleanly on Ctrl-C"
        );
        self.reader.join().unwrap();
        tally_stack::remove_data_dir(&self.dir);
    }
}

fn tally_in(db: &TestDb, zone: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.args(args)
        .env("DATABASE_URL", &db.pg_settings.url)
        .env("CLICKHOUSE_URL", db.ch.to_url())
        .env("RUST_LOG", "warn");
    match zone {
        Some(z) => cmd.env("TALLY_REPORTING_TZ", z),
        None => cmd.env_remove("TALLY_REPORTING_TZ"),
    };
    cmd.output().expect("run tally")
}

/// The reproduction from the "reporting calendar" issue: a deployment made
/// in Asia/Kathmandu, then an operator's plain `tally verify` and `tally
/// rebuild` in UTC. Before, verify reported drift everywhere and the
/// rebuild swapped UTC days in; now both stop at once and say why, and a
/// second ingest worker in another zone refuses to start.
#[tokio::test]
async fn the_reporting_zone_is_the_deployments_and_other_zones_are_refused() {
    let db = TestDb::new().await;
    let made = tally_in(&db, Some("Asia/Kathmandu"), &["migrate"]);
    assert_eq!(made.status.code(), Some(0), "{}", text(&made));
    let out = String::from_utf8_lossy(&made.stdout);
    assert!(out.contains("reporting zone: Asia/Kathmandu"), "{out}");
    assert!(out.contains("PostgreSQL at version"), "{out}");
    assert!(
        out.contains("ClickHouse ") && out.contains("(DROP PARTITION)"),
        "the server version and the choices made for it: {out}"
    );
    for i in 0..3 {
        tally_tests::place_direct(&db.pg, &format!("m-{i}"), 1000 + i).await;
    }
    let mut w = db.ingest_worker(tally_ingest::IngestConfig {
        reporting_zone: tally_projection::ReportingZone::parse("Asia/Kathmandu").unwrap(),
        ..Default::default()
    });
    w.drain().await.unwrap();

    for args in [&["verify"][..], &["rebuild"], &["ingest"], &["scheduler"]] {
        let refused = tally_in(&db, Some("UTC"), args);
        assert_ne!(
            refused.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&refused)
        );
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("reports in Asia/Kathmandu")
                && err.contains("given UTC")
                && err.contains("--change-reporting-zone"),
            "{args:?}: {err}"
        );
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM rebuild_runs")
        .fetch_one(&db.pg)
        .await
        .unwrap();
    assert_eq!(runs, 0, "nothing was rebuilt, let alone swapped");

    // Given no zone, every command uses the recorded one: no drift.
    let clean = tally_in(&db, None, &["verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let history = tally_in(&db, None, &["rebuild", "history"]);
    assert!(String::from_utf8_lossy(&history.stdout).contains("Asia/Kathmandu"));

    // Changed deliberately: one command, then every process follows.
    let no_zone = tally_in(&db, None, &["rebuild", "--change-reporting-zone"]);
    assert_eq!(no_zone.status.code(), Some(2), "{}", text(&no_zone));
    assert!(
        String::from_utf8_lossy(&no_zone.stderr).contains("add --reporting-tz"),
        "{}",
        text(&no_zone)
    );
    let changed = tally_in(
        &db,
        Some("Europe/Berlin"),
        &["rebuild", "--change-reporting-zone"],
    );
    assert_eq!(changed.status.code(), Some(0), "{}", text(&changed));
    assert!(
        String::from_utf8_lossy(&changed.stdout)
            .contains("reporting zone changed from Asia/Kathmandu to Europe/Berlin"),
        "{}",
        text(&changed)
    );
    let clean = tally_in(&db, None, &["verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let old = tally_in(&db, Some("Asia/Kathmandu"), &["verify"]);
    assert_ne!(old.status.code(), Some(0), "{}", text(&old));
    let history = tally_in(&db, None, &["rebuild", "history"]);
    assert!(
        String::from_utf8_lossy(&history.stdout)
            .contains("reporting zone changed from Asia/Kathmandu to Europe/Berlin"),
        "{}",
        text(&history)
    );
}

/// Rolling upgrades: a binary that knows fewer migrations than the database
/// has applied stops before it writes, with the fix.
#[tokio::test]
async fn an_older_binary_refuses_a_newer_schema() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990001, 'from a newer tally', true, '\\x00', 0)",
    )
    .execute(&db.pg)
    .await
    .unwrap();
    for args in [&["migrate"][..], &["verify"], &["ingest"], &["api"]] {
        let out = tally_in(&db, None, args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("at migration 99990001") && err.contains("newer tally"),
            "{args:?}: {err}"
        );
    }
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99990001")
        .execute(&db.pg)
        .await
        .unwrap();
    db.ch
        .client()
        .query("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (999, 'newer', '', now())")
        .execute()
        .await
        .unwrap();
    let out = tally_in(&db, None, &["migrate"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("migration 999"));
}

/// A typo in a flag with a fixed set of values is refused with the set,
/// not taken for the default.
#[test]
fn a_log_format_other_than_text_or_json_is_refused_with_the_choices() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--log-format", "yaml", "migrate"])
        .output()
        .expect("run tally");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: text, json"), "{err}");
}
