//! A versioned-SQL-file migration runner for ClickHouse.
//!
//! Each file is a list of statements separated by `;` at the end of a line.
//! Applied versions are recorded, with the file's SHA-256, in the table
//! `schema_migrations` of the target database. A file that changed after it
//! was applied is refused, not re-run: write a new migration instead.
//!
//! ClickHouse DDL is not transactional, so statements are written to be
//! re-runnable (`IF NOT EXISTS`): a run that dies halfway is finished by the
//! next one. Where SQL alone cannot say "only if" (a `RENAME` that already
//! happened), a comment line right before a statement guards it:
//! `-- tally: if-table-exists NAME` or `-- tally: unless-table-exists NAME`.
//! Callers serialise runs with a PostgreSQL advisory lock.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_ops::{ChCluster, ChSettings};

use crate::replicated;
use tally_ops::stores::clickhouse_table_exists;

/// One migration file, embedded at compile time.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. `tests::every_file_is_listed` keeps this in
/// step with the directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_projections.sql",
        sql: include_str!("../clickhouse/0001_projections.sql"),
    },
    Migration {
        version: 2,
        name: "0002_daily_revenue_by_currency.sql",
        sql: include_str!("../clickhouse/0002_daily_revenue_by_currency.sql"),
    },
    Migration {
        version: 3,
        name: "0003_order_facts_by_customer_and_id.sql",
        sql: include_str!("../clickhouse/0003_order_facts_by_customer_and_id.sql"),
    },
];

/// When a statement runs, by whether a table exists in the target database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    IfTableExists(String),
    UnlessTableExists(String),
}

/// One statement of a migration file, with its guard if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub guard: Option<Guard>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChMigrateError {
    #[error("ClickHouse is unreachable or refused a query: {0}")]
    Client(#[from] clickhouse::error::Error),
    #[error(
        "ClickHouse migration {version} ({name}) was changed after it was applied \
         (recorded checksum {recorded}, file checksum {current}). Applied migrations must \
         not be edited: restore the file and add a new migration instead"
    )]
    Changed {
        version: u32,
        name: String,
        recorded: String,
        current: String,
    },
    #[error("ClickHouse migration {version} ({name}) failed at statement {statement}: {source}")]
    Statement {
        version: u32,
        name: &'static str,
        statement: usize,
        source: clickhouse::error::Error,
    },
    #[error("on ClickHouse node {node}: {source}")]
    OnNode {
        node: String,
        #[source]
        source: Box<ChMigrateError>,
    },
    #[error(
        "ClickHouse database {0:?} has migration {1}, which this tally does not know: a newer \
         tally migrated it. This process stops rather than write the old way; run the newer \
         binary (rolling upgrades: migrate first, then replace every process)"
    )]
    Unknown(String, u32),
}

#[derive(Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Splits a file into statements: `;` at the end of a line ends one.
/// `--` comment lines are dropped, except a `-- tally:` guard, which applies
/// to the statement that follows it.
pub fn statements(sql: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut guard = None;
    for line in sql.lines() {
        let trimmed = line.trim();
        if let Some(directive) = trimmed.strip_prefix("-- tally:") {
            let mut words = directive.split_whitespace();
            guard = match (words.next(), words.next()) {
                (Some("if-table-exists"), Some(t)) => Some(Guard::IfTableExists(t.to_owned())),
                (Some("unless-table-exists"), Some(t)) => {
                    Some(Guard::UnlessTableExists(t.to_owned()))
                }
                _ => panic!("unknown migration directive `{trimmed}`"),
            };
            continue;
        }
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if trimmed.ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_owned();
            if !stmt.is_empty() {
                out.push(Statement {
                    sql: stmt,
                    guard: guard.take(),
                });
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(Statement {
            sql: cur.trim().to_owned(),
            guard: guard.take(),
        });
    }
    out
}

/// The newest version applied to the database (0: none).
pub async fn applied_version(settings: &ChSettings) -> Result<u32, ChMigrateError> {
    Ok(settings
        .client()
        .query("SELECT max(version) FROM schema_migrations")
        .fetch_one()
        .await?)
}

/// What the server is and what Tally does differently for it.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub version: String,
    /// `Atomic` (the default since 20.10) or `Ordinary` (18.16).
    pub database_engine: String,
}

impl ServerInfo {
    /// The choices the rebuild makes for this server (`rebuild::tables`).
    pub fn choices(&self) -> Vec<&'static str> {
        let mut c =
            vec!["months a rebuild lacks are dropped (DROP PARTITION), never replaced from empty"];
        if self.database_engine == "Atomic" {
            c.push(
                "run copies dropped SYNC (Atomic databases keep dropped data 8 minutes otherwise)",
            );
        }
        c
    }
}

pub async fn server_info(settings: &ChSettings) -> Result<ServerInfo, ChMigrateError> {
    let (version, database_engine): (String, String) = settings
        .client()
        .query("SELECT version(), (SELECT engine FROM system.databases WHERE name = currentDatabase())")
        .fetch_one()
        .await?;
    Ok(ServerInfo {
        version,
        database_engine,
    })
}

/// Creates the database if needed and applies pending migrations.
pub async fn run(settings: &ChSettings) -> Result<(), ChMigrateError> {
    let applied = prepare(settings).await?;
    let client = settings.client();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        for (i, stmt) in statements(m.sql).iter().enumerate() {
            run_statement(&client, m, i, &stmt.sql, stmt.guard.as_ref()).await?;
        }
        record(&client, m).await?;
        tracing::info!(version = m.version, name = m.name, database = %settings.database, "applied ClickHouse migration");
    }
    Ok(())
}

