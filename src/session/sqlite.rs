//! The durable session store: conversations and run records in an embedded SQLite file
//! (the server's default, `[sessions] store = "sqlite://callboard.db"`).
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
//! - **Crash recovery**: on open, every run still marked `running` is marked `interrupted`.
//! - **Migrations**: a schema version table; a newer build opens an older file and migrates
//!   it; an older build refuses a newer file with [`SessionError::Schema`].
//! - **Concurrency**: [`SessionStore::try_claim`] gives one run at a time per session and
//!   refuses the next with [`SessionError::Busy`] (see [`crate::session::claim`]).
//!
//! One process per database file: a second process opening the file would mark the first
//! one's running runs as interrupted.

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::claim::{SessionClaim, SessionLocks};
use super::{Session, SessionError};
use crate::error::AgentsError;
use crate::items::Item;
use crate::run::RunOutcome;
use crate::usage::Usage;
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

/// Tuning for [`SessionStore::open_with`].
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
        }
    }
}

/// A run's status in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not yet finished.
    Running,
    /// Finished with a final output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// Was running when the server stopped (found at the next start).
    Interrupted,
}

impl RunStatus {
    /// The name stored and shown (`running`, `completed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

/// A run's error in its record: the SDK's exception name and the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunErrorInfo {
    /// The SDK's exception name (`MaxTurnsExceeded`, `ModelBehaviorError`, ...).
    #[serde(rename = "type")]
    pub error_type: String,
    /// What went wrong.
    pub message: String,
}

/// What is recorded when a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart {
    /// The run's id.
    pub run_id: String,
    /// The tenant that started it.
    pub tenant: String,
    /// The session it runs in, if any.
    pub session_id: Option<String>,
    /// The agent it starts with.
    pub starting_agent: String,
    /// Its trace id, if traced.
    pub trace_id: Option<String>,
}

/// What is recorded when a run ends.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEnd {
    /// How it ended (not `Running`).
    pub status: RunStatus,
    /// The agent it ended with.
    pub last_agent: Option<String>,
    /// The final output (text as a JSON string, structured output as JSON).
    pub final_output: Option<Value>,
    /// Usage over the run.
    pub usage: Option<Usage>,
    /// The error, when it failed.
    pub error: Option<RunErrorInfo>,
}

impl RunEnd {
    /// A run that produced `final_output`.
    pub fn completed(final_output: Value, last_agent: impl Into<String>, usage: Usage) -> Self {
        RunEnd {
            status: RunStatus::Completed,
            last_agent: Some(last_agent.into()),
            final_output: Some(final_output),
            usage: Some(usage),
            error: None,
        }
    }

    /// A run that failed with `error`.
    pub fn failed(error: &AgentsError, last_agent: Option<String>, usage: Option<Usage>) -> Self {
        RunEnd {
            status: RunStatus::Failed,
            last_agent,
            final_output: None,
            usage,
            error: Some(RunErrorInfo {
                error_type: error.sdk_name().to_owned(),
                message: error.to_string(),
            }),
        }
    }

    /// A run a client cancelled.
    pub fn cancelled(last_agent: Option<String>, usage: Option<Usage>) -> Self {
        RunEnd {
            status: RunStatus::Cancelled,
            last_agent,
            final_output: None,
            usage,
            error: None,
        }
    }

    /// The record of a finished run from its outcome (what the server has at `run.completed`,
    /// `run.failed` or `run.cancelled`), the agent it was on and its usage.
    pub fn from_outcome(outcome: &RunOutcome, current_agent: &str, usage: Usage) -> Self {
        match outcome {
            RunOutcome::Completed {
                final_output,
                last_agent,
            } => RunEnd::completed(final_output.clone(), last_agent.clone(), usage),
            RunOutcome::Failed(e) => RunEnd::failed(e, Some(current_agent.to_owned()), Some(usage)),
            RunOutcome::Cancelled(_) => {
                RunEnd::cancelled(Some(current_agent.to_owned()), Some(usage))
            }
        }
    }
}

/// A run's record, as `GET /v1/runs/{id}` shows it. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The tenant that started it.
    pub tenant: String,
    /// The session it ran in.
    pub session_id: Option<String>,
    /// Where it is.
    pub status: RunStatus,
    /// The agent it started with.
    pub starting_agent: String,
    /// The agent it ended with (the starting agent while running).
    pub last_agent: Option<String>,
    /// The final output, when completed.
    pub final_output: Option<Value>,
    /// Usage over the run, when finished.
    pub usage: Option<Usage>,
    /// The error, when failed or interrupted.
    pub error: Option<RunErrorInfo>,
    /// Its trace id.
    pub trace_id: Option<String>,
    /// When it started.
    pub created_at: i64,
    /// When the record last changed.
    pub updated_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
}

