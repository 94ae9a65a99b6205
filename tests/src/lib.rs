//! The test harness: real PostgreSQL and ClickHouse, isolated per test.
//!
//! One local stack per test run, started through the same launcher as
//! `tally up` (or external servers, if `TALLY_TEST_DATABASE_URL` and
//! `TALLY_TEST_CLICKHOUSE_URL` are set). Every test gets its own PostgreSQL
//! database, cloned from a template migrated once per run, and its own
//! ClickHouse database, so tests run in parallel without sharing state.
//! [`spawn_app`] boots the real services on port 0.

pub mod cluster;
pub mod load;
pub mod proxy;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use sqlx::{Connection, PgPool};
use tally_ops::auth::{Role, create_key};
use tally_ops::{ChSettings, PgSettings, Shutdown};
use tally_stack::{LocalStack, StackConfig};

/// Where the shared servers of this run are.
struct Servers {
    postgres_url: String,
    /// Who creates the test databases: the local stack's superuser, or
    /// `TALLY_TEST_DATABASE_URL` itself.
    postgres_admin_url: String,
    /// The owner given to each test database (the local stack's role for
    /// the services), so that the services run as they do in production.
    owner: Option<&'static str>,
    clickhouse: ChSettings,
    /// The read-only ClickHouse user the dashboards connect as.
    clickhouse_reader: ChSettings,
    /// Keeps the local servers' handles; they stop when the test process exits.
    _stack: Option<LocalStack>,
    _chdb: Option<tally_stack::ChildServer>,
    /// The local servers' TLS side, when the servers are the local stack.
    tls: Option<TlsServers>,
}

/// The local stack over TLS: its CA, and its ClickHouse server's users on
/// the HTTPS port (the server's, whichever engine the other tests use).
struct TlsServers {
    ca_cert: PathBuf,
    clickhouse: ChSettings,
    clickhouse_reader: ChSettings,
}

const TEMPLATE_DB: &str = "tally_template";

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        // Started on a runtime of its own: each #[tokio::test] has its own
        // runtime, and the servers must outlive all of them.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime for the test stack");
            rt.block_on(start_servers())
        })
        .join()
        .expect("starting the test stack panicked")
    })
}

async fn start_servers() -> Servers {
    let (postgres_url, postgres_admin_url, owner, clickhouse, clickhouse_reader, stack) = match (
        std::env::var("TALLY_TEST_DATABASE_URL"),
        std::env::var("TALLY_TEST_CLICKHOUSE_URL"),
    ) {
        (Ok(pg), Ok(ch)) => {
            let ch = ChSettings::from_url(&ch).expect("TALLY_TEST_CLICKHOUSE_URL");
            let reader = std::env::var("TALLY_TEST_CLICKHOUSE_READER_URL").map_or_else(
                |_| ch.clone(),
                |u| ChSettings::from_url(&u).expect("TALLY_TEST_CLICKHOUSE_READER_URL"),
            );
            let admin = tally_stack::replace_database(&pg, "postgres");
            (pg, admin, None, ch, reader, None)
        }
        _ => {
            let dir = run_dir();
            let mut config = StackConfig::new(&dir);
            config.pg_max_connections = 600;
            config.durable = false;
            let stack = LocalStack::start(&config).await.unwrap_or_else(|e| {
                panic!("cannot start the test stack in {}: {e}", dir.display())
            });
            (
                stack.postgres_url.clone(),
                stack.postgres_admin_url.clone(),
                Some(tally_stack::POSTGRES_APP_ROLE),
                stack.clickhouse.clone(),
                stack.clickhouse_reader.clone(),
                Some(stack),
            )
        }
    };
    let tls = stack.as_ref().map(|st| {
        let https = |c: &ChSettings| ChSettings {
            url: st.clickhouse_https.clone(),
            ca_cert: Some(st.tls.ca_cert.clone()),
            ..c.clone()
        };
        TlsServers {
            ca_cert: st.tls.ca_cert.clone(),
            clickhouse: https(&st.clickhouse),
            clickhouse_reader: https(&st.clickhouse_reader),
        }
    });
    let (clickhouse, clickhouse_reader, chdb) = match engine() {
        Engine::Server => (clickhouse, clickhouse_reader, None),
        Engine::Chdb => {
            let dir = run_dir();
            let (server, admin, reader) = tally_stack::start_chdb(
                &dir,
                &chdb_python(),
                &chdb_script(),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the chdb harness (install it with ./scripts/setup --chdb): {e}"
                )
            });
            (admin, reader, Some(server))
        }
    };
    // The template every test database is cloned from.
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {TEMPLATE_DB}"))
        .execute(&mut admin)
        .await
        .expect("drop template");
    sqlx::query(&format!("CREATE DATABASE {TEMPLATE_DB}{}", owned_by(owner)))
        .execute(&mut admin)
        .await
        .expect("create template");
    let template = PgSettings::new(
        tally_stack::replace_database(&postgres_url, TEMPLATE_DB),
        "tally-tests",
    )
    .connect()
    .await
    .expect("connect to template");
    tally_migrations::postgres::run(&template)
        .await
        .expect("migrate template");
    template.close().await;
    Servers {
        postgres_url,
        postgres_admin_url,
        owner,
        clickhouse,
        clickhouse_reader,
        _stack: stack,
        _chdb: chdb,
        tls,
    }
}

