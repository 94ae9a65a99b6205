//! `tally-bench dashboards`: the finance read API against the same queries
//! run directly with `clickhouse-client`.
//!
//! `daily_revenue` is filled with M merchants × 3 currencies × D days ending
//! today (default 10 000 × 3 × 365, about 11 million cells), merged as a
//! mature table is, and then today's cells are written again as the ingest
//! does all day, so the current month is a partition with unmerged parts:
//! the state the dashboards really read. Then random 90-day windows and
//! currencies are requested one after another through HTTP (daily revenue
//! and top merchants, as the page asks for them). The one statement that
//! answers each request (from the same plan of clean partitions: what the
//! API runs when nothing is cached, since it adds cached sums of merged
//! parts to a read of the other days) is then timed with one
//! `clickhouse-client --multiquery --time` per run, connected as the same
//! read-only user (so with the same settings profile): the client's own
//! figure per statement, without its process start.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tally_dashboards::params::{Filter, Needs, RawQuery};
use tally_dashboards::store;
use time::OffsetDateTime;

use crate::harness::{Summary, client_times, percentile, record_result, servers, stat};
use tally_ops::flags::StoreFlags;

const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
const WINDOW_DAYS: i64 = 90;

/// splitmix64: reproducible windows without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One request: the endpoint, its query string and the filter it parses to.
struct Ask {
    path: &'static str,
    query: String,
    filter: Filter,
}

fn asks(n: usize, days: i64, seed: u64) -> Vec<Ask> {
    let today = OffsetDateTime::now_utc().date();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let back = (rng.next() % (days - WINDOW_DAYS + 1) as u64) as i64;
        let to = today - time::Duration::days(back);
        let from = to - time::Duration::days(WINDOW_DAYS - 1);
        let currency = CURRENCIES[(rng.next() % 3) as usize];
        for (path, needs) in [
            ("/v1/revenue/daily", Needs::default()),
            ("/v1/merchants/top", Needs { currency: true }),
        ] {
            let raw = RawQuery {
                from: Some(from.to_string()),
                to: Some(to.to_string()),
                currency: Some(currency.into()),
                ..RawQuery::default()
            };
            let filter = Filter::parse(&raw, today, 366, needs).expect("a valid bench query");
            out.push(Ask {
                path,
                query: format!("from={from}&to={to}&currency={currency}"),
                filter,
            });
        }
    }
    out
}

