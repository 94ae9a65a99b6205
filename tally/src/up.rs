//! `tally up`: the whole product in one process, with no configuration.
//!
//! Order of shutdown matters and is explicit: stop accepting commands and
//! let in-flight ones finish, let the ingest finish its batch, stop the
//! scheduler, and only then stop the database servers underneath them.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tally_ops::auth::{Role, create_key, key_has_role};
use tally_ops::{ChCluster, ChSettings, PgSettings};
use tally_stack::{ClusterShape, DataDirLock, LocalStack, StackConfig, StackFile};

use crate::config::{ApiFlags, DashboardsFlags, Global, ScheduleFlags};
use crate::roles::shutdown_on_signal;

#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub api: ApiFlags,
    #[command(flatten)]
    pub dashboards: DashboardsFlags,
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    /// Start a replicated ClickHouse instead of one server: `1x2` is one
    /// shard of two replicas, with a ZooKeeper (`./scripts/setup
    /// --cluster` installs it). Local servers only; the services use the
    /// first replica.
    #[arg(long, value_name = "SHARDSxREPLICAS")]
    pub clickhouse_cluster: Option<ClusterShape>,
}

pub async fn run(g: &Global, args: UpArgs) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&g.data_dir)?;
    let data_dir = std::fs::canonicalize(&g.data_dir)?;

    let (stack, pg_settings, ch, readers) = match (&g.stores.database_url, &g.stores.clickhouse_url)
    {
        (None, None) => {
            if let Some(shape) = args.clickhouse_cluster
                && shape.shards > 1
            {
                anyhow::bail!(
                    "--clickhouse-cluster {shape}: a sharded read side is not supported yet; \
                     use one shard of 2 to 4 replicas (e.g. 1x2)"
                );
            }
            match args.clickhouse_cluster {
                None => eprintln!(
                    "starting local PostgreSQL and ClickHouse in {} …",
                    data_dir.display()
                ),
                Some(shape) => eprintln!(
                    "starting local PostgreSQL, ZooKeeper and a {shape} ClickHouse cluster in {} …",
                    data_dir.display()
                ),
            }
            let stack = LocalStack::start(&StackConfig {
                clickhouse_cluster: args.clickhouse_cluster,
                ..StackConfig::new(&data_dir)
            })
            .await?;
            let pg = g.stores.pg_at(stack.postgres_url.clone(), "tally-up");
            let readers = match &stack.cluster {
                Some(c) => c.readers(),
                None => vec![stack.clickhouse_reader.clone()],
            };
            let ch = stack.clickhouse.clone();
            (Some(stack), pg, ch, readers)
        }
        (Some(_), Some(_)) if args.clickhouse_cluster.is_some() => anyhow::bail!(
            "--clickhouse-cluster starts local servers; with DATABASE_URL and CLICKHOUSE_URL set, \
             unset it (your own cluster: see README, \"Running it for real\")"
        ),
        (Some(_), Some(_)) => (
            None,
            g.pg("tally-up")?,
            g.ch()?,
            g.stores.ch_reader_replicas()?,
        ),
        _ => anyhow::bail!(
            "set both DATABASE_URL and CLICKHOUSE_URL to use your own servers, or neither to let tally start local ones"
        ),
    };
    let cluster = match stack.as_ref().and_then(|s| s.cluster.as_ref()) {
        Some(c) => Some(ChCluster {
            name: tally_stack::CLUSTER_NAME.into(),
            shards: vec![c.admins()],
        }),
        None if stack.is_none() => g.stores.ch_cluster()?,
        None => None,
    };
    let result = serve(
        g,
        &args,
        &data_dir,
        stack.is_some(),
        &pg_settings,
        (&ch, cluster.as_ref()),
        &readers,
    )
    .await;
    if let Some(stack) = stack {
        eprintln!("stopping local PostgreSQL and ClickHouse …");
        stack.stop().await;
    }
    StackFile::remove(&data_dir);
    result
}

