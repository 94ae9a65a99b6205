//! The ClickHouse side of a run: copies of the live projection tables and
//! the partition-by-partition swap.
//!
//! Why partitions: ClickHouse 18.16 has no `EXCHANGE TABLES`, and a
//! `RENAME` of two tables leaves readers a moment with no table at all.
//! `ALTER TABLE t REPLACE PARTITION ID p FROM s` is atomic for each
//! partition on every version since 18.x and costs no copy (parts are hard
//! links), so a reader sees either the old or the new month, each complete.
//! The same statement freezes the live tables into a run's own copy.
//!
//! A month the target holds and the source lacks is dropped (`DROP
//! PARTITION`, atomic too), never replaced from nothing: 18.16 emptied it
//! that way, but ClickHouse 26.6 and later refuse a `REPLACE PARTITION`
//! whose source has no parts there. In an Atomic database (the default
//! since 20.10) a dropped table's data stays on disk for 8 minutes unless
//! dropped `SYNC`, and a run drops and recreates its copies every time, so
//! copies are dropped `SYNC` there.
//!
//! On a replicated cluster (the live tables are `Replicated…`) a run's
//! copies are replicated too, so that a replica lost mid-run costs no
//! copy: they are created, renamed and dropped `ON CLUSTER` (the name
//! is the server's `{cluster}` macro), each with a ZooKeeper path of its
//! own that no earlier copy of the same name used. Partition statements
//! run on one replica and ZooKeeper's log carries them to the others.

use std::collections::BTreeSet;

use tally_projection::FACT_TABLES;

use crate::RebuildError;

/// The projections a run regenerates, by live table name: the fact tables
/// and the daily cells.
pub const PROJECTIONS: [&str; 4] = tally_projection::PROJECTED_TABLES;

/// A run's copies of a live table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// Rebuilt from the write store; swapped in on success.
    Shadow,
    /// The live table at the run's snapshot: what verification compares.
    Frozen,
    /// The live table before the last swap, kept for `tally rebuild rollback`.
    Previous,
}

impl Copy {
    pub fn of(self, live: &str) -> String {
        let suffix = match self {
            Copy::Shadow => "shadow",
            Copy::Frozen => "frozen",
            Copy::Previous => "previous",
        };
        format!("{live}_{suffix}")
    }
}

/// Drops `copy` of every projection and creates it empty, with the live
/// table's structure.
pub async fn recreate(ch: &clickhouse::Client, copy: Copy) -> Result<(), RebuildError> {
    let sync = drop_sync(ch).await?;
    let place = placement(ch).await?;
    for live in PROJECTIONS {
        let name = copy.of(live);
        place
            .ddl(
                ch,
                &format!(
                    "DROP TABLE IF EXISTS {}{}{sync}",
                    place.qualified(&name),
                    place.on_cluster()
                ),
            )
            .execute()
            .await?;
        match &place {
            Placement::Local => {
                ch.query(&format!("CREATE TABLE {name} AS {live}"))
                    .execute()
                    .await?;
            }
            Placement::Cluster { database, .. } => {
                let show: String = ch
                    .query(&format!("SHOW CREATE TABLE {live}"))
                    .fetch_one()
                    .await?;
                let nonce = uuid::Uuid::new_v4().simple().to_string();
                let path = format!("/clickhouse/tables/{{shard}}/{database}/{name}/{nonce}");
                let engine = replicated_engine_with_path(&show, &path).ok_or_else(|| {
                    RebuildError::Invariant(format!(
                        "{live} is replicated, yet its definition names no ZooKeeper path: {show}"
                    ))
                })?;
                place
                    .ddl(
                        ch,
                        &format!(
                            "CREATE TABLE {}{} AS {} {engine}",
                            place.qualified(&name),
                            place.on_cluster(),
                            place.qualified(live)
                        ),
                    )
                    .execute()
                    .await?;
            }
        }
    }
    Ok(())
}

pub async fn drop_copy(ch: &clickhouse::Client, copy: Copy) -> Result<(), RebuildError> {
    let sync = drop_sync(ch).await?;
    let place = placement(ch).await?;
    for live in PROJECTIONS {
        place
            .ddl(
                ch,
                &format!(
                    "DROP TABLE IF EXISTS {}{}{sync}",
                    place.qualified(&copy.of(live)),
                    place.on_cluster()
                ),
            )
            .execute()
            .await?;
    }
    Ok(())
}

/// Where a run's copies live.
#[derive(Debug)]
enum Placement {
    /// Beside the live tables, on this server.
    Local,
    /// On every node of the cluster, replicated.
    Cluster { name: String, database: String },
}

