//! `tally bench`: performance figures measured side by side with a raw
//! PostgreSQL baseline in the same run, on the same servers.
//!
//! Speed targets live here, never in timed tests. Each figure is the median
//! of `--runs` runs, with min–max, and the Markdown table is printed and
//! appended to BENCHMARKS.md with the machine and date.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tally_domain::{
    Amount, CountryCode, Currency, CustomerId, EventEnvelope, EventId, LineItem, LineItems,
    MerchantId, Order, OrderCommand, OrderId, PaymentId, PlaceOrder, Quantity, RefundId, Sku, Text,
    order,
};
use tally_ops::{ChSettings, PgSettings};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::Global;

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

pub async fn run(g: &Global, args: BenchArgs) -> anyhow::Result<()> {
    let _ = WIPE.set(args.wipe.clone());
    let record = (!args.no_record).then_some(args.record.clone());
    let runs = args.runs.max(1);
    let q = args.quick;
    match args.which {
        BenchKind::All => all(g, q, if q { runs.min(2) } else { runs }, record).await,
        BenchKind::Freshness { seconds, clients } => {
            let secs = seconds.unwrap_or(if q { 8 } else { 20 });
            crate::bench_freshness::run(g, secs, clients.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Place { clients, seconds } => {
            let secs = seconds.unwrap_or(if q { 4 } else { 10 });
            crate::bench_place::run(g, clients.max(1), secs.max(1), runs, record)
                .await
                .map(drop)
        }
        BenchKind::Rebuild { orders, rss_factor } => {
            let n = orders.unwrap_or(if q { 100_000 } else { 1_000_000 });
            crate::bench_rebuild::run(g, n, rss_factor.max(1), runs, runs, record)
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
            crate::bench_dashboards::run(g, m.max(1), days, n.max(1), runs, record)
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
            drain(
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
async fn all(g: &Global, quick: bool, runs: usize, record: Option<PathBuf>) -> anyhow::Result<()> {
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
    rows.extend(crate::bench_place::run(g, 16, if quick { 4 } else { 10 }, runs, None).await?);
    section("outbox drain");
    let events = if quick { 100_000 } else { 1_000_000 };
    rows.extend(drain(g, events, 2, 10_000, Backlog::Chronological, runs, None).await?);
    section("freshness");
    rows.extend(crate::bench_freshness::run(g, if quick { 8 } else { 20 }, 16, runs, None).await?);
    section("rebuild");
    let orders = if quick { 100_000 } else { 1_000_000 };
    // One rebuild at 4 N orders in here (about 90 s each at 4 M): three
    // would take the whole run past 15 minutes; `tally bench rebuild`
    // repeats it `--runs` times.
    rows.extend(crate::bench_rebuild::run(g, orders, 4, runs, 1, None).await?);
    section("dashboards");
    let (merchants, requests) = if quick { (1_000, 50) } else { (10_000, 200) };
    rows.extend(crate::bench_dashboards::run(g, merchants, 365, requests, runs, None).await?);
    took.push(("end", started.elapsed()));
    let sections: Vec<String> = took
        .windows(2)
        .map(|w| format!("{} {:.0} s", w[0].0, (w[1].1 - w[0].1).as_secs_f64()))
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
            "Command: `tally bench all{}` (release build), {took:.0} s in all ({}); each figure is measured beside its raw PostgreSQL or ClickHouse baseline in the same run (details: the per-benchmark sections). Figures are medians with min–max.",
            if quick { " --quick" } else { "" },
            sections.join(", ")
        ),
        &table,
    )
}

/// A fresh embedded stack in a temporary directory (or the given servers).
pub(crate) struct Servers {
    pub(crate) pg: PgSettings,
    pub(crate) ch: ChSettings,
    /// The read-only user, as the dashboards connect.
    pub(crate) ch_reader: ChSettings,
    pub(crate) _stack: Option<tally_stack::LocalStack>,
    pub(crate) _dir: Option<PathBuf>,
}

/// Fails early, with the fix, when the temporary directory cannot hold
/// what a benchmark writes: without it, a full disk shows up minutes in as
/// a PostgreSQL error about its sort files.
fn ensure_free_space(dir: &std::path::Path, need_gib: f64) -> anyhow::Result<()> {
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

/// `--wipe-database`, set once when `tally bench` starts: every benchmark
/// reaches its stores through [`servers`], which checks it.
static WIPE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Refuses to touch stores the benchmark did not create unless the
/// operator named each database it would wipe.
fn may_wipe(named: &[String], pg_db: &str, ch_db: &str) -> anyhow::Result<()> {
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
pub(crate) async fn servers(g: &Global, need_gib: f64) -> anyhow::Result<Servers> {
    if g.database_url.is_some() && g.clickhouse_url.is_some() {
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
            _stack: None,
            _dir: None,
        });
    }
    ensure_free_space(&std::env::temp_dir(), need_gib)?;
    let dir = std::env::temp_dir().join(format!("tally-bench-{}", std::process::id()));
    eprintln!("starting PostgreSQL and ClickHouse in {} …", dir.display());
    let stack = tally_stack::LocalStack::start(&tally_stack::StackConfig::new(&dir)).await?;
    let pg = PgSettings {
        max_connections: 8,
        ..PgSettings::new(&stack.postgres_url, "tally-bench")
    };
    let ch = stack.clickhouse.clone();
    Ok(Servers {
        pg,
        ch,
        ch_reader: stack.clickhouse_reader.clone(),
        _stack: Some(stack),
        _dir: Some(dir),
    })
}

/// How the drain benchmark's events are ordered in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backlog {
    Chronological,
    Scattered,
}

impl std::fmt::Display for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backlog::Chronological => "chronological",
            Backlog::Scattered => "scattered",
        })
    }
}