async fn seed(ch: &clickhouse::Client, merchants: u64, days: i64) -> anyhow::Result<()> {
    let cells = merchants * 3 * days as u64;
    let first = OffsetDateTime::now_utc().date() - time::Duration::days(days - 1);
    let per_day = merchants * 3;
    let t = Instant::now();
    // Plausible, reproducible figures from a hash of the cell number.
    ch.query(&format!(
        "INSERT INTO daily_revenue
         SELECT toDate(?) + intDiv(number, {per_day}) AS day,
                concat('m-', toString(intDiv(number % {per_day}, 3))) AS merchant_id,
                toFixedString(arrayElement(['EUR', 'USD', 'GBP'], (number % 3) + 1), 3) AS currency,
                toInt64(1 + cityHash64(number) % 20) AS orders_placed,
                toInt64(orders_placed * (500 + cityHash64(number, 1) % 20000)) AS gross_minor,
                toInt64(intDiv(gross_minor * 9, 10)) AS captured_minor,
                toInt64(intDiv(captured_minor, 20 + cityHash64(number, 2) % 30)) AS refunded_minor,
                toInt64(cityHash64(number, 3) % 3) AS orders_cancelled,
                toInt64(orders_placed * (1 + cityHash64(number, 4) % 4)) AS items_sold,
                toUInt64(1) AS version
         FROM numbers(?)"
    ))
    .bind(first.to_string())
    .bind(cells)
    .execute()
    .await
    .context("seeding daily_revenue")?;
    eprintln!(
        "  {cells} cells inserted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    ch.query("OPTIMIZE TABLE daily_revenue FINAL")
        .execute()
        .await
        .context("merging daily_revenue")?;
    eprintln!("  merged in {:.1} s", t.elapsed().as_secs_f64());
    // Today's cells again, one version up: the ingest's writes of the day,
    // left unmerged.
    ch.query(
        "INSERT INTO daily_revenue
         SELECT day, merchant_id, currency, orders_placed + 1, gross_minor + 1000,
                captured_minor + 1000, refunded_minor, orders_cancelled, items_sold + 1, version + 1
         FROM daily_revenue WHERE day = today()",
    )
    .execute()
    .await
    .context("writing today's cells again")?;
    let us = OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    ch.query("INSERT INTO ingest_watermark VALUES ('bench', ?, now())")
        .bind(us)
        .execute()
        .await?;
    Ok(())
}

/// One run's latencies in seconds, [daily, top], sorted once collected.
struct Run {
    api: [Vec<f64>; 2],
    client: [Vec<f64>; 2],
}

pub async fn run(
    g: &StoreFlags,
    merchants: u64,
    days: i64,
    requests: usize,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<Summary>> {
    // About 100 bytes a cell on disk, before merging.
    let s = servers(
        g,
        1.0 + (merchants * 3 * days as u64) as f64 * 100.0 / (1u64 << 30) as f64,
    )
    .await?;
    let port = s.native_port()?;
    let pool = s.pg.connect().await.context("connecting to PostgreSQL")?;
    s.migrate(&pool).await?;
    let admin = s.ch.client();
    eprintln!("seeding {merchants} merchants × 3 currencies × {days} days of daily aggregates …");
    seed(&admin, merchants, days).await?;

    let (_, key) =
        tally_ops::auth::create_key(&pool, "bench", &[tally_ops::auth::Role::FinanceRead]).await?;
    let mut registry = Registry::default();
    let metrics = tally_dashboards::Metrics::register(&mut registry);
    let config = tally_dashboards::DashboardsConfig {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    let reader = s.ch_reader.client();
    let app = tally_dashboards::Application::build_on_replicas(
        &config,
        s.readers(),
        pool.clone(),
        &metrics,
        Arc::new(registry),
    )
    .await?;
    // The service fills its cache of part sums in the background from start-up;
    // here it is filled first, so that the timed requests do not race it,
    // and what that costs is shown.
    let t = Instant::now();
    let since = OffsetDateTime::now_utc().date() - time::Duration::days(config.max_span_days - 1);
    let filled = app.cache().refresh(&reader, since).await?;
    eprintln!(
        "  cache: sums of {} merged parts read in {:.1} s",
        filled.filled,
        t.elapsed().as_secs_f64()
    );
    let base = format!("http://{}", app.local_addr());
    let shutdown = tally_ops::Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::new();

    let mut results = Vec::new();
    for r in 0..runs {
        let asks = asks(requests, days, 42 + r as u64);
        // Warm-up: a few of each, not timed.
        for a in asks.iter().take(10) {
            http.get(format!("{base}{}?{}", a.path, a.query))
                .bearer_auth(&key)
                .send()
                .await?
                .error_for_status()?;
        }
        let mut run = Run {
            api: [Vec::new(), Vec::new()],
            client: [Vec::new(), Vec::new()],
        };
        let mut final_days = 0;
        let mut statements: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (i, a) in asks.iter().enumerate() {
            let t = Instant::now();
            let res = http
                .get(format!("{base}{}?{}", a.path, a.query))
                .bearer_auth(&key)
                .send()
                .await?;
            let status = res.status();
            let body = res.bytes().await?;
            anyhow::ensure!(
                status.is_success(),
                "{} → {status}: {}",
                a.path,
                String::from_utf8_lossy(&body)
            );
            run.api[i % 2].push(t.elapsed().as_secs_f64());

            // The same statement the API ran, from the plan it would use.
            let plan = store::plan(&reader, a.filter.range).await?;
            final_days = final_days.max(plan.final_days());
            let sql = if i % 2 == 0 {
                store::daily_sql(&a.filter, &plan, &[])
            } else {
                store::top_sql(&a.filter, &plan)
            };
            statements[i % 2].push(sql.inline());
        }
        for (times, sqls) in run.client.iter_mut().zip(&statements) {
            *times = client_times(port, &s.ch_reader, sqls).await?;
        }
        for xs in run.api.iter_mut().chain(run.client.iter_mut()) {
            xs.sort_by(f64::total_cmp);
        }
        eprintln!(
            "  run {}: daily p99 {:.1} ms (client {:.1} ms), top p99 {:.1} ms (client {:.1} ms); up to {final_days} day(s) read with FINAL",
            r + 1,
            percentile(&run.api[0], 0.99) * 1e3,
            percentile(&run.client[0], 0.99) * 1e3,
            percentile(&run.api[1], 0.99) * 1e3,
            percentile(&run.client[1], 0.99) * 1e3,
        );
        results.push(run);
    }
    shutdown.cancel();
    let _ = task.await;
    drop(pool);
    s.stop().await;

    let mut table = String::new();
    writeln!(
        table,
        "| endpoint (90 days, one currency) | API p50 ms | API p99 ms | clickhouse-client p99 ms | ratio p99 | target |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|")?;
    let mut summary = Vec::new();
    for (k, name) in ["daily revenue", "top merchants"].into_iter().enumerate() {
        let p50 = stat(results.iter().map(|r| percentile(&r.api[k], 0.5)).collect());
        let p99 = stat(
            results
                .iter()
                .map(|r| percentile(&r.api[k], 0.99))
                .collect(),
        );
        let c99 = stat(
            results
                .iter()
                .map(|r| percentile(&r.client[k], 0.99))
                .collect(),
        );
        let ratio = stat(
            results
                .iter()
                .map(|r| percentile(&r.api[k], 0.99) / percentile(&r.client[k], 0.99))
                .collect(),
        );
        writeln!(
            table,
            "| {name} | {} | {} | {} | {} | p99 ≤ 50 ms, ≤ 1.5× |",
            p50.show(1, 1e3),
            p99.show(1, 1e3),
            c99.show(1, 1e3),
            ratio.show(2, 1.0)
        )?;
        summary.push(Summary {
            figure: format!("dashboard {name}, 90 days"),
            result: format!(
                "p99 {} ms, {}× clickhouse-client",
                p99.show(1, 1e3),
                ratio.show(2, 1.0)
            ),
            target: "p99 ≤ 50 ms, ≤ 1.5×".into(),
        });
    }
    println!("{table}");
    record_result(
        record.as_deref(),
        "dashboards",
        &format!(
            "{merchants} merchants × 3 currencies × {days} days ({} cells), merged except today's cells, written again as the ingest does; {requests} random 90-day windows per run, one request at a time, over HTTP with a finance:read key; median of {runs} runs (min–max). The cache of merged parts' sums is filled before the runs (its fill time is printed). Baseline: the one statement that answers each request, from the same plan (what the API runs with nothing cached), timed by `clickhouse-client --time`.",
            merchants * 3 * days as u64
        ),
        &table,
    )?;
    Ok(summary)
}
