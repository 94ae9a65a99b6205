//! `tally-bench orders`: the order queries against the same statements run
//! directly with `clickhouse-client`.
//!
//! The three fact tables are filled with N orders (default 3 million) of
//! 1 000 merchants and N/10 customers, placed over the last 365 days,
//! merged as a mature table is; then the last day's orders are written
//! again one version up, as the ingest does all day, so the newest month
//! has unmerged parts and `FINAL` has work to do. Then random orders,
//! merchants and customers are asked for through HTTP, one request at a
//! time: one order by id, a merchant's first page (50 orders, newest
//! first), a customer's history. The statement that answers each request
//! is then timed by one `clickhouse-client --multiquery --time` per run,
//! connected as the same read-only user.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tally_dashboards::order_query::{OrderFilter, RawOrderQuery};
use tally_dashboards::orders::{ONE_SQL, Owner, inline, page_sql};
use tally_domain::{CustomerId, MerchantId};

use crate::harness::{Summary, client_times, percentile, record_result, servers, stat};
use tally_ops::flags::StoreFlags;

const MERCHANTS: u64 = 1_000;
const KINDS: [&str; 3] = ["order by id", "merchant page (50)", "customer history"];

/// The order id of order number `n` (time-ordered, like UUIDv7's).
fn id_sql(n: &str) -> String {
    format!("toUUID(concat('00000000-0000-7000-8000-', toString(100000000000 + {n})))")
}

fn id_of(n: u64) -> String {
    format!("00000000-0000-7000-8000-{}", 100_000_000_000 + n)
}

async fn seed(ch: &clickhouse::Client, orders: u64) -> anyhow::Result<()> {
    let customers = (orders / 10).max(1);
    let t = Instant::now();
    ch.query(&format!(
        "INSERT INTO order_facts
         SELECT {id} AS order_id, toUInt32(1) AS version,
                concat('m-', toString(cityHash64(number) % {MERCHANTS})) AS merchant_id,
                concat('c-', toString(cityHash64(number, 1) % {customers})) AS customer_id,
                toFixedString(arrayElement(['EUR', 'USD', 'GBP'], cityHash64(number, 2) % 3 + 1), 3) AS currency,
                arrayElement(['placed', 'paid', 'shipped', 'cancelled'], cityHash64(number, 3) % 4 + 1) AS status,
                toDateTime(now() - 365 * 86400 + intDiv(number * 365 * 86400, {orders})) AS placed_at,
                toDate(placed_at) AS placed_day,
                toUInt64(1 + cityHash64(number, 4) % 4) AS item_count,
                toInt64(500 + cityHash64(number, 5) % 20000) AS total_minor,
                if(status = 'placed', toInt64(0), total_minor) AS captured_minor,
                toInt64(0) AS refunded_minor,
                placed_at + 3600 AS updated_at
         FROM numbers({orders})",
        id = id_sql("number"),
    ))
    .execute()
    .await
    .context("seeding order_facts")?;
    for t in ["order_facts_by_customer", "order_facts_by_id"] {
        ch.query(&format!("INSERT INTO {t} SELECT * FROM order_facts"))
            .execute()
            .await
            .with_context(|| format!("seeding {t}"))?;
    }
    eprintln!(
        "  {orders} orders in each of 3 tables in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for f in tally_projection::FACT_TABLES {
        ch.query(&format!("OPTIMIZE TABLE {} FINAL", f.live))
            .execute()
            .await
            .with_context(|| format!("merging {}", f.live))?;
        // The last day's orders, one version up: the ingest's writes of
        // the day, left unmerged.
        ch.query(&format!(
            "INSERT INTO {t}
             SELECT order_id, version + 1, merchant_id, customer_id, currency, 'shipped',
                    placed_at, placed_day, item_count, total_minor, total_minor, refunded_minor,
                    now()
             FROM {t} WHERE placed_at > now() - 86400",
            t = f.live
        ))
        .execute()
        .await?;
    }
    eprintln!("  merged in {:.1} s", t.elapsed().as_secs_f64());
    let us = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
    ch.query("INSERT INTO ingest_watermark VALUES ('bench', ?, now())")
        .bind(us)
        .execute()
        .await?;
    Ok(())
}

/// One kind of request's latencies in one run, in seconds: through the API
/// and the same statement through `clickhouse-client`.
#[derive(Default)]
struct Latencies {
    api: Vec<f64>,
    client: Vec<f64>,
}

/// splitmix64: reproducible picks without a dependency.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One request of each kind per `i`: its path and the statement that
/// answers it.
fn asks(orders: u64, requests: usize, seed: u64) -> anyhow::Result<Vec<[(String, String); 3]>> {
    let customers = (orders / 10).max(1);
    let first = OrderFilter::parse(&RawOrderQuery::default())
        .map_err(|e| anyhow::anyhow!("default order filter: {e:?}"))?;
    (0..requests as u64)
        .map(|i| {
            let r = mix(seed ^ (i << 8));
            let id = id_of(r % orders);
            let merchant = MerchantId::parse(&format!("m-{}", mix(r) % MERCHANTS))?;
            let customer = CustomerId::parse(&format!("c-{}", mix(r + 1) % customers))?;
            let (m_sql, m_binds) = page_sql(Owner::Merchant(&merchant), &first);
            let (c_sql, c_binds) = page_sql(Owner::Customer(&customer), &first);
            Ok([
                (
                    format!("/v1/orders/{id}"),
                    inline(ONE_SQL, std::slice::from_ref(&id)),
                ),
                (
                    format!("/v1/merchants/{merchant}/orders"),
                    inline(&m_sql, &m_binds),
                ),
                (
                    format!("/v1/customers/{customer}/orders"),
                    inline(&c_sql, &c_binds),
                ),
            ])
        })
        .collect::<Result<_, tally_domain::ParseError>>()
        .map_err(|e| anyhow::anyhow!("bench ids: {}", e.message()))
}

