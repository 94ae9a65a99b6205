//! Seeded, realistic order traffic against the command API.
//!
//! One implementation serves `tally load`, the benchmarks and the chaos
//! tests, so that what is measured is what is tested. Each client runs order
//! lifecycles: place; most are captured, many shipped, some refunded in part
//! or in full, some cancelled before or after capture. Like a real client it
//! retries `409` and `503` with the same Idempotency-Key. The same seed
//! gives the same sequence of decisions.

pub mod bulk;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tally_ops::Shutdown;

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Base URL of the write API, e.g. `http://127.0.0.1:8080`.
    pub api_url: String,
    /// A key with the `orders:write` role.
    pub api_key: String,
    pub seed: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Stop after this many orders (across clients), if set.
    pub orders: Option<u64>,
    /// Stop after this long, if set.
    pub duration: Option<Duration>,
    /// Target orders per second across clients; unlimited if unset.
    pub rate: Option<f64>,
    pub merchants: u32,
    pub currencies: Vec<String>,
}

impl LoadConfig {
    pub fn new(api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        LoadConfig {
            api_url: api_url.into(),
            api_key: api_key.into(),
            seed: 1,
            concurrency: 8,
            orders: None,
            duration: None,
            rate: None,
            merchants: 50,
            currencies: vec!["EUR".into(), "USD".into(), "JPY".into()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the API refused a command it should accept: {status} {body}")]
    Refused { status: u16, body: String },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

/// What a run did. Latencies are per command, from first attempt to final
/// answer, retries included.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub orders: u64,
    pub commands: u64,
    pub retries: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    pub fn orders_per_second(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(mut self, o: LoadReport) -> LoadReport {
        self.orders += o.orders;
        self.commands += o.commands;
        self.retries += o.retries;
        self.latencies.extend(o.latencies);
        self
    }
}

struct Client<'a> {
    cfg: &'a LoadConfig,
    http: reqwest::Client,
    report: LoadReport,
}

impl Client<'_> {
    /// Sends a command until it gets a final answer; the key makes retries safe.
    async fn send(
        &mut self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value), LoadError> {
        let key = uuid::Uuid::now_v7().to_string();
        let started = Instant::now();
        loop {
            let res = self
                .http
                .post(format!("{}{path}", self.cfg.api_url))
                .bearer_auth(&self.cfg.api_key)
                .header("idempotency-key", &key)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match res {
                Ok(r) if ![409, 503].contains(&r.status().as_u16()) => {
                    self.report.commands += 1;
                    self.report.latencies.push(started.elapsed());
                    let status = r.status().as_u16();
                    return Ok((status, r.json().await.unwrap_or_default()));
                }
                // A transient refusal (version conflict, key in flight,
                // database unavailable) or a lost connection: retry.
                _ => {
                    self.report.retries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn lifecycle(&mut self, rng: &mut StdRng) -> Result<(), LoadError> {
        let merchant = format!(
            "merchant-{:05}",
            rng.gen_range(0..self.cfg.merchants.max(1))
        );
        let currency = self.cfg.currencies[rng.gen_range(0..self.cfg.currencies.len())].clone();
        let (qty, price) = (rng.gen_range(1..4i64), rng.gen_range(100..20_000i64));
        let body = json!({
            "merchant_id": merchant, "customer_id": format!("customer-{}", rng.gen_range(0..100_000)),
            "currency": currency,
            "items": [{"sku": format!("sku-{}", rng.gen_range(0..500)), "quantity": qty, "unit_price_minor": price}],
            "shipping_address": {"name": "Load Test", "line1": "1 Traffic Rd", "city": "Benchville",
                                 "postal_code": "10115", "country": "DE"}
        });
        let (status, placed) = self.send("/v1/orders", body).await?;
        if status != 201 {
            return Err(LoadError::Refused {
                status,
                body: placed.to_string(),
            });
        }
        self.report.orders += 1;
        let id = placed["order_id"].as_str().unwrap_or_default().to_owned();
        let o = |p: &str| format!("/v1/orders/{id}/{p}");
        let total = qty * price;
        let roll: f64 = rng.r#gen();
        if roll < 0.1 {
            self.send(&o("cancellation"), json!({"reason": "changed mind"}))
                .await?;
            return Ok(());
        }
        if roll >= 0.9 {
            return Ok(()); // placed and never paid
        }
        self.send(&o("payments"), json!({"amount_minor": total}))
            .await?;
        let next: f64 = rng.r#gen();
        if next < 0.6 {
            self.send(
                &o("shipments"),
                json!({"carrier": "DHL", "tracking_number": "JD0001"}),
            )
            .await?;
        }
        if next > 0.8 {
            let amount = if rng.gen_bool(0.5) {
                total
            } else {
                rng.gen_range(1..=total)
            };
            self.send(
                &o("refunds"),
                json!({"amount_minor": amount, "reason": "returned"}),
            )
            .await?;
        } else if (0.7..=0.8).contains(&next) {
            self.send(&o("cancellation"), json!({"reason": "out of stock"}))
                .await?;
        }
        Ok(())
    }
}

/// Runs the load until `orders`, `duration` or `stop`, whichever first.
pub async fn run(cfg: &LoadConfig, stop: Shutdown) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let clients = cfg.concurrency.max(1);
    // Exactly `orders` in total: the first `n % clients` clients take one more.
    let share = |c: usize| {
        cfg.orders
            .map(|n| n / clients as u64 + u64::from((c as u64) < n % clients as u64))
    };
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(clients as f64 / r.max(0.001)));
    let tasks = (0..clients).map(|c| {
        let stop = stop.clone();
        let per_client = share(c);
        async move {
            let mut rng =
                StdRng::seed_from_u64(cfg.seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut client = Client {
                cfg,
                http: reqwest::Client::new(),
                report: LoadReport::default(),
            };
            let mut tick = interval.map(|i| {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + i.mul_f64(c as f64 / clients as f64),
                    i,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let done_count = per_client.is_some_and(|n| client.report.orders >= n);
                let done_time = cfg.duration.is_some_and(|d| started.elapsed() >= d);
                if done_count || done_time || stop.is_cancelled() {
                    break;
                }
                if let Some(t) = tick.as_mut() {
                    tokio::select! {
                        _ = t.tick() => {}
                        () = stop.cancelled() => break,
                    }
                }
                client.lifecycle(&mut rng).await?;
            }
            Ok::<LoadReport, LoadError>(client.report)
        }
    });
    let mut report = LoadReport::default();
    for r in futures_util::future::join_all(tasks).await {
        report = report.merge(r?);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
