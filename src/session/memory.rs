//! An in-memory [`Session`]: for tests, the library's default, and short-lived programs.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{Session, SessionError};
use crate::items::Item;

/// A session held in memory; lost when the process ends.
#[derive(Debug)]
pub struct MemorySession {
    id: String,
    items: Mutex<Vec<Item>>,
}

impl MemorySession {
    /// An empty session.
    pub fn new(id: impl Into<String>) -> Self {
        MemorySession {
            id: id.into(),
            items: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Item>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Session for MemorySession {
    fn session_id(&self) -> &str {
        &self.id
    }

    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError> {
        let items = self.lock();
        let start = limit.map_or(0, |l| items.len().saturating_sub(l));
        Ok(items[start..].to_vec())
    }

    async fn add_items(&self, new: Vec<Item>) -> Result<(), SessionError> {
        self.lock().extend(new);
        Ok(())
    }

    async fn pop_item(&self) -> Result<Option<Item>, SessionError> {
        Ok(self.lock().pop())
    }

    async fn clear_session(&self) -> Result<(), SessionError> {
        self.lock().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::MessageItem;

    fn msg(t: &str) -> Item {
        Item::Message(MessageItem::user(t))
    }

    #[tokio::test]
    async fn sdk_session_semantics() {
        let s = MemorySession::new("s1");
        assert!(s.get_items(None).await.unwrap().is_empty());
        s.add_items(vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        assert_eq!(
            s.get_items(Some(2)).await.unwrap(),
            vec![msg("b"), msg("c")]
        );
        assert_eq!(s.get_items(Some(10)).await.unwrap().len(), 3);
        assert_eq!(s.pop_item().await.unwrap(), Some(msg("c")));
        assert_eq!(s.get_items(None).await.unwrap(), vec![msg("a"), msg("b")]);
        s.clear_session().await.unwrap();
        assert_eq!(s.pop_item().await.unwrap(), None);
    }
}
