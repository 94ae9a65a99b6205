//! `tally rebuild`, `tally verify` and `tally scheduler`: what operators run.
//!
//! Exit codes are part of the interface (scripts and CI gate on them):
//! 0 no drift, 1 drift found, 2 could not verify (or the run was skipped
//! because another holds the lock).

use std::io::IsTerminal;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use tally_rebuild::compare::Sink;
use tally_rebuild::progress::ProgressMode;
use tally_rebuild::reconcile::reconcile;
use tally_rebuild::report::{CsvReport, summary};
use tally_rebuild::run::{Mode, RunOptions, RunOutcome};
use time::Date;

use crate::config::{Global, SchedulerFlags};
use crate::roles::{pg_for_cli, shutdown_on_signal};
use crate::telemetry::{self, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct Output {
    /// `human` (a summary table) or `json`.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Write every differing row to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Most rows per side the comparison holds in memory at once: the
    /// memory budget (the default peaks near 650 MiB), whatever the size of
    /// the store.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    pub chunk_rows: u64,
}

#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RebuildCommand {
    #[command(subcommand)]
    pub action: Option<RebuildAction>,
    /// Make `--reporting-tz` the deployment's reporting zone: rebuild both
    /// projections in it and record it in the same step as the swap. The
    /// running ingest and schedulers follow; nothing is counted in two
    /// calendars. Ends the rollback window.
    #[arg(long)]
    pub change_reporting_zone: bool,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Subcommand, Clone, Debug)]
pub enum RebuildAction {
    /// Recent rebuilds, verifications and rollbacks, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Put back the projections from before the last swap (moved forward by
    /// every event since). Possible until the next successful rebuild.
    Rollback,
}

#[derive(Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Swap the verified shadow tables in if drift was found.
    #[arg(long, conflicts_with = "since")]
    pub repair: bool,
    /// Only the cheap check: daily cells from this day (YYYY-MM-DD) up to
    /// the last complete one, write store sums against live cells.
    #[arg(long, value_parser = parse_day, value_name = "DATE")]
    pub since: Option<Date>,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args, Clone, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub scheduler: SchedulerFlags,
}

fn parse_day(s: &str) -> Result<Date, String> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| format!("`{s}` is not a date; use YYYY-MM-DD, e.g. 2026-11-01"))
}

pub fn ch_for_cli(g: &Global) -> anyhow::Result<tally_ops::ChSettings> {
    match &g.stores.clickhouse_url {
        Some(_) => g.ch(),
        None => {
            let stack = tally_stack::StackFile::read(&g.data_dir).context(
                "CLICKHOUSE_URL is not set and no `tally up` is running in the data directory",
            )?;
            tally_ops::ChSettings::from_url(&stack.clickhouse_url).map_err(anyhow::Error::msg)
        }
    }
}

struct Stores {
    pool: sqlx::PgPool,
    ch: clickhouse::Client,
}

async fn stores(g: &Global, app: &str) -> anyhow::Result<Stores> {
    let pool = pg_for_cli(g, app)?
        .batch()
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let ch = ch_for_cli(g)?;
    if g.stores.clickhouse_url.is_some() {
        g.migrate(&pool).await
    } else {
        // A running `tally up` migrated its own servers (every replica).
        tally_migrations::migrate(&pool, &ch)
            .await
            .map_err(anyhow::Error::from)
    }
    .context("migrating")?;
    Ok(Stores {
        pool,
        ch: ch.client(),
    })
}

async fn options(g: &Global, pool: &sqlx::PgPool, output: &Output) -> anyhow::Result<RunOptions> {
    Ok(RunOptions {
        zone: g.reporting_zone(pool, "tally rebuild").await?,
        ..options_unzoned(output)
    })
}

fn options_unzoned(output: &Output) -> RunOptions {
    let interactive = std::io::stderr().is_terminal() && output.format == Format::Human;
    RunOptions {
        trigger: "cli".into(),
        progress: if interactive {
            ProgressMode::Bar
        } else {
            ProgressMode::Log
        },
        report_file: output.report.clone(),
        chunk_rows: output.chunk_rows as usize,
        ..RunOptions::default()
    }
}

