//! Test-only: the current ClickHouse engine (chdb, ClickHouse as a library)
//! behind `tests/chdb/serve.py`, which speaks the part of ClickHouse's HTTP
//! interface the `clickhouse` crate uses. No current ClickHouse *server* can
//! be installed where the tests run (Debian ships 18.16), so this is how the
//! suite proves Tally on a current engine too. Never used by `tally up`.

use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;
use tally_ops::ChSettings;

use crate::child::{ChildServer, spawn};
use crate::clickhouse_server::{READER_USER, wait_ready_named};
use crate::{StackError, free_port, secrets};

/// Starts the harness with `python` (a virtualenv with `chdb-core`) on
/// `script`, keeping its engine's files under `data_dir/chdb`. Returns the
/// server and the admin and read-only users' settings (database `tally`).
pub async fn start_chdb(
    data_dir: &Path,
    python: &Path,
    script: &Path,
) -> Result<(ChildServer, ChSettings, ChSettings), StackError> {
    let dir = data_dir.join("chdb");
    secrets::private_dir(&dir)?;
    let admin_password = secrets::password(data_dir, "chdb-admin.password")?;
    let reader_password = secrets::password(data_dir, "chdb-reader.password")?;
    let port = free_port()?;
    let log = data_dir.join("chdb.log");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--port")
        .arg(port.to_string())
        .arg("--path")
        .arg(dir.join("engine"))
        .arg("--user")
        .arg(format!("default:{admin_password}:rw"))
        .arg("--user")
        .arg(format!("{READER_USER}:{reader_password}:ro"));
    let child = spawn(cmd, &log, Signal::SIGKILL)?;
    let server = ChildServer::new("chdb", child, log, Signal::SIGTERM);
    if let Err(e) = wait_ready_named(&server, port, "chdb harness").await {
        server.stop().await;
        return Err(e);
    }
    let admin = ChSettings {
        password: admin_password,
        ..ChSettings::new(format!("http://127.0.0.1:{port}"), "tally")
    };
    let reader = ChSettings {
        user: READER_USER.into(),
        password: reader_password,
        ..admin.clone()
    };
    Ok((server, admin, reader))
}