/// The password in a `scheme://user:password@host/…` URL (empty if none).
pub fn url_password(url: &str) -> &str {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map_or("", |(_, password)| password)
}

/// Which ClickHouse the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A ClickHouse server: the local 18.16 (or `TALLY_TEST_CLICKHOUSE_URL`).
    Server,
    /// The current engine through the chdb harness
    /// (`TALLY_TEST_CLICKHOUSE_ENGINE=chdb`; `tests/chdb/serve.py`).
    Chdb,
}

pub fn engine() -> Engine {
    match std::env::var("TALLY_TEST_CLICKHOUSE_ENGINE").as_deref() {
        Ok("chdb") => Engine::Chdb,
        _ => Engine::Server,
    }
}

fn chdb_python() -> PathBuf {
    std::env::var_os("TALLY_CHDB_PYTHON").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/tally/chdb-venv/bin/python")
        },
        PathBuf::from,
    )
}

fn chdb_script() -> PathBuf {
    // At run time (a test binary may be reused from another checkout): the
    // package is `tests/` or `tally/`.
    let dir = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    );
    [
        dir.join("chdb/serve.py"),
        dir.join("../tests/chdb/serve.py"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join("chdb/serve.py"))
}

fn owned_by(owner: Option<&str>) -> String {
    owner.map_or_else(String::new, |o| format!(" OWNER {o}"))
}

/// A fresh data directory per run under the target directory; directories
/// of earlier runs whose process is gone are removed.
fn run_dir() -> PathBuf {
    // Beside the test binary: <target>/<profile>/deps/integration-… → <target>/<profile>/tally-test-stacks
    // A PostgreSQL started as root runs as `postgres`, which must be able to
    // enter the directory: a target dir under /root (mode 700) is not, so
    // fall back to the system temp dir there.
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|p| p.join("tally-test-stacks")))
        .filter(|p| world_traversable(p.parent().unwrap_or(p)));
    let base = std::env::var_os("TALLY_TEST_STACK_DIR")
        .map(PathBuf::from)
        .or(beside_binary)
        .unwrap_or_else(|| std::env::temp_dir().join("tally-test-stacks"));
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let pid = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("run-"))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                let alive = nix_alive(pid);
                if !alive {
                    tally_stack::remove_data_dir(&e.path());
                }
            }
        }
    }
    base.join(format!("run-{}", std::process::id()))
}

