//! Session memory: the SDK's `Session` interface (a conversation's items, kept across runs),
//! with an in-memory implementation here and durable stores beside it.

pub mod memory;

use async_trait::async_trait;

pub use memory::MemorySession;

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
    /// Removes and returns the newest item.
    async fn pop_item(&self) -> Result<Option<Item>, SessionError>;
    /// Removes every item.
    async fn clear_session(&self) -> Result<(), SessionError>;
}