/// `tally rebuild --reporting-tz Z --change-reporting-zone`: the run counts
/// in `Z` whatever the deployment records, and records it at the swap.
async fn zone_change_options(
    g: &Global,
    pool: &sqlx::PgPool,
    output: &Output,
) -> anyhow::Result<RunOptions> {
    let zone = g
        .reporting_tz
        .clone()
        .context("--change-reporting-zone needs the new zone: add --reporting-tz <IANA name>")?;
    let recorded = tally_projection::deployment::recorded(pool).await?;
    match recorded {
        Some(r) if r.eq_ignore_ascii_case(zone.name()) => {
            eprintln!("the deployment already reports in {r}: this is an ordinary rebuild");
        }
        Some(r) => eprintln!(
            "changing the deployment's reporting zone from {r} to {}: rebuilding both projections \
             in {}; the ingest keeps counting in {r} until the swap",
            zone.name(),
            zone.name()
        ),
        None => {}
    }
    Ok(RunOptions {
        zone,
        change_zone: true,
        ..options_unzoned(output)
    })
}

fn print_outcome(o: &RunOutcome, output: &Output) -> anyhow::Result<u8> {
    match output.format {
        Format::Human => print!("{}", summary(o)),
        Format::Json => println!("{}", serde_json::to_string_pretty(o)?),
    }
    if let Some(p) = &output.report {
        eprintln!("differing rows written to {}", p.display());
    }
    Ok(u8::from(o.has_drift()))
}

pub async fn rebuild(g: &Global, cmd: RebuildCommand) -> anyhow::Result<u8> {
    let s = stores(g, "tally-rebuild").await?;
    match cmd.action {
        None => {
            let opts = if cmd.change_reporting_zone {
                zone_change_options(g, &s.pool, &cmd.output).await?
            } else {
                options(g, &s.pool, &cmd.output).await?
            };
            let o = tally_rebuild::run::run(&s.pool, &s.ch, Mode::Rebuild, &opts).await?;
            print_outcome(&o, &cmd.output)?;
            // The rebuild swapped: drift was repaired, which is success.
            Ok(0)
        }
        Some(RebuildAction::History { limit, format }) => {
            let rows = tally_rebuild::run::history(&s.pool, limit).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            if rows.is_empty() {
                println!("no runs yet");
            }
            println!(
                "{:>5}  {:<8} {:<8} {:<11} {:<20} {:>8} {:>10} {:>9} {:>6} {:<7}  {:<16} message",
                "run",
                "kind",
                "trigger",
                "state",
                "started (UTC)",
                "seconds",
                "orders",
                "cells",
                "drift",
                "swapped",
                "zone"
            );
            for r in rows {
                let secs = r.finished_at.map_or_else(
                    || "…".into(),
                    |f| format!("{:.1}", (f - r.started_at).as_seconds_f64()),
                );
                let started = r
                    .started_at
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]"
                    ))
                    .unwrap_or_default();
                let opt = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| v.to_string());
                println!(
                    "{:>5}  {:<8} {:<8} {:<11} {:<20} {:>8} {:>10} {:>9} {:>6} {:<7}  {:<16} {}",
                    r.run_id,
                    r.kind,
                    r.trigger,
                    r.state,
                    started,
                    secs,
                    opt(r.orders),
                    opt(r.cells),
                    opt(r.drift_rows),
                    if r.swapped { "yes" } else { "no" },
                    r.reporting_zone.as_deref().unwrap_or("-"),
                    r.message.unwrap_or_default()
                );
            }
            Ok(0)
        }
        Some(RebuildAction::Rollback) => {
            let opts = options(g, &s.pool, &cmd.output).await?;
            let o = tally_rebuild::run::rollback(&s.pool, &s.ch, &opts).await?;
            match cmd.output.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&o)?),
                Format::Human => println!(
                    "rolled back run #{} (as run #{}): {} daily cells restored and moved forward by \
                     the events since, in {:.1} s",
                    o.rolled_back_run, o.run_id, o.cells, o.seconds
                ),
            }
            Ok(0)
        }
    }
}

