//! `tally-bench rebuild`: rebuild plus verification of N bulk-seeded orders
//! against PostgreSQL merely reading the write tables out (`COPY … TO
//! STDOUT`, same run, same server), and the peak memory of the rebuild
//! process at N and at 4 N orders.
//!
//! The rebuild runs as what operators run, a `tally rebuild` child process,
//! so its peak RSS (VmHWM) is its own and not the benchmark's.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::TryStreamExt;
use sqlx::PgPool;
use sqlx::postgres::PgPoolCopyExt;

use crate::harness::{Servers, record_result, servers, stat};
use tally_ops::flags::StoreFlags;

const TABLES: [&str; 5] = ["orders", "order_items", "payments", "shipments", "refunds"];

/// Seconds for PostgreSQL to stream every write table out.
async fn copy_out(pool: &PgPool) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let mut bytes = 0u64;
    for table in TABLES {
        let mut s = pool
            .copy_out_raw(&format!("COPY {table} TO STDOUT"))
            .await?;
        while let Some(chunk) = s.try_next().await? {
            bytes += chunk.len() as u64;
        }
    }
    Ok((t.elapsed().as_secs_f64(), bytes))
}

struct ChildRun {
    seconds: f64,
    peak_rss_mib: f64,
    report: serde_json::Value,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The `tally` binary beside this one (both are built by
/// `cargo build --release -p tally -p tally-bench`): the rebuild is timed
/// as operators run it, in a process of its own.
fn tally_exe() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let tally = me.with_file_name("tally");
    anyhow::ensure!(
        tally.is_file(),
        "{} is missing: the rebuild benchmark runs the tally binary built beside this one; \
         build both with `cargo build --release -p tally -p tally-bench`",
        tally.display()
    );
    Ok(tally)
}

/// Runs `tally rebuild --format json` against the bench's servers.
async fn rebuild_child(s: &Servers, chunk_rows: u64) -> anyhow::Result<ChildRun> {
    let exe = tally_exe()?;
    let t = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(["rebuild", "--format", "json", "--chunk-rows"])
        .arg(chunk_rows.to_string())
        .env("DATABASE_URL", &s.pg.url)
        .env("CLICKHOUSE_URL", s.ch.to_url())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting tally rebuild")?;
    let pid = child.id().context("child pid")?;
    let mut peak = 0u64;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out)
            .await
            .map(|_| out)
    });
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let seconds = t.elapsed().as_secs_f64();
    let out = reader.await??;
    anyhow::ensure!(
        status.success(),
        "tally rebuild failed ({status}); its stderr is above"
    );
    Ok(ChildRun {
        seconds,
        peak_rss_mib: peak as f64 / 1024.0,
        report: serde_json::from_slice(&out).context("parsing the rebuild's JSON")?,
    })
}

async fn seed(pool: &PgPool, from: u64, orders: u64) -> anyhow::Result<()> {
    let cfg = tally_loadgen::bulk::BulkConfig {
        orders,
        ..Default::default()
    };
    eprintln!("seeding {orders} orders into the write store …");
    let took = tally_loadgen::bulk::seed_write_store(pool, &cfg, from, |done| {
        if done % 500_000 == 0 || done == orders {
            eprintln!("  {done} / {orders}");
        }
    })
    .await?;
    eprintln!("  seeded in {:.1} s", took.as_secs_f64());
    Ok(())
}

