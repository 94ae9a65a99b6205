//! The `tally` command: one binary, one subcommand per process role
//! (crates.io's `Server | BackgroundWorker | Admin` shape). `anyhow` lives
//! here, at the edge, and nowhere else.

mod bench;
mod bench_freshness;
mod config;
mod load;
mod roles;
mod up;

use clap::{Parser, Subcommand};

use crate::config::Global;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: order events in, finance numbers out"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: local PostgreSQL and ClickHouse
    /// (unless DATABASE_URL and CLICKHOUSE_URL are set), migrations, the
    /// write API, the ingest worker, the rebuild scheduler and the dashboards.
    Up(up::UpArgs),
    /// Apply pending migrations to PostgreSQL and ClickHouse, then exit.
    Migrate,
    /// Serve the write (command) API only.
    Api(roles::ApiArgs),
    /// Run an ingest worker, or inspect the pipeline (`status`,
    /// `dead-letters`, `retry`).
    Ingest(roles::IngestCommand),
    /// Serve the dashboards only.
    Dashboards(roles::DashboardsArgs),
    /// Drive the command API with seeded, realistic order traffic.
    Load(load::LoadArgs),
    /// Measure performance against raw PostgreSQL/ClickHouse baselines.
    Bench(bench::BenchArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(roles::KeysCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    config::init_tracing(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(&cli.global, args).await,
            Command::Migrate => roles::migrate(&cli.global).await,
            Command::Api(args) => roles::api(&cli.global, args).await,
            Command::Ingest(args) => roles::ingest(&cli.global, args).await,
            Command::Dashboards(args) => roles::dashboards(&cli.global, args).await,
            Command::Keys(cmd) => roles::keys(&cli.global, cmd).await,
            Command::Bench(args) => bench::run(&cli.global, args).await,
            Command::Load(args) => load::run(&cli.global, args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
