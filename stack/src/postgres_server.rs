//! A local PostgreSQL: `initdb` once, then `postgres` on a free port.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: in that case the
//! data directory is given to the `postgres` system user and both programs
//! run as that user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use sqlx::Connection;

use crate::child::{ChildServer, log_tail, spawn};
use crate::{StackError, free_port};

/// The owner the server processes run as: ourselves, or `postgres` if we
/// are root.
struct RunAs {
    uid: Uid,
    gid: Gid,
    switch: bool,
}

fn run_as() -> Result<RunAs, StackError> {
    if !Uid::effective().is_root() {
        return Ok(RunAs {
            uid: Uid::effective(),
            gid: Gid::effective(),
            switch: false,
        });
    }
    match User::from_name("postgres") {
        Ok(Some(u)) => Ok(RunAs {
            uid: u.uid,
            gid: u.gid,
            switch: true,
        }),
        _ => Err(StackError::Missing(
            "PostgreSQL will not run as root, and there is no `postgres` user to run it as. \
             Run tally as an ordinary user, or create one: `useradd --system postgres`"
                .into(),
        )),
    }
}

/// Finds `initdb` and `postgres`: `$TALLY_PG_BIN_DIR`, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian), then `$PATH`.
pub fn find_bin_dir() -> Result<PathBuf, StackError> {
    if let Ok(dir) = std::env::var("TALLY_PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("postgres").exists() {
                return Ok(dir);
            }
        }
    }
    Err(StackError::Missing(
        "PostgreSQL server binaries (initdb, postgres) were not found. Install them \
         (`apt-get install -y postgresql`, or run ./scripts/setup), set TALLY_PG_BIN_DIR, \
         or set DATABASE_URL to use an existing server"
            .into(),
    ))
}

pub(crate) async fn start(
    data_dir: &Path,
    max_connections: u32,
    durable: bool,
) -> Result<(ChildServer, String), StackError> {
    start_on(data_dir, max_connections, durable, None).await
}