async fn serve(
    g: &Global,
    args: &UpArgs,
    data_dir: &std::path::Path,
    embedded: bool,
    pg_settings: &PgSettings,
    (ch, cluster): (&ChSettings, Option<&ChCluster>),
    readers: &[ChSettings],
) -> anyhow::Result<()> {
    let pool = pg_settings
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    match cluster {
        None => tally_migrations::migrate(&pool, ch).await,
        Some(c) => tally_migrations::migrate_cluster(&pool, c).await,
    }
    .context("applying migrations")?;
    let zone = &g.reporting_zone(&pool, "tally up").await?;
    let previous = StackFile::read(data_dir).ok();
    let api_key = dev_key(
        &pool,
        data_dir,
        previous.as_ref().map(|p| p.api_key.as_str()),
        DevKey::AllRoles,
    )
    .await?;
    let reader_key = dev_key(
        &pool,
        data_dir,
        previous.as_ref().map(|p| p.reader_key.as_str()),
        DevKey::Reader,
    )
    .await?;

    let m = crate::telemetry::for_role(crate::telemetry::Role::Up, pool.clone());
    let (Some(api_metrics), Some(ingest_metrics), Some(dash_metrics), Some(reconcile_metrics)) =
        (m.api, m.ingest, m.dashboards, m.scheduler)
    else {
        anyhow::bail!("tally up registers every service's metrics");
    };
    let registry = Arc::new(m.registry);

    let api_config = args.api.config();
    let api = tally_write_api::Application::build(
        &api_config,
        pool.clone(),
        api_metrics,
        registry.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on {} for the write API (use --api-listen)",
            api_config.listen
        )
    })?;
    let dash_config = args.dashboards.config();
    let dashboards = tally_dashboards::Application::build_on_replicas(
        &dash_config,
        tally_ops::Replicas::new(readers),
        pool.clone(),
        &dash_metrics,
        registry.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on {} for the dashboards (use --dashboards-listen)",
            dash_config.listen
        )
    })?;
    let scheduler = tally_rebuild::RebuildScheduler::start(
        &tally_rebuild::SchedulerConfig {
            rebuild_cron: args.schedule.rebuild_cron.clone(),
            reconcile_cron: args.schedule.reconcile_cron.clone(),
            reporting_zone: zone.clone(),
            ..Default::default()
        },
        pool.clone(),
        ch.client(),
        reconcile_metrics,
    )
    .await?;

    let api_url = format!("http://{}", api.local_addr());
    let dashboards_url = format!("http://{}", dashboards.local_addr());
    StackFile {
        pid: std::process::id(),
        api_url: api_url.clone(),
        dashboards_url: dashboards_url.clone(),
        api_key: api_key.clone(),
        reader_key: reader_key.clone(),
        database_url: pg_settings.url.clone(),
        clickhouse_url: ch.to_url(),
        embedded,
    }
    .write(data_dir)?;

    let shutdown = shutdown_on_signal();
    let writers = match cluster {
        Some(c) => c.shards.concat(),
        None => vec![ch.clone()],
    };
    let worker = tally_ingest::Worker::on_replicas(
        pool.clone(),
        tally_ops::Replicas::new(&writers),
        tally_ingest::IngestConfig {
            reporting_zone: zone.clone(),
            ..Default::default()
        },
        ingest_metrics,
    );
    let mut api_task = tokio::spawn(api.run_until_stopped(shutdown.clone()));
    let mut dash_task = tokio::spawn(dashboards.run_until_stopped(shutdown.clone()));
    let mut ingest_task = tokio::spawn(worker.run(shutdown.clone()));

    let redact = tally_stack::secrets::redact_url;
    let banner = format!(
        "\n  Tally is up.\n\
         \x20 Write API     {api_url}   (POST /v1/orders, /livez, /readyz, /metrics)\n\
         \x20 Dashboards    {dashboards_url}/#key={reader_key}   (a read-only key)\n\
         \x20 API key       {api_key}   (every role: for the tour; keep it to yourself)\n\
         \x20 PostgreSQL    {}\n\
         \x20 ClickHouse    {}{}\n\
         \x20 Written to    {} (with the passwords; readable by you only)\n\
         \x20 Press Ctrl-C to stop.\n",
        redact(&pg_settings.url),
        redact(&ch.to_url()),
        cluster.map_or_else(String::new, |c| {
            let replicas: Vec<&str> = c.nodes().map(|(_, n)| n.url.as_str()).collect();
            format!(
                "\n  Cluster       `{}`, one shard: {} (the services use the first)",
                c.name,
                replicas.join(", ")
            )
        }),
        StackFile::path(data_dir).display()
    );
    // Not `println!`: a closed stdout (piped to `head`, say) must not stop
    // the servers.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
    }

    // Run until a signal, or until a component fails on its own. Biased:
    // on a signal the components stop too, and a component that stopped
    // because of the signal must not be reported as stopping on its own.
    let early = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        r = &mut api_task => Some(("write API", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut dash_task => Some(("dashboards", r.map(|r| r.map_err(anyhow::Error::from)))),
        r = &mut ingest_task => Some(("ingest worker", r.map(|r| r.map_err(anyhow::Error::from)))),
    };
    shutdown.cancel();
    eprintln!("shutting down …");
    let (a, d, i) = tokio::join!(
        async {
            if api_task.is_finished() {
                Ok(Ok(()))
            } else {
                api_task.await.map(|r| r.map_err(anyhow::Error::from))
            }
        },
        async {
            if dash_task.is_finished() {
                Ok(Ok(()))
            } else {
                dash_task.await.map(|r| r.map_err(anyhow::Error::from))
            }
        },
        async {
            if ingest_task.is_finished() {
                Ok(Ok(()))
            } else {
                ingest_task.await.map(|r| r.map_err(anyhow::Error::from))
            }
        },
    );
    scheduler.shutdown().await;
    pool.close().await;
    if let Some((what, r)) = early {
        match r {
            Ok(Ok(())) => anyhow::bail!("{what} stopped unexpectedly"),
            Ok(Err(e)) => return Err(e.context(format!("{what} failed"))),
            Err(e) => anyhow::bail!("{what} panicked: {e}"),
        }
    }
    for r in [a, d, i] {
        r.context("a component panicked")??;
    }
    Ok(())
}

