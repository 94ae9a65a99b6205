//! A replicated ClickHouse for the cluster tests: one ZooKeeper and a `1x2`
//! cluster (one shard, two replicas), started once per test process
//! through the same launcher as `tally up --clickhouse-cluster 1x2`.
//!
//! Tests that kill a node hold [`ClusterGuard`] for their whole run, so they
//! never see each other's failures; every test has its own database.

use std::sync::OnceLock;
use std::time::Duration;

use tally_ops::{ChCluster, ChSettings};
use tally_stack::{ClusterShape, LocalCluster};
use tokio::sync::{Mutex, MutexGuard};

use crate::{TestDb, run_dir, unique_name};

/// The cluster, for one test at a time.
pub type ClusterGuard = MutexGuard<'static, LocalCluster>;

fn shared() -> &'static Mutex<LocalCluster> {
    static CLUSTER: OnceLock<Mutex<LocalCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime for the test cluster");
            let dir = run_dir().join("cluster-tests");
            let shape: ClusterShape = "1x2".parse().expect("shape");
            let cluster = rt
                .block_on(LocalCluster::start(&dir, shape))
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start the test cluster in {} (ZooKeeper comes with \
                     ./scripts/setup --cluster): {e}",
                        dir.display()
                    )
                });
            Mutex::new(cluster)
        })
        .join()
        .expect("starting the test cluster panicked")
    })
}

/// Waits for the cluster and takes it for this test; every node is running
/// (a test that failed halfway may have left one down).
pub async fn take() -> ClusterGuard {
    let mut guard = shared().lock().await;
    for i in 0..guard.nodes.len() {
        if !guard.nodes[i].is_running() {
            guard.restart_node(i).await.expect("restart a node");
        }
    }
    guard.ensure_zookeeper().await.expect("restart ZooKeeper");
    guard
}

/// A test's databases on the cluster: its own PostgreSQL database and a
/// ClickHouse database of the same name on every node.
pub struct ClusterDb {
    pub cluster: ChCluster,
    /// Node by node, the test database with that node as its ClickHouse.
    pub replicas: Vec<TestDb>,
}

impl ClusterDb {
    /// A fresh PostgreSQL database and ClickHouse database, migrated on
    /// every node of `guard`'s cluster.
    pub async fn new(guard: &ClusterGuard) -> ClusterDb {
        let pg = TestDb::new().await;
        let name = unique_name("k");
        let cluster = ChCluster {
            name: tally_stack::CLUSTER_NAME.into(),
            shards: vec![guard.admins()],
        }
        .with_database(&name);
        tally_migrations::migrate_cluster(&pg.pg, &cluster)
            .await
            .expect("migrate the cluster");
        let replicas = guard
            .nodes
            .iter()
            .map(|n| TestDb {
                ch: n.admin.with_database(&name),
                ch_reader: n.reader.with_database(&name),
                ..pg.clone()
            })
            .collect();
        ClusterDb { cluster, replicas }
    }

    /// Waits for the replicas to agree, then compares every projection on
    /// each of them exactly with the write store.
    pub async fn assert_every_replica_exact(&self) -> Vec<crate::Compared> {
        let timeout = Duration::from_secs(120);
        if !self.replicated(timeout).await {
            let mut counts = Vec::new();
            for r in &self.replicas {
                counts.push((r.ch.url.clone(), table_counts(&r.ch).await));
            }
            panic!("the replicas did not agree within {timeout:?}: {counts:?}");
        }
        let mut compared = Vec::new();
        for r in &self.replicas {
            compared.push(crate::assert_projections_exact(r).await);
        }
        compared
    }

    /// Waits until every replica has every part the others have (the
    /// replication queue is empty and all hold the same rows per table).
    pub async fn replicated(&self, timeout: Duration) -> bool {
        crate::eventually(timeout, || async {
            let mut seen: Option<Vec<(String, u64)>> = None;
            for r in &self.replicas {
                let counts = table_counts(&r.ch).await.ok()?;
                let queue: u64 = r
                    .ch
                    .client()
                    .query("SELECT count() FROM system.replication_queue WHERE database = currentDatabase()")
                    .fetch_one()
                    .await
                    .ok()?;
                if queue > 0 || seen.as_ref().is_some_and(|s| *s != counts) {
                    return None;
                }
                seen = Some(counts);
            }
            Some(())
        })
        .await
        .is_some()
    }
}

/// Rows per projection table of `ch`'s database (unmerged duplicates
/// included: replicas agree part for part).
pub async fn table_counts(ch: &ChSettings) -> Result<Vec<(String, u64)>, clickhouse::error::Error> {
    let mut out = Vec::new();
    for t in [
        "order_facts",
        "order_facts_by_customer",
        "order_facts_by_id",
        "daily_revenue",
    ] {
        let n: u64 = ch
            .client()
            .query(&format!("SELECT count() FROM {t}"))
            .fetch_one()
            .await?;
        out.push((t.to_owned(), n));
    }
    Ok(out)
}
