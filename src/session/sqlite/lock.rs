//! One process per database file: an exclusive lock on `<file>.lock`, held while the store is
//! open, with the holder (pid, command, since when) written inside so a refused process can
//! say who holds it. The lock goes with the process, also when it is killed, so a crashed
//! server never blocks the next one; and because only the lock holder opens the file, crash
//! recovery only ever touches runs whose owner is gone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::session::SessionError;

/// The held lock of a database file; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

/// The lock file of a database file: `<file>.lock` beside it.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn holder_text() -> String {
    let cmd: Vec<String> = std::env::args().take(4).collect();
    format!(
        "pid {} ({}), since {}",
        std::process::id(),
        cmd.join(" "),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

impl FileLock {
    /// Takes the lock of `db`, or answers [`SessionError::Locked`] naming the holder.
    pub fn acquire(db: &Path) -> Result<FileLock, SessionError> {
        let path = lock_path(db);
        let shown = db.display().to_string();
        let open_err = |e: std::io::Error| SessionError::Open {
            path: shown.clone(),
            reason: format!("cannot open its lock file {}: {e}", path.display()),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => {
                // Best effort: the holder text only helps the message of a refused process.
                let _ = file.set_len(0);
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.write_all(holder_text().as_bytes());
                let _ = file.flush();
                Ok(FileLock { _file: file, path })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                Err(SessionError::Locked {
                    path: shown,
                    holder: if holder.is_empty() {
                        "another process".to_owned()
                    } else {
                        holder.chars().take(300).collect()
                    },
                })
            }
            Err(TryLockError::Error(e)) => Err(open_err(e)),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let first = FileLock::acquire(&db).unwrap();
        match FileLock::acquire(&db) {
            Err(SessionError::Locked { holder, .. }) => {
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                )
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(FileLock::acquire(&db).is_ok());
    }
}
