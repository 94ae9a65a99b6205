//! `tally-bench freshness`: end-to-end freshness, measured from outside.
//!
//! First the maximum PlaceOrder throughput through HTTP is measured; then
//! orders are sent at half that rate. Every order is a probe: it has a
//! merchant of its own, so the moment its (day, merchant) cell appears in
//! `daily_revenue` is the moment its event became visible to readers. A
//! poller looks for new cells every 5 ms; the latency is poll time minus
//! the time the command was acknowledged.
//!
//! Beside it, read-your-writes as a client meets it: for one probe in
//! [`RYW_SAMPLE`], the time from the acknowledgement to the answer of a
//! read of the order itself that sent the acknowledgement's consistency
//! token (`/v1/orders/{id}?after=<token>`, `Prefer: wait=5`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::harness::{BenchApi, percentile, record_result, stat};
use tally_ops::flags::StoreFlags;

fn order(merchant: &str) -> serde_json::Value {
    serde_json::json!({
        "merchant_id": merchant, "customer_id": "bench", "currency": "EUR",
        "items": [{"sku": "sku-1", "quantity": 1, "unit_price_minor": 1000}],
        "shipping_address": {"name": "B", "line1": "1 St", "city": "C", "postal_code": "1", "country": "DE"}
    })
}

/// One probe in this many also measures read-your-writes: a read per
/// order would double the load the freshness figure is measured under.
const RYW_SAMPLE: u64 = 10;

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
    /// The dashboards' base URL.
    dashboards: String,
}

impl Client {
    /// Places an order; returns its consistency token and its id.
    async fn place(&self, merchant: &str) -> anyhow::Result<(String, String)> {
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&order(merchant))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 201, "place order answered {}", res.status());
        let token = res
            .headers()
            .get("tally-consistency-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: serde_json::Value = res.json().await?;
        let id = body["order_id"].as_str().unwrap_or_default().to_owned();
        Ok((token, id))
    }

    /// The order `id` read with `token`; `Ok` once it answered 200.
    async fn read_after(&self, token: &str, id: &str) -> anyhow::Result<()> {
        let res = self
            .http
            .get(format!("{}/v1/orders/{id}?after={token}", self.dashboards))
            .bearer_auth(&self.key)
            .header("prefer", "wait=5")
            .send()
            .await?;
        anyhow::ensure!(
            res.status() == 200,
            "a read with a token answered {}",
            res.status()
        );
        Ok(())
    }
}

/// Orders per second that `clients` concurrent clients achieve for `d`.
async fn max_rate(client: &Arc<Client>, clients: usize, d: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < d {
                    client.place(&format!("warm-{c}")).await?;
                    n += 1;
                }
                Ok::<u64, anyhow::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(
    g: &StoreFlags,
    seconds: u64,
    clients: usize,
    runs: usize,
    record: Option<PathBuf>,
) -> anyhow::Result<Vec<crate::harness::Summary>> {
    let app = BenchApi::start(g, clients).await?;
    let worker = tally_ingest::Worker::new(
        app.pool.clone(),
        app.s.ch.client(),
        Default::default(),
        app.ingest_metrics.clone(),
    );
    let worker_task = tokio::spawn(worker.run(app.shutdown.clone()));
    let mut registry = prometheus_client::registry::Registry::default();
    let dash_metrics = tally_dashboards::Metrics::register(&mut registry);
    let dashboards = tally_dashboards::Application::build(
        &tally_dashboards::DashboardsConfig {
            listen: "127.0.0.1:0".parse()?,
            cache_rows: 0,
            ..Default::default()
        },
        app.s.ch_reader.client(),
        app.pool.clone(),
        &dash_metrics,
        Arc::new(registry),
    )
    .await?;
    let dashboards_url = format!("http://{}", dashboards.local_addr());
    let dashboards_task = tokio::spawn(dashboards.run_until_stopped(app.shutdown.clone()));
    let (url, key) = (app.url.clone(), app.key.clone());
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        url,
        key,
        dashboards: dashboards_url,
    });

    let (mut p50s, mut p99s, mut rates, mut maxes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ryw50s, mut ryw99s) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let max = max_rate(&client, clients, Duration::from_secs(5)).await?;
        let target = max / 2.0;
        let (latencies, ryw, achieved) = paced(
            &client,
            &app.s.ch,
            clients,
            target,
            Duration::from_secs(seconds),
            run,
        )
        .await?;
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |q: f64| percentile(&ms, q);
        eprintln!(
            "run {run}/{runs}: max {max:.0} orders/s; at {achieved:.0}/s: {} probes, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms.len(),
            pct(0.5),
            pct(0.99),
            ms[ms.len() - 1]
        );
        let mut ryw: Vec<f64> = ryw.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ryw.sort_by(f64::total_cmp);
        anyhow::ensure!(!ryw.is_empty(), "no read-your-writes sample");
        eprintln!(
            "run {run}/{runs}: read-your-writes, {} samples: p50 {:.0} ms, p99 {:.0} ms",
            ryw.len(),
            percentile(&ryw, 0.5),
            percentile(&ryw, 0.99)
        );
        ryw50s.push(percentile(&ryw, 0.5));
        ryw99s.push(percentile(&ryw, 0.99));
        p50s.push(pct(0.5));
        p99s.push(pct(0.99));
        rates.push(achieved);
        maxes.push(max);
    }
    app.shutdown.cancel();
    let _ = worker_task.await;
    let _ = dashboards_task.await;

    let (p50, p99, rate, max) = (stat(p50s), stat(p99s), stat(rates), stat(maxes));
    let (ryw50, ryw99) = (stat(ryw50s), stat(ryw99s));
    let mut table = String::new();
    writeln!(table, "| figure | tally | target |")?;
    writeln!(table, "|---|---|---|")?;
    let rows = [
        (
            format!("PlaceOrder max throughput through HTTP, {clients} clients, orders/s"),
            &max,
            "(bench reference)",
        ),
        (
            "load during the measurement (half of max), orders/s".into(),
            &rate,
            "",
        ),
        (
            "freshness p50, ack → visible in daily aggregate, ms".into(),
            &p50,
            "≤ 100",
        ),
        ("freshness p99, ms".into(), &p99, "≤ 250"),
        (
            format!(
                "read-your-writes p50, ack → a read with its token answered (1 probe in {RYW_SAMPLE}), ms"
            ),
            &ryw50,
            "",
        ),
        ("read-your-writes p99, ms".into(), &ryw99, ""),
    ];
    for (figure, value, target) in rows {
        writeln!(table, "| {figure} | {} | {target} |", value.show(0, 1.0))?;
    }
    println!("{table}");
    record_result(
        record.as_deref(),
        "freshness",
        &format!(
            "{runs} runs; medians with min–max. Command: `tally-bench freshness --seconds {seconds} --clients {clients} --runs {runs}` (release build); one ingest worker; every order is a probe (±5 ms polling)."
        ),
        &table,
    )?;
    app.stop().await;
    Ok(vec![crate::harness::Summary {
        figure: format!(
            "freshness at half the max write rate ({:.0} of {:.0} orders/s): ack → visible",
            rate.median, max.median
        ),
        result: format!(
            "p50 **{}** ms, p99 **{}** ms; read-your-writes (ack → read with the token answered) p50 {} ms, p99 {} ms",
            p50.show(0, 1.0),
            p99.show(0, 1.0),
            ryw50.show(0, 1.0),
            ryw99.show(0, 1.0)
        ),
        target: "p50 ≤ 100 ms, p99 ≤ 250 ms".into(),
    }])
}

