//! Test traffic: the same generator as `tally load` (`tally-loadgen`),
//! pointed at a test app.

use tally_loadgen::{LoadConfig, LoadReport};

use crate::TestApp;

pub use tally_loadgen::LoadReport as LoadOutcome;

/// Runs `orders` seeded order lifecycles, `concurrency` at a time, over 5
/// merchants and three currencies. Panics if the API refuses a valid command.
pub async fn drive(app: &TestApp, orders: usize, concurrency: usize, seed: u64) -> LoadReport {
    let cfg = LoadConfig {
        orders: Some(orders as u64),
        concurrency,
        seed,
        merchants: 5,
        ..LoadConfig::new(&app.api_url, &app.api_key)
    };
    tally_loadgen::run(&cfg, tally_ops::Shutdown::new())
        .await
        .expect("load generation")
}
