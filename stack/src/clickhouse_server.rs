//! A local ClickHouse server from a config file of our own: own data
//! directory, own loopback ports, an admin user and a read-only user.
//!
//! The config uses only settings ClickHouse 18.16 understands, and current
//! servers still accept (`<yandex>` root, users in users.xml).
//!
//! No user is without a password: `default` (the admin: migrations,
//! ingest, rebuild) and the read-only user each have a generated one
//! (`secrets.rs`), and users.xml holds only their SHA-256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tally_ops::ChSettings;

use crate::child::{ChildServer, spawn};
use crate::secrets::{self, write_private};
use crate::{StackError, free_port};

/// The read-only user the dashboards connect as.
pub const READER_USER: &str = "tally_reader";

/// Finds the server: `$TALLY_CLICKHOUSE_SERVER`, `clickhouse-server` (Debian
/// installs it in /usr/sbin, often not on a user's PATH), or `clickhouse
/// server` from the single-binary distribution.
fn find_server() -> Result<(PathBuf, Option<&'static str>), StackError> {
    if let Ok(p) = std::env::var("TALLY_CLICKHOUSE_SERVER") {
        return Ok((PathBuf::from(p), None));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for dir in &dirs {
        if dir.join("clickhouse-server").exists() {
            return Ok((dir.join("clickhouse-server"), None));
        }
    }
    for dir in &dirs {
        if dir.join("clickhouse").exists() {
            return Ok((dir.join("clickhouse"), Some("server")));
        }
    }
    Err(StackError::Missing(
        "ClickHouse is not installed. Install it (`apt-get install -y clickhouse-server \
         clickhouse-client`, or run ./scripts/setup), set TALLY_CLICKHOUSE_SERVER to the \
         server binary, or set CLICKHOUSE_URL to use an existing server"
            .into(),
    ))
}

pub(crate) async fn start(
    data_dir: &Path,
) -> Result<(ChildServer, ChSettings, ChSettings), StackError> {
    start_clickhouse(data_dir, None).await
}

/// The native-protocol (`clickhouse-client`) port of the server last
/// started under `data_dir`, read back from the config it was given.
pub fn native_port(data_dir: &Path) -> Option<u16> {
    config_port(data_dir, "tcp_port")
}

/// The HTTPS port of the server last started under `data_dir`; its
/// certificate is signed by `crate::tls::ensure(data_dir).ca_cert`.
pub fn https_port(data_dir: &Path) -> Option<u16> {
    config_port(data_dir, "https_port")
}

fn config_port(data_dir: &Path, tag: &str) -> Option<u16> {
    config_port_in(&data_dir.join("clickhouse"), tag)
}

/// The HTTPS port of the server whose files are in `dir`.
pub(crate) fn https_port_in(dir: &Path) -> Option<u16> {
    config_port_in(dir, "https_port")
}

/// The native port of the server whose files are in `dir` (a cluster node's).
pub fn native_port_in(dir: &Path) -> Option<u16> {
    config_port_in(dir, "tcp_port")
}

/// A cluster node's ports, read back from the config it was last given.
pub(crate) fn node_ports(dir: &Path) -> Option<NodePorts> {
    Some(NodePorts {
        http: config_port_in(dir, "http_port")?,
        tcp: config_port_in(dir, "tcp_port")?,
        https: config_port_in(dir, "https_port")?,
        interserver: config_port_in(dir, "interserver_http_port")?,
    })
}

fn config_port_in(dir: &Path, tag: &str) -> Option<u16> {
    let config = std::fs::read_to_string(dir.join("config.xml")).ok()?;
    let open = format!("<{tag}>");
    let start = config.find(&open)? + open.len();
    let end = start + config[start..].find(&format!("</{tag}>"))?;
    config[start..end].trim().parse().ok()
}

/// Starts ClickHouse with its files under `data_dir/clickhouse`, on
/// `fixed_port` if given (a restart on the same address), else on a free
/// port. Returns the server, admin settings and read-only settings.
pub async fn start_clickhouse(
    data_dir: &Path,
    fixed_port: Option<u16>,
) -> Result<(ChildServer, ChSettings, ChSettings), StackError> {
    let dir = data_dir.join("clickhouse");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ports = NodePorts {
            http: match fixed_port {
                Some(p) => p,
                None => free_port()?,
            },
            tcp: free_port()?,
            https: free_port()?,
            interserver: 0,
        };
        match start_node(data_dir, &dir, ports, None).await {
            Err(NodeStartError::ExitedEarly(e)) if attempt < 10 => {
                // Typically: the previous server on this directory still
                // holds its lock while it shuts down.
                tracing::info!(attempt, error = %e, "ClickHouse exited during start-up; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other.map_err(StackError::from),
        }
    }
}

/// A node's ports. `interserver` (replicas fetching parts from each other)
/// is only opened in a cluster.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodePorts {
    pub http: u16,
    pub tcp: u16,
    pub https: u16,
    pub interserver: u16,
}

/// What a node of a replicated cluster adds to its config.
pub(crate) struct NodeCluster<'a> {
    pub zookeeper_port: u16,
    pub shard: u8,
    pub replica: u8,
    /// The `remote_servers` name (and `{cluster}` macro).
    pub name: &'a str,
    /// Every node's native port, shard by shard: `remote_servers`.
    pub layout: &'a [Vec<u16>],
}