pub async fn run(
    g: &StoreFlags,
    orders: u64,
    rss_factor: u64,
    runs: usize,
    large_runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<crate::harness::Summary>> {
    // The same memory budget at both sizes, smaller than either, so the
    // RSS comparison shows whether memory follows the budget or the store.
    let chunk_rows = (orders / 4).clamp(1_000, 200_000);
    let large_runs = large_runs.max(1);
    // PostgreSQL and ClickHouse at the largest size, with sort files and
    // WAL: about 2.5 GiB per million orders.
    let s = servers(g, 1.0 + 2.5 * (orders * rss_factor) as f64 / 1e6).await?;
    let pool =
        s.pg.clone()
            .batch()
            .connect()
            .await
            .context("connecting to PostgreSQL")?;
    s.migrate(&pool).await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        existing == 0,
        "the bench needs an empty write store ({existing} orders found); unset DATABASE_URL to let it start its own"
    );
    seed(&pool, 0, orders).await?;
    eprintln!("first rebuild (fills the live tables) …");
    rebuild_child(&s, chunk_rows).await?;

    let (mut copy, mut ours, mut ratios, mut rss) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    for run in 1..=runs {
        let (c, b) = copy_out(&pool).await?;
        bytes = b;
        let r = rebuild_child(&s, chunk_rows).await?;
        let drift: u64 = ["daily", "facts"]
            .iter()
            .flat_map(|t| ["missing", "extra", "different"].map(|k| &r.report[t][k]))
            .map(|v| v.as_u64().unwrap_or(0))
            .sum();
        anyhow::ensure!(
            drift == 0,
            "the rebuild found drift on a quiet store: {}",
            r.report
        );
        eprintln!(
            "run {run}: COPY {c:.2} s ({:.0} MiB), rebuild + verify {:.2} s, peak RSS {:.0} MiB, ingest paused {} + {} ms",
            b as f64 / 1048576.0,
            r.seconds,
            r.peak_rss_mib,
            r.report["register_paused_ms"],
            r.report["ingest_paused_ms"]
        );
        copy.push(c);
        ours.push(r.seconds);
        ratios.push(r.seconds / c);
        rss.push(r.peak_rss_mib);
    }
    let (copy, ours, ratios, rss_small) = (stat(copy), stat(ours), stat(ratios), stat(rss));

    let big = orders * rss_factor;
    seed(&pool, orders, big - orders).await?;
    // One rebuild at the large size, not a filling one and a measured one:
    // its verification finds the new orders missing from the live tables,
    // and without a report file a comparison builds only its worst rows,
    // so it holds what a quiet run holds (and takes a little longer).
    // Later runs at that size are quiet ones, like those at N.
    let mut large_rss = Vec::new();
    let mut large_secs = Vec::new();
    for run in 1..=large_runs {
        eprintln!("rebuild at {big} orders, run {run} …");
        let large = rebuild_child(&s, chunk_rows).await?;
        let missing = large.report["facts"]["missing"].as_u64().unwrap_or(0);
        let expected = if run == 1 { big - orders } else { 0 };
        anyhow::ensure!(
            missing == expected,
            "the rebuild at {big} orders found {missing} orders missing from the live tables, expected {expected}"
        );
        eprintln!(
            "  {:.1} s, peak RSS {:.0} MiB",
            large.seconds, large.peak_rss_mib
        );
        large_rss.push(large.peak_rss_mib);
        large_secs.push(large.seconds);
    }
    let (rss_large, large_secs) = (stat(large_rss), stat(large_secs));
    let rss_ratio = rss_large.median / rss_small.median;

    let mut table = String::new();
    writeln!(table, "| figure | value |")?;
    writeln!(table, "|---|---|")?;
    writeln!(
        table,
        "| PostgreSQL `COPY … TO STDOUT` of the write tables, {orders} orders ({:.0} MiB) | {:.2} s ({:.2}–{:.2}) |",
        bytes as f64 / 1048576.0,
        copy.median,
        copy.min,
        copy.max
    )?;
    writeln!(
        table,
        "| `tally rebuild` (build shadow + verify + swap), {orders} orders | {:.2} s ({:.2}–{:.2}) = {:.0} orders/s |",
        ours.median,
        ours.min,
        ours.max,
        orders as f64 / ours.median
    )?;
    writeln!(
        table,
        "| **ratio rebuild / COPY** (target ≤ 2) | **{:.2}** ({:.2}–{:.2}) |",
        ratios.median, ratios.min, ratios.max
    )?;
    writeln!(
        table,
        "| peak RSS of the rebuild process, {orders} orders | {:.0} MiB ({:.0}–{:.0}) |",
        rss_small.median, rss_small.min, rss_small.max
    )?;
    writeln!(
        table,
        "| peak RSS, {big} orders ({} run(s) of {:.0} s; the first one's verify finds the {} orders added since missing from the live tables) | {} MiB |",
        large_runs,
        large_secs.median,
        big - orders,
        rss_large.show(0, 1.0)
    )?;
    writeln!(
        table,
        "| **RSS ratio {big} / {orders}** (target ≤ 1.2) | **{rss_ratio:.2}** |"
    )?;
    println!("{table}");
    record_result(
        record.as_deref(),
        "rebuild",
        &format!(
            "{runs} runs at {orders} orders and {large_runs} at {big}; medians with min–max. Command: `tally-bench rebuild --orders {orders} --runs {runs}` (release build). The rebuild is a `tally rebuild --chunk-rows {chunk_rows}` child process; RSS is its VmHWM."
        ),
        &table,
    )?;
    drop(pool);
    s.stop().await;
    Ok(vec![
        crate::harness::Summary {
            figure: format!("rebuild + verify, {orders} orders, vs COPY of the write tables"),
            result: format!(
                "{} vs {} s = **{}×**",
                ours.show(1, 1.0),
                copy.show(1, 1.0),
                ratios.show(1, 1.0)
            ),
            target: "≤ 2×".into(),
        },
        crate::harness::Summary {
            figure: format!("peak RSS of the rebuild, {big} vs {orders} orders"),
            result: format!(
                "{} vs {} MiB = **{rss_ratio:.2}×**",
                rss_large.show(0, 1.0),
                rss_small.show(0, 1.0)
            ),
            target: "≤ 1.2×".into(),
        },
    ])
}
