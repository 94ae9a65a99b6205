//! A small seeded order-lifecycle driver for tests that need traffic: it
//! places orders and moves most of them along (capture, ship, refund,
//! cancel) through the real command API, retrying what a real client
//! would retry (409 conflicts, 503s) with the same Idempotency-Key.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{TestApp, order_body};

/// What a [`drive`] run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadOutcome {
    pub commands: u64,
    pub retries: u64,
}

/// Sends `cmd` until it gets a final answer; the key makes retries safe.
async fn send(
    app: &TestApp,
    path: &str,
    body: &serde_json::Value,
    out: &mut LoadOutcome,
) -> (u16, serde_json::Value) {
    let key = uuid::Uuid::new_v4().to_string();
    loop {
        let res = app
            .http
            .post(format!("{}{path}", app.api_url))
            .bearer_auth(&app.api_key)
            .header("idempotency-key", &key)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match res {
            Ok(r) if ![409, 503].contains(&r.status().as_u16()) => {
                out.commands += 1;
                let s = r.status().as_u16();
                return (s, r.json().await.unwrap_or_default());
            }
            _ => {
                out.retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs `orders` order lifecycles, `concurrency` at a time, seeded.
pub async fn drive(app: &TestApp, orders: usize, concurrency: usize, seed: u64) -> LoadOutcome {
    let per_task = orders.div_ceil(concurrency);
    let tasks = (0..concurrency).map(|t| async move {
        let mut rng = StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut out = LoadOutcome::default();
        for _ in 0..per_task {
            let merchant = format!("m{}", rng.gen_range(0..5));
            let currency = ["EUR", "USD", "JPY"][rng.gen_range(0..3)];
            let price = rng.gen_range(100..10_000);
            let qty = rng.gen_range(1..4);
            let (s, placed) = send(
                app,
                "/v1/orders",
                &order_body(&merchant, currency, &[("sku", qty, price)]),
                &mut out,
            )
            .await;
            assert_eq!(s, 201, "{placed}");
            let id = placed["order_id"].as_str().unwrap().to_owned();
            let total = qty * price;
            let roll: f64 = rng.r#gen();
            if roll < 0.1 {
                send(
                    app,
                    &format!("/v1/orders/{id}/cancellation"),
                    &json!({"reason": "changed mind"}),
                    &mut out,
                )
                .await;
                continue;
            }
            if roll < 0.9 {
                send(
                    app,
                    &format!("/v1/orders/{id}/payments"),
                    &json!({"amount_minor": total}),
                    &mut out,
                )
                .await;
                let next: f64 = rng.r#gen();
                if next < 0.6 {
                    send(
                        app,
                        &format!("/v1/orders/{id}/shipments"),
                        &json!({"carrier": "DHL", "tracking_number": "T"}),
                        &mut out,
                    )
                    .await;
                }
                if next > 0.8 {
                    let part = rng.gen_range(1..=total);
                    send(
                        app,
                        &format!("/v1/orders/{id}/refunds"),
                        &json!({"amount_minor": part}),
                        &mut out,
                    )
                    .await;
                } else if next > 0.7 {
                    send(
                        app,
                        &format!("/v1/orders/{id}/cancellation"),
                        &json!({"reason": "late"}),
                        &mut out,
                    )
                    .await;
                }
            }
        }
        out
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .fold(LoadOutcome::default(), |a, b| LoadOutcome {
            commands: a.commands + b.commands,
            retries: a.retries + b.retries,
        })
}