pub(crate) enum NodeStartError {
    /// The server exited while starting (worth another try).
    ExitedEarly(StackError),
    Other(StackError),
}

impl From<NodeStartError> for StackError {
    fn from(e: NodeStartError) -> StackError {
        match e {
            NodeStartError::ExitedEarly(e) | NodeStartError::Other(e) => e,
        }
    }
}

impl From<StackError> for NodeStartError {
    fn from(e: StackError) -> NodeStartError {
        NodeStartError::Other(e)
    }
}

/// Starts one server with its files in `dir` (its log beside it, as
/// `<dir>.log`) on `ports`, the passwords and certificate of `data_dir`.
pub(crate) async fn start_node(
    data_dir: &Path,
    dir: &Path,
    ports: NodePorts,
    cluster: Option<NodeCluster<'_>>,
) -> Result<(ChildServer, ChSettings, ChSettings), NodeStartError> {
    let (bin, subcommand) = find_server()?;
    secrets::private_dir(dir)?;
    for sub in ["data", "data/tmp", "data/user_files", "data/format_schemas"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(StackError::io(format!("creating {}", d.display())))?;
    }
    let admin_password = secrets::password(data_dir, "clickhouse-admin.password")?;
    let reader_password = reader_password(data_dir)?;
    let tls = crate::tls::ensure(data_dir)?;
    let log = dir.with_extension("log");
    write_config(
        dir,
        ports,
        cluster.as_ref(),
        &tls,
        &admin_password,
        &reader_password,
    )?;
    let mut cmd = Command::new(&bin);
    if let Some(s) = subcommand {
        cmd.arg(s);
    }
    cmd.arg(format!(
        "--config-file={}",
        dir.join("config.xml").display()
    ));
    cmd.current_dir(dir);
    let child = spawn(cmd, &log, Signal::SIGTERM)?;
    let server = ChildServer::new("clickhouse", child, log.clone(), Signal::SIGTERM);
    match wait_ready(&server, ports.http).await {
        Ok(()) => {
            let url = format!("http://127.0.0.1:{}", ports.http);
            let admin = ChSettings {
                password: admin_password.clone(),
                ..ChSettings::new(&url, "tally")
            };
            let reader = ChSettings {
                user: READER_USER.into(),
                password: reader_password.clone(),
                ..admin.clone()
            };
            Ok((server, admin, reader))
        }
        Err(e) if server.exited().is_some() => Err(NodeStartError::ExitedEarly(e)),
        Err(e) => {
            server.stop().await;
            Err(NodeStartError::Other(e))
        }
    }
}

/// The read-only user's password; one kept by an older version beside the
/// config moves to the secrets directory.
fn reader_password(data_dir: &Path) -> Result<String, StackError> {
    let old = data_dir.join("clickhouse/reader.password");
    if let Ok(p) = std::fs::read_to_string(&old) {
        if !p.trim().is_empty() {
            let path = secrets::password_path(data_dir, "clickhouse-reader.password");
            secrets::private_dir(path.parent().unwrap_or(data_dir))?;
            write_private(&path, p.trim().as_bytes())?;
        }
        let _ = std::fs::remove_file(&old);
    }
    secrets::password(data_dir, "clickhouse-reader.password")
}

fn sha256_hex(password: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(password.as_bytes()))
}

