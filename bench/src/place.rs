//! `tally-bench place`: PlaceOrder through the write API (HTTP, JSON, auth,
//! idempotency, validation, one transaction) against `pgbench` running the
//! same SQL transaction with the same number of clients, same run, same
//! server.
//!
//! The pgbench script does what the API's transaction does: advisory lock
//! on the idempotency key, key lookup, the address/order/items/outbox
//! statement, the key's response row, commit. Its payload is a real event
//! payload taken from the API's own run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::harness::{BenchApi, percentile, record_result, stat};
use tally_ops::flags::StoreFlags;

fn order() -> serde_json::Value {
    serde_json::json!({
        "merchant_id": "m-bench", "customer_id": "c-bench", "currency": "EUR",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price_minor": 1250},
                  {"sku": "sku-2", "quantity": 1, "unit_price_minor": 499}],
        "shipping_address": {"name": "Ada Lovelace", "line1": "12 Analytical St",
                             "city": "London", "postal_code": "N1 9GU", "country": "GB"}
    })
}

/// Orders per second and per-request latencies (ms) of `clients` HTTP
/// clients placing orders for `d`.
async fn api_run(
    url: &str,
    key: &str,
    clients: usize,
    d: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, key) = (http.clone(), url.to_owned(), key.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let body = order();
                while start.elapsed() < d {
                    let t = Instant::now();
                    let res = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(res.status() == 201, "place order answered {}", res.status());
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / start.elapsed().as_secs_f64(), all))
}

/// A time-ordered UUID (like the API's v7 ids, which PostgreSQL 15 cannot
/// make), so both sides insert into the primary keys' right edge.
const V7: &str = "(lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') \
                  || substr(md5(random()::text), 1, 20))::uuid";

fn script(api_key_id: uuid::Uuid, payload: &str) -> String {
    let payload = payload.replace('\'', "''");
    let v7 = V7;
    format!(
        r#"\set k random(1, 1000000000000)
BEGIN;
SELECT pg_try_advisory_xact_lock(:k);
SELECT request_hash, response_status, response_body FROM idempotency_keys
 WHERE api_key_id = '{api_key_id}' AND idempotency_key = 'pgb-' || :client_id || '-' || :k;
WITH ids AS (SELECT {v7} AS a, {v7} AS o),
 address AS (INSERT INTO addresses (address_id, name, line1, line2, city, region, postal_code, country)
             SELECT a, 'Ada Lovelace', '12 Analytical St', NULL, 'London', NULL, 'N1 9GU', 'GB' FROM ids),
 ord AS (INSERT INTO orders (order_id, merchant_id, customer_id, currency, status, total_minor,
                             item_count, shipping_address_id, version, placed_at, updated_at)
         SELECT o, 'm-bench', 'c-bench', 'EUR', 'placed', 2999, 3, a, 1, now(), now() FROM ids),
 items AS (INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor)
           SELECT o, u.* FROM ids, unnest('{{1,2}}'::smallint[], '{{sku-1,sku-2}}'::text[], '{{2,1}}'::integer[], '{{1250,499}}'::bigint[]) u)
INSERT INTO outbox (event_id, aggregate_id, aggregate_version, event_type, schema_version, occurred_at, payload)
 SELECT {v7}, o, 1, 'OrderPlaced', 1, now(), '{payload}'::jsonb FROM ids;
INSERT INTO idempotency_keys (api_key_id, idempotency_key, request_hash, response_status, response_body)
 VALUES ('{api_key_id}', 'pgb-' || :client_id || '-' || :k, '\x00'::bytea, 201, '{{"order_id": "00000000-0000-0000-0000-000000000000"}}'::jsonb);
COMMIT;
"#
    )
}

/// Transactions per second and per-transaction latencies (ms) of pgbench.
async fn pgbench_run(
    url: &str,
    script_path: &std::path::Path,
    clients: usize,
    secs: u64,
    log_dir: &std::path::Path,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let bin = tally_stack::find_postgres_bin_dir()?.join("pgbench");
    let _ = std::fs::remove_dir_all(log_dir);
    std::fs::create_dir_all(log_dir)?;
    let out = tokio::process::Command::new(&bin)
        .current_dir(log_dir)
        // Prepared statements, as sqlx uses them.
        .args(["-n", "-M", "prepared", "-j", "2", "-l", "--log-prefix=pgb"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-f")
        .arg(script_path)
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .context("no tps in pgbench output")?;
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        // client_id transaction_no time_us script_no epoch epoch_us
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|us| us / 1000.0),
        );
    }
    Ok((tps, lat))
}