pub async fn verify(g: &Global, args: VerifyArgs) -> anyhow::Result<u8> {
    let s = stores(g, "tally-verify").await?;
    if let Some(since) = args.since {
        let zone = g.reporting_zone(&s.pool, "tally verify").await?;
        let mut report = match &args.output.report {
            Some(p) => Some(CsvReport::create(p)?),
            None => None,
        };
        let out = {
            let mut sink = match report.as_mut() {
                Some(r) => Sink::every_row(|row| r.write(row)),
                None => Sink::worst_only(),
            };
            reconcile(&s.pool, &s.ch, &zone, since, &mut sink).await?
        };
        if let Some(r) = report {
            r.finish()?;
        }
        match args.output.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
            Format::Human => {
                let t = &out.daily;
                println!(
                    "daily cells from {} up to {} (exclusive: the first day not complete; data complete up to {}):",
                    out.from,
                    out.until,
                    out.watermark
                        .map_or_else(|| "nothing yet".into(), tally_rebuild::report::utc)
                );
                println!(
                    "  compared {}, matching {}, missing {}, extra {}, different {}",
                    t.compared, t.matching, t.missing, t.extra, t.different
                );
                for (cur, by) in &t.drift_by_currency {
                    let cols: Vec<String> = by.iter().map(|(m, v)| format!("{m} {v}")).collect();
                    println!("  drift {cur}: {}", cols.join(", "));
                }
                for r in &t.worst {
                    println!("  {} {}", r.kind.as_str(), r.key);
                }
                println!(
                    "result: {}",
                    if out.has_drift() {
                        "DRIFT found"
                    } else {
                        "no drift"
                    }
                );
            }
        }
        return Ok(u8::from(out.has_drift()));
    }
    let opts = options(g, &s.pool, &args.output).await?;
    let mode = if args.repair {
        Mode::Repair
    } else {
        Mode::Verify
    };
    let o = tally_rebuild::run::run(&s.pool, &s.ch, mode, &opts).await?;
    let code = print_outcome(&o, &args.output)?;
    // Repaired drift is still reported as drift found: the live tables were wrong.
    Ok(code)
}

pub async fn scheduler(g: &Global, args: SchedulerArgs) -> anyhow::Result<()> {
    let s = stores(g, "tally-scheduler").await?;
    let m = telemetry::for_role(Role::Scheduler, s.pool.clone());
    let metrics = m.scheduler.context("the scheduler role's metrics")?;
    let registry = m.registry;
    let sched = tally_rebuild::RebuildScheduler::start(
        &tally_rebuild::SchedulerConfig {
            rebuild_cron: args.scheduler.schedule.rebuild_cron,
            reconcile_cron: args.scheduler.schedule.reconcile_cron,
            reporting_zone: g.reporting_zone(&s.pool, "tally scheduler").await?,
            ..Default::default()
        },
        s.pool.clone(),
        s.ch,
        metrics,
    )
    .await?;
    let shutdown = shutdown_on_signal();
    let ops = axum::Router::new().merge(tally_ops::http::ops_routes(
        Arc::new(registry),
        tally_write_api::readiness(s.pool.clone()),
    ));
    let ops_listen = args.scheduler.ops_listen;
    let listener = tokio::net::TcpListener::bind(ops_listen)
        .await
        .with_context(|| {
            format!("binding {ops_listen} (--ops-listen, TALLY_SCHEDULER_OPS_ADDR)")
        })?;
    tracing::info!(addr = %ops_listen, "scheduler running; ops endpoints listening");
    let served = tally_ops::http::serve(listener, ops, shutdown.clone()).await;
    sched.shutdown().await;
    Ok(served?)
}
