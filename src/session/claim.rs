//! One run at a time per session: [`SessionLocks`] hands out a [`SessionClaim`] guard per
//! `(tenant, session_id)`, so two runs never interleave their items in one conversation.
//!
//! The server's policy is to **refuse** a second run on a busy session with
//! [`SessionError::Busy`] ([`SessionLocks::try_claim`]): a chat client sees at once that its
//! message was not taken, rather than waiting behind a run it cannot see the end of. Library
//! users who prefer queueing use [`SessionLocks::claim`], which waits its turn in arrival
//! order (the lock is fair) up to a timeout.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::SessionError;

type Key = (Arc<str>, Arc<str>);

/// Per-session run claims, shared by everything that starts runs (cheap to clone).
#[derive(Clone, Default)]
pub struct SessionLocks {
    map: Arc<DashMap<Key, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for SessionLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLocks")
            .field("claimed", &self.map.len())
            .finish()
    }
}

/// Proof that a run owns a session; the session is free again when this is dropped.
pub struct SessionClaim {
    key: Key,
    map: Arc<DashMap<Key, Arc<Mutex<()>>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for SessionClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionClaim")
            .field("tenant", &self.key.0)
            .field("session_id", &self.key.1)
            .finish()
    }
}

impl SessionClaim {
    /// The claimed session's id.
    pub fn session_id(&self) -> &str {
        &self.key.1
    }

    /// The claimed session's tenant.
    pub fn tenant(&self) -> &str {
        &self.key.0
    }
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        // Forget the lock when nobody else holds or waits for it (the map's reference and
        // ours are the only ones), so the map does not grow with every session ever seen.
        self.map
            .remove_if(&self.key, |_, m| Arc::strong_count(m) <= 2);
        drop(self.guard.take());
    }
}

impl SessionLocks {
    /// No session claimed.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock_for(&self, tenant: &str, session_id: &str) -> (Key, Arc<Mutex<()>>) {
        let key: Key = (tenant.into(), session_id.into());
        let m = self
            .map
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        (key, m)
    }

    /// Claims the session now, or answers [`SessionError::Busy`] if a run holds it (the
    /// server's policy).
    pub fn try_claim(&self, tenant: &str, session_id: &str) -> Result<SessionClaim, SessionError> {
        let (key, m) = self.lock_for(tenant, session_id);
        match m.try_lock_owned() {
            Ok(guard) => Ok(SessionClaim {
                key,
                map: self.map.clone(),
                guard: Some(guard),
            }),
            // Our reference is gone with the failed attempt; the holder cleans up.
            Err(_) => Err(SessionError::Busy(session_id.to_owned())),
        }
    }

    /// Waits (first come, first served) until the session is free and claims it; answers
    /// [`SessionError::Busy`] if it is still held after `timeout`.
    pub async fn claim(
        &self,
        tenant: &str,
        session_id: &str,
        timeout: Duration,
    ) -> Result<SessionClaim, SessionError> {
        let (key, m) = self.lock_for(tenant, session_id);
        match tokio::time::timeout(timeout, m.lock_owned()).await {
            Ok(guard) => Ok(SessionClaim {
                key,
                map: self.map.clone(),
                guard: Some(guard),
            }),
            Err(_) => Err(SessionError::Busy(session_id.to_owned())),
        }
    }

    /// Whether a run holds the session now.
    pub fn is_claimed(&self, tenant: &str, session_id: &str) -> bool {
        let key: Key = (tenant.into(), session_id.into());
        self.map.get(&key).is_some_and(|m| m.try_lock().is_err())
    }

    /// How many sessions have a lock entry (claimed or waited for).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is claimed or waited for.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_claim_is_refused_then_allowed() {
        let locks = SessionLocks::new();
        let a = locks.try_claim("t", "s").unwrap();
        assert!(matches!(locks.try_claim("t", "s"), Err(SessionError::Busy(s)) if s == "s"));
        // Another tenant's session with the same id is independent.
        let other = locks.try_claim("u", "s").unwrap();
        assert!(locks.is_claimed("t", "s"));
        drop(a);
        drop(other);
        assert!(!locks.is_claimed("t", "s"));
        assert!(locks.is_empty());
        let _b = locks.try_claim("t", "s").unwrap();
    }

    #[tokio::test]
    async fn queued_claims_run_in_order() {
        let locks = SessionLocks::new();
        let first = locks.try_claim("t", "s").unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let locks = locks.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _c = locks.claim("t", "s", Duration::from_secs(5)).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Let each waiter enqueue before the next one.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn queued_claim_times_out_busy() {
        let locks = SessionLocks::new();
        let _held = locks.try_claim("t", "s").unwrap();
        let r = locks.claim("t", "s", Duration::from_millis(20)).await;
        assert!(matches!(r, Err(SessionError::Busy(_))));
    }
}
