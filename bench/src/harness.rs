//! What every benchmark stands on: its own servers (or given ones it may
//! wipe), the write API serving on them, medians and percentiles, and the
//! record appended to BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tally_ops::flags::StoreFlags;
use tally_ops::{ChSettings, PgSettings};
use time::OffsetDateTime;
use uuid::Uuid;

/// A fresh embedded stack in a temporary directory (or the given servers).
pub struct Servers {
    pub pg: PgSettings,
    /// The one server, or the cluster's first replica.
    pub ch: ChSettings,
    /// The read-only user, as the dashboards connect.
    pub ch_reader: ChSettings,
    /// `--clickhouse-cluster`: every replica, as admin and as the reader.
    pub cluster: Option<(tally_ops::ChCluster, Vec<ChSettings>)>,
    pub _stack: Option<tally_stack::LocalStack>,
    pub _dir: Option<PathBuf>,
}

/// Fails early, with the fix, when the temporary directory cannot hold
/// what a benchmark writes: without it, a full disk shows up minutes in as
/// a PostgreSQL error about its sort files.
pub fn ensure_free_space(dir: &std::path::Path, need_gib: f64) -> anyhow::Result<()> {
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("checking the free space in {}", dir.display()))?;
    let free = st.blocks_available() as f64 * st.fragment_size() as f64 / (1u64 << 30) as f64;
    anyhow::ensure!(
        free >= need_gib,
        "this benchmark writes about {need_gib:.0} GiB under {} (its own PostgreSQL and ClickHouse) \
         and only {free:.1} GiB are free there: free some space, or point TMPDIR at a bigger disk",
        dir.display()
    );
    Ok(())
}

/// `--wipe-database`, set once when `tally-bench` starts: every benchmark
/// reaches its stores through [`servers`], which checks it.
pub static WIPE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// `--clickhouse-cluster`, set once when `tally-bench` starts.
pub static CLUSTER: std::sync::OnceLock<Option<tally_stack::ClusterShape>> =
    std::sync::OnceLock::new();

impl Servers {
    /// Applies the migrations: on the one server, or on every replica.
    pub async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        match &self.cluster {
            Some((cluster, _)) => tally_migrations::migrate_cluster(pool, cluster).await?,
            None => tally_migrations::migrate(pool, &self.ch).await?,
        }
        Ok(())
    }

    /// The replicas the ingest writes to, one at a time.
    pub fn writers(&self) -> std::sync::Arc<tally_ops::Replicas> {
        match &self.cluster {
            Some((c, _)) => tally_ops::Replicas::new(&c.shards.concat()),
            None => tally_ops::Replicas::new(std::slice::from_ref(&self.ch)),
        }
    }

    /// The replicas the dashboards read, one at a time.
    pub fn readers(&self) -> std::sync::Arc<tally_ops::Replicas> {
        match &self.cluster {
            Some((_, readers)) => tally_ops::Replicas::new(readers),
            None => tally_ops::Replicas::new(std::slice::from_ref(&self.ch_reader)),
        }
    }
}

/// The read side the run is on, for the record: ` on a 1x2 ClickHouse
/// cluster`, or nothing.
pub fn read_side() -> String {
    match CLUSTER.get().copied().flatten() {
        Some(shape) => format!(", on a {shape} ClickHouse cluster (ZooKeeper, loopback)"),
        None => String::new(),
    }
}