/// How long an `ON CLUSTER` statement waits for every replica before the
/// run fails, instead of ClickHouse's 180 s. The statement stays queued for
/// a replica that did not answer and runs when it returns; the next run
/// starts from dropping and recreating its copies anyway.
pub const CLUSTER_DDL_TIMEOUT_SECS: u32 = 30;

impl Placement {
    /// `sql` as a statement, with the cluster's wait bounded.
    fn ddl(&self, ch: &clickhouse::Client, sql: &str) -> clickhouse::query::Query {
        let q = ch.query(sql);
        match self {
            Placement::Local => q,
            Placement::Cluster { .. } => q.with_setting(
                "distributed_ddl_task_timeout",
                CLUSTER_DDL_TIMEOUT_SECS.to_string(),
            ),
        }
    }

    /// ` ON CLUSTER name`, or nothing.
    fn on_cluster(&self) -> String {
        match self {
            Placement::Local => String::new(),
            Placement::Cluster { name, .. } => format!(" ON CLUSTER {name}"),
        }
    }

    /// `db.table` on a cluster (each node runs the statement in its own
    /// session), `table` here.
    fn qualified(&self, table: &str) -> String {
        match self {
            Placement::Local => table.to_owned(),
            Placement::Cluster { database, .. } => format!("{database}.{table}"),
        }
    }
}

async fn placement(ch: &clickhouse::Client) -> Result<Placement, RebuildError> {
    let (database, engine): (String, String) = ch
        .query(
            "SELECT currentDatabase(), (SELECT any(engine) FROM system.tables \
             WHERE database = currentDatabase() AND name = ?)",
        )
        .bind(PROJECTIONS[0])
        .fetch_one()
        .await?;
    if !engine.starts_with("Replicated") {
        return Ok(Placement::Local);
    }
    let names: Vec<String> = ch
        .query("SELECT substitution FROM system.macros WHERE macro = 'cluster'")
        .fetch_all()
        .await?;
    let name = names.into_iter().next().ok_or_else(|| {
        RebuildError::Invariant(
            "the live tables are replicated, but this ClickHouse server has no `cluster` macro: \
             add <macros><cluster>NAME</cluster></macros> to every node's config, NAME being \
             the remote_servers cluster its replicas form"
                .into(),
        )
    })?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(RebuildError::Invariant(format!(
            "the cluster macro {name:?} is not a plain identifier"
        )));
    }
    // Copies are made on every replica: with one down, say so now rather
    // than after each statement's wait.
    let down: Vec<(String, u8, u8)> = ch
        .query(
            "SELECT table, total_replicas, active_replicas FROM system.replicas \
             WHERE database = currentDatabase() AND table IN ? AND active_replicas < total_replicas",
        )
        .bind(PROJECTIONS)
        .fetch_all()
        .await?;
    if let Some((table, total, active)) = down.first() {
        return Err(RebuildError::Refused(format!(
            "only {active} of {total} replicas of {table} are active: a run makes its copies on \
             every replica, so it needs them all. Start the missing replica (or wait until \
             ZooKeeper sees it again), then run again"
        )));
    }
    Ok(Placement::Cluster { name, database })
}

/// The `ENGINE = …` clause of a replicated table's `SHOW CREATE TABLE`,
/// with its ZooKeeper path (the first quoted argument) replaced by `path`.
fn replicated_engine_with_path(show: &str, path: &str) -> Option<String> {
    let engine = &show[show.find("ENGINE = Replicated")?..];
    let open = engine.find('\'')?;
    let close = open + 1 + engine[open + 1..].find('\'')?;
    Some(format!(
        "{}'{path}'{}",
        &engine[..open],
        &engine[close + 1..]
    ))
}

/// ` SYNC` in an Atomic database (whose drops are otherwise deferred), else
/// nothing (18.16 knows no such clause).
async fn drop_sync(ch: &clickhouse::Client) -> Result<&'static str, RebuildError> {
    let engine: String = ch
        .query("SELECT engine FROM system.databases WHERE name = currentDatabase()")
        .fetch_one()
        .await?;
    Ok(if engine == "Atomic" { " SYNC" } else { "" })
}

pub async fn exists(ch: &clickhouse::Client, table: &str) -> Result<bool, RebuildError> {
    Ok(tally_ops::stores::clickhouse_table_exists(ch, table).await?)
}

