//! Session memory: the SDK's `Session` interface (a conversation's items, kept across runs),
//! and the stores that keep conversations, session numbering and run records.
//!
//! - [`store`]: the [`Store`] trait every store implements.
//! - [`records`]: run records, session numbering, turn records.
//! - [`memory`]: [`MemorySession`] and the bounded in-memory [`MemoryStore`].
//! - [`sqlite`]: the embedded SQLite store (the server's default; feature `sqlite`).
//! - [`postgres`]: the PostgreSQL store, shared by a cluster's nodes (feature `postgres`).
//! - [`claim`]: one run at a time per session, for library programs.

pub mod busy;
pub mod claim;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod records;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;

use async_trait::async_trait;

pub use busy::OnBusy;
pub use claim::{SessionClaim, SessionLocks};
pub use memory::{MemorySession, MemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgSession, PgStore};
pub use records::{
    RunDetail, RunEnd, RunErrorInfo, RunQuery, RunRecord, RunStart, RunStatus, RunUpdate,
    SessionInfo, SessionMeta, TurnRecord,
};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteSession, SqliteStore, StoreOptions, DEFAULT_TENANT};
pub use store::{Store, StoreStats};

use crate::items::Item;

/// A session store failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The backing store failed (I/O, corruption, a full disk).
    #[error("session store error: {0}")]
    Store(String),
    /// The session is busy with another run (see the server's concurrency policy).
    #[error("session {0} already has a run in progress; wait for it to finish or cancel it")]
    Busy(String),
    /// The database file could not be opened or written (missing directory, permissions,
    /// a read-only file system).
    #[error("cannot open the session database {path}: {reason}; check that the directory exists and is writable, or set [sessions] store to another path")]
    Open {
        /// The path or URL that was given.
        path: String,
        /// What SQLite or the file system said.
        reason: String,
    },
    /// The database file is not an SQLite database, or is damaged.
    #[error("the session database {path} is corrupt or is not an SQLite database ({reason}); move the file aside to start empty, or restore it from a backup")]
    Corrupt {
        /// The path that was given.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// The database was written by a newer callboard with a schema this build does not know.
    #[error("the session database {path} has schema version {found}, newer than this build supports ({supported}); upgrade callboard or use another file")]
    Schema {
        /// The path that was given.
        path: String,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Another process holds the database file (one process per file).
    #[error("the session database {path} is in use by {holder}; stop that process, or run through it with `callboard run --url http://ADDRESS` (the server's address), or use another file")]
    Locked {
        /// The database file.
        path: String,
        /// Who holds it (pid, command, since when).
        holder: String,
    },
    /// The store was closed (the server is shutting down).
    #[error("the session store is closed; no more reads or writes are accepted")]
    Closed,
}

/// A conversation's memory (the SDK's `Session` protocol).
///
/// A run given a session starts from [`get_items`](Session::get_items) plus its new input,
/// and saves each turn's new items with [`add_items`](Session::add_items) when the turn ends.
#[async_trait]
pub trait Session: Send + Sync {
    /// The session's id.
    fn session_id(&self) -> &str;
    /// The newest `limit` items (all when `None`), oldest first.
    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError>;
    /// Appends items.
    async fn add_items(&self, items: Vec<Item>) -> Result<(), SessionError>;
    /// Saves a turn's items with the run's progress; stores that keep run records save both
    /// in one transaction. The default appends the items.
    async fn save_turn(&self, items: Vec<Item>, _turn: &TurnRecord) -> Result<(), SessionError> {
        self.add_items(items).await
    }
    /// Removes and returns the newest item.
    async fn pop_item(&self) -> Result<Option<Item>, SessionError>;
    /// Removes every item.
    async fn clear_session(&self) -> Result<(), SessionError>;
}