/// Applies pending migrations to every node of a replicated cluster, with
/// replicated engines (`replicated.rs` says how and why node by node).
pub async fn run_cluster(cluster: &ChCluster) -> Result<(), ChMigrateError> {
    let on = |node: &ChSettings| {
        let node = node.url.clone();
        move |e: ChMigrateError| ChMigrateError::OnNode {
            node,
            source: Box::new(e),
        }
    };
    let mut nodes = Vec::new();
    for (shard, node) in cluster.nodes() {
        let applied = prepare(node).await.map_err(on(node))?;
        nodes.push((shard, node, applied));
    }
    for m in MIGRATIONS {
        let pending: Vec<_> = nodes
            .iter()
            .filter(|(_, _, applied)| !applied.contains(&m.version))
            .collect();
        if pending.is_empty() {
            continue;
        }
        for (i, stmt) in statements(m.sql).iter().enumerate() {
            if replicated::is_data_statement(&stmt.sql) {
                let mut done = std::collections::BTreeSet::new();
                for (shard, node, _) in &pending {
                    if done.insert(*shard) {
                        run_statement(&node.client(), m, i, &stmt.sql, stmt.guard.as_ref())
                            .await
                            .map_err(on(node))?;
                    }
                }
            } else {
                for (_, node, _) in &pending {
                    let sql = replicated::replicate(&stmt.sql, &node.database, None);
                    run_statement(&node.client(), m, i, &sql, stmt.guard.as_ref())
                        .await
                        .map_err(on(node))?;
                }
            }
        }
        for (_, node, _) in &pending {
            record(&node.client(), m).await.map_err(on(node))?;
        }
        tracing::info!(version = m.version, name = m.name, cluster = %cluster.name, nodes = pending.len(), "applied ClickHouse migration");
    }
    Ok(())
}

/// Creates the database and `schema_migrations` where missing, checks what
/// was applied against the files, and returns the applied versions.
async fn prepare(settings: &ChSettings) -> Result<Vec<u32>, ChMigrateError> {
    let db = &settings.database;
    settings
        .server_client()
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_ident(db)
        ))
        .execute()
        .await?;
    let client = settings.client();
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version UInt32, name String, checksum String, applied_at DateTime('UTC')
            ) ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
    let applied: Vec<Applied> = client
        .query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await?;
    for a in &applied {
        match MIGRATIONS.iter().find(|m| m.version == a.version) {
            None => return Err(ChMigrateError::Unknown(db.clone(), a.version)),
            Some(m) if checksum(m.sql) != a.checksum => {
                return Err(ChMigrateError::Changed {
                    version: a.version,
                    name: a.name.clone(),
                    recorded: a.checksum.clone(),
                    current: checksum(m.sql),
                });
            }
            Some(_) => {}
        }
    }
    Ok(applied.iter().map(|a| a.version).collect())
}

/// Runs statement `i` of `m` (as `sql`) unless its guard says not to.
async fn run_statement(
    client: &clickhouse::Client,
    m: &Migration,
    i: usize,
    sql: &str,
    guard: Option<&Guard>,
) -> Result<(), ChMigrateError> {
    let failed = |source| ChMigrateError::Statement {
        version: m.version,
        name: m.name,
        statement: i + 1,
        source,
    };
    let run = match guard {
        None => true,
        Some(Guard::IfTableExists(t)) => {
            clickhouse_table_exists(client, t).await.map_err(failed)?
        }
        Some(Guard::UnlessTableExists(t)) => {
            !clickhouse_table_exists(client, t).await.map_err(failed)?
        }
    };
    if run {
        client.query(sql).execute().await.map_err(failed)?;
    }
    Ok(())
}

async fn record(client: &clickhouse::Client, m: &Migration) -> Result<(), ChMigrateError> {
    client
        .query("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, now())")
        .bind(m.version)
        .bind(m.name)
        .bind(checksum(m.sql))
        .execute()
        .await?;
    Ok(())
}

/// Whether every migration this build knows is applied.
pub async fn is_up_to_date(settings: &ChSettings) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = settings
        .client()
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await?;
    Ok(n >= MIGRATIONS.len() as u64)
}

/// Back-quotes an identifier for ClickHouse.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_in_order() {
        // At run time, not `env!`: a test binary built from another
        // checkout sharing the target directory would look at that one.
        let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let dir = std::path::Path::new(&manifest).join("clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed, "add new ClickHouse migrations to MIGRATIONS");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn statements_split_on_line_end_semicolons_and_drop_comments() {
        let sql = "-- c\nCREATE TABLE a (x String DEFAULT ';')\nENGINE = Memory;\n\nSELECT 1;\n";
        let sqls: Vec<String> = statements(sql).into_iter().map(|s| s.sql).collect();
        assert_eq!(
            sqls,
            vec![
                "CREATE TABLE a (x String DEFAULT ';')\nENGINE = Memory",
                "SELECT 1"
            ]
        );
        assert_eq!(statements(MIGRATIONS[0].sql).len(), 3);
    }

    #[test]
    fn a_guard_applies_to_the_next_statement_only() {
        let sql = "-- tally: unless-table-exists old\nRENAME TABLE a TO old;\nSELECT 1;\n\
                   -- tally: if-table-exists old\nDROP TABLE old;\n";
        let got = statements(sql);
        assert_eq!(
            got.iter().map(|s| s.guard.clone()).collect::<Vec<_>>(),
            [
                Some(Guard::UnlessTableExists("old".into())),
                None,
                Some(Guard::IfTableExists("old".into())),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "unknown migration directive")]
    fn a_misspelt_guard_is_refused() {
        statements("-- tally: if-exists t\nSELECT 1;\n");
    }
}
