//! A local PostgreSQL: `initdb` once, then `postgres` on a free port.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: in that case the
//! data directory is given to the `postgres` system user and both programs
//! run as that user.
//!
//! Every connection needs a password (`scram-sha-256`, on the socket too).
//! The superuser, [`ADMIN_ROLE`], only sets things up: the role
//! [`APP_ROLE`] that every service connects as may log in and owns the
//! `tally` database and everything the migrations create, nothing more
//! (no superuser, no `CREATEROLE`, no `CREATEDB`). A cluster made by an
//! older tally (trust, superuser `tally`) is brought to this state on its
//! first start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use sqlx::Connection;

use crate::child::{ChildServer, log_tail, spawn};
use crate::secrets;
use crate::{StackError, free_port};

/// The superuser: set-up only (roles, databases).
pub const ADMIN_ROLE: &str = "tally_admin";
/// The role the services connect as; owns the `tally` database.
pub const APP_ROLE: &str = "tally";

/// `pg_hba.conf`: a password for everyone, on every way in.
const HBA: &str = "# Written by tally on every start: every connection needs a password.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
";

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

/// A started server: the services' URL and the superuser's.
pub(crate) struct Started {
    pub server: ChildServer,
    pub app_url: String,
    pub admin_url: String,
}

pub(crate) async fn start(
    data_dir: &Path,
    max_connections: u32,
    durable: bool,
) -> Result<Started, StackError> {
    start_server(data_dir, max_connections, durable, None).await
}

/// Starts the server on a given port (a restart that clients must find
/// again), or a free one. Returns it and the URL services connect with.
pub async fn start_on(
    data_dir: &Path,
    max_connections: u32,
    durable: bool,
    fixed_port: Option<u16>,
) -> Result<(ChildServer, String), StackError> {
    let s = start_server(data_dir, max_connections, durable, fixed_port).await?;
    Ok((s.server, s.app_url))
}