fn world_traversable(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn nix_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL database and a ClickHouse database of one's own, migrated.
#[derive(Clone)]
pub struct TestDb {
    pub pg: PgPool,
    pub pg_settings: PgSettings,
    pub ch: ChSettings,
    /// The same ClickHouse database as the read-only user.
    pub ch_reader: ChSettings,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let s = servers();
        let name = unique_name("t");
        let mut admin = sqlx::PgConnection::connect(&s.postgres_admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!(
            "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}{}",
            owned_by(s.owner)
        ))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let _ = admin.close().await;
        let mut pg_settings = PgSettings::new(
            tally_stack::replace_database(&s.postgres_url, &name),
            "tally-tests",
        );
        pg_settings.max_connections = 10;
        let pg = pg_settings
            .connect()
            .await
            .expect("connect to test database");
        let ch = s.clickhouse.with_database(&name);
        tally_migrations::clickhouse::run(&ch)
            .await
            .expect("migrate ClickHouse test database");
        let ch_reader = s.clickhouse_reader.with_database(&name);
        TestDb {
            pg,
            pg_settings,
            ch,
            ch_reader,
        }
    }

    /// This PostgreSQL database over TLS (`sslmode=verify-full`, the local
    /// stack's CA as the root), and a ClickHouse database of its own on
    /// the local server's HTTPS port, migrated over it. `None` unless the
    /// servers are the local stack.
    pub async fn over_tls(&self) -> Option<TestDb> {
        let s = servers();
        let tls = s.tls.as_ref()?;
        let sep = if self.pg_settings.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut pg_settings = PgSettings::new(
            format!(
                "{}{sep}sslmode=verify-full&sslrootcert={}",
                self.pg_settings.url,
                tls.ca_cert.display()
            ),
            "tally-tests-tls",
        );
        pg_settings.max_connections = 10;
        let pg = pg_settings.connect().await.expect("PostgreSQL over TLS");
        let name = unique_name("tls");
        let ch = tls.clickhouse.with_database(&name);
        tally_migrations::clickhouse::run(&ch)
            .await
            .expect("migrate ClickHouse over HTTPS");
        Some(TestDb {
            pg,
            pg_settings,
            ch,
            ch_reader: tls.clickhouse_reader.with_database(&name),
        })
    }

    /// A PostgreSQL database that is empty (not migrated).
    pub async fn empty_postgres() -> PgPool {
        let s = servers();
        let name = unique_name("e");
        let mut admin = sqlx::PgConnection::connect(&s.postgres_admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}{}", owned_by(s.owner)))
            .execute(&mut admin)
            .await
            .expect("create database");
        PgSettings::new(
            tally_stack::replace_database(&s.postgres_url, &name),
            "tally-tests",
        )
        .connect()
        .await
        .expect("connect")
    }

    /// The read-only user's view of the ClickHouse database of `ch`.
    pub fn clickhouse_reader(ch: &ChSettings) -> ChSettings {
        servers().clickhouse_reader.with_database(&ch.database)
    }

    /// A ClickHouse database name of one's own, not yet created.
    pub fn fresh_clickhouse() -> ChSettings {
        servers().clickhouse.with_database(unique_name("c"))
    }

    pub fn ingest_worker(&self, config: tally_ingest::IngestConfig) -> tally_ingest::Worker {
        let mut registry = Registry::default();
        let metrics = tally_ingest::Metrics::register(&mut registry);
        tally_ingest::Worker::new(self.pg.clone(), self.ch.client(), config, metrics)
    }
}

/// The real services of one test, on port 0.
pub struct TestApp {
    pub db: TestDb,
    pub api_url: String,
    pub dashboards_url: String,
    /// A key with every role.
    pub api_key: String,
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Which background workers [`spawn_app`] starts besides the HTTP servers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// The worker's real run loop, as `tally up` runs it.
    Running,
    /// No worker: the test drives `Worker::drain` itself.
    Manual,
}

pub async fn spawn_app(ingest: Ingest) -> TestApp {
    spawn_app_on(TestDb::new().await, ingest).await
}

/// [`spawn_app`] on databases the test prepared (a server of its own).
pub async fn spawn_app_on(db: TestDb, ingest: Ingest) -> TestApp {
    let (writers, readers) = (vec![db.ch.clone()], vec![db.ch_reader.clone()]);
    spawn_app_on_replicas(db, &writers, &readers, ingest).await
}

/// [`spawn_app_on`] with the ingest writing to `writers` and the
/// dashboards reading `readers`, one replica at a time, as `tally` runs
/// them against a cluster.
pub async fn spawn_app_on_replicas(
    db: TestDb,
    writers: &[ChSettings],
    readers: &[ChSettings],
    ingest: Ingest,
) -> TestApp {
    let mut registry = Registry::default();
    let api_metrics = tally_write_api::metrics::Metrics::register(&mut registry);
    let ingest_metrics = tally_ingest::Metrics::register(&mut registry);
    let dash_metrics = tally_dashboards::Metrics::register(&mut registry);
    tally_ops::telemetry::PgPools::register(&mut registry, vec![("test", db.pg.clone())]);
    let registry = Arc::new(registry);
    let shutdown = Shutdown::new();

    let api_config = tally_write_api::ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let api = tally_write_api::Application::build(
        &api_config,
        db.pg.clone(),
        api_metrics,
        registry.clone(),
    )
    .await
    .expect("build write API");
    let dash_config = tally_dashboards::DashboardsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let dashboards = tally_dashboards::Application::build_on_replicas(
        &dash_config,
        tally_ops::Replicas::new(readers),
        db.pg.clone(),
        &dash_metrics,
        registry.clone(),
    )
    .await
    .expect("build dashboards");
    let api_url = format!("http://{}", api.local_addr());
    let dashboards_url = format!("http://{}", dashboards.local_addr());
    let mut tasks = vec![
        tokio::spawn({
            let s = shutdown.clone();
            async move { api.run_until_stopped(s).await.expect("write API failed") }
        }),
        tokio::spawn({
            let s = shutdown.clone();
            async move {
                dashboards
                    .run_until_stopped(s)
                    .await
                    .expect("dashboards failed");
            }
        }),
    ];
    if ingest == Ingest::Running {
        let worker = tally_ingest::Worker::on_replicas(
            db.pg.clone(),
            tally_ops::Replicas::new(writers),
            Default::default(),
            ingest_metrics,
        );
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            worker.run(s).await.expect("ingest worker failed");
        }));
    }
    let (_, api_key) = create_key(&db.pg, "test", &Role::ALL)
        .await
        .expect("create key");
    TestApp {
        db,
        api_url,
        dashboards_url,
        api_key,
        http: reqwest::Client::new(),
        shutdown,
        tasks,
    }
}