/// Orders spread over merchants, currencies and 30 days; each order gives
/// 1 to 3 events (placed, captured, refunded), like real traffic. In
/// generation order an order's events follow each other but its day is
/// drawn at random; [`Backlog::Chronological`] sorts them by time, as
/// commits fill an outbox.
fn synthetic_events(n: usize, seed: u64, backlog: Backlog) -> Vec<EventEnvelope> {
    let mut out = Vec::with_capacity(n);
    let start = OffsetDateTime::now_utc() - time::Duration::days(30);
    let currencies = ["EUR", "USD", "JPY"].map(|c| Currency::parse(c).unwrap());
    let address = tally_domain::Address {
        name: Text::parse("Bench Customer").unwrap(),
        line1: Text::parse("1 Load St").unwrap(),
        line2: None,
        city: Text::parse("Benchville").unwrap(),
        region: None,
        postal_code: Text::parse("00000").unwrap(),
        country: CountryCode::parse("DE").unwrap(),
    };
    let mut i: u64 = seed;
    while out.len() < n {
        i += 1;
        let id = OrderId::from_uuid(Uuid::from_u128(u128::from(i) | (u128::from(seed) << 64)));
        let at = start + time::Duration::seconds((i * 7919 % (30 * 86_400)) as i64);
        let cmd = PlaceOrder {
            order_id: id,
            merchant_id: MerchantId::parse(&format!("m{}", i % 1000)).unwrap(),
            customer_id: CustomerId::parse(&format!("c{}", i % 50_000)).unwrap(),
            currency: currencies[(i % 3) as usize],
            items: LineItems::parse(vec![LineItem {
                sku: Sku::parse("sku-1").unwrap(),
                quantity: Quantity::parse(1 + (i % 3) as i64).unwrap(),
                unit_price: Amount::parse(100 + (i % 9_900) as i64).unwrap(),
            }])
            .unwrap(),
            shipping_address: address.clone(),
        };
        let placed = order::place(&cmd).unwrap();
        let mut state = Order::from_placed(id, &placed, at).unwrap();
        out.push(EventEnvelope::record(
            EventId::from_uuid(Uuid::now_v7()),
            at,
            placed,
            state.clone(),
        ));
        if i % 10 < 8 && out.len() < n {
            let e = state
                .handle(&OrderCommand::CapturePayment {
                    payment_id: PaymentId::from_uuid(Uuid::now_v7()),
                    amount: state.total,
                })
                .unwrap();
            state.apply(&e);
            out.push(EventEnvelope::record(
                EventId::from_uuid(Uuid::now_v7()),
                at + time::Duration::hours(1),
                e,
                state.clone(),
            ));
            if i % 10 == 0 && out.len() < n {
                let e = state
                    .handle(&OrderCommand::Refund {
                        refund_id: RefundId::from_uuid(Uuid::now_v7()),
                        amount: Amount::parse(50).unwrap(),
                        reason: None,
                    })
                    .unwrap();
                state.apply(&e);
                out.push(EventEnvelope::record(
                    EventId::from_uuid(Uuid::now_v7()),
                    at + time::Duration::days(1),
                    e,
                    state.clone(),
                ));
            }
        }
    }
    if backlog == Backlog::Chronological {
        out.sort_by_key(|e| e.occurred_at); // stable: an order's events keep their order
    }
    out
}

