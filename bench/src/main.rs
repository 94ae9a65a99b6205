//! The `tally-bench` command. `anyhow` lives here and in the library's
//! runners, never in the product's crates.

use clap::Parser;
use tally_bench::BenchArgs;
use tally_ops::flags::StoreFlags;

#[derive(Parser)]
#[command(
    name = "tally-bench",
    version,
    about = "Tally's benchmarks, each against a raw PostgreSQL or ClickHouse baseline"
)]
struct Cli {
    #[command(flatten)]
    stores: StoreFlags,
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = tally_bench::run(&cli.stores, cli.bench).await {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