/// The writer's counters since the store was opened, for the server's metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Transactions committed (or attempted).
    pub batches: u64,
    /// Writes (add, pop, clear, run records) in them.
    pub writes: u64,
    /// Session items committed.
    pub items_written: u64,
    /// Writes answered with an error (refused by the database, or in a transaction that
    /// could not commit).
    pub failed_writes: u64,
    /// The most writes in one transaction.
    pub largest_batch: u64,
    /// Time spent executing and committing transactions.
    pub commit_seconds: f64,
    /// Writes waiting for the writer right now.
    pub queued_writes: u64,
}

/// A session in a tenant's list. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id.
    pub session_id: String,
    /// How many items it holds.
    pub item_count: u64,
    /// When its first item was added.
    pub created_at: i64,
    /// When it last changed.
    pub updated_at: i64,
}

/// The error type recorded for runs found `running` at start-up.
pub const INTERRUPTED_ERROR_TYPE: &str = "Interrupted";

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where the database lives.
#[derive(Clone, Debug)]
enum Location {
    Memory,
    File(PathBuf),
}

fn parse_location(url: &str) -> Result<Location, SessionError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
        .trim();
    // Connection-string options (`?mode=rwc`, as other tools write them) are not used here:
    // the store always opens read-write and creates the file.
    let rest = rest.split_once('?').map_or(rest, |(p, _)| p);
    if rest.is_empty() {
        return Err(SessionError::Open {
            path: url.to_owned(),
            reason: "no file name given (use e.g. sqlite://callboard.db, a path, or :memory:)"
                .into(),
        });
    }
    if rest == ":memory:" {
        return Ok(Location::Memory);
    }
    Ok(Location::File(PathBuf::from(rest)))
}

fn classify(path: &str, e: &rusqlite::Error) -> SessionError {
    let reason = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => SessionError::Corrupt {
            path: path.to_owned(),
            reason,
        },
        _ => SessionError::Open {
            path: path.to_owned(),
            reason,
        },
    }
}

fn configure(conn: &Connection, opts: &StoreOptions, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    if writer {
        // Reading the journal mode touches the file header: a file that is not a database
        // fails here, before anything is written.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(
                journal_mode = %mode,
                "the session database could not switch to WAL (a network file system?); \
                 writes stay durable but readers wait for the writer"
            );
        }
        // Checkpoints run on the checkpoint thread; this is only a backstop (64 MiB of WAL
        // at 4 KiB pages) in case that thread cannot keep up.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 16384;")?;
    }
    let sync = match opts.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
    ))?;
    if !writer {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(())
}

struct ReadPool {
    /// One permit per read connection: at most that many reads run at once, the rest wait
    /// (asynchronously) for a connection.
    permits: Arc<tokio::sync::Semaphore>,
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    opts: StoreOptions,
}