/// Refuses to touch stores the benchmark did not create unless the
/// operator named each database it would wipe.
pub fn may_wipe(named: &[String], pg_db: &str, ch_db: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = [pg_db, ch_db]
        .into_iter()
        .filter(|db| !named.iter().any(|n| n == db))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "refusing to benchmark against DATABASE_URL/CLICKHOUSE_URL: a benchmark TRUNCATEs the \
         outbox, the running totals and both projections there. If that is what you want, add {}; \
         otherwise unset DATABASE_URL or CLICKHOUSE_URL and it starts servers of its own",
        missing
            .iter()
            .map(|db| format!("--wipe-database {db}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// Local servers for a benchmark that writes about `need_gib` GiB, or the
/// given ones (only with `--wipe-database`, see [`may_wipe`]).
pub async fn servers(g: &StoreFlags, need_gib: f64) -> anyhow::Result<Servers> {
    if g.both_given() {
        let pg = g.pg("tally-bench")?;
        let ch = g.ch()?;
        let pg_db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pg.connect().await.context("connecting to PostgreSQL")?)
            .await?;
        may_wipe(
            WIPE.get().map_or(&[][..], Vec::as_slice),
            &pg_db,
            &ch.database,
        )?;
        return Ok(Servers {
            pg,
            ch,
            ch_reader: g.ch_reader()?,
            cluster: match g.ch_cluster()? {
                Some(c) => Some((c, g.ch_reader_replicas()?)),
                None => None,
            },
            _stack: None,
            _dir: None,
        });
    }
    ensure_free_space(&std::env::temp_dir(), need_gib)?;
    let dir = std::env::temp_dir().join(format!("tally-bench-{}", std::process::id()));
    let shape = CLUSTER.get().copied().flatten();
    match shape {
        None => eprintln!("starting PostgreSQL and ClickHouse in {} …", dir.display()),
        Some(s) => eprintln!(
            "starting PostgreSQL, ZooKeeper and a {s} ClickHouse cluster in {} …",
            dir.display()
        ),
    }
    let stack = tally_stack::LocalStack::start(&tally_stack::StackConfig {
        clickhouse_cluster: shape,
        ..tally_stack::StackConfig::new(&dir)
    })
    .await?;
    let pg = PgSettings {
        max_connections: 8,
        ..PgSettings::new(&stack.postgres_url, "tally-bench")
    };
    let ch = stack.clickhouse.clone();
    let cluster = stack.cluster.as_ref().map(|c| {
        (
            tally_ops::ChCluster {
                name: tally_stack::CLUSTER_NAME.into(),
                shards: vec![c.admins()],
            },
            c.readers(),
        )
    });
    Ok(Servers {
        pg,
        ch,
        ch_reader: stack.clickhouse_reader.clone(),
        cluster,
        _stack: Some(stack),
        _dir: Some(dir),
    })
}

/// Runs `statements` through one `clickhouse-client --multiquery --time`
/// (fed on stdin) and returns the seconds it reports for each.
pub async fn client_times(
    port: u16,
    user: &tally_ops::ChSettings,
    statements: &[String],
) -> anyhow::Result<Vec<f64>> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("clickhouse-client")
        .args(["--port", &port.to_string(), "--database", &user.database])
        .args(["--user", &user.user, "--password", &user.password])
        .args(["--multiquery", "--time", "--format", "Null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running clickhouse-client (installed by ./scripts/setup)")?;
    let mut input = String::new();
    for s in statements {
        input.push_str(s);
        input.push_str(";\n");
    }
    let mut stdin = child.stdin.take().context("clickhouse-client's stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "clickhouse-client failed: {stderr}");
    let times: Vec<f64> = stderr
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .collect();
    anyhow::ensure!(
        times.len() == statements.len(),
        "clickhouse-client reported {} times for {} statements: {stderr}",
        times.len(),
        statements.len()
    );
    Ok(times)
}

impl Servers {
    /// ClickHouse's native port, for `clickhouse-client`: the local
    /// server's, or `TALLY_BENCH_CLICKHOUSE_TCP_PORT` (default 9000) for
    /// given servers.
    pub fn native_port(&self) -> anyhow::Result<u16> {
        // On a cluster: the first replica's, the one the services use.
        if let Some(cluster) = self._stack.as_ref().and_then(|s| s.cluster.as_ref()) {
            return cluster.nodes[0]
                .native_port()
                .context("reading the first replica's native port");
        }
        Ok(match &self._dir {
            Some(dir) => tally_stack::clickhouse_native_port(dir)
                .context("reading the local ClickHouse's native port")?,
            None => std::env::var("TALLY_BENCH_CLICKHOUSE_TCP_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(9000),
        })
    }
}

pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// `median (min–max)`, each times `factor`, with `prec` decimals.
    pub fn show(&self, prec: usize, factor: f64) -> String {
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median * factor,
            self.min * factor,
            self.max * factor,
            p = prec
        )
    }
}

pub fn stat(mut xs: Vec<f64>) -> Stat {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Stat {
        median: if xs.len().is_multiple_of(2) {
            (xs[mid - 1] + xs[mid]) / 2.0
        } else {
            xs[mid]
        },
        min: xs[0],
        max: xs[xs.len() - 1],
    }
}

/// The `q` quantile (nearest rank) of an ascending, non-empty slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len().max(1) - 1) as f64 * q).round() as usize]
}

/// A fresh stack with the write API serving on it: what the HTTP
/// benchmarks (place, freshness) start from.
pub struct BenchApi {
    pub s: Servers,
    pub pool: PgPool,
    /// `POST` here to place an order.
    pub url: String,
    pub key: String,
    pub key_id: Uuid,
    /// Registered beside the API's, for an ingest worker if the bench runs one.
    pub ingest_metrics: tally_ingest::Metrics,
    pub shutdown: tally_ops::Shutdown,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl BenchApi {
    /// `clients` concurrent HTTP clients get a connection each, plus spare.
    pub async fn start(g: &StoreFlags, clients: usize) -> anyhow::Result<BenchApi> {
        let s = servers(g, 1.0).await?;
        let pg = PgSettings {
            max_connections: clients as u32 + 4,
            ..s.pg.clone()
        };
        let pool = pg.connect().await.context("connecting to PostgreSQL")?;
        s.migrate(&pool).await?;
        let (key_id, key) = tally_ops::auth::create_key(
            &pool,
            "bench",
            &[
                tally_ops::auth::Role::OrdersWrite,
                tally_ops::auth::Role::FinanceRead,
                tally_ops::auth::Role::OrdersRead,
            ],
        )
        .await?;
        let mut registry = Registry::default();
        let api_metrics = tally_write_api::metrics::Metrics::register(&mut registry);
        let ingest_metrics = tally_ingest::Metrics::register(&mut registry);
        let shutdown = tally_ops::Shutdown::new();
        let config = tally_write_api::ApiConfig {
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let api = tally_write_api::Application::build(
            &config,
            pool.clone(),
            api_metrics,
            std::sync::Arc::new(registry),
        )
        .await?;
        let url = format!("http://{}/v1/orders", api.local_addr());
        let api_task = tokio::spawn(api.run_until_stopped(shutdown.clone()));
        Ok(BenchApi {
            s,
            pool,
            url,
            key,
            key_id,
            ingest_metrics,
            shutdown,
            api_task,
        })
    }

    /// Stops the API (and whatever else watches `shutdown`), then the servers.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.api_task.await;
        drop(self.pool);
        self.s.stop().await;
    }
}

/// One line of `tally-bench all`'s table.
pub struct Summary {
    pub figure: String,
    pub result: String,
    pub target: String,
}

impl Servers {
    /// Stops servers this bench started and removes their directory.
    pub async fn stop(self) {
        if let Some(stack) = self._stack {
            stack.stop().await;
        }
        if let Some(dir) = self._dir {
            // With its PostgreSQL cluster, which lives outside a 0700
            // directory when we run as root.
            tally_stack::remove_data_dir(&dir);
        }
    }
}

/// Appends a result table to the record file (if any), headed by the bench
/// name, date and machine, and a line saying how it was run.
pub fn record_result(
    path: Option<&std::path::Path>,
    bench: &str,
    how: &str,
    table: &str,
) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut doc = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    writeln!(
        doc,
        "\n## `tally-bench {bench}` — {}, {}{}\n",
        OffsetDateTime::now_utc().date(),
        machine(),
        read_side()
    )?;
    writeln!(doc, "{how}\n")?;
    doc.push_str(table);
    std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("appended to {}", path.display());
    Ok(())
}

/// Cores, memory and server versions, for the record.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1048576.0);
    let pg = tally_stack::find_postgres_bin_dir()
        .ok()
        .and_then(|d| {
            std::process::Command::new(d.join("postgres"))
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {mem_gib:.0} GiB, {pg}, ClickHouse 18.16 (Debian)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_stores_are_wiped_only_when_named() {
        let err = may_wipe(&[], "prod", "prod").unwrap_err().to_string();
        assert!(err.contains("--wipe-database prod"), "{err}");
        let err = may_wipe(&["prod".into()], "prod", "analytics")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--wipe-database analytics"), "{err}");
        assert!(!err.contains("--wipe-database prod"), "{err}");
        assert!(may_wipe(&["staging".into()], "prod", "prod").is_err());
        may_wipe(&["prod".into(), "analytics".into()], "prod", "analytics").unwrap();
        may_wipe(&["tally".into()], "tally", "tally").unwrap();
    }

    #[test]
    fn a_benchmark_that_would_fill_the_disk_stops_before_starting() {
        let dir = std::env::temp_dir();
        ensure_free_space(&dir, 0.0).unwrap();
        let err = ensure_free_space(&dir, 1e9).unwrap_err().to_string();
        assert!(err.contains("GiB are free there"), "{err}");
        assert!(err.contains("point TMPDIR at a bigger disk"), "{err}");
    }

    #[test]
    fn medians_of_odd_and_even_counts_and_their_display() {
        let s = stat(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = stat(vec![0.5, 0.7]);
        assert!((s.median - 0.6).abs() < 1e-12);
        assert_eq!(s.show(0, 100.0), "60 (50–70)");
        assert_eq!(stat(vec![4.0]).show(1, 1.0), "4.0 (4.0–4.0)");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
    }
}
