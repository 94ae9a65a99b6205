//! `tally load`: seeded order traffic against a running write API, with
//! the achieved rate and latency percentiles. Without `--api-url` it targets
//! the `tally up` of the data directory (from `stack.json`).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tally_loadgen::LoadConfig;

use crate::config::{Global, LoadTargetFlags};

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: LoadTargetFlags,
    /// Target orders per second across clients (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop after this many orders.
    #[arg(long)]
    pub orders: Option<u64>,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 50)]
    pub merchants: u32,
    /// Comma-separated ISO 4217 codes.
    #[arg(long, default_value = "EUR,USD,JPY", value_delimiter = ',')]
    pub currencies: Vec<String>,
    /// The same seed gives the same traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instead of HTTP traffic, write this many orders (with items,
    /// payments, shipments, refunds) straight into the write store, for
    /// rebuild benchmarks; only a rebuild puts them into ClickHouse.
    #[arg(long, value_name = "ORDERS", conflicts_with_all = ["rate", "duration", "orders"])]
    pub bulk: Option<u64>,
    /// With --bulk: spread placed times over this many past days.
    #[arg(long, default_value_t = 365, requires = "bulk")]
    pub days: u32,
}

pub async fn run(g: &Global, a: LoadArgs) -> anyhow::Result<()> {
    if let Some(n) = a.bulk {
        return bulk(g, &a, n).await;
    }
    if a.orders.is_none() && a.duration.is_none() {
        anyhow::bail!("say when to stop: --orders N or --duration SECONDS (or both)");
    }
    for c in &a.currencies {
        tally_domain::Currency::parse(c).map_err(|e| anyhow::anyhow!("--currencies: {e}"))?;
    }
    let (api_url, api_key) = match (a.target.api_url, a.target.api_key) {
        (Some(u), Some(k)) => (u, k),
        (u, k) => {
            let stack = tally_stack::StackFile::read(&g.data_dir).context(
                "no --api-url/--api-key given and no `tally up` running in the data directory",
            )?;
            (u.unwrap_or(stack.api_url), k.unwrap_or(stack.api_key))
        }
    };
    let cfg = LoadConfig {
        seed: a.seed,
        concurrency: a.concurrency,
        orders: a.orders,
        duration: a.duration.map(Duration::from_secs),
        rate: a.rate,
        merchants: a.merchants,
        currencies: a.currencies,
        ..LoadConfig::new(api_url.trim_end_matches('/'), api_key)
    };
    eprintln!("sending order traffic to {} …", cfg.api_url);
    let stop = crate::roles::shutdown_on_signal();
    let r = tally_loadgen::run(&cfg, stop).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "orders      {} in {:.1} s ({:.0} orders/s)",
        r.orders,
        r.elapsed.as_secs_f64(),
        r.orders_per_second()
    );
    println!(
        "commands    {} ({} retried after 409/503)",
        r.commands, r.retries
    );
    println!(
        "latency     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(r.percentile(0.5)),
        ms(r.percentile(0.9)),
        ms(r.percentile(0.99)),
        ms(r.percentile(1.0))
    );
    Ok(())
}

async fn bulk(g: &Global, a: &LoadArgs, orders: u64) -> anyhow::Result<()> {
    for c in &a.currencies {
        tally_domain::Currency::parse(c).map_err(|e| anyhow::anyhow!("--currencies: {e}"))?;
    }
    let pool = crate::roles::pg_for_cli(g, "tally-load")?
        .batch()
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let start: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .context("counting existing orders (is the database migrated? run `tally migrate`)")?;
    let cur = |i: usize| a.currencies[i % a.currencies.len()].clone();
    let cfg = tally_loadgen::bulk::BulkConfig {
        orders,
        merchants: a.merchants,
        currencies: [cur(0), cur(1), cur(2)],
        days: a.days,
        seed: a.seed,
        ..Default::default()
    };
    eprintln!("writing {orders} orders into the write store …");
    let took = tally_loadgen::bulk::seed_write_store(&pool, &cfg, start as u64, |done| {
        eprintln!("  {done} / {orders}");
    })
    .await?;
    println!(
        "seeded {orders} orders in {:.1} s ({:.0} orders/s); run `tally rebuild` to project them",
        took.as_secs_f64(),
        orders as f64 / took.as_secs_f64().max(1e-9)
    );
    Ok(())
}