impl ReadPool {
    fn take(&self) -> rusqlite::Result<Connection> {
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

    fn give(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

struct Inner {
    display: String,
    tx: mpsc::Sender<Cmd>,
    readers: Option<ReadPool>,
    locks: SessionLocks,
    recovered: u64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Arc<writer::Counters>,
    /// Set by [`SessionStore::close`]; reads are refused after it.
    closed: std::sync::atomic::AtomicBool,
    /// Dropping this stops the checkpoint thread.
    stop_checkpoints: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// Checkpoints the WAL every `interval` on its own connection until `stop` closes. A
/// PASSIVE checkpoint never waits for or blocks the writer.
fn checkpoint_loop(path: PathBuf, opts: StoreOptions, stop: std::sync::mpsc::Receiver<()>) {
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

/// The durable store: sessions, their items, and run records, in one SQLite file.
/// Cheap to clone; every clone shares the writer and the read pool.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("location", &self.inner.display)
            .finish()
    }
}

fn store_err(what: &str, e: rusqlite::Error) -> SessionError {
    SessionError::Store(format!("{what}: {e}"))
}

impl SessionStore {
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
        let mut conn = match &location {
            Location::Memory => Connection::open_in_memory(),
            Location::File(p) => {
                if p.is_dir() {
                    return Err(SessionError::Open {
                        path: shown,
                        reason: "it is a directory; give a file name inside it".into(),
                    });
                }
                Connection::open_with_flags(
                    p,
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_CREATE
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
            }
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
        let recovered = conn
            .execute(
                "UPDATE runs SET status = 'interrupted', error_type = ?1,
                    error_message = 'the server stopped while this run was in progress',
                    updated_at = ?2, finished_at = ?2
                 WHERE status = 'running'",
                params![INTERRUPTED_ERROR_TYPE, now],
            )
            .map_err(|e| classify(&shown, &e))? as u64;
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
        Ok(SessionStore {
            inner: Arc::new(Inner {
                display: shown,
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

    /// Records a run as `running`. Call it before the run starts.
    pub async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError> {
        self.write(WriteOp::RunStart(Box::new(start)))
            .await
            .map(|_| ())
    }

    /// Records how a run ended; answers `false` if there was no running record for it (never
    /// started, or already ended or marked interrupted).
    pub async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        match self
            .write(WriteOp::RunEnd {
                tenant: tenant.to_owned(),
                run_id: run_id.to_owned(),
                end: Box::new(end),
            })
            .await?
        {
            WriteOut::Changed(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// A tenant's run record.
    pub async fn get_run(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunRecord>, SessionError> {
        let tenant = tenant.to_owned();
        let run_id = run_id.to_owned();
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = ?1 AND run_id = ?2"
            ))?;
            let mut rows = q.query(params![tenant, run_id])?;
            match rows.next()? {
                Some(r) => run_from_row(r).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// A session's runs, newest first (at most `limit`, all when `None`).
    pub async fn list_runs(
        &self,
        tenant: &str,
        session_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<RunRecord>, SessionError> {
        let tenant = tenant.to_owned();
        let session_id = session_id.to_owned();
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = ?1 AND session_id = ?2
                  ORDER BY created_at DESC, run_id DESC LIMIT ?3"
            ))?;
            let rows = q.query_map(params![tenant, session_id, limit], run_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Finishes the queued writes, checkpoints the WAL into the main file and stops the
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
        Ok(())
    }
}

const RUN_COLUMNS: &str = "run_id, tenant, session_id, status, starting_agent, last_agent,
    final_output, usage, error_type, error_message, trace_id, created_at, updated_at, finished_at";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = r.get(3)?;
    let final_output: Option<String> = r.get(6)?;
    let usage: Option<String> = r.get(7)?;
    let error_type: Option<String> = r.get(8)?;
    let error_message: Option<String> = r.get(9)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        tenant: r.get(1)?,
        session_id: r.get(2)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
        starting_agent: r.get(4)?,
        last_agent: r.get(5)?,
        final_output: final_output.and_then(|s| serde_json::from_str(&s).ok()),
        usage: usage.and_then(|s| serde_json::from_str(&s).ok()),
        error: match (error_type, error_message) {
            (None, None) => None,
            (t, m) => Some(RunErrorInfo {
                error_type: t.unwrap_or_default(),
                message: m.unwrap_or_default(),
            }),
        },
        trace_id: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

/// One conversation in a [`SessionStore`], scoped by tenant (the SDK's `SQLiteSession`).
#[derive(Clone)]
pub struct SqliteSession {
    store: SessionStore,
    tenant: Arc<str>,
    id: Arc<str>,
}

impl std::fmt::Debug for SqliteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSession")
            .field("tenant", &self.tenant)
            .field("session_id", &self.id)
            .finish()
    }
}

impl SqliteSession {
    /// A session of `tenant` in `store`.
    pub fn new(store: &SessionStore, tenant: &str, session_id: &str) -> Self {
        store.sqlite_session(tenant, session_id)
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The store it lives in.
    pub fn store(&self) -> &SessionStore {
        &self.store
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

#[async_trait]
impl Session for SqliteSession {
    fn session_id(&self) -> &str {
        &self.id
    }

    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError> {
        let tenant = self.tenant.clone();
        let id = self.id.clone();
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.store
            .read(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT id, item FROM (
                        SELECT id, item FROM items WHERE tenant = ?1 AND session_id = ?2
                         ORDER BY id DESC LIMIT ?3
                     ) ORDER BY id ASC",
                )?;
                let mut rows = q.query(params![&*tenant, &*id, limit])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let text: String = r.get(1)?;
                    match serde_json::from_str::<Item>(&text) {
                        Ok(item) => out.push(item),
                        Err(e) => {
                            let row: i64 = r.get(0)?;
                            tracing::warn!(tenant = %tenant, session = %id, row,
                                "skipping a session item that does not parse: {e}");
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn add_items(&self, items: Vec<Item>) -> Result<(), SessionError> {
        let items = items
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SessionError::Store(format!("could not encode an item: {e}")))?;
        self.store
            .write(WriteOp::AddItems {
                tenant: self.tenant.clone(),
                session: self.id.clone(),
                items,
            })
            .await
            .map(|_| ())
    }

    async fn pop_item(&self) -> Result<Option<Item>, SessionError> {
        match self
            .store
            .write(WriteOp::PopItem {
                tenant: self.tenant.clone(),
                session: self.id.clone(),
            })
            .await?
        {
            WriteOut::Popped(item) => Ok(item),
            _ => Ok(None),
        }
    }

    async fn clear_session(&self) -> Result<(), SessionError> {
        self.store
            .write(WriteOp::Clear {
                tenant: self.tenant.clone(),
                session: self.id.clone(),
            })
            .await
            .map(|_| ())
    }
}