/// Active partition ids of `table`.
pub async fn partitions(
    ch: &clickhouse::Client,
    table: &str,
) -> Result<BTreeSet<String>, RebuildError> {
    let ids: Vec<String> = ch
        .query(
            "SELECT DISTINCT partition_id FROM system.parts
             WHERE database = currentDatabase() AND table = ? AND active",
        )
        .bind(table)
        .fetch_all()
        .await?;
    for id in &ids {
        // Interpolated below; ids of toYYYYMM partitions are digits.
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(RebuildError::Invariant(format!(
                "unexpected partition id {id:?} in {table}"
            )));
        }
    }
    Ok(ids.into_iter().collect())
}

/// Makes `to` hold exactly `from`'s rows, one atomic partition at a time:
/// replaced from `from`, or dropped where `from` has none.
pub async fn replace_all_partitions(
    ch: &clickhouse::Client,
    from: &str,
    to: &str,
) -> Result<usize, RebuildError> {
    let source = partitions(ch, from).await?;
    let target = partitions(ch, to).await?;
    for id in &source {
        ch.query(&format!(
            "ALTER TABLE {to} REPLACE PARTITION ID '{id}' FROM {from}"
        ))
        .execute()
        .await?;
    }
    for id in target.difference(&source) {
        ch.query(&format!("ALTER TABLE {to} DROP PARTITION ID '{id}'"))
            .execute()
            .await?;
    }
    Ok(source.union(&target).count())
}

/// Copies every projection's live table into `copy` (recreated first).
pub async fn freeze_live(ch: &clickhouse::Client, copy: Copy) -> Result<(), RebuildError> {
    recreate(ch, copy).await?;
    copy_live_into(ch, copy).await
}

/// Replaces every partition of an existing `copy` with the live table's:
/// the part of a freeze that must happen at one instant.
pub async fn copy_live_into(ch: &clickhouse::Client, copy: Copy) -> Result<(), RebuildError> {
    for live in PROJECTIONS {
        replace_all_partitions(ch, live, &copy.of(live)).await?;
    }
    Ok(())
}

/// Swaps `copy` into the live tables, partition by partition.
pub async fn swap_into_live(ch: &clickhouse::Client, copy: Copy) -> Result<usize, RebuildError> {
    let mut n = 0;
    for live in PROJECTIONS {
        n += replace_all_partitions(ch, &copy.of(live), live).await?;
    }
    Ok(n)
}

/// Renames `from` to `to` for every projection (these copies are never read
/// by dashboards, so the rename's non-atomicity does not matter).
pub async fn rename_copy(
    ch: &clickhouse::Client,
    from: Copy,
    to: Copy,
) -> Result<(), RebuildError> {
    drop_copy(ch, to).await?;
    let place = placement(ch).await?;
    for live in PROJECTIONS {
        place
            .ddl(
                ch,
                &format!(
                    "RENAME TABLE {} TO {}{}",
                    place.qualified(&from.of(live)),
                    place.qualified(&to.of(live)),
                    place.on_cluster()
                ),
            )
            .execute()
            .await?;
    }
    Ok(())
}

/// Fills the other fact tables' `copy` from `order_facts`' (the first of
/// [`FACT_TABLES`]): ClickHouse re-sorts the same rows by each table's key.
pub async fn copy_facts_across(ch: &clickhouse::Client, copy: Copy) -> Result<(), RebuildError> {
    let [first, rest @ ..] = FACT_TABLES;
    for t in rest {
        ch.query(&format!(
            "INSERT INTO {} SELECT * FROM {}",
            copy.of(t.live),
            copy.of(first.live)
        ))
        .execute()
        .await?;
    }
    Ok(())
}

pub async fn count(ch: &clickhouse::Client, table: &str) -> Result<u64, RebuildError> {
    Ok(ch
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one()
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_a_replicated_table_gets_a_path_of_its_own() {
        let show = "CREATE TABLE db.order_facts (`x` UInt8) ENGINE = \
                    ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/order_facts', \
                    '{replica}', version) PARTITION BY x ORDER BY x SETTINGS index_granularity = 8192";
        assert_eq!(
            replicated_engine_with_path(show, "/p/new").as_deref(),
            Some(
                "ENGINE = ReplicatedReplacingMergeTree('/p/new', '{replica}', version) \
                 PARTITION BY x ORDER BY x SETTINGS index_granularity = 8192"
            )
        );
        assert_eq!(
            replicated_engine_with_path("CREATE TABLE t (x UInt8) ENGINE = Memory", "/p"),
            None
        );
    }

    #[test]
    fn every_fact_table_is_a_projection_once() {
        for t in FACT_TABLES {
            assert_eq!(
                PROJECTIONS.iter().filter(|p| **p == t.live).count(),
                1,
                "{}",
                t.live
            );
        }
        assert_eq!(PROJECTIONS.len(), FACT_TABLES.len() + 1);
    }
}
