//! A session's conversation as a run uses it: the store's session, whose turn saves also top
//! up the session's seq reservation in the same transaction when it runs low.

use super::*;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;

use crate::items::Item;
use crate::session::{Session, SessionError, TurnRecord};

/// A session's conversation as a run uses it: the store's session, whose turn saves also top
/// up the session's seq reservation in the same transaction when it runs low.
pub(super) struct OwnedSession {
    pub(super) inner: Arc<dyn Session>,
    pub(super) owner: Arc<SessionOwner>,
    pub(super) latency: Histogram,
}

#[async_trait]
impl Session for OwnedSession {
    fn session_id(&self) -> &str {
        self.inner.session_id()
    }
    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError> {
        self.inner.get_items(limit).await
    }
    async fn add_items(&self, items: Vec<Item>) -> Result<(), SessionError> {
        self.inner.add_items(items).await
    }
    async fn save_turn(&self, items: Vec<Item>, turn: &TurnRecord) -> Result<(), SessionError> {
        let reserve = self.owner.reservation();
        let mut record = turn.clone();
        record.seq_reserved = reserve.clone();
        // Everything published so far belongs to the turns this save completes.
        record.seq_safe = Some(self.owner.last_seq());
        let started = Instant::now();
        let saved = self.inner.save_turn(items, &record).await;
        self.latency.observe(started.elapsed().as_secs_f64());
        saved?;
        if let Some((epoch, upto)) = reserve {
            self.owner.reserved(&epoch, upto);
        }
        Ok(())
    }
    async fn pop_item(&self) -> Result<Option<Item>, SessionError> {
        self.inner.pop_item().await
    }
    async fn clear_session(&self) -> Result<(), SessionError> {
        self.inner.clear_session().await
    }
}
