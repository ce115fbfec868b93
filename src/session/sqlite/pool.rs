//! The store's helpers beside its writer: a pool of read connections (reads run beside the
//! writer thanks to WAL, at most `read_connections` at once) and the checkpoint thread that
//! folds the WAL into the file (and so fsyncs it) off the writer's path.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::location::configure;
use super::{Durability, StoreOptions};

pub(super) struct ReadPool {
    /// One permit per read connection: at most that many reads run at once, the rest wait
    /// (asynchronously) for a connection.
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) max_idle: usize,
    pub(super) opts: StoreOptions,
}

impl ReadPool {
    pub(super) fn take(&self) -> rusqlite::Result<Connection> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&c, &self.opts, false)?;
        Ok(c)
    }

    pub(super) fn give(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

/// Checkpoints the WAL every `interval` on its own connection until `stop` closes. A
/// PASSIVE checkpoint never waits for or blocks the writer.
pub(super) fn checkpoint_loop(
    path: PathBuf,
    opts: StoreOptions,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let conn = match Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(store = %path.display(), "no checkpoint thread: {e}");
            return;
        }
    };
    let sync = match opts.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    if let Err(e) = conn.execute_batch(&format!("PRAGMA synchronous = {sync};")) {
        tracing::warn!(store = %path.display(), "no checkpoint thread: {e}");
        return;
    }
    let interval = opts.checkpoint_interval.max(Duration::from_millis(10));
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(store = %path.display(), "checkpoint failed: {e}");
        }
    }
}