fn write_config(
    dir: &Path,
    ports: NodePorts,
    cluster: Option<&NodeCluster<'_>>,
    tls: &crate::tls::TlsFiles,
    admin_password: &str,
    reader_password: &str,
) -> Result<(), StackError> {
    let d = dir.display();
    let NodePorts {
        http: http_port,
        tcp: tcp_port,
        https: https_port,
        interserver,
    } = ports;
    let cluster = cluster
        .map(|c| cluster_config(c, interserver, admin_password))
        .unwrap_or_default();
    let (cert, key) = (tls.cert.display(), tls.key.display());
    let (admin_sha, reader_sha) = (sha256_hex(admin_password), sha256_hex(reader_password));
    let config = format!(
        r#"<?xml version="1.0"?>
<!-- Written by tally on every start; edits are overwritten. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>{d}/server.log</log>
        <errorlog>{d}/server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <http_port>{http_port}</http_port>
    <https_port>{https_port}</https_port>
    <tcp_port>{tcp_port}</tcp_port>
    <openSSL>
        <server>
            <certificateFile>{cert}</certificateFile>
            <privateKeyFile>{key}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>200</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{d}/data/</path>
    <tmp_path>{d}/data/tmp/</tmp_path>
    <user_files_path>{d}/data/user_files/</user_files_path>
    <format_schema_path>{d}/data/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
{cluster}</yandex>
"#
    );
    let users = format!(
        r#"<?xml version="1.0"?>
<!-- Written by tally on every start; edits are overwritten. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
        <readonly>
            <readonly>1</readonly>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>1</use_uncompressed_cache>
        </readonly>
    </profiles>
    <users>
        <default>
            <password_sha256_hex>{admin_sha}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <{READER_USER}>
            <password_sha256_hex>{reader_sha}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </{READER_USER}>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#
    );
    for (name, text) in [("config.xml", config), ("users.xml", users)] {
        write_private(&dir.join(name), text.as_bytes())?;
    }
    Ok(())
}

/// A cluster node's part of config.xml: ZooKeeper, its macros, the
/// cluster's nodes, and the interserver port replicas fetch parts through
/// (advertised as 127.0.0.1, not the host name, which may not resolve).
/// `remote_servers` carries the admin password in clear, as ClickHouse
/// needs it for `Distributed` and `ON CLUSTER` queries; the file is the
/// owner's only, like the password files.
fn cluster_config(c: &NodeCluster<'_>, interserver: u16, admin_password: &str) -> String {
    let mut shards = String::new();
    for replicas in c.layout {
        shards.push_str("            <shard>\n                <internal_replication>true</internal_replication>\n");
        for port in replicas {
            shards.push_str(&format!(
                "                <replica><host>127.0.0.1</host><port>{port}</port><user>default</user><password>{admin_password}</password></replica>\n"
            ));
        }
        shards.push_str("            </shard>\n");
    }
    format!(
        r#"    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{zk}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>{shard}</shard>
        <replica>s{shard}r{replica}</replica>
        <cluster>{name}</cluster>
    </macros>
    <remote_servers>
        <{name}>
{shards}        </{name}>
    </remote_servers>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
"#,
        zk = c.zookeeper_port,
        shard = c.shard,
        replica = c.replica,
        name = c.name,
    )
}

/// Polls `GET /ping` until the server answers `Ok.`.
async fn wait_ready(server: &ChildServer, port: u16) -> Result<(), StackError> {
    wait_ready_named(server, port, "ClickHouse").await
}

pub(crate) async fn wait_ready_named(
    server: &ChildServer,
    port: u16,
    name: &'static str,
) -> Result<(), StackError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.exited() {
            return Err(StackError::Start {
                server: name,
                reason: format!("exited with {status}"),
                log: server.log.clone(),
                tail: server.log_tail(20),
            });
        }
        if ping(port).is_ok_and(|ok| ok) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StackError::Start {
                server: name,
                reason: "did not answer /ping within 60 s".into(),
                log: server.log.clone(),
                tail: server.log_tail(20),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ping(port: u16) -> std::io::Result<bool> {
    let answer = ask_loopback(port, b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    Ok(answer.ends_with("Ok.\n"))
}

/// Sends `request` to a loopback port and reads the answer to its end:
/// how the stack asks its servers whether they are up.
pub(crate) fn ask_loopback(port: u16, request: &[u8]) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(request)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}
