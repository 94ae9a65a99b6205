//! The single-role subcommands: what a production deployment runs, one
//! process per role.

use std::sync::Arc;

use crate::telemetry::{self, Role as Service};
use anyhow::Context;
use clap::{Args, Subcommand};
use tally_ops::Shutdown;
use tally_ops::auth::{Role, create_key};

use crate::config::{ApiFlags, DashboardsFlags, Global, IngestFlags};

#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub api: ApiFlags,
}

#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IngestCommand {
    #[command(subcommand)]
    pub action: Option<IngestAction>,
    #[command(flatten)]
    pub run: IngestArgs,
}

#[derive(Subcommand, Clone, Debug)]
pub enum IngestAction {
    /// Backlog, freshness, oldest open transaction, dead letters, outbox size.
    Status,
    /// List events the worker could not project, with the error.
    DeadLetters {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead-lettered events back into the outbox (after a fix).
    Retry {
        /// The dead letter's outbox id (from `tally ingest dead-letters`).
        #[arg(required_unless_present = "all")]
        id: Option<i64>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub ingest: IngestFlags,
}

#[derive(Args, Clone, Debug)]
pub struct DashboardsArgs {
    #[command(flatten)]
    pub dashboards: DashboardsFlags,
}

#[derive(Subcommand, Clone, Debug)]
pub enum KeysCommand {
    /// Create an API key and print it (it is shown only once).
    Create {
        /// Role to grant; repeat for several: orders:write, orders:read, finance:read, ops:admin.
        #[arg(long = "role", required = true, value_parser = Role::parse)]
        roles: Vec<Role>,
        /// A label to recognise the key by.
        #[arg(long, default_value = "unnamed")]
        name: String,
    },
    /// List keys: id, name, roles, created, revoked (never the secret,
    /// which is not stored).
    List {
        /// Leave revoked keys out.
        #[arg(long)]
        active: bool,
    },
    /// Revoke a key by its id (from `tally keys list`). Running services
    /// stop accepting it within 30 seconds (their cache of verified keys).
    Revoke {
        /// The key's id, e.g. 01938f2a-….
        key_id: uuid::Uuid,
    },
}

pub async fn migrate(g: &Global) -> anyhow::Result<()> {
    let pool = g
        .pg("tally-migrate")?
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let ch = g.ch()?;
    g.migrate(&pool).await?;
    let zone = g.reporting_zone(&pool, "tally migrate").await?;
    println!(
        "migrations applied: PostgreSQL at version {} (this build knows up to {}), \
         ClickHouse at version {}",
        tally_migrations::postgres::applied_version(&pool).await?,
        tally_migrations::postgres::latest_version(),
        tally_migrations::clickhouse::applied_version(&ch).await?,
    );
    println!("reporting zone: {} (the deployment's)", zone.name());
    let server = tally_migrations::clickhouse::server_info(&ch).await?;
    println!(
        "ClickHouse {} (database engine {}): {}",
        server.version,
        server.database_engine,
        server.choices().join("; ")
    );
    Ok(())
}

/// Fires the shutdown token on SIGINT/SIGTERM.
pub fn shutdown_on_signal() -> Shutdown {
    let token = Shutdown::new();
    let t = token.clone();
    tokio::spawn(async move {
        tally_ops::shutdown::os_signal().await;
        t.cancel();
    });
    token
}

pub async fn api(g: &Global, args: ApiArgs) -> anyhow::Result<()> {
    let pool = g.pg("tally-api")?.pool()?;
    g.migrate(&pool).await.context("migrating")?;
    let m = telemetry::for_role(Service::Api, pool.clone());
    let metrics = m.api.context("the api role's metrics")?;
    let config = args.api.config();
    let app = tally_write_api::Application::build(&config, pool, metrics, Arc::new(m.registry))
        .await
        .with_context(|| format!("binding {} (--api-listen, TALLY_API_ADDR)", config.listen))?;
    tracing::info!(addr = %app.local_addr(), "write API listening");
    app.run_until_stopped(shutdown_on_signal()).await?;
    Ok(())
}

pub async fn ingest(g: &Global, cmd: IngestCommand) -> anyhow::Result<()> {
    match cmd.action {
        None => run_ingest(g, cmd.run).await,
        Some(action) => {
            let pool = pg_for_cli(g, "tally-ingest-cli")?
                .connect()
                .await
                .context("connecting to PostgreSQL")?;
            match action {
                IngestAction::Status => ingest_status(&pool).await,
                IngestAction::DeadLetters { limit } => {
                    let rows = tally_ingest::dead_letters::list(&pool, limit).await?;
                    if rows.is_empty() {
                        println!("no dead letters");
                    }
                    for d in rows {
                        println!(
                            "{:>10}  {}  {} v{}  event {}  failed {}  reason {}\n            {}",
                            d.outbox_id,
                            d.event_type,
                            d.aggregate_id,
                            d.aggregate_version,
                            d.event_id,
                            d.failed_at,
                            d.reason,
                            d.error
                        );
                    }
                    Ok(())
                }
                IngestAction::Retry { id, all } => {
                    let n = tally_ingest::dead_letters::retry(&pool, if all { None } else { id })
                        .await?;
                    if n == 0 {
                        anyhow::bail!(
                            "no such dead letter; list them with `tally ingest dead-letters`"
                        );
                    }
                    println!(
                        "moved {n} event(s) back to the outbox; a running worker will pick them up"
                    );
                    Ok(())
                }
            }
        }
    }
}

async fn ingest_status(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let f = tally_ingest::watermark::measure(pool).await?;
    let s = tally_ingest::watermark::outbox_storage(pool).await?;
    let age = |t: Option<time::OffsetDateTime>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("{:.1} s", (f.now - t).as_seconds_f64()),
        )
    };
    println!(
        "complete up to       {} (lag {:.3} s)",
        f.watermark,
        (f.now - f.watermark).as_seconds_f64()
    );
    println!("held back by         {}", f.held_by.explain());
    println!(
        "outbox backlog       {} events, oldest {}",
        f.backlog_rows,
        age(f.oldest_backlog)
    );
    println!("pending pushes       {}", f.pending_pushes);
    let reasons = tally_ingest::dead_letters::count_by_reason(pool).await?;
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
    if reasons.is_empty() {
        println!("dead letters         0");
    } else {
        println!(
            "dead letters         {} ({})",
            f.dead_letters,
            reasons.join(", ")
        );
    }
    println!("oldest transaction   {}", age(f.oldest_transaction));
    println!(
        "outbox table         {} KiB, {} live / {} dead tuples, last autovacuum {}",
        s.total_bytes / 1024,
        s.live_tuples,
        s.dead_tuples,
        s.last_autovacuum
            .map_or_else(|| "never".to_owned(), |t| t.to_string())
    );
    Ok(())
}

