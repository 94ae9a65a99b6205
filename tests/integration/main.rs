//! One integration-test binary (faster linking, shared harness). Every test
//! talks to real PostgreSQL and ClickHouse through `tally_tests`.

mod browser;
mod commands;
mod contract;
mod dashboards;
mod e2e;
mod ingest;
mod migrations;
mod orders;
mod read_your_writes;
mod rebuild;
mod stack;
mod tidy;
mod tls;
mod write_api;