pub async fn run(
    g: &StoreFlags,
    clients: usize,
    secs: u64,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<crate::harness::Summary>> {
    let app = BenchApi::start(g, clients).await?;
    let (url, key, pool) = (app.url.clone(), app.key.clone(), app.pool.clone());

    // Warm-up, and a real payload for pgbench.
    api_run(&url, &key, clients, Duration::from_secs(2)).await?;
    let payload: String = sqlx::query_scalar("SELECT payload::text FROM outbox LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let dir = std::env::temp_dir().join(format!("tally-bench-place-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script_path = dir.join("place_order.sql");
    std::fs::write(&script_path, script(app.key_id, &payload))?;

    let (mut ours, mut theirs, mut ratios) = (vec![], vec![], vec![]);
    let (mut our_p50, mut our_p99, mut pg_p50, mut pg_p99) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        let (tps, mut lat) = pgbench_run(
            &app.s.pg.url,
            &script_path,
            clients,
            secs,
            &dir.join("logs"),
        )
        .await?;
        lat.sort_by(f64::total_cmp);
        let (rate, mut ours_lat) = api_run(&url, &key, clients, Duration::from_secs(secs)).await?;
        ours_lat.sort_by(f64::total_cmp);
        eprintln!(
            "run {run}/{runs}: API {rate:.0} orders/s (p50 {:.1} ms, p99 {:.1} ms); pgbench {tps:.0} tx/s (p50 {:.1} ms, p99 {:.1} ms)",
            percentile(&ours_lat, 0.5),
            percentile(&ours_lat, 0.99),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        ours.push(rate);
        theirs.push(tps);
        ratios.push(rate / tps);
        our_p50.push(percentile(&ours_lat, 0.5));
        our_p99.push(percentile(&ours_lat, 0.99));
        pg_p50.push(percentile(&lat, 0.5));
        pg_p99.push(percentile(&lat, 0.99));
    }
    let (ours, theirs, ratios) = (stat(ours), stat(theirs), stat(ratios));
    let (op50, op99, pp50, pp99) = (stat(our_p50), stat(our_p99), stat(pg_p50), stat(pg_p99));
    let mut table = String::new();
    writeln!(
        table,
        "| figure ({clients} clients, {secs} s per run) | write API | pgbench, same SQL | ratio |"
    )?;
    writeln!(table, "|---|---|---|---|")?;
    writeln!(
        table,
        "| PlaceOrder throughput | {:.0} /s ({:.0}–{:.0}) | {:.0} /s ({:.0}–{:.0}) | **{:.2}** ({:.2}–{:.2}) |",
        ours.median,
        ours.min,
        ours.max,
        theirs.median,
        theirs.min,
        theirs.max,
        ratios.median,
        ratios.min,
        ratios.max
    )?;
    writeln!(
        table,
        "| p50 latency | {:.1} ms ({:.1}–{:.1}) | {:.1} ms ({:.1}–{:.1}) | {:.2} |",
        op50.median,
        op50.min,
        op50.max,
        pp50.median,
        pp50.min,
        pp50.max,
        op50.median / pp50.median
    )?;
    writeln!(
        table,
        "| p99 latency | {:.1} ms ({:.1}–{:.1}) | {:.1} ms ({:.1}–{:.1}) | {:.2} |",
        op99.median,
        op99.min,
        op99.max,
        pp99.median,
        pp99.min,
        pp99.max,
        op99.median / pp99.median
    )?;
    println!("{table}");
    record_result(
        record.as_deref(),
        "place",
        &format!(
            "{runs} runs, alternating; medians with min–max. Command: `tally-bench place --clients {clients} --seconds {secs} --runs {runs}` (release build). pgbench runs the API's PlaceOrder transaction as SQL (`-M prepared -j 2`, time-ordered ids like the API's UUIDv7); the API side includes HTTP, JSON, authentication and validation."
        ),
        &table,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    drop(pool);
    app.stop().await;
    Ok(vec![crate::harness::Summary {
        figure: format!("PlaceOrder, {clients} clients: write API vs pgbench, same SQL"),
        result: format!(
            "{} vs {}/s = **{}**; p50 {:.1} vs {:.1} ms; p99 {:.1} vs {:.1} ms",
            ours.show(0, 1.0),
            theirs.show(0, 1.0),
            ratios.show(2, 1.0),
            op50.median,
            pp50.median,
            op99.median,
            pp99.median
        ),
        target: "(reported)".into(),
    }])
}
