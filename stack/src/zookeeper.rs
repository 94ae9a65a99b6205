//! A local ZooKeeper (Debian's `zookeeper` 3.8) as a child process: the
//! coordinator a replicated ClickHouse needs for its replication log,
//! block deduplication and `ON CLUSTER` queue.
//!
//! Standalone (one server, no quorum): on loopback there is nothing a
//! quorum would survive that one process would not, and the chaos tests
//! kill and restart this one to prove the pipeline waits it out. The JVM is
//! started directly (not `zkServer.sh`, which daemonises and would escape
//! the parent-death signal) with a small heap.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::child::{ChildServer, spawn};
use crate::clickhouse_server::ask_loopback;
use crate::secrets::{self, write_private};
use crate::{StackError, free_port};

/// Finds Java and ZooKeeper's jar: `$TALLY_ZOOKEEPER_JAR` or Debian's
/// `/usr/share/java/zookeeper.jar`, whose manifest names its dependencies.
fn find() -> Result<(PathBuf, PathBuf), StackError> {
    let jar = std::env::var_os("TALLY_ZOOKEEPER_JAR").map_or_else(
        || PathBuf::from("/usr/share/java/zookeeper.jar"),
        PathBuf::from,
    );
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/java"));
    if !jar.exists() || !java.exists() {
        return Err(StackError::Missing(format!(
            "a ClickHouse cluster needs ZooKeeper and Java, and {} is missing. Install them \
             (`./scripts/setup --cluster`, or `apt-get install -y zookeeper`), or set \
             TALLY_ZOOKEEPER_JAR to ZooKeeper's jar",
            if jar.exists() {
                java.display()
            } else {
                jar.display()
            }
        )));
    }
    Ok((java, jar))
}

/// The client port of the ZooKeeper last started under `dir`.
pub fn client_port(dir: &Path) -> Option<u16> {
    let cfg = std::fs::read_to_string(dir.join("zoo.cfg")).ok()?;
    cfg.lines()
        .find_map(|l| l.strip_prefix("clientPort="))
        .and_then(|p| p.trim().parse().ok())
}

/// Starts ZooKeeper with its files under `dir`, on `fixed_port` if given
/// (a restart at the same address), else on a free port; waits until it
/// answers `ruok`. Returns the server and its client port.
pub async fn start_zookeeper(
    dir: &Path,
    fixed_port: Option<u16>,
) -> Result<(ChildServer, u16), StackError> {
    let (java, jar) = find()?;
    secrets::private_dir(dir)?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)
        .map_err(StackError::io(format!("creating {}", data.display())))?;
    let port = match fixed_port {
        Some(p) => p,
        None => free_port()?,
    };
    let config = format!(
        "# Written by tally on every start; edits are overwritten.\n\
         tickTime=500\n\
         dataDir={}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr\n\
         autopurge.purgeInterval=1\n\
         autopurge.snapRetainCount=3\n",
        data.display()
    );
    write_private(&dir.join("zoo.cfg"), config.as_bytes())?;
    let log = dir.join("zookeeper.log");
    let mut cmd = Command::new(java);
    cmd.arg("-Xmx256m")
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .arg("-cp")
        .arg(format!("/etc/zookeeper/conf:{}", jar.display()))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(dir.join("zoo.cfg"))
        .current_dir(dir);
    let child = spawn(cmd, &log, Signal::SIGKILL)?;
    let server = ChildServer::new("zookeeper", child, log, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.exited() {
            return Err(StackError::Start {
                server: "ZooKeeper",
                reason: format!("exited with {status}"),
                log: server.log.clone(),
                tail: server.log_tail(20),
            });
        }
        if ruok(port).is_ok_and(|ok| ok) {
            return Ok((server, port));
        }
        if Instant::now() > deadline {
            let tail = server.log_tail(20);
            server.stop().await;
            return Err(StackError::Start {
                server: "ZooKeeper",
                reason: "did not answer `ruok` within 60 s".into(),
                log: server.log.clone(),
                tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ZooKeeper's four-letter health word: `ruok` → `imok`.
fn ruok(port: u16) -> std::io::Result<bool> {
    Ok(ask_loopback(port, b"ruok")? == "imok")
}