impl TestApp {
    /// `POST /v1/orders` with the app's key and a fresh Idempotency-Key.
    pub async fn post_order(&self, body: &serde_json::Value) -> reqwest::Response {
        self.command("/v1/orders", body, &uuid::Uuid::new_v4().to_string())
            .await
    }

    /// `POST {path}` with the app's key and the given Idempotency-Key.
    pub async fn command(
        &self,
        path: &str,
        body: &serde_json::Value,
        key: &str,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&self.api_key)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `GET` on the dashboards (`path` with its query string) with the
    /// test's key, which holds `finance:read`.
    pub async fn dash(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.dashboards_url))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The body of a `GET` without credentials (pages, `/metrics`).
    pub async fn get_text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Places an order and returns its id.
    pub async fn place(&self, body: &serde_json::Value) -> String {
        let res = self.post_order(body).await;
        assert_eq!(res.status(), 201, "placing an order");
        let v: serde_json::Value = res.json().await.unwrap();
        v["order_id"].as_str().unwrap().to_owned()
    }

    /// Another handle on the same running services (for a background load
    /// task); stopping it stops nothing.
    pub fn handle(&self) -> TestApp {
        TestApp {
            db: self.db.clone(),
            api_url: self.api_url.clone(),
            dashboards_url: self.dashboards_url.clone(),
            api_key: self.api_key.clone(),
            http: self.http.clone(),
            shutdown: self.shutdown.clone(),
            tasks: Vec::new(),
        }
    }

    /// Stops the servers and workers and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.expect("a service task panicked");
        }
    }
}

/// A valid place-order body.
pub fn order_body(merchant: &str, currency: &str, items: &[(&str, i64, i64)]) -> serde_json::Value {
    serde_json::json!({
        "merchant_id": merchant,
        "customer_id": "customer-1",
        "currency": currency,
        "items": items.iter().map(|(sku, q, p)| serde_json::json!({
            "sku": sku, "quantity": q, "unit_price_minor": p
        })).collect::<Vec<_>>(),
        "shipping_address": {
            "name": "Ada Lovelace", "line1": "12 Analytical St", "city": "London",
            "postal_code": "N1 9GU", "country": "GB"
        }
    })
}

/// Polls `check` until it returns `Some`, at most `timeout`; no fixed sleeps
/// beyond the short poll interval.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `timeout`) until a running ingest has consumed the
/// outbox and finished every push. `false` if it has not.
pub async fn ingest_drained(pg: &PgPool, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM ingest_pending_pushes)",
        )
        .fetch_one(pg)
        .await
        .ok()?;
        (left == 0).then_some(())
    })
    .await
    .is_some()
}