/// Sends probes at `rate` for `d`, and measures when each becomes visible,
/// and how long a read with the token of every [`RYW_SAMPLE`]th took.
async fn paced(
    client: &Arc<Client>,
    ch: &tally_ops::ChSettings,
    clients: usize,
    rate: f64,
    d: Duration,
    run: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, f64)> {
    let acked: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let ryw: Arc<Mutex<Vec<tokio::task::JoinHandle<anyhow::Result<Duration>>>>> = Arc::default();
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let start = Instant::now();
    let senders: Vec<_> = (0..clients)
        .map(|c| {
            let (client, acked, ryw) = (client.clone(), acked.clone(), ryw.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + interval.mul_f64(c as f64 / clients as f64),
                    interval,
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0u64;
                let mut sent = 0u64;
                while start.elapsed() < d {
                    tick.tick().await;
                    let merchant = format!("p{run}-{c:03}-{i:08}");
                    i += 1;
                    let (token, id) = client.place(&merchant).await?;
                    let at = Instant::now();
                    acked.lock().await.insert(merchant, at);
                    if i.is_multiple_of(RYW_SAMPLE) {
                        let client = client.clone();
                        ryw.lock().await.push(tokio::spawn(async move {
                            client.read_after(&token, &id).await?;
                            Ok(at.elapsed())
                        }));
                    }
                    sent += 1;
                }
                Ok::<u64, anyhow::Error>(sent)
            })
        })
        .collect();

    // The poller: which probe cells exist now?
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let prefix = format!("p{run}-");
    let mut latencies = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = start + d + Duration::from_secs(30);
    let mut senders_done = false;
    let mut sent_total = 0;
    let mut senders = senders;
    loop {
        let visible: Vec<String> = ch
            .client()
            .query("SELECT merchant_id FROM daily_revenue WHERE day = toDate(?) AND startsWith(merchant_id, ?)")
            .bind(&today)
            .bind(&prefix)
            .fetch_all()
            .await?;
        let now = Instant::now();
        {
            let mut acked = acked.lock().await;
            for m in visible {
                if seen.contains(&m) {
                    continue;
                }
                if let Some(t) = acked.remove(&m) {
                    latencies.push(now.saturating_duration_since(t));
                    seen.insert(m);
                }
            }
            if senders_done && acked.is_empty() {
                break;
            }
        }
        if !senders_done && senders.iter().all(tokio::task::JoinHandle::is_finished) {
            for t in senders.drain(..) {
                sent_total += t.await??;
            }
            senders_done = true;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "probes still invisible 30 s after the load stopped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut reads = Vec::new();
    for r in std::mem::take(&mut *ryw.lock().await) {
        reads.push(r.await??);
    }
    Ok((latencies, reads, sent_total as f64 / d.as_secs_f64()))
}
