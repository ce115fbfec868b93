//! The durable session store: conversations and run records in an embedded SQLite file
//! (the server's default, `[sessions] store = "sqlite://callboard.db"`): [`SqliteStore`].
//!
//! - **Durability**: WAL journal. A write is acknowledged only after its transaction has
//!   committed, so a turn's items are in the file when the turn ends. The default fsync
//!   policy, [`Durability::Normal`] (`synchronous = NORMAL`), loses nothing when the process
//!   crashes or is killed; a background checkpoint every [`StoreOptions::checkpoint_interval`]
//!   fsyncs the WAL, which bounds what a power cut can take. [`Durability::Full`] fsyncs at
//!   every commit (power-cut safe per turn) at the price of one disk flush per batch.
//! - **Never blocks the reactor**: one writer thread owns the write connection and commits
//!   every queued write (from all sessions) in one transaction; reads run on a small pool of
//!   read connections through `spawn_blocking` (WAL lets them run beside the writer).
//! - **One process per file**: the store holds an exclusive lock on `<file>.lock` (naming the
//!   holder) for as long as it is open; a second process is refused with a clear error, so a
//!   CLI and a server never interleave one file ([`lock`]).
//! - **Crash recovery**: on open (with the lock, so the previous owner is gone), every run
//!   still marked `running` is marked `interrupted`, keeping its last agent and usage.
//! - **Migrations**: a schema version table; a newer build opens an older file and migrates
//!   it; an older build refuses a newer file with [`SessionError::Schema`].
//! - **Concurrency**: [`SqliteStore::try_claim`] gives one run at a time per session and
//!   refuses the next with [`SessionError::Busy`] (see [`crate::session::claim`]).
//!
//! Files: `location` (URLs, connection set-up), `pool` (read pool, checkpoints),
//! `writer` (the writer thread), `schema` (migrations), `session` (one conversation),
//! [`lock`] (one process per file), `runs` (run records, states and queued requests),
//! `store` (the [`Store`] interface over all of it).

mod location;
pub mod lock;
mod pool;
mod runs;
mod schema;
mod session;
mod store;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::claim::{SessionClaim, SessionLocks};
use super::records::{now_ms, SessionInfo, SessionMeta, INTERRUPTED_ERROR_TYPE};
use super::{Session, SessionError, StoreStats};
use location::{classify, configure, parse_location, Location};
use pool::{checkpoint_loop, ReadPool};
pub use session::SqliteSession;
use writer::{Cmd, WriteOp, WriteOut};

pub use schema::CURRENT_VERSION as SCHEMA_VERSION;

/// The tenant used by library programs that have no tenants.
pub const DEFAULT_TENANT: &str = "default";

/// How hard a commit tries to reach the disk before a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous = FULL`: the WAL is fsynced at every commit, so a completed turn also
    /// survives a power cut. Costs one disk flush per batch (about 4 ms on the reference
    /// machine); batching shares it among all turns that end together.
    Full,
    /// `synchronous = NORMAL` (the default): a commit is written to the WAL before it is
    /// acknowledged, so a completed turn survives a crash or SIGKILL of the process; the WAL
    /// is fsynced by the background checkpoint, so a power cut can lose at most the turns of
    /// the last [`StoreOptions::checkpoint_interval`].
    #[default]
    Normal,
}

/// Tuning for [`SqliteStore::open_with`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The fsync policy.
    pub durability: Durability,
    /// The most writes committed in one transaction.
    pub max_batch: usize,
    /// Writes waiting for the writer; callers wait (asynchronously) when it is full.
    pub queue: usize,
    /// Read connections: at most this many reads run at once (each on a blocking thread);
    /// more wait for one.
    pub read_connections: usize,
    /// How long a statement waits for a lock held by another connection before failing.
    pub busy_timeout: Duration,
    /// How often a background thread checkpoints the WAL into the database file (and so
    /// fsyncs it), keeping checkpoints off the writer's path.
    pub checkpoint_interval: Duration,
    /// Whether opening marks runs left `running` by a previous process `interrupted` (the
    /// library's default). The server leaves them to its restart policy (`[runs]
    /// on_restart`), which resumes them.
    pub recover_interrupted_runs: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            max_batch: 512,
            queue: 4096,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            checkpoint_interval: Duration::from_secs(1),
            recover_interrupted_runs: true,
        }
    }
}