/// Logs for a failing test: `RUST_LOG=debug cargo test …`.
/// Runs one of the project's binaries (`env!("CARGO_BIN_EXE_…")`) against
/// this test's stores, as an operator would, and waits for it.
pub fn run_binary(exe: &str, db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(exe)
        .args(args)
        .env("DATABASE_URL", &db.pg_settings.url)
        .env("CLICKHOUSE_URL", db.ch.to_url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running {exe}: {e}"))
}

/// A finished process's exit status and output, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The projections equal what the write tables say, exactly: every daily
/// cell (against the SQL oracle) and every order's fact row (version,
/// status, captured, refunded). Panics with the differences.
/// What [`assert_projections_exact`] compared.
#[derive(Debug, Clone, Copy)]
pub struct Compared {
    pub cells: usize,
    pub orders: usize,
}

pub async fn assert_projections_exact(db: &TestDb) -> Compared {
    assert_projections_exact_in(db, "UTC").await
}

/// [`assert_projections_exact`] with the days counted in `zone`.
pub async fn assert_projections_exact_in(db: &TestDb, zone: &str) -> Compared {
    let report = tally_rebuild::verify_daily(&db.pg, &db.ch.client(), zone)
        .await
        .expect("verify");
    assert!(
        report.is_clean(),
        "daily_revenue differs from the write store: {report:?}"
    );
    let expected: std::collections::BTreeMap<uuid::Uuid, (u32, String, i64, i64)> = sqlx::query_as::<_, (uuid::Uuid, i32, String, i64, i64)>(
        "SELECT o.order_id, o.version, o.status,
                COALESCE((SELECT amount_minor FROM payments p WHERE p.order_id = o.order_id), 0),
                COALESCE((SELECT sum(amount_minor) FROM refunds r WHERE r.order_id = o.order_id), 0)::int8
         FROM orders o",
    )
    .fetch_all(&db.pg)
    .await
    .expect("orders")
    .into_iter()
    .map(|(id, v, s, c, r)| (id, (v as u32, s, c, r)))
    .collect();
    // Every fact table holds the same rows, each sorted its own way.
    for table in tally_projection::FACT_TABLES {
        let live: std::collections::BTreeMap<uuid::Uuid, (u32, String, i64, i64)> = db
            .ch
            .client()
            .query(&format!("SELECT ?fields FROM {} FINAL", table.live))
            .fetch_all::<tally_projection::FactRow>()
            .await
            .expect("facts")
            .into_iter()
            .map(|f| {
                (
                    f.order_id,
                    (f.version, f.status, f.captured_minor, f.refunded_minor),
                )
            })
            .collect();
        let missing = expected.keys().filter(|k| !live.contains_key(k)).count();
        let extra = live.keys().filter(|k| !expected.contains_key(k)).count();
        let different = expected
            .iter()
            .filter(|(k, v)| live.get(k).is_some_and(|l| l != *v))
            .count();
        assert_eq!(
            (missing, extra, different),
            (0, 0, 0),
            "{} differs from the write store ({} orders)",
            table.live,
            expected.len()
        );
    }
    let compared = Compared {
        cells: report.matching,
        orders: expected.len(),
    };
    println!(
        "exact: 0 mismatches in {} daily cells and {} orders in each fact table (oracle: the PostgreSQL write tables)",
        compared.cells, compared.orders
    );
    compared
}

/// Writes a placed order (rows and outbox event) through the write API's
/// store on `db`, which may be an open transaction: no HTTP in between.
/// An outbox row whose payload is not an event: what the ingest must
/// park as `decode` and go on.
pub async fn insert_undecodable_event(db: &PgPool) {
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version, occurred_at, payload)
         VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'OrderPlaced', 1, now(), '{\"nonsense\": true}')",
    )
    .execute(db)
    .await
    .expect("insert an undecodable outbox row");
}

pub async fn place_direct(
    db: impl sqlx::PgExecutor<'_>,
    merchant: &str,
    price: i64,
) -> tally_domain::OrderId {
    place_direct_at(db, merchant, price, tally_write_api::orders::now()).await
}

/// [`place_direct`] with the event stamped at `at`.
pub async fn place_direct_at(
    db: impl sqlx::PgExecutor<'_>,
    merchant: &str,
    price: i64,
    at: time::OffsetDateTime,
) -> tally_domain::OrderId {
    use tally_domain::{EventEnvelope, EventId, Order, OrderId, order};
    let req: tally_write_api::orders::PlaceOrderRequest =
        serde_json::from_value(order_body(merchant, "EUR", &[("sku", 1, price)])).unwrap();
    let id = OrderId::from_uuid(uuid::Uuid::now_v7());
    let cmd = req.parse(id).unwrap();
    let event = order::place(&cmd).unwrap();
    let state = Order::from_placed(id, &event, at).unwrap();
    let env = EventEnvelope::record(EventId::from_uuid(uuid::Uuid::now_v7()), at, event, state);
    tally_write_api::store::insert_placed_order(db, &cmd, &env)
        .await
        .unwrap();
    id
}
