//! A local replicated ClickHouse cluster: one ZooKeeper and `shards ×
//! replicas` ClickHouse servers, each with its own ports, data directory
//! and `{shard}`/`{replica}` macros, all in one `remote_servers` cluster
//! named [`CLUSTER_NAME`]. For `tally up --clickhouse-cluster` and the
//! cluster tests; production names its own replicas in `CLICKHOUSE_URL`
//! with `TALLY_CLICKHOUSE_CLUSTER`.
//!
//! Every node's ports are chosen before any node starts (each node's
//! `remote_servers` names all the others), all at once and held open while
//! chosen so that none is handed out twice, and kept in the node's config:
//! a node killed by a chaos test restarts at the same address and its
//! replicas find it again. A node that cannot bind (another process took
//! a port meanwhile) makes the start try again on fresh ports.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures_util::future::join_all;

use tally_ops::ChSettings;

use crate::StackError;
use crate::child::ChildServer;
use crate::clickhouse_server::{self, NodeCluster, NodePorts};
use crate::zookeeper::{self, start_zookeeper};

/// The `remote_servers` name every node knows the cluster by.
pub const CLUSTER_NAME: &str = "tally";

/// How many shards of how many replicas: `1x2`, `2x1`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterShape {
    pub shards: u8,
    pub replicas: u8,
}

impl ClusterShape {
    pub fn nodes(self) -> usize {
        usize::from(self.shards) * usize::from(self.replicas)
    }
}

impl std::fmt::Display for ClusterShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.shards, self.replicas)
    }
}

impl FromStr for ClusterShape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a cluster shape: write SHARDSxREPLICAS, e.g. 1x2 (one shard, two \
                 replicas) or 2x1 (two shards), with 2 to 4 servers in all"
            )
        };
        let (a, b) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let shards: u8 = a.trim().parse().map_err(|_| bad())?;
        let replicas: u8 = b.trim().parse().map_err(|_| bad())?;
        let shape = ClusterShape { shards, replicas };
        if shards == 0 || replicas == 0 || !(2..=4).contains(&shape.nodes()) {
            return Err(bad());
        }
        Ok(shape)
    }
}

/// One ClickHouse server of the cluster.
pub struct ClusterNode {
    /// 1-based, as in the `{shard}` macro.
    pub shard: u8,
    /// 1-based within its shard.
    pub replica: u8,
    /// Admin access to this node (database `tally`).
    pub admin: ChSettings,
    /// The read-only user on this node.
    pub reader: ChSettings,
    dir: PathBuf,
    server: Option<ChildServer>,
}

impl ClusterNode {
    /// `s1r2`: how logs, metrics and errors name the node.
    pub fn name(&self) -> String {
        format!("s{}r{}", self.shard, self.replica)
    }

    /// Where the node keeps its files (its config among them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.server.as_ref().is_some_and(|s| s.exited().is_none())
    }

    /// The native-protocol port, for `clickhouse-client`.
    pub fn native_port(&self) -> Option<u16> {
        clickhouse_server::native_port_in(&self.dir)
    }
}

/// Every node's directory and ports, shard by shard: the ports each kept
/// in its config (a restart keeps its address), or, with `fresh` or where
/// a node has none, new ones, all distinct.
fn node_specs(
    root: &Path,
    shape: ClusterShape,
    fresh: bool,
) -> Result<Vec<(u8, u8, PathBuf, NodePorts)>, StackError> {
    let mut spare = crate::free_ports(4 * shape.nodes())?.into_iter();
    let mut next = || {
        spare
            .next()
            .ok_or_else(|| StackError::Setup("ran out of ports".into()))
    };
    let mut specs = Vec::new();
    for shard in 1..=shape.shards {
        for replica in 1..=shape.replicas {
            let dir = root.join(format!("s{shard}r{replica}"));
            let ports = match clickhouse_server::node_ports(&dir).filter(|_| !fresh) {
                Some(p) => p,
                None => NodePorts {
                    http: next()?,
                    tcp: next()?,
                    https: next()?,
                    interserver: next()?,
                },
            };
            specs.push((shard, replica, dir, ports));
        }
    }
    Ok(specs)
}

