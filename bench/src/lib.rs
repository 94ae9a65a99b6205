//! `tally-bench`: performance figures, each measured beside a raw
//! PostgreSQL or ClickHouse baseline in the same run, on the same servers.
//! Kept out of the `tally` binary, which holds only what operators run.
//!
//! Speed targets live here, never in timed tests. Each figure is the median
//! of `--runs` runs, with min–max, and the Markdown table is printed and
//! appended to BENCHMARKS.md with the machine and date. The benchmarks
//! share one harness (`harness`: servers, the write API, statistics, the
//! record) and never each other.

mod dashboards;
mod drain;
mod freshness;
pub mod harness;
mod orders;
mod place;
mod rebuild;

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tally_ops::flags::StoreFlags;

pub use drain::Backlog;
use harness::{WIPE, record_result};

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: BenchKind,
    /// Runs per figure; the median is reported with min–max.
    #[arg(long, default_value_t = 3, global = true)]
    pub runs: usize,
    /// Small sizes, for a check in under three minutes.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Append the table to this file (with machine and date).
    #[arg(long, default_value = "BENCHMARKS.md", global = true)]
    pub record: PathBuf,
    /// Print only; do not append to --record.
    #[arg(long, global = true)]
    pub no_record: bool,
    /// Benchmarks start their own PostgreSQL and ClickHouse. Only when both
    /// DATABASE_URL and CLICKHOUSE_URL are set do they use those instead,
    /// and they TRUNCATE the outbox, the running totals and both
    /// projections there: name the databases they may wipe (the PostgreSQL
    /// one, and the ClickHouse one if its name differs), or they refuse.
    #[arg(long = "wipe-database", value_name = "NAME", global = true)]
    pub wipe: Vec<String>,
    /// Run on a local replicated ClickHouse of this shape (`1x2`: one shard,
    /// two replicas, with ZooKeeper) instead of one server: the ingest and
    /// the dashboards use it as `tally` does (one replica at a time).
    #[arg(long, value_name = "SHARDSxREPLICAS", global = true)]
    pub clickhouse_cluster: Option<tally_stack::ClusterShape>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum BenchKind {
    /// Every benchmark below in turn, with default sizes (or --quick ones),
    /// summarised in one table.
    All,
    /// Outbox backlog drain by the ingest worker vs PostgreSQL alone
    /// claiming and deleting the same rows.
    Drain {
        /// Events in the backlog (default 1 000 000; --quick 100 000).
        #[arg(long)]
        events: Option<usize>,
        /// Ingest workers draining at once (they share the work through
        /// `SKIP LOCKED`, as separate processes would).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Events per ingest batch (the worker's default is 10 000).
        #[arg(long, default_value_t = 10_000)]
        batch_size: i64,
        /// The backlog's order: `chronological` (as an outbox fills: by
        /// commit time) or `scattered` (each event's day drawn at random
        /// from 30, whatever its place in the outbox: the worst case for
        /// the daily totals, about twice as many cells per batch).
        #[arg(long, default_value_t = Backlog::Chronological)]
        backlog: Backlog,
    },
    /// Freshness: time from a command's acknowledgement to its event being
    /// visible in the daily aggregate, at half the maximum write throughput.
    Freshness {
        /// Seconds of paced load (default 20; --quick 8).
        #[arg(long)]
        seconds: Option<u64>,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// PlaceOrder through the write API against pgbench running the same
    /// SQL transaction with the same number of clients.
    Place {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per measurement (default 10; --quick 4).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Rebuild + verification of bulk-seeded orders vs PostgreSQL's `COPY`
    /// of the write tables, and peak memory at N and 4 N orders.
    Rebuild {
        /// Orders (default 1 000 000; --quick 100 000).
        #[arg(long)]
        orders: Option<u64>,
        /// Peak memory is also measured at this multiple of --orders.
        #[arg(long, default_value_t = 4)]
        rss_factor: u64,
    },
    /// The order queries (by id, merchant page, customer history) against
    /// the same statements through `clickhouse-client`.
    Orders {
        /// Orders in each fact table (default 3 000 000; --quick 300 000).
        #[arg(long)]
        orders: Option<u64>,
        /// Requests of each kind per run (default 300; --quick 100).
        #[arg(long)]
        requests: Option<usize>,
    },
    /// The dashboards' 90-day daily-revenue and top-merchants endpoints vs
    /// the same queries through clickhouse-client.
    Dashboards {
        /// Merchants (× 3 currencies × --days cells; default 10 000,
        /// --quick 1 000).
        #[arg(long)]
        merchants: Option<u64>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(90..=3650))]
        days: i64,
        /// Requests per endpoint per run (default 200; --quick 50).
        #[arg(long)]
        requests: Option<usize>,
    },
}