/// The database for operator commands: DATABASE_URL, or the running
/// `tally up` of the data directory.
pub fn pg_for_cli(g: &Global, app: &str) -> anyhow::Result<tally_ops::PgSettings> {
    match &g.stores.database_url {
        Some(_) => g.pg(app),
        None => {
            let stack = tally_stack::StackFile::read(&g.data_dir).context(
                "DATABASE_URL is not set and no `tally up` is running in the data directory",
            )?;
            Ok(g.stores.pg_at(stack.database_url, app))
        }
    }
}

async fn run_ingest(g: &Global, args: IngestArgs) -> anyhow::Result<()> {
    let pool = g.pg("tally-ingest")?.pool()?;
    g.migrate(&pool).await.context("migrating")?;
    let replicas = g.ch_replicas()?;
    let m = telemetry::for_role(Service::Ingest, pool.clone());
    let metrics = m.ingest.context("the ingest role's metrics")?;
    let registry = m.registry;
    let config = g.ingest_config(&pool, &args.ingest).await?;
    let shutdown = shutdown_on_signal();
    let ops = axum::Router::new().merge(tally_ops::http::ops_routes(
        Arc::new(registry),
        tally_write_api::readiness(pool.clone()),
    ));
    let listener = tokio::net::TcpListener::bind(args.ingest.ops_listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (--ops-listen, TALLY_INGEST_OPS_ADDR)",
                args.ingest.ops_listen
            )
        })?;
    let ops_task = tokio::spawn(tally_ops::http::serve(listener, ops, shutdown.clone()));
    let worker = tally_ingest::Worker::on_replicas(pool, replicas, config, metrics);
    let result = worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = ops_task.await;
    result?;
    Ok(())
}

pub async fn dashboards(g: &Global, args: DashboardsArgs) -> anyhow::Result<()> {
    let replicas = g.ch_reader_replicas()?;
    // PostgreSQL holds the API keys; the dashboards read nothing else there.
    let pool = g.pg("tally-dashboards")?.pool()?;
    let config = args.dashboards.config();
    let m = telemetry::for_role(Service::Dashboards, pool.clone());
    let metrics = m.dashboards.context("the dashboards role's metrics")?;
    let app = tally_dashboards::Application::build_on_replicas(
        &config,
        replicas,
        pool,
        &metrics,
        Arc::new(m.registry),
    )
    .await
    .with_context(|| {
        format!(
            "binding {} (--dashboards-listen, TALLY_DASHBOARDS_ADDR)",
            config.listen
        )
    })?;
    tracing::info!(addr = %app.local_addr(), "dashboards listening");
    app.run_until_stopped(shutdown_on_signal()).await?;
    Ok(())
}

pub async fn keys(g: &Global, cmd: KeysCommand) -> anyhow::Result<()> {
    let pool = pg_for_cli(g, "tally-keys")?
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    match cmd {
        KeysCommand::Create { roles, name } => {
            let (id, key) = create_key(&pool, &name, &roles).await?;
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "created key {id} ({name}) with roles {}; it is shown only once:",
                roles.join(", ")
            );
            println!("{key}");
        }
        KeysCommand::List { active } => {
            let keys = tally_ops::auth::list_keys(&pool, active).await?;
            if keys.is_empty() {
                println!("no keys; create one with `tally keys create --role finance:read`");
            }
            for k in keys {
                println!(
                    "{}  {:<20}  {:<40}  created {}  {}",
                    k.key_id,
                    k.name,
                    k.roles.join(","),
                    k.created_at.date(),
                    k.revoked_at
                        .map_or_else(|| "active".to_owned(), |t| format!("revoked {t}"))
                );
            }
        }
        KeysCommand::Revoke { key_id } => match tally_ops::auth::revoke_key(&pool, key_id).await? {
            None => anyhow::bail!("no key {key_id}; list them with `tally keys list`"),
            Some(false) => println!("key {key_id} was already revoked"),
            Some(true) => println!(
                "revoked key {key_id}; running services refuse it within {} s",
                tally_ops::auth::CACHE_TTL.as_secs()
            ),
        },
    }
    Ok(())
}