struct Inner {
    display: String,
    /// The file's lock (one process per file); released at close.
    file_lock: Mutex<Option<lock::FileLock>>,
    tx: mpsc::Sender<Cmd>,
    readers: Option<ReadPool>,
    locks: SessionLocks,
    recovered: u64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Arc<writer::Counters>,
    /// Set by [`SqliteStore::close`]; reads are refused after it.
    closed: std::sync::atomic::AtomicBool,
    /// Dropping this stops the checkpoint thread.
    stop_checkpoints: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// The durable store: sessions, their items, and run records, in one SQLite file.
/// Cheap to clone; every clone shares the writer and the read pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.display)
            .finish()
    }
}

fn store_err(what: &str, e: rusqlite::Error) -> SessionError {
    SessionError::Store(format!("{what}: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `url`: `sqlite://callboard.db`,
    /// `sqlite:///abs/path.db`, a plain path, or `:memory:`. Migrates an older file, marks
    /// runs left `running` as `interrupted`, and starts the writer thread.
    ///
    /// Blocks while it opens and migrates the file: call it at start-up (or inside
    /// `spawn_blocking`). Errors say what was wrong: [`SessionError::Open`] (missing
    /// directory, permissions), [`SessionError::Corrupt`], [`SessionError::Schema`].
    pub fn open(url: &str) -> Result<Self, SessionError> {
        Self::open_with(url, StoreOptions::default())
    }

    /// [`open`](Self::open) with tuning options.
    pub fn open_with(url: &str, opts: StoreOptions) -> Result<Self, SessionError> {
        let location = parse_location(url)?;
        let shown = match &location {
            Location::Memory => ":memory:".to_owned(),
            Location::File(p) => p.display().to_string(),
        };
        let file_lock = match &location {
            Location::File(p) if p.is_dir() => {
                return Err(SessionError::Open {
                    path: shown,
                    reason: "it is a directory; give a file name inside it".into(),
                });
            }
            Location::File(p) => Some(lock::FileLock::acquire(p)?),
            Location::Memory => None,
        };
        let mut conn = match &location {
            Location::Memory => Connection::open_in_memory(),
            Location::File(p) => Connection::open_with_flags(
                p,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .map_err(|e| classify(&shown, &e))?;
        configure(&conn, &opts, true).map_err(|e| classify(&shown, &e))?;
        let now = now_ms();
        let found = schema::migrate_to(&mut conn, schema::CURRENT_VERSION, now)
            .map_err(|e| classify(&shown, &e))?;
        if found > schema::CURRENT_VERSION {
            return Err(SessionError::Schema {
                path: shown,
                found,
                supported: schema::CURRENT_VERSION,
            });
        }
        let recovered = if opts.recover_interrupted_runs {
            conn.execute(
                "UPDATE runs SET status = 'interrupted', error_type = ?1,
                    error_message = 'the server stopped while this run was in progress (its last completed turn: ' || turn || ')',
                    updated_at = ?2, finished_at = ?2
                 WHERE status = 'running'",
                params![INTERRUPTED_ERROR_TYPE, now],
            )
            .map_err(|e| classify(&shown, &e))? as u64
        } else {
            0
        };
        if recovered > 0 {
            tracing::warn!(
                store = %shown,
                runs = recovered,
                "marked runs left running by the previous process as interrupted"
            );
        }
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let counters = Arc::new(writer::Counters::default());
        let max_batch = opts.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("callboard-store".into())
            .spawn({
                let counters = counters.clone();
                move || writer::run(conn, rx, max_batch, counters)
            })
            .map_err(|e| SessionError::Open {
                path: shown.clone(),
                reason: format!("could not start the writer thread: {e}"),
            })?;
        let mut stop_checkpoints = None;
        let readers = match location {
            Location::Memory => None,
            Location::File(path) => {
                let (stop, stopped) = std::sync::mpsc::channel();
                let (p, o) = (path.clone(), opts.clone());
                std::thread::Builder::new()
                    .name("callboard-checkpoint".into())
                    .spawn(move || checkpoint_loop(p, o, stopped))
                    .map_err(|e| SessionError::Open {
                        path: shown.clone(),
                        reason: format!("could not start the checkpoint thread: {e}"),
                    })?;
                stop_checkpoints = Some(stop);
                Some(ReadPool {
                    permits: Arc::new(tokio::sync::Semaphore::new(opts.read_connections.max(1))),
                    path,
                    idle: Mutex::new(Vec::new()),
                    max_idle: opts.read_connections,
                    opts,
                })
            }
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                display: shown,
                file_lock: Mutex::new(file_lock),
                tx,
                readers,
                locks: SessionLocks::new(),
                recovered,
                writer: Mutex::new(Some(writer)),
                closed: std::sync::atomic::AtomicBool::new(false),
                counters,
                stop_checkpoints: Mutex::new(stop_checkpoints),
            }),
        })
    }

    /// Where the store is (a path or `:memory:`).
    pub fn location(&self) -> &str {
        &self.inner.display
    }

    /// The writer's counters since open (for metrics).
    pub fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        StoreStats {
            batches: c.batches.load(Relaxed),
            writes: c.writes.load(Relaxed),
            items_written: c.items.load(Relaxed),
            failed_writes: c.failed_writes.load(Relaxed),
            largest_batch: c.largest_batch.load(Relaxed),
            commit_seconds: c.commit_micros.load(Relaxed) as f64 / 1e6,
            queued_writes: (self.inner.tx.max_capacity() - self.inner.tx.capacity()) as u64,
        }
    }

    /// Opens the store on a blocking thread (for use inside async code).
    pub async fn open_async(url: &str, opts: StoreOptions) -> Result<Self, SessionError> {
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || Self::open_with(&url, opts))
            .await
            .map_err(|e| SessionError::Store(format!("the open task failed: {e}")))?
    }

    /// How many runs were found `running` at open and marked `interrupted`.
    pub fn recovered_runs(&self) -> u64 {
        self.inner.recovered
    }

    /// A session of `tenant` (created with its first item).
    pub fn session(&self, tenant: &str, session_id: &str) -> Arc<dyn Session> {
        Arc::new(self.sqlite_session(tenant, session_id))
    }

    /// The same as [`session`](Self::session), with its concrete type.
    pub fn sqlite_session(&self, tenant: &str, session_id: &str) -> SqliteSession {
        SqliteSession {
            store: self.clone(),
            tenant: tenant.into(),
            id: session_id.into(),
        }
    }

    /// The per-session run claims of this store (the server's concurrency policy).
    pub fn locks(&self) -> &SessionLocks {
        &self.inner.locks
    }

    /// Claims `session_id` for one run, or answers [`SessionError::Busy`] if a run holds it.
    /// Keep the claim until the run has ended (its last turn is saved).
    pub fn try_claim(&self, tenant: &str, session_id: &str) -> Result<SessionClaim, SessionError> {
        self.inner.locks.try_claim(tenant, session_id)
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOut, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Write(op, reply))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, SessionError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SessionError::Closed);
        }
        if self.inner.readers.is_none() {
            let (tx, rx) = oneshot::channel();
            let cmd = Cmd::Read(Box::new(move |c: &Connection| {
                let _ = tx.send(f(c));
            }));
            self.inner
                .tx
                .send(cmd)
                .await
                .map_err(|_| SessionError::Closed)?;
            return rx
                .await
                .map_err(|_| SessionError::Closed)?
                .map_err(|e| store_err("could not read the session store", e));
        }
        let permit = match &self.inner.readers {
            Some(pool) => pool
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SessionError::Closed)?,
            None => return Err(SessionError::Closed),
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pool = inner.readers.as_ref().ok_or(SessionError::Closed)?;
            let conn = pool
                .take()
                .map_err(|e| store_err("could not open a read connection", e))?;
            let r = f(&conn);
            pool.give(conn);
            r.map_err(|e| store_err("could not read the session store", e))
        })
        .await
        .map_err(|e| SessionError::Store(format!("the read task failed: {e}")))?
    }

    /// A tenant's sessions, most recently updated first (at most `limit`, all when `None`).
    pub async fn list_sessions(
        &self,
        tenant: &str,
        limit: Option<usize>,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        let tenant = tenant.to_owned();
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.read(move |c| {
            let mut q = c.prepare_cached(
                "SELECT s.session_id, s.created_at, s.updated_at,
                        (SELECT COUNT(*) FROM items i
                          WHERE i.tenant = s.tenant AND i.session_id = s.session_id)
                   FROM sessions s WHERE s.tenant = ?1
                  ORDER BY s.updated_at DESC, s.session_id LIMIT ?2",
            )?;
            let rows = q.query_map(params![tenant, limit], |r| {
                Ok(SessionInfo {
                    session_id: r.get(0)?,
                    created_at: r.get(1)?,
                    updated_at: r.get(2)?,
                    item_count: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Deletes a session and its items; answers whether it existed. Run records stay.
    pub async fn delete_session(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<bool, SessionError> {
        match self
            .write(WriteOp::Clear {
                tenant: tenant.into(),
                session: session_id.into(),
            })
            .await?
        {
            WriteOut::Changed(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// A session's numbering, if the session exists.
    pub async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError> {
        let tenant = tenant.to_owned();
        let session_id = session_id.to_owned();
        self.read(move |c| {
            let mut q = c.prepare_cached(
                "SELECT epoch, seq_reserved, seq_safe FROM sessions
                  WHERE tenant = ?1 AND session_id = ?2",
            )?;
            let mut rows = q.query(params![tenant, session_id])?;
            match rows.next()? {
                Some(r) => {
                    let epoch: Option<String> = r.get(0)?;
                    let reserved: i64 = r.get(1)?;
                    let safe: i64 = r.get(2)?;
                    Ok(Some(SessionMeta {
                        // A session written before numbering was stored: a new epoch, since
                        // whatever numbering it had is gone.
                        epoch: epoch.unwrap_or_default(),
                        seq_reserved: reserved.max(0) as u64,
                        seq_safe: safe.max(0) as u64,
                    }))
                }
                None => Ok(None),
            }
        })
        .await
    }

    /// Sets a session's numbering (creating the session).
    pub async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError> {
        self.write(WriteOp::SetMeta {
            tenant: tenant.into(),
            session: session_id.into(),
            epoch: meta.epoch,
            seq_reserved: meta.seq_reserved,
            seq_safe: meta.seq_safe,
        })
        .await
        .map(|_| ())
    }

    /// writer; later calls answer [`SessionError::Closed`]. Call it at shutdown.
    pub async fn close(&self) -> Result<(), SessionError> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        drop(
            self.inner
                .stop_checkpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let (done, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if let Some(pool) = &self.inner.readers {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        drop(
            self.inner
                .file_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        Ok(())
    }
}

/// Creates or migrates the file at `path` to schema `version` only (for tests of migrations
/// from older files); not part of the stable API.
#[doc(hidden)]
pub fn __migrate_file_to(path: &Path, version: i64) -> Result<(), SessionError> {
    let display = path.display().to_string();
    let mut conn = Connection::open(path).map_err(|e| classify(&display, &e))?;
    schema::migrate_to(&mut conn, version, now_ms()).map_err(|e| classify(&display, &e))?;
    Ok(())
}
