//! The local stack's secrets and who may read them.
//!
//! The data directory is `0700` and every file holding a secret `0600`
//! (created so, never widened): on a shared machine another OS user can
//! neither read a password nor connect without one. Passwords are 128
//! random bits in hex, generated on first start and kept in
//! `<data dir>/secrets/`, so restarts keep working; deleting a file
//! rotates that password at the next start.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::StackError;

/// Directories only their owner may enter.
pub const DIR_MODE: u32 = 0o700;
/// Files only their owner may read.
pub const FILE_MODE: u32 = 0o600;

/// Makes `dir` (and its missing parents) and narrows it to [`DIR_MODE`].
pub fn private_dir(dir: &Path) -> Result<(), StackError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(StackError::io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(StackError::io(format!("chmod 700 {}", dir.display())))
}

/// Writes `contents` to `path` readable by its owner only: through a
/// temporary file created `0600` and renamed, so no reader ever sees a
/// wider or half-written file.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), StackError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(StackError::io(format!("creating {}", tmp.display())))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(StackError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(StackError::io(format!("writing {}", path.display())))
}

/// The password stored as `name` under `<data dir>/secrets/`, made on
/// first use.
pub fn password(data_dir: &Path, name: &str) -> Result<String, StackError> {
    let dir = data_dir.join("secrets");
    private_dir(&dir)?;
    let path = dir.join(name);
    if let Ok(p) = std::fs::read_to_string(&path)
        && !p.trim().is_empty()
    {
        // Files from before the stack was locked down may be 0644.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(StackError::io(format!("chmod 600 {}", path.display())))?;
        return Ok(p.trim().to_owned());
    }
    let pw = random_hex()?;
    write_private(&path, pw.as_bytes())?;
    Ok(pw)
}

/// Where the stack keeps the password called `name`.
pub fn password_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("secrets").join(name)
}

fn random_hex() -> Result<String, StackError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(StackError::io("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `postgres://user:pass@host/db` → `postgres://user:***@host/db`, for
/// anything printed or logged; URLs without a password are unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://tally:s3cret@127.0.0.1:5432/tally?sslmode=disable"),
            "postgres://tally:***@127.0.0.1:5432/tally?sslmode=disable"
        );
        assert_eq!(
            redact_url("http://default:pw@127.0.0.1:8123/?database=tally"),
            "http://default:***@127.0.0.1:8123/?database=tally"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8123/?database=tally"),
            "http://127.0.0.1:8123/?database=tally"
        );
        assert_eq!(redact_url("postgres://tally@h/db"), "postgres://tally@h/db");
        // An '@' after the authority is not a password separator.
        assert_eq!(redact_url("http://h/p?x=a:b@c"), "http://h/p?x=a:b@c");
    }

    #[test]
    fn secrets_are_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("tally-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = password(&dir, "x.password").unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(password(&dir, "x.password").unwrap(), first);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("secrets")), DIR_MODE);
        assert_eq!(mode(&password_path(&dir, "x.password")), FILE_MODE);
        // A file left readable by an older version is narrowed.
        std::fs::set_permissions(
            password_path(&dir, "x.password"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_eq!(password(&dir, "x.password").unwrap(), first);
        assert_eq!(mode(&password_path(&dir, "x.password")), FILE_MODE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
