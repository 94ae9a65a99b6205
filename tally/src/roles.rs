//! The single-role subcommands: what a production deployment runs, one
//! process per role.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use prometheus_client::registry::Registry;
use tally_ops::Shutdown;
use tally_write_api::auth::{Role, create_key};

use crate::config::Global;

#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address the write API listens on.
    #[arg(long, env = "TALLY_API_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    /// Most outbox events per batch.
    #[arg(long, env = "TALLY_INGEST_BATCH_SIZE", default_value_t = 10_000)]
    pub batch_size: i64,
    /// Address for /livez, /readyz and /metrics.
    #[arg(long, env = "TALLY_INGEST_OPS_ADDR", default_value = "127.0.0.1:9091")]
    pub ops_listen: SocketAddr,
}

#[derive(Args, Clone, Debug)]
pub struct DashboardsArgs {
    /// Address the dashboards listen on.
    #[arg(long, env = "TALLY_DASHBOARDS_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

#[derive(Subcommand, Clone, Debug)]
pub enum KeysCommand {
    /// Create an API key and print it (it is shown only once).
    Create {
        /// Role to grant; repeat for several: orders:write, finance:read, ops:admin.
        #[arg(long = "role", required = true, value_parser = Role::parse)]
        roles: Vec<Role>,
        /// A label to recognise the key by.
        #[arg(long, default_value = "unnamed")]
        name: String,
    },
}

pub async fn migrate(g: &Global) -> anyhow::Result<()> {
    let pool = g
        .pg("tally-migrate")?
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    tally_migrations::migrate(&pool, &g.ch()?).await?;
    println!(
        "migrations applied (PostgreSQL up to version {})",
        tally_migrations::postgres::latest_version()
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
    tally_migrations::migrate(&pool, &g.ch()?)
        .await
        .context("migrating")?;
    let mut registry = Registry::default();
    let metrics = tally_write_api::metrics::Metrics::register(&mut registry);
    let config = tally_write_api::ApiConfig {
        listen: args.listen,
        ..Default::default()
    };
    let app = tally_write_api::Application::build(&config, pool, metrics, Arc::new(registry))
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %app.local_addr(), "write API listening");
    app.run_until_stopped(shutdown_on_signal()).await?;
    Ok(())
}

pub async fn ingest(g: &Global, args: IngestArgs) -> anyhow::Result<()> {
    let pool = g.pg("tally-ingest")?.pool()?;
    let ch = g.ch()?;
    tally_migrations::migrate(&pool, &ch)
        .await
        .context("migrating")?;
    let mut registry = Registry::default();
    let metrics = tally_ingest::Metrics::register(&mut registry);
    let config = tally_ingest::IngestConfig {
        batch_size: args.batch_size,
        ..Default::default()
    };
    let shutdown = shutdown_on_signal();
    let ops = axum::Router::new().merge(tally_ops::http::ops_routes(
        Arc::new(registry),
        tally_write_api::readiness(pool.clone()),
    ));
    let listener = tokio::net::TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("binding {}", args.ops_listen))?;
    let ops_task = tokio::spawn(tally_ops::http::serve(listener, ops, shutdown.clone()));
    let worker = tally_ingest::Worker::new(pool, ch.client(), config, metrics);
    let result = worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = ops_task.await;
    result?;
    Ok(())
}

pub async fn dashboards(g: &Global, args: DashboardsArgs) -> anyhow::Result<()> {
    let ch = g.ch_reader()?;
    let config = tally_dashboards::DashboardsConfig {
        listen: args.listen,
        ..Default::default()
    };
    let app =
        tally_dashboards::Application::build(&config, ch.client(), Arc::new(Registry::default()))
            .await
            .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %app.local_addr(), "dashboards listening");
    app.run_until_stopped(shutdown_on_signal()).await?;
    Ok(())
}

pub async fn keys(g: &Global, cmd: KeysCommand) -> anyhow::Result<()> {
    let database_url = match &g.database_url {
        Some(_) => g.pg("tally-keys")?,
        // Convenience: talk to the running `tally up` of this data directory.
        None => {
            let stack = tally_stack::StackFile::read(&g.data_dir).context(
                "DATABASE_URL is not set and no `tally up` is running in the data directory",
            )?;
            tally_ops::PgSettings::new(stack.database_url, "tally-keys")
        }
    };
    let pool = database_url
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
    }
    Ok(())
}