/// Starts every node (each one's config names all of them); on a failure
/// stops those that started and says whether a node exited early.
async fn start_nodes(
    data_dir: &Path,
    specs: Vec<(u8, u8, PathBuf, NodePorts)>,
    zookeeper_port: u16,
) -> Result<Vec<ClusterNode>, (StackError, bool)> {
    let layout = layout(specs.iter().map(|(shard, _, _, p)| (*shard, p.tcp)));
    let started = join_all(specs.iter().map(|(shard, replica, dir, ports)| {
        clickhouse_server::start_node(
            data_dir,
            dir,
            *ports,
            Some(NodeCluster {
                zookeeper_port,
                shard: *shard,
                replica: *replica,
                name: CLUSTER_NAME,
                layout: &layout,
            }),
        )
    }))
    .await;
    let mut nodes = Vec::new();
    let mut failure: Option<(StackError, bool)> = None;
    for ((shard, replica, dir, _), result) in specs.into_iter().zip(started) {
        match result {
            Ok((server, admin, reader)) => nodes.push(ClusterNode {
                shard,
                replica,
                admin,
                reader,
                dir,
                server: Some(server),
            }),
            Err(e) => {
                let early = matches!(e, clickhouse_server::NodeStartError::ExitedEarly(_));
                let early = early || failure.as_ref().is_some_and(|f| f.1);
                failure = Some((failure.map_or_else(|| StackError::from(e), |f| f.0), early));
            }
        }
    }
    match failure {
        None => Ok(nodes),
        Some(f) => {
            let servers: Vec<ChildServer> =
                nodes.iter_mut().filter_map(|n| n.server.take()).collect();
            join_all(servers.iter().map(ChildServer::stop)).await;
            Err(f)
        }
    }
}

/// A running local cluster. Dropping it does not stop the servers; call
/// [`LocalCluster::stop`] (or let the process exit).
pub struct LocalCluster {
    pub shape: ClusterShape,
    pub nodes: Vec<ClusterNode>,
    zookeeper: Option<ChildServer>,
    zookeeper_dir: PathBuf,
    zookeeper_port: u16,
    data_dir: PathBuf,
}

impl LocalCluster {
    /// Starts ZooKeeper and every node under `data_dir/cluster`, and waits
    /// until each answers. A second start on the same directory reuses its
    /// data and ports.
    pub async fn start(data_dir: &Path, shape: ClusterShape) -> Result<LocalCluster, StackError> {
        crate::secrets::private_dir(data_dir)?;
        let root = data_dir.join("cluster");
        crate::secrets::private_dir(&root)?;
        let zookeeper_dir = root.join("zookeeper");
        let (zk, zookeeper_port) =
            start_zookeeper(&zookeeper_dir, zookeeper::client_port(&zookeeper_dir)).await?;

        let mut fresh_ports = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let specs = node_specs(&root, shape, fresh_ports)?;
            match start_nodes(data_dir, specs, zookeeper_port).await {
                Ok(nodes) => {
                    return Ok(LocalCluster {
                        shape,
                        nodes,
                        zookeeper: Some(zk),
                        zookeeper_dir,
                        zookeeper_port,
                        data_dir: data_dir.to_owned(),
                    });
                }
                // Typically a port taken by another process between our
                // choosing it and the server binding it: choose anew.
                Err((e, true)) if attempt < 4 => {
                    tracing::info!(attempt, error = %e, "a ClickHouse node exited during start-up; retrying on fresh ports");
                    fresh_ports = true;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err((e, _)) => {
                    zk.stop().await;
                    return Err(e);
                }
            }
        }
    }

    /// Admin settings of every node, shard by shard.
    pub fn admins(&self) -> Vec<ChSettings> {
        self.nodes.iter().map(|n| n.admin.clone()).collect()
    }