/// [`start`] on a given port (a restart that clients must find again), or
/// a free one.
pub async fn start_on(
    data_dir: &Path,
    max_connections: u32,
    durable: bool,
    fixed_port: Option<u16>,
) -> Result<(ChildServer, String), StackError> {
    std::fs::create_dir_all(data_dir)
        .map_err(StackError::io(format!("creating {}", data_dir.display())))?;
    let bin = find_bin_dir()?;
    let owner = run_as()?;
    let pgdata = cluster_dir(data_dir, &owner)?;
    let log = data_dir.join("postgres.log");

    if !pgdata.join("PG_VERSION").exists() {
        initdb(&bin, &pgdata, &log, &owner).await?;
    }

    // A previous server in this directory may still be shutting down after
    // its parent died; PostgreSQL refuses to start until it has.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = match fixed_port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&pgdata).arg("-p").arg(port.to_string());
        cmd.args(["-c", "listen_addresses=127.0.0.1"]);
        cmd.arg("-c")
            .arg(format!("unix_socket_directories={}", pgdata.display()));
        cmd.arg("-c")
            .arg(format!("max_connections={max_connections}"));
        cmd.args(["-c", "shared_buffers=256MB", "-c", "max_wal_size=2GB"]);
        if !durable {
            // Test servers: a killed *process* loses nothing with these,
            // only a crashed machine would.
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        if owner.switch {
            use std::os::unix::process::CommandExt;
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        let child = spawn(cmd, &log, Signal::SIGINT)?;
        let server = ChildServer::new("postgres", child, log.clone(), Signal::SIGINT);
        let url = format!("postgres://tally@127.0.0.1:{port}/tally");
        match wait_ready(&server, port).await {
            Ok(()) => return Ok((server, url)),
            Err(e) if attempt < 10 && server.exited().is_some() => {
                tracing::info!(attempt, error = %e, "PostgreSQL exited during start-up; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                server.stop().await;
                return Err(e);
            }
        }
    }
}

/// Where the cluster lives: `<data dir>/postgres`, unless we run as root
/// and the `postgres` user cannot reach that (a clone under `/root`, mode
/// 700). Then it lives under `/var/tmp/tally-postgres/`, named after the
/// data directory so that a restart finds it again, and
/// `<data dir>/postgres.location` says where.
fn cluster_dir(data_dir: &Path, owner: &RunAs) -> Result<PathBuf, StackError> {
    let inside = data_dir.join("postgres");
    if !owner.switch || reachable_by(data_dir, owner) {
        return Ok(inside);
    }
    let name: String = data_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = PathBuf::from("/var/tmp/tally-postgres");
    std::fs::create_dir_all(&base)
        .map_err(StackError::io(format!("creating {}", base.display())))?;
    let outside = base.join(name);
    let note = data_dir.join("postgres.location");
    let _ = std::fs::write(
        &note,
        format!(
            "{}\n(PostgreSQL runs as the postgres user, which cannot enter {}; its data lives here instead.)\n",
            outside.display(),
            data_dir.display()
        ),
    );
    tracing::info!(
        data_dir = %data_dir.display(),
        cluster = %outside.display(),
        "the postgres user cannot enter the data directory; keeping the PostgreSQL cluster outside it"
    );
    Ok(outside)
}

/// Whether `owner` may traverse every directory down to `dir`.
fn reachable_by(dir: &Path, owner: &RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|d| match std::fs::metadata(d) {
        Ok(m) => {
            let mode = m.mode();
            (mode & 0o001 != 0)
                || (m.uid() == owner.uid.as_raw() && mode & 0o100 != 0)
                || (m.gid() == owner.gid.as_raw() && mode & 0o010 != 0)
        }
        Err(_) => false,
    })
}

async fn initdb(bin: &Path, pgdata: &Path, log: &Path, owner: &RunAs) -> Result<(), StackError> {
    tracing::info!(dir = %pgdata.display(), "initialising a new PostgreSQL data directory");
    std::fs::create_dir_all(pgdata)
        .map_err(StackError::io(format!("creating {}", pgdata.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
            .map_err(StackError::io(format!("chmod {}", pgdata.display())))?;
    }
    if owner.switch {
        nix::unistd::chown(pgdata, Some(owner.uid), Some(owner.gid)).map_err(|e| {
            StackError::Setup(format!("chown {} to postgres: {e}", pgdata.display()))
        })?;
    }
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D").arg(pgdata);
    cmd.args([
        "-U",
        "tally",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]);
    if owner.switch {
        use std::os::unix::process::CommandExt;
        cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
    }
    let child = spawn(cmd, log, Signal::SIGKILL)?;
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .map_err(|e| StackError::Setup(format!("waiting for initdb: {e}")))?
    .map_err(StackError::io("waiting for initdb"))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(pgdata);
        return Err(StackError::Start {
            server: "initdb",
            reason: status.to_string(),
            log: log.to_path_buf(),
            tail: log_tail(log, 20),
        });
    }
    Ok(())
}

async fn wait_ready(server: &ChildServer, port: u16) -> Result<(), StackError> {
    let admin_url = format!("postgres://tally@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    let fail = |reason: String| StackError::Start {
        server: "PostgreSQL",
        reason,
        log: server.log.clone(),
        tail: server.log_tail(20),
    };
    loop {
        if let Some(status) = server.exited() {
            return Err(fail(format!("exited with {status}")));
        }
        match sqlx::PgConnection::connect(&admin_url).await {
            Ok(mut conn) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tally')",
                )
                .fetch_one(&mut conn)
                .await
                .map_err(|e| fail(e.to_string()))?;
                if !exists {
                    sqlx::query("CREATE DATABASE tally")
                        .execute(&mut conn)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => {
                return Err(fail(format!("not accepting connections after 60 s: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
