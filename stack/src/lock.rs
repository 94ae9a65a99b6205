//! One `tally up` per data directory, enforced with `flock(2)`: the kernel
//! drops the lock when the process dies, so a crash never leaves a stale
//! lock behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::StackError;

/// Held for as long as the process owns the data directory.
pub struct DataDirLock {
    _lock: Flock<File>,
    pub dir: PathBuf,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StackError> {
        crate::secrets::private_dir(dir)?;
        let path = dir.join("tally.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StackError::io(format!("opening {}", path.display())))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = write!(lock, "{}", std::process::id());
                let _ = lock.flush();
                Ok(DataDirLock {
                    _lock: lock,
                    dir: dir.to_path_buf(),
                })
            }
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(StackError::Locked {
                    dir: dir.to_path_buf(),
                    pid: if pid.trim().is_empty() {
                        "unknown".into()
                    } else {
                        pid.trim().to_owned()
                    },
                })
            }
        }
    }
}