    /// Read-only settings of every node, shard by shard.
    pub fn readers(&self) -> Vec<ChSettings> {
        self.nodes.iter().map(|n| n.reader.clone()).collect()
    }

    /// SIGKILLs node `i` (chaos tests): no shutdown, no flush.
    pub async fn kill_node(&mut self, i: usize) {
        if let Some(server) = self.nodes[i].server.take() {
            server.kill().await;
        }
    }

    /// Starts node `i` again at the same ports, with the same data.
    pub async fn restart_node(&mut self, i: usize) -> Result<(), StackError> {
        let layout = layout(
            self.nodes
                .iter()
                .filter_map(|n| clickhouse_server::node_ports(&n.dir).map(|p| (n.shard, p.tcp))),
        );
        let node = &self.nodes[i];
        let ports = clickhouse_server::node_ports(&node.dir).ok_or_else(|| {
            StackError::Setup(format!(
                "node {} has no config to restart from",
                node.name()
            ))
        })?;
        let (server, _, _) = clickhouse_server::start_node(
            &self.data_dir,
            &node.dir,
            ports,
            Some(NodeCluster {
                zookeeper_port: self.zookeeper_port,
                shard: node.shard,
                replica: node.replica,
                name: CLUSTER_NAME,
                layout: &layout,
            }),
        )
        .await?;
        self.nodes[i].server = Some(server);
        Ok(())
    }

    /// SIGKILLs ZooKeeper (chaos tests).
    pub async fn kill_zookeeper(&mut self) {
        if let Some(zk) = self.zookeeper.take() {
            zk.kill().await;
        }
    }

    /// Starts ZooKeeper again at the same port, with the same data.
    pub async fn restart_zookeeper(&mut self) -> Result<(), StackError> {
        let (zk, _) = start_zookeeper(&self.zookeeper_dir, Some(self.zookeeper_port)).await?;
        self.zookeeper = Some(zk);
        Ok(())
    }

    /// Restarts ZooKeeper if it is not running.
    pub async fn ensure_zookeeper(&mut self) -> Result<(), StackError> {
        if self
            .zookeeper
            .as_ref()
            .is_some_and(|z| z.exited().is_none())
        {
            return Ok(());
        }
        self.restart_zookeeper().await
    }

    /// Stops every node, then ZooKeeper.
    pub async fn stop(mut self) {
        let nodes: Vec<ChildServer> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.server.take())
            .collect();
        join_all(nodes.iter().map(ChildServer::stop)).await;
        if let Some(zk) = self.zookeeper.take() {
            zk.stop().await;
        }
    }
}

/// Every node's native port, shard by shard (shards numbered from 1): the
/// `remote_servers` list each node's config carries.
fn layout(nodes: impl Iterator<Item = (u8, u16)>) -> Vec<Vec<u16>> {
    let mut shards: Vec<Vec<u16>> = Vec::new();
    for (shard, tcp) in nodes {
        let i = usize::from(shard.max(1)) - 1;
        if shards.len() <= i {
            shards.resize(i + 1, Vec::new());
        }
        shards[i].push(tcp);
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_bad_ones_say_how_to_write_them() {
        assert_eq!(
            "1x2".parse::<ClusterShape>(),
            Ok(ClusterShape {
                shards: 1,
                replicas: 2
            })
        );
        assert_eq!(
            "2x1".parse::<ClusterShape>().map(ClusterShape::nodes),
            Ok(2)
        );
        assert_eq!(
            "2x2".parse::<ClusterShape>().map(|s| s.to_string()),
            Ok("2x2".into())
        );
        for bad in ["1x1", "3x2", "0x2", "2", "ax2", "1x-1", ""] {
            let e = bad.parse::<ClusterShape>().unwrap_err();
            assert!(e.contains("SHARDSxREPLICAS"), "{bad}: {e}");
        }
    }
}