/// The two development keys `tally up` makes.
#[derive(Clone, Copy)]
enum DevKey {
    /// Every role, for the tour's `curl` commands.
    AllRoles,
    /// The read roles only (`finance:read`, `orders:read` for the merchant
    /// drill-down), for the printed dashboard link: a link travels further
    /// than a terminal, and reading is all the page needs.
    Reader,
}

impl DevKey {
    fn roles(self) -> &'static [Role] {
        match self {
            DevKey::AllRoles => &Role::ALL,
            DevKey::Reader => &[Role::FinanceRead, Role::OrdersRead],
        }
    }

    fn file(self) -> &'static str {
        match self {
            DevKey::AllRoles => "dev-api-key",
            DevKey::Reader => "dev-reader-key",
        }
    }

    fn name(self) -> &'static str {
        match self {
            DevKey::AllRoles => "development (tally up)",
            DevKey::Reader => "development dashboards link (tally up)",
        }
    }
}

/// A development key: reused across restarts while it is valid (and has
/// exactly its roles), so the README's curl commands keep working. Kept in
/// a file only its owner may read.
async fn dev_key(
    pool: &sqlx::PgPool,
    data_dir: &std::path::Path,
    previous: Option<&str>,
    kind: DevKey,
) -> anyhow::Result<String> {
    let key_file = data_dir.join(kind.file());
    let saved = std::fs::read_to_string(&key_file).ok();
    for candidate in [previous, saved.as_deref()].into_iter().flatten() {
        let candidate = candidate.trim();
        if !candidate.is_empty() && has_exactly(pool, candidate, kind.roles()).await {
            tally_stack::secrets::write_private(&key_file, candidate.as_bytes())?;
            return Ok(candidate.to_owned());
        }
    }
    let (_, key) = create_key(pool, kind.name(), kind.roles()).await?;
    tally_stack::secrets::write_private(&key_file, key.as_bytes())
        .context("saving the development key")?;
    Ok(key)
}

async fn has_exactly(pool: &sqlx::PgPool, key: &str, roles: &[Role]) -> bool {
    for role in Role::ALL {
        let has = key_has_role(pool, key, role).await.unwrap_or(false);
        if has != roles.contains(&role) {
            return false;
        }
    }
    true
}
