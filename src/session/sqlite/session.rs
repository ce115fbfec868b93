//! One conversation in an SQLite store, scoped by tenant (the SDK's `SQLiteSession`); a turn's
//! items and the run's progress are saved in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::params;

use super::writer::{SaveTurn, WriteOp, WriteOut};
use super::SqliteStore;
use crate::items::Item;
use crate::session::records::TurnRecord;
use crate::session::{Session, SessionError};

/// One conversation in a [`SqliteStore`], scoped by tenant (the SDK's `SQLiteSession`).
#[derive(Clone)]
pub struct SqliteSession {
    pub(super) store: SqliteStore,
    pub(super) tenant: Arc<str>,
    pub(super) id: Arc<str>,
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
    pub fn new(store: &SqliteStore, tenant: &str, session_id: &str) -> Self {
        store.sqlite_session(tenant, session_id)
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The store it lives in.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
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
        let items = encode(&items)?;
        self.store
            .write(WriteOp::AddItems {
                tenant: self.tenant.clone(),
                session: self.id.clone(),
                items,
            })
            .await
            .map(|_| ())
    }

    async fn save_turn(&self, items: Vec<Item>, turn: &TurnRecord) -> Result<(), SessionError> {
        let items = encode(&items)?;
        let usage = serde_json::to_string(&turn.usage)
            .map_err(|e| SessionError::Store(format!("could not encode the usage: {e}")))?;
        self.store
            .write(WriteOp::SaveTurn(Box::new(SaveTurn {
                tenant: self.tenant.clone(),
                session: self.id.clone(),
                items,
                run_id: turn.run_id.clone(),
                turn: turn.turn,
                agent: turn.agent.clone(),
                usage,
                seq_reserved: turn.seq_reserved.clone(),
                state: turn.state.clone(),
                seq_safe: turn.seq_safe,
                pause: turn.pause,
            })))
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

fn encode(items: &[Item]) -> Result<Vec<String>, SessionError> {
    items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Store(format!("could not encode an item: {e}")))
}