pub async fn run(g: &StoreFlags, args: BenchArgs) -> anyhow::Result<()> {
    let _ = WIPE.set(args.wipe.clone());
    if let Some(shape) = args.clickhouse_cluster
        && shape.shards > 1
    {
        anyhow::bail!(
            "--clickhouse-cluster {shape}: sharded read sides are not supported yet; use one shard (1x2)"
        );
    }
    let _ = harness::CLUSTER.set(args.clickhouse_cluster);
    let record = (!args.no_record).then_some(args.record.clone());
    let runs = args.runs.max(1);
    let q = args.quick;
    match args.which {
        BenchKind::All => all(g, q, if q { runs.min(2) } else { runs }, record).await,
        BenchKind::Freshness { seconds, clients } => {
            let secs = seconds.unwrap_or(if q { 8 } else { 20 });
            crate::freshness::run(g, secs, clients.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Place { clients, seconds } => {
            let secs = seconds.unwrap_or(if q { 4 } else { 10 });
            crate::place::run(g, clients.max(1), secs.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Rebuild { orders, rss_factor } => {
            let n = orders.unwrap_or(if q { 100_000 } else { 1_000_000 });
            crate::rebuild::run(g, n, rss_factor.max(1), runs, runs, record)
                .await
                .map(drop)
        }
        BenchKind::Dashboards {
            merchants,
            days,
            requests,
        } => {
            let m = merchants.unwrap_or(if q { 1_000 } else { 10_000 });
            let n = requests.unwrap_or(if q { 50 } else { 200 });
            crate::dashboards::run(g, m.max(1), days, n.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Orders { orders, requests } => {
            let n = orders.unwrap_or(if q { 300_000 } else { 3_000_000 });
            let r = requests.unwrap_or(if q { 100 } else { 300 });
            crate::orders::run(g, n.max(1), r.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Drain {
            events,
            workers,
            batch_size,
            backlog,
        } => {
            let n = events.unwrap_or(if q { 100_000 } else { 1_000_000 });
            drain::drain(
                g,
                n,
                workers.max(1),
                batch_size.max(1),
                backlog,
                runs,
                record,
            )
            .await
            .map(drop)
        }
    }
}

/// Every benchmark with its default (or quick) sizes, one summary table.
async fn all(
    g: &StoreFlags,
    quick: bool,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut took = Vec::new();
    let mut section = |name: &'static str| {
        eprintln!(
            "== {name} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        took.push((name, started.elapsed()));
    };
    section("PlaceOrder vs pgbench");
    rows.extend(crate::place::run(g, 16, if quick { 4 } else { 10 }, runs, None).await?);
    section("outbox drain");
    let events = if quick { 100_000 } else { 1_000_000 };
    rows.extend(drain::drain(g, events, 2, 10_000, Backlog::Chronological, runs, None).await?);
    section("freshness");
    rows.extend(crate::freshness::run(g, if quick { 8 } else { 20 }, 16, runs, None).await?);
    section("rebuild");
    let orders = if quick { 100_000 } else { 1_000_000 };
    // One rebuild at 4 N orders in here (about 90 s each at 4 M): three
    // would take the whole run past 15 minutes; `tally-bench rebuild`
    // repeats it `--runs` times.
    rows.extend(crate::rebuild::run(g, orders, 4, runs, 1, None).await?);
    section("dashboards");
    let (merchants, requests) = if quick { (1_000, 50) } else { (10_000, 200) };
    rows.extend(crate::dashboards::run(g, merchants, 365, requests, runs, None).await?);
    section("orders");
    let (orders, requests) = if quick {
        (300_000, 100)
    } else {
        (3_000_000, 300)
    };
    rows.extend(crate::orders::run(g, orders, requests, runs, None).await?);
    took.push(("end", started.elapsed()));
    let sections: Vec<String> = took
        .windows(2)
        .map(|w| {
            format!(
                "{} {:.0} s",
                w[0].0,
                w[1].1.saturating_sub(w[0].1).as_secs_f64()
            )
        })
        .collect();
    let mut table = String::new();
    writeln!(
        table,
        "| figure | result (median of {runs} runs) | target |"
    )?;
    writeln!(table, "|---|---|---|")?;
    for r in &rows {
        writeln!(table, "| {} | {} | {} |", r.figure, r.result, r.target)?;
    }
    println!("{table}");
    let took = started.elapsed().as_secs_f64();
    eprintln!("all benchmarks took {took:.0} s");
    record_result(
        record.as_deref(),
        "all",
        &format!(
            "Command: `tally-bench all{}` (release build), {took:.0} s in all ({}); each figure is measured beside its raw PostgreSQL or ClickHouse baseline in the same run (details: the per-benchmark sections). Figures are medians with min–max.",
            if quick { " --quick" } else { "" },
            sections.join(", ")
        ),
        &table,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stores: tally_ops::flags::StoreFlags,
        #[command(flatten)]
        bench: super::BenchArgs,
    }

    /// The local cluster shape and the stores' cluster name are two flags
    /// (one id for both made clap panic on reading either).
    #[test]
    fn a_cluster_shape_and_a_cluster_name_parse_side_by_side() {
        let cli = Cli::try_parse_from([
            "tally-bench",
            "drain",
            "--quick",
            "--clickhouse-cluster",
            "1x2",
            "--clickhouse-cluster-name",
            "prod",
        ])
        .expect("parses");
        assert_eq!(
            cli.bench
                .clickhouse_cluster
                .map(|s| s.to_string())
                .as_deref(),
            Some("1x2")
        );
        assert_eq!(cli.stores.clickhouse_cluster_name.as_deref(), Some("prod"));
    }
}
