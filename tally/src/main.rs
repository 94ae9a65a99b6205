//! The `tally` command: one binary, one subcommand per process role
//! (crates.io's `Server | BackgroundWorker | Admin` shape). `anyhow` lives
//! here, at the edge, and nowhere else.

mod config;
mod load;
mod rebuild_cli;
mod roles;
mod telemetry;
mod up;

use clap::{Parser, Subcommand};

use crate::config::Global;

#[derive(Parser)]
#[command(
    name = "tally",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TALLY_GIT_SHA"), ")"),
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
    /// Regenerate the projections from the write store, verify and swap
    /// them in; or show the `history`, or `rollback` the last swap.
    Rebuild(rebuild_cli::RebuildCommand),
    /// Compare the projections with the write store without changing them.
    /// Exit 0: no drift, 1: drift found, 2: could not verify.
    Verify(rebuild_cli::VerifyArgs),
    /// Run the rebuild and reconciliation schedule (also part of `tally up`).
    Scheduler(rebuild_cli::SchedulerArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(roles::KeysCommand),
    /// List the metric families a role's /metrics exports (`name type`),
    /// e.g. to check dashboards and alert rules against a release.
    Metrics {
        #[arg(long, value_enum, default_value = "up")]
        role: telemetry::Role,
    },
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
    // Rebuild and verify have exit codes of their own (0, 1 drift, 2 error).
    let result: Result<u8, (anyhow::Error, u8)> = runtime.block_on(async {
        let g = &cli.global;
        match cli.command {
            Command::Rebuild(cmd) => rebuild_cli::rebuild(g, cmd).await.map_err(|e| (e, 2)),
            Command::Verify(args) => rebuild_cli::verify(g, args).await.map_err(|e| (e, 2)),
            other => run(g, other).await.map(|()| 0).map_err(|e| (e, 1)),
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err((e, code)) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up::run(g, args).await,
        Command::Migrate => roles::migrate(g).await,
        Command::Api(args) => roles::api(g, args).await,
        Command::Ingest(args) => roles::ingest(g, args).await,
        Command::Dashboards(args) => roles::dashboards(g, args).await,
        Command::Keys(cmd) => roles::keys(g, cmd).await,
        Command::Load(args) => load::run(g, args).await,
        Command::Scheduler(args) => rebuild_cli::scheduler(g, args).await,
        Command::Rebuild(cmd) => rebuild_cli::rebuild(g, cmd).await.map(drop),
        Command::Verify(args) => rebuild_cli::verify(g, args).await.map(drop),
        Command::Metrics { role } => {
            for (name, kind) in telemetry::families(role)? {
                println!("{name} {kind}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    /// `tally up`'s local cluster shape and the stores' cluster name are
    /// two flags: one id for both made clap panic when `up` read its own.
    #[test]
    fn the_local_cluster_shape_and_the_cluster_name_are_different_flags() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "tally",
            "up",
            "--clickhouse-cluster",
            "1x2",
            "--clickhouse-cluster-name",
            "prod",
        ])
        .expect("parses");
        let super::Command::Up(up) = cli.command else {
            panic!("not `up`");
        };
        assert_eq!(
            up.clickhouse_cluster.map(|s| s.to_string()).as_deref(),
            Some("1x2")
        );
        assert_eq!(
            cli.global.stores.clickhouse_cluster_name.as_deref(),
            Some("prod")
        );
        let e = super::Cli::try_parse_from(["tally", "up", "--clickhouse-cluster", "3x3"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("SHARDSxREPLICAS"), "{e}");
    }

    /// Every environment variable of every subcommand, with its default.
    fn env_flags() -> BTreeMap<String, Option<String>> {
        fn walk(cmd: &clap::Command, out: &mut BTreeMap<String, Option<String>>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    let default = arg
                        .get_default_values()
                        .first()
                        .map(|v| v.to_string_lossy().into_owned());
                    out.insert(env.to_string_lossy().into_owned(), default);
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut out = BTreeMap::new();
        walk(&super::Cli::command(), &mut out);
        out
    }

    #[test]
    fn the_readme_lists_every_environment_variable_with_its_default() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| variable | meaning | default |")
            .expect("README's table of variables");
        let mut listed: BTreeMap<String, String> = BTreeMap::new();
        for row in readme[start..].lines().skip(2) {
            if !row.starts_with('|') {
                break;
            }
            let first = row.split('|').nth(1).unwrap_or_default();
            for var in first.split('`').skip(1).step_by(2) {
                listed.insert(var.to_owned(), row.replace('`', ""));
            }
        }
        let flags = env_flags();
        assert_eq!(
            listed.keys().collect::<BTreeSet<_>>(),
            flags.keys().collect::<BTreeSet<_>>(),
            "README's table and the flags' env names differ"
        );
        for (var, default) in &flags {
            if let Some(d) = default {
                assert!(
                    listed[var].contains(d.as_str()),
                    "README's row for {var} does not give its default {d:?}"
                );
            }
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