pub async fn run(
    g: &StoreFlags,
    orders: u64,
    requests: usize,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<Summary>> {
    // About 60 bytes an order per table once merged, twice that before.
    let s = servers(g, 1.0 + (orders * 3) as f64 * 150.0 / (1u64 << 30) as f64).await?;
    let port = s.native_port()?;
    let pool = s.pg.connect().await.context("connecting to PostgreSQL")?;
    s.migrate(&pool).await?;
    eprintln!(
        "seeding {orders} orders of {MERCHANTS} merchants and {} customers …",
        orders / 10
    );
    seed(&s.ch.client(), orders).await?;

    let (_, key) =
        tally_ops::auth::create_key(&pool, "bench", &[tally_ops::auth::Role::OrdersRead]).await?;
    let mut registry = Registry::default();
    let metrics = tally_dashboards::Metrics::register(&mut registry);
    let config = tally_dashboards::DashboardsConfig {
        listen: "127.0.0.1:0".parse()?,
        cache_rows: 0,
        ..Default::default()
    };
    let app = tally_dashboards::Application::build(
        &config,
        s.ch_reader.client(),
        pool.clone(),
        &metrics,
        Arc::new(registry),
    )
    .await?;
    let base = format!("http://{}", app.local_addr());
    let shutdown = tally_ops::Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::new();

    // Per run, per kind.
    let mut results: Vec<[Latencies; 3]> = Vec::new();
    for r in 0..runs {
        let asks = asks(orders, requests, 7 + r as u64)?;
        for a in asks.iter().take(5).flatten() {
            http.get(format!("{base}{}", a.0))
                .bearer_auth(&key)
                .send()
                .await?
                .error_for_status()?;
        }
        let mut run: [Latencies; 3] = Default::default();
        let mut statements: [Vec<String>; 3] = Default::default();
        for a in &asks {
            for (k, (path, sql)) in a.iter().enumerate() {
                let t = Instant::now();
                let res = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .send()
                    .await?;
                let status = res.status();
                let body = res.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "{path} → {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                run[k].api.push(t.elapsed().as_secs_f64());
                statements[k].push(sql.clone());
            }
        }
        for (k, sqls) in statements.iter().enumerate() {
            run[k].client = client_times(port, &s.ch_reader, sqls).await?;
        }
        for l in &mut run {
            l.api.sort_by(f64::total_cmp);
            l.client.sort_by(f64::total_cmp);
        }
        eprintln!(
            "  run {}: {}",
            r + 1,
            KINDS
                .iter()
                .zip(&run)
                .map(|(name, l)| format!(
                    "{name} p99 {:.1} ms (client {:.1} ms)",
                    percentile(&l.api, 0.99) * 1e3,
                    percentile(&l.client, 0.99) * 1e3
                ))
                .collect::<Vec<_>>()
                .join(", ")
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
        "| query ({orders} orders) | API p50 ms | API p99 ms | clickhouse-client p99 ms | ratio p99 |"
    )?;
    writeln!(table, "|---|---|---|---|---|")?;
    let mut summary = Vec::new();
    for (k, name) in KINDS.into_iter().enumerate() {
        let over = |f: fn(&Latencies) -> f64| stat(results.iter().map(|r| f(&r[k])).collect());
        let p50 = over(|l| percentile(&l.api, 0.5));
        let p99 = over(|l| percentile(&l.api, 0.99));
        let c99 = over(|l| percentile(&l.client, 0.99));
        let ratio = over(|l| percentile(&l.api, 0.99) / percentile(&l.client, 0.99));
        writeln!(
            table,
            "| {name} | {} | {} | {} | {} |",
            p50.show(1, 1e3),
            p99.show(1, 1e3),
            c99.show(1, 1e3),
            ratio.show(2, 1.0)
        )?;
        summary.push(Summary {
            figure: format!("orders: {name}, {orders} orders"),
            result: format!(
                "p99 {} ms, {}× clickhouse-client",
                p99.show(1, 1e3),
                ratio.show(2, 1.0)
            ),
            target: "exact; ratio ≤ 1.5×".into(),
        });
    }
    println!("{table}");
    record_result(
        record.as_deref(),
        "orders",
        &format!(
            "{orders} orders of {MERCHANTS} merchants and {} customers in each fact table, merged except the last day's orders, written again one version up as the ingest does; per run {requests} requests of each kind, one at a time, over HTTP with an orders:read key: a random order by id, a random merchant's first page (50, newest first), a random customer's history. Median of {runs} runs (min–max). Baseline: the statement that answers each request, timed by `clickhouse-client --time` as the same read-only user.",
            orders / 10
        ),
        &table,
    )?;
    Ok(summary)
}