async fn start_server(
    data_dir: &Path,
    max_connections: u32,
    durable: bool,
    fixed_port: Option<u16>,
) -> Result<Started, StackError> {
    secrets::private_dir(data_dir)?;
    let bin = find_bin_dir()?;
    let owner = run_as()?;
    let pgdata = cluster_dir(data_dir, &owner)?;
    let log = data_dir.join("postgres.log");
    let admin_pw = secrets::password(data_dir, "postgres-admin.password")?;
    let app_pw = secrets::password(data_dir, "postgres.password")?;

    let legacy = if pgdata.join("PG_VERSION").exists() {
        hba_trusts(&pgdata)
    } else {
        initdb(&bin, &pgdata, &log, &owner, &admin_pw).await?;
        false
    };
    if !legacy {
        write_hba(&pgdata, &owner)?;
    }
    let tls = install_tls(data_dir, &pgdata, &owner)?;

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
        // TLS on the same port, for clients that ask (`sslmode`); the
        // stack's own URLs do not, on loopback.
        cmd.args(["-c", "ssl=on"]);
        cmd.arg("-c")
            .arg(format!("ssl_cert_file={}", tls.0.display()));
        cmd.arg("-c")
            .arg(format!("ssl_key_file={}", tls.1.display()));
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
        let admin_url = format!("postgres://{ADMIN_ROLE}:{admin_pw}@127.0.0.1:{port}/postgres");
        let app_url = format!("postgres://{APP_ROLE}:{app_pw}@127.0.0.1:{port}/tally");
        let ready = async {
            let mut conn = if legacy {
                let trusted = format!("postgres://{APP_ROLE}@127.0.0.1:{port}/postgres");
                wait_ready(&server, &trusted, data_dir).await?;
                lock_down_legacy(port, &pgdata, &owner, &admin_pw).await?;
                wait_ready(&server, &admin_url, data_dir).await?
            } else {
                wait_ready(&server, &admin_url, data_dir).await?
            };
            provision(&mut conn, &app_pw)
                .await
                .map_err(|e| StackError::Setup(format!("setting up PostgreSQL roles: {e}")))
        }
        .await;
        match ready {
            Ok(()) => {
                return Ok(Started {
                    server,
                    app_url,
                    admin_url,
                });
            }
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
    // A cluster an older tally kept inside a then world-traversable data
    // directory moves out with it, data and all: left there, a new empty
    // cluster would start in its place.
    if inside.join("PG_VERSION").exists() && !outside.join("PG_VERSION").exists() {
        std::fs::rename(&inside, &outside).map_err(|e| {
            StackError::Setup(format!(
                "the PostgreSQL cluster in {} must move to {} (the data directory is now 0700, \
                 and the postgres user cannot enter it), and moving it failed: {e}. Move it \
                 yourself (`mv {} {}`) and start again",
                inside.display(),
                outside.display(),
                inside.display(),
                outside.display()
            ))
        })?;
        tracing::info!(from = %inside.display(), to = %outside.display(), "moved the PostgreSQL cluster out of the data directory");
    }
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

/// Whether `pg_hba.conf` lets anyone in without a password: a cluster an
/// older tally made.
fn hba_trusts(pgdata: &Path) -> bool {
    std::fs::read_to_string(pgdata.join("pg_hba.conf")).is_ok_and(|hba| {
        hba.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.split_whitespace().any(|w| w == "trust"))
    })
}

/// The stack's certificate and key, copied into the cluster directory:
/// PostgreSQL reads them as its own user and wants the key `0600` and its.
fn install_tls(
    data_dir: &Path,
    pgdata: &Path,
    owner: &RunAs,
) -> Result<(PathBuf, PathBuf), StackError> {
    let files = crate::tls::ensure(data_dir)?;
    let (cert, key) = (pgdata.join("server.crt"), pgdata.join("server.key"));
    for (from, to) in [(&files.cert, &cert), (&files.key, &key)] {
        let bytes =
            std::fs::read(from).map_err(StackError::io(format!("reading {}", from.display())))?;
        secrets::write_private(to, &bytes)?;
        if owner.switch {
            nix::unistd::chown(to, Some(owner.uid), Some(owner.gid))
                .map_err(|e| StackError::Setup(format!("chown {}: {e}", to.display())))?;
        }
    }
    Ok((cert, key))
}

fn write_hba(pgdata: &Path, owner: &RunAs) -> Result<(), StackError> {
    let path = pgdata.join("pg_hba.conf");
    if std::fs::read_to_string(&path).is_ok_and(|h| h == HBA) {
        return Ok(());
    }
    secrets::write_private(&path, HBA.as_bytes())?;
    if owner.switch {
        nix::unistd::chown(&path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| StackError::Setup(format!("chown {}: {e}", path.display())))?;
    }
    Ok(())
}

/// A cluster from before the lock-down: `tally` is a superuser and anyone
/// local gets in. Reached through that trust one last time: the admin
/// role is made, `tally` loses its superuser (done by the admin, as the
/// connection is `tally`'s), and passwords become required.
async fn lock_down_legacy(
    port: u16,
    pgdata: &Path,
    owner: &RunAs,
    admin_pw: &str,
) -> Result<(), StackError> {
    let port_url = |user: &str| -> Result<String, StackError> {
        Ok(format!("postgres://{user}@127.0.0.1:{port}/postgres"))
    };
    let setup = |e: sqlx::Error| {
        StackError::Setup(format!("locking down an older PostgreSQL cluster: {e}"))
    };
    tracing::info!(
        "this PostgreSQL cluster accepts connections without a password; requiring them from now on"
    );
    let mut old = sqlx::PgConnection::connect(&port_url(APP_ROLE)?)
        .await
        .map_err(setup)?;
    ensure_role(
        &mut old,
        ADMIN_ROLE,
        &format!("SUPERUSER LOGIN PASSWORD '{admin_pw}'"),
    )
    .await
    .map_err(setup)?;
    let mut admin = sqlx::PgConnection::connect(&port_url(ADMIN_ROLE)?)
        .await
        .map_err(setup)?;
    sqlx::query(&format!(
        "ALTER ROLE {APP_ROLE} WITH NOSUPERUSER NOCREATEROLE NOCREATEDB"
    ))
    .execute(&mut admin)
    .await
    .map_err(setup)?;
    write_hba(pgdata, owner)?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .map_err(setup)?;
    Ok(())
}

/// Makes `role` if it is missing, then gives it exactly `attributes`.
/// Passwords in them are hex (`secrets.rs`): safe inside a literal.
async fn ensure_role(
    conn: &mut sqlx::PgConnection,
    role: &str,
    attributes: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN;
             END IF;
         END $$"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!("ALTER ROLE {role} WITH {attributes}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// As the admin: the services' role, with this start's password and no
/// more than it needs, owning the `tally` database.
async fn provision(conn: &mut sqlx::PgConnection, app_pw: &str) -> Result<(), sqlx::Error> {
    ensure_role(
        conn,
        APP_ROLE,
        &format!("LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD '{app_pw}'"),
    )
    .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tally')")
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        sqlx::query(&format!("ALTER DATABASE tally OWNER TO {APP_ROLE}"))
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query(&format!("CREATE DATABASE tally OWNER {APP_ROLE}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn initdb(
    bin: &Path,
    pgdata: &Path,
    log: &Path,
    owner: &RunAs,
    admin_pw: &str,
) -> Result<(), StackError> {
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
    // initdb reads the superuser's password from a file, as its owner: a
    // private one of its own, removed as soon as initdb is done.
    let pwfile = std::env::temp_dir().join(format!(
        "tally-initdb-{}-{}",
        std::process::id(),
        pgdata.display().to_string().len()
    ));
    secrets::write_private(&pwfile, admin_pw.as_bytes())?;
    if owner.switch {
        nix::unistd::chown(&pwfile, Some(owner.uid), Some(owner.gid))
            .map_err(|e| StackError::Setup(format!("chown {}: {e}", pwfile.display())))?;
    }
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D").arg(pgdata);
    cmd.args(["-U", ADMIN_ROLE, "--auth=scram-sha-256"]);
    cmd.arg(format!("--pwfile={}", pwfile.display()));
    cmd.args(["--encoding=UTF8", "--locale=C", "--no-instructions"]);
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
    .map_err(|e| StackError::Setup(format!("waiting for initdb: {e}")))
    .and_then(|r| r.map_err(StackError::io("waiting for initdb")));
    let _ = std::fs::remove_file(&pwfile);
    let status = status?;
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

/// Waits until the server takes a connection at `url` and returns it.
async fn wait_ready(
    server: &ChildServer,
    url: &str,
    data_dir: &Path,
) -> Result<sqlx::PgConnection, StackError> {
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
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("28P01") => {
                return Err(StackError::Setup(format!(
                    "PostgreSQL refused the password kept in {}: {e}. Was that directory \
                     replaced or emptied? Restore it, or start from a new --data-dir",
                    data_dir.join("secrets").display()
                )));
            }
            Err(e) if Instant::now() > deadline => {
                return Err(fail(format!("not accepting connections after 60 s: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