/// Writes `events` once to an unlogged staging table, from which [`refill`]
/// copies them into the outbox for every measurement: sending 1 M JSON
/// payloads from the client each time cost more than the drains themselves.
async fn stage(pool: &PgPool, events: &[EventEnvelope]) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE UNLOGGED TABLE IF NOT EXISTS bench_outbox_staged (
             n bigserial PRIMARY KEY, event_id uuid, aggregate_id uuid, aggregate_version int4,
             event_type text, occurred_at timestamptz, payload jsonb)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE bench_outbox_staged")
        .execute(pool)
        .await?;
    for chunk in events.chunks(10_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|e| e.event_id.as_uuid()).collect();
        let aggs: Vec<Uuid> = chunk.iter().map(|e| e.aggregate_id.as_uuid()).collect();
        let versions: Vec<i32> = chunk
            .iter()
            .map(|e| e.aggregate_version.get() as i32)
            .collect();
        let types: Vec<&str> = chunk.iter().map(|e| e.event_type()).collect();
        let at: Vec<OffsetDateTime> = chunk.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<String> = chunk.iter().map(|e| e.payload_json().to_string()).collect();
        sqlx::query(
            "INSERT INTO bench_outbox_staged (event_id, aggregate_id, aggregate_version, event_type, occurred_at, payload)
             SELECT e, a, v, t, o, p::jsonb
             FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::timestamptz[], $6::text[]) AS u(e, a, v, t, o, p)",
        )
        .bind(&ids)
        .bind(&aggs)
        .bind(&versions)
        .bind(&types)
        .bind(&at)
        .bind(&payloads)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Fills the outbox with the staged events, in their order.
async fn refill(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version, occurred_at, payload)
         SELECT event_id, aggregate_id, aggregate_version, event_type, 1, occurred_at, payload
         FROM bench_outbox_staged ORDER BY n",
    )
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

/// The baseline: PostgreSQL alone claiming, reading and deleting the rows,
/// with the very statement the worker uses, rows fetched to the client.
async fn baseline_drain(pool: &PgPool, batch_size: i64) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        type Row = (
            i64,
            Uuid,
            Uuid,
            i32,
            String,
            i16,
            OffsetDateTime,
            String,
            OffsetDateTime,
        );
        let rows: Vec<Row> = sqlx::query_as(tally_ingest::CLAIM_SQL)
            .bind(batch_size)
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        total += rows.len();
    }
}

/// Empties every projection and the ingest state between runs.
async fn reset(pool: &PgPool, ch: &ChSettings) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE outbox, ingest_daily_totals, ingest_pending_pushes, ingest_dead_letters")
        .execute(pool)
        .await?;
    for t in ["order_facts", "daily_revenue", "ingest_watermark"] {
        ch.client()
            .query(&format!("TRUNCATE TABLE {t}"))
            .execute()
            .await?;
    }
    Ok(())
}

async fn outbox_bytes(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_total_relation_size('outbox')")
            .fetch_one(pool)
            .await?,
    )
}

pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stat {
    /// `median (min–max)`, each times `factor`, with `prec` decimals.
    pub(crate) fn show(&self, prec: usize, factor: f64) -> String {
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median * factor,
            self.min * factor,
            self.max * factor,
            p = prec
        )
    }
}

pub(crate) fn stat(mut xs: Vec<f64>) -> Stat {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Stat {
        median: if xs.len() % 2 == 0 {
            (xs[mid - 1] + xs[mid]) / 2.0
        } else {
            xs[mid]
        },
        min: xs[0],
        max: xs[xs.len() - 1],
    }
}

/// The `q` quantile (nearest rank) of an ascending, non-empty slice.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len().max(1) - 1) as f64 * q).round() as usize]
}

async fn drain(
    g: &Global,
    n: usize,
    workers: usize,
    batch_size: i64,
    backlog: Backlog,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<Summary>> {
    let s = servers(g, 1.0 + 1.5 * n as f64 / 1e6).await?;
    let pool = s.pg.connect().await.context("connecting to PostgreSQL")?;
    tally_migrations::migrate(&pool, &s.ch).await?;
    eprintln!("generating {n} events …");
    let events = synthetic_events(n, 1, backlog);
    let expected = events.iter().fold((0, 0, 0), |acc, e| {
        let d = tally_domain::DailyMeasures::of_event(&e.event);
        (
            acc.0 + d.orders_placed,
            acc.1 + d.captured_minor,
            acc.2 + d.refunded_minor,
        )
    });
    stage(&pool, &events).await?;
    drop(events);
    let (mut base, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = Vec::new();
    for run in 1..=runs {
        reset(&pool, &s.ch).await?;
        refill(&pool).await?;
        let t = Instant::now();
        let drained = baseline_drain(&pool, batch_size).await?;
        let b = drained as f64 / t.elapsed().as_secs_f64();

        reset(&pool, &s.ch).await?;
        refill(&pool).await?;
        let before = outbox_bytes(&pool).await?;
        let mut registry = Registry::default();
        let metrics = tally_ingest::Metrics::register(&mut registry);
        let t = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|i| {
                let config = tally_ingest::IngestConfig {
                    batch_size,
                    claim_from: tally_ingest::ClaimFrom::alternating(i),
                    ..Default::default()
                };
                let mut w =
                    tally_ingest::Worker::new(pool.clone(), s.ch.client(), config, metrics.clone());
                tokio::spawn(async move { w.drain().await })
            })
            .collect();
        let mut projected = 0;
        for task in tasks {
            projected += task.await??.projected;
        }
        let o = projected as f64 / t.elapsed().as_secs_f64();
        anyhow::ensure!(
            projected == n,
            "the workers projected {projected} of {n} events"
        );
        // Counted exactly once: the projection's totals equal the events'.
        let live: (i64, i64, i64) = s
            .ch
            .client()
            .query("SELECT sum(orders_placed), sum(captured_minor), sum(refunded_minor) FROM daily_revenue FINAL")
            .fetch_one()
            .await?;
        anyhow::ensure!(
            live == expected,
            "projected totals {live:?} differ from the events' {expected:?}"
        );
        sqlx::query("VACUUM outbox").execute(&pool).await?;
        let after = outbox_bytes(&pool).await?;
        sizes.push((before, after));
        eprintln!(
            "run {run}/{runs}: PostgreSQL alone {b:.0} events/s, ingest {o:.0} events/s ({:.0} %)",
            100.0 * o / b
        );
        base.push(b);
        ours.push(o);
        ratios.push(o / b);
    }
    let (b, o, r) = (stat(base), stat(ours), stat(ratios));
    let (before, after) = sizes[sizes.len() - 1];
    let mut table = String::new();
    writeln!(
        table,
        "| figure | tally | baseline (PostgreSQL alone) | ratio | target |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    writeln!(
        table,
        "| outbox drain, {n} events ({backlog}), {workers} worker(s), batches of {batch_size}, events/s | {} | {} | {:.0} % ({:.0}–{:.0} %) | ≥ 70 % and ≥ 50 000/s |",
        o.show(0, 1.0),
        b.show(0, 1.0),
        100.0 * r.median,
        100.0 * r.min,
        100.0 * r.max
    )?;
    writeln!(
        table,
        "| outbox size before → after drain + VACUUM | {:.1} MiB → {:.1} MiB | | | no bloat |",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    )?;
    println!("{table}");
    record_result(
        record.as_deref(),
        "drain",
        &format!(
            "{runs} runs; medians with min–max. Command: `tally bench drain --events {n} --runs {runs} --workers {workers} --batch-size {batch_size} --backlog {backlog}` (release build)."
        ),
        &table,
    )?;
    s.stop().await;
    Ok(vec![Summary {
        figure: format!("outbox drain, {n} events: ingest vs PostgreSQL alone"),
        result: format!(
            "{} vs {} events/s = **{} %**",
            o.show(0, 1.0),
            b.show(0, 1.0),
            r.show(0, 100.0)
        ),
        target: "≥ 70 % and ≥ 50 000/s".into(),
    }])
}

/// A fresh stack with the write API serving on it: what the HTTP
/// benchmarks (place, freshness) start from.
pub(crate) struct BenchApi {
    pub(crate) s: Servers,
    pub(crate) pool: PgPool,
    /// `POST` here to place an order.
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) key_id: Uuid,
    /// Registered beside the API's, for an ingest worker if the bench runs one.
    pub(crate) ingest_metrics: tally_ingest::Metrics,
    pub(crate) shutdown: tally_ops::Shutdown,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl BenchApi {
    /// `clients` concurrent HTTP clients get a connection each, plus spare.
    pub(crate) async fn start(g: &Global, clients: usize) -> anyhow::Result<BenchApi> {
        let s = servers(g, 1.0).await?;
        let pg = PgSettings {
            max_connections: clients as u32 + 4,
            ..s.pg.clone()
        };
        let pool = pg.connect().await.context("connecting to PostgreSQL")?;
        tally_migrations::migrate(&pool, &s.ch).await?;
        let (key_id, key) =
            tally_ops::auth::create_key(&pool, "bench", &[tally_ops::auth::Role::OrdersWrite])
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
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.api_task.await;
        drop(self.pool);
        self.s.stop().await;
    }
}

/// One line of `tally bench all`'s table.
pub(crate) struct Summary {
    pub(crate) figure: String,
    pub(crate) result: String,
    pub(crate) target: String,
}

impl Servers {
    /// Stops servers this bench started and removes their directory.
    pub(crate) async fn stop(self) {
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
pub(crate) fn record_result(
    path: Option<&std::path::Path>,
    bench: &str,
    how: &str,
    table: &str,
) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut doc = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    writeln!(
        doc,
        "\n## `tally bench {bench}` — {}, {}\n",
        OffsetDateTime::now_utc().date(),
        machine()
    )?;
    writeln!(doc, "{how}\n")?;
    doc.push_str(table);
    std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("appended to {}", path.display());
    Ok(())
}

/// Cores, memory and server versions, for the record.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
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
