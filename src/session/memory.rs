//! In-memory sessions: [`MemorySession`], one conversation (for tests, the library's default
//! and short-lived programs), and [`MemoryStore`], the server's `[sessions] store = "memory"`:
//! conversations, session numbering and run records kept in the process and lost at exit.
//!
//! The store is bounded: at most `max_sessions` conversations (the least recently used one is
//! dropped, with its items, to make room) and `max_runs` run records (the oldest finished
//! ones go first). Memory follows a bound, never the whole history.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::records::{
    now_ms, RunDetail, RunEnd, RunQuery, RunRecord, RunStart, RunStatus, RunUpdate, SessionInfo,
    SessionMeta, TurnRecord,
};
use super::store::Store;
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

/// Default bound on conversations a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default bound on run records a [`MemoryStore`] keeps.
pub const DEFAULT_MAX_RUNS: usize = 10_000;

type Key = (Arc<str>, Arc<str>);

struct Entry {
    /// The items, each with the run that added it (rollback removes a run's items).
    items: Mutex<Vec<(Option<Arc<str>>, Item)>>,
    meta: Mutex<Option<SessionMeta>>,
    created_at: i64,
    updated_at: AtomicI64,
}

impl Entry {
    fn touch(&self) {
        self.updated_at.store(now_ms(), Ordering::Relaxed);
    }
}

/// A run's record with its state, queued request and approval deadline.
struct RunSlot {
    record: RunRecord,
    state: Option<String>,
    request: Option<String>,
    deadline: Option<i64>,
}

#[derive(Default)]
struct Runs {
    records: HashMap<Key, RunSlot>,
    order: VecDeque<Key>,
}

struct Inner {
    sessions: Mutex<HashMap<Key, Arc<Entry>>>,
    runs: Mutex<Runs>,
    max_sessions: usize,
    max_runs: usize,
}

/// Conversations and run records in memory, bounded (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSIONS, DEFAULT_MAX_RUNS)
    }
}

fn key(tenant: &str, session_id: &str) -> Key {
    (tenant.into(), session_id.into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    /// A store keeping at most `max_sessions` conversations and `max_runs` run records.
    pub fn new(max_sessions: usize, max_runs: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                sessions: Mutex::new(HashMap::new()),
                runs: Mutex::new(Runs::default()),
                max_sessions: max_sessions.max(1),
                max_runs: max_runs.max(1),
            }),
        }
    }

    /// Conversations held now.
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Run records held now.
    pub fn run_count(&self) -> usize {
        lock(&self.inner.runs).records.len()
    }

    fn entry(&self, tenant: &str, session_id: &str) -> Arc<Entry> {
        let mut map = lock(&self.inner.sessions);
        let k = key(tenant, session_id);
        if let Some(e) = map.get(&k) {
            e.touch();
            return e.clone();
        }
        if map.len() >= self.inner.max_sessions {
            // Make room: drop the least recently used tenth (at least one).
            let mut by_age: Vec<(i64, Key)> = map
                .iter()
                .map(|(k, e)| (e.updated_at.load(Ordering::Relaxed), k.clone()))
                .collect();
            by_age.sort_unstable_by_key(|(t, _)| *t);
            let n = (self.inner.max_sessions / 10).max(1);
            for (_, k) in by_age.into_iter().take(n) {
                map.remove(&k);
            }
        }
        let now = now_ms();
        let e = Arc::new(Entry {
            items: Mutex::new(Vec::new()),
            meta: Mutex::new(None),
            created_at: now,
            updated_at: AtomicI64::new(now),
        });
        map.insert(k, e.clone());
        e
    }

    fn existing(&self, tenant: &str, session_id: &str) -> Option<Arc<Entry>> {
        lock(&self.inner.sessions)
            .get(&key(tenant, session_id))
            .cloned()
    }

    fn with_run(&self, tenant: &str, run_id: &str, f: impl FnOnce(&mut RunSlot) -> bool) -> bool {
        let mut runs = lock(&self.inner.runs);
        match runs.records.get_mut(&key(tenant, run_id)) {
            Some(r) => f(r),
            None => false,
        }
    }
}

/// A conversation of a [`MemoryStore`]: its items, and the run progress of its turns. Its
/// entry is made by its first write (reading a session that does not exist makes nothing).
struct StoreSession {
    store: MemoryStore,
    tenant: Arc<str>,
    id: Arc<str>,
}

impl StoreSession {
    fn entry(&self) -> Arc<Entry> {
        self.store.entry(&self.tenant, &self.id)
    }

    fn existing(&self) -> Option<Arc<Entry>> {
        self.store.existing(&self.tenant, &self.id)
    }

    fn add(&self, items: Vec<Item>, run: Option<&Arc<str>>) -> Arc<Entry> {
        let entry = self.entry();
        entry.touch();
        lock(&entry.items).extend(items.into_iter().map(|i| (run.cloned(), i)));
        entry
    }
}

#[async_trait]
impl Session for StoreSession {
    fn session_id(&self) -> &str {
        &self.id
    }
    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError> {
        let Some(entry) = self.existing() else {
            return Ok(Vec::new());
        };
        let items = lock(&entry.items);
        let start = limit.map_or(0, |l| items.len().saturating_sub(l));
        Ok(items[start..].iter().map(|(_, i)| i.clone()).collect())
    }
    async fn add_items(&self, items: Vec<Item>) -> Result<(), SessionError> {
        self.add(items, None);
        Ok(())
    }
    async fn save_turn(&self, items: Vec<Item>, turn: &TurnRecord) -> Result<(), SessionError> {
        let entry = self.add(items, Some(&turn.run_id));
        self.store.with_run(&self.tenant, &turn.run_id, |r| {
            if r.record.status != RunStatus::Running {
                return false;
            }
            r.record.turn = turn.turn;
            r.record.last_agent = Some(turn.agent.clone());
            r.record.usage = Some(turn.usage.clone());
            r.record.updated_at = now_ms();
            if let Some(s) = &turn.state {
                r.state = Some(s.to_string());
            }
            if let Some(deadline) = turn.pause {
                r.record.status = RunStatus::AwaitingApproval;
                r.deadline = deadline;
            }
            true
        });
        let mut meta = lock(&entry.meta);
        if let Some((epoch, upto)) = &turn.seq_reserved {
            let safe = meta.as_ref().map_or(0, |m| m.seq_safe);
            *meta = Some(SessionMeta {
                epoch: epoch.clone(),
                seq_reserved: *upto,
                seq_safe: safe,
            });
        }
        if let (Some(m), Some(safe)) = (meta.as_mut(), turn.seq_safe) {
            m.seq_safe = safe;
        }
        Ok(())
    }
    async fn pop_item(&self) -> Result<Option<Item>, SessionError> {
        let Some(entry) = self.existing() else {
            return Ok(None);
        };
        entry.touch();
        let popped = lock(&entry.items).pop().map(|(_, i)| i);
        Ok(popped)
    }
    async fn clear_session(&self) -> Result<(), SessionError> {
        if let Some(entry) = self.existing() {
            entry.touch();
            lock(&entry.items).clear();
        }
        Ok(())
    }
}

fn item_count(e: &Entry) -> usize {
    lock(&e.items).len()
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        format!(
            "memory (lost at exit; at most {} sessions and {} run records)",
            self.inner.max_sessions, self.inner.max_runs
        )
    }
    fn is_durable(&self) -> bool {
        false
    }
    fn session(&self, tenant: &str, session_id: &str) -> Arc<dyn Session> {
        Arc::new(StoreSession {
            store: self.clone(),
            tenant: tenant.into(),
            id: session_id.into(),
        })
    }
    async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError> {
        Ok(self
            .existing(tenant, session_id)
            .and_then(|e| lock(&e.meta).clone()))
    }
    async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError> {
        *lock(&self.entry(tenant, session_id).meta) = Some(meta);
        Ok(())
    }
    async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<bool, SessionError> {
        Ok(lock(&self.inner.sessions)
            .remove(&key(tenant, session_id))
            .is_some())
    }
    async fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        let map = lock(&self.inner.sessions);
        let mut v: Vec<SessionInfo> = map
            .iter()
            .filter(|(k, e)| &*k.0 == tenant && (item_count(e) > 0 || lock(&e.meta).is_some()))
            .map(|(k, e)| SessionInfo {
                session_id: k.1.to_string(),
                item_count: item_count(e) as u64,
                created_at: e.created_at,
                updated_at: e.updated_at.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        v.truncate(limit);
        Ok(v)
    }
    async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError> {
        if let (Some(session), Some((epoch, upto))) = (&start.session_id, &start.seq_reserved) {
            let entry = self.entry(&start.tenant, session);
            let mut meta = lock(&entry.meta);
            let safe = meta.as_ref().map_or(0, |m| m.seq_safe);
            *meta = Some(SessionMeta {
                epoch: epoch.clone(),
                seq_reserved: *upto,
                seq_safe: safe,
            });
        }
        let now = now_ms();
        let k = key(&start.tenant, &start.run_id);
        let request = start.request;
        let rec = RunRecord {
            run_id: start.run_id,
            tenant: start.tenant,
            session_id: start.session_id,
            status: start.status,
            last_agent: Some(start.starting_agent.clone()),
            starting_agent: start.starting_agent,
            final_output: None,
            usage: None,
            error: None,
            trace_id: start.trace_id,
            created_at: now,
            updated_at: now,
            finished_at: None,
            turn: 0,
            cancel_mode: None,
            by_run_id: None,
            node_id: start.node_id,
        };
        let slot = RunSlot {
            record: rec,
            state: None,
            request,
            deadline: None,
        };
        let mut runs = lock(&self.inner.runs);
        if runs.records.insert(k.clone(), slot).is_none() {
            runs.order.push_back(k);
        }
        // Over the bound: drop the oldest finished records (running ones are bounded by the
        // run limits and stay).
        let mut scanned = 0;
        while runs.records.len() > self.inner.max_runs && scanned < runs.order.len() {
            let Some(old) = runs.order.pop_front() else {
                break;
            };
            let in_flight = runs
                .records
                .get(&old)
                .is_some_and(|r| !r.record.status.is_final());
            if in_flight {
                runs.order.push_back(old);
                scanned += 1;
            } else {
                runs.records.remove(&old);
            }
        }
        Ok(())
    }
    async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        let mut session = None;
        let ended = self.with_run(tenant, run_id, |slot| {
            let r = &mut slot.record;
            if r.status.is_final() {
                return false;
            }
            let now = now_ms();
            r.status = end.status;
            if end.last_agent.is_some() {
                r.last_agent = end.last_agent;
            }
            r.final_output = end.final_output;
            if end.usage.is_some() {
                r.usage = end.usage;
            }
            r.error = end.error;
            r.cancel_mode = end.cancel_mode;
            r.by_run_id = end.by_run_id;
            r.updated_at = now;
            r.finished_at = Some(now);
            slot.deadline = None;
            session = r.session_id.clone();
            true
        });
        if let (true, Some(s), Some((epoch, safe))) = (ended, session, end.seq_safe) {
            if let Some(e) = self.existing(tenant, &s) {
                if let Some(m) = lock(&e.meta).as_mut().filter(|m| m.epoch == epoch) {
                    m.seq_safe = m.seq_safe.max(safe);
                }
            }
        }
        Ok(ended)
    }
    async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>, SessionError> {
        Ok(lock(&self.inner.runs)
            .records
            .get(&key(tenant, run_id))
            .map(|s| s.record.clone()))
    }
    async fn list_runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError> {
        let runs = lock(&self.inner.runs);
        let mut v: Vec<RunRecord> = runs
            .order
            .iter()
            .rev()
            .filter_map(|k| runs.records.get(k).map(|s| &s.record))
            .filter(|r| {
                r.tenant == tenant
                    && query
                        .session_id
                        .as_ref()
                        .is_none_or(|s| r.session_id.as_deref() == Some(s))
                    && query.status.is_none_or(|s| r.status == s)
            })
            .take(query.limit)
            .cloned()
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        Ok(v)
    }
    async fn run_detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError> {
        Ok(lock(&self.inner.runs)
            .records
            .get(&key(tenant, run_id))
            .map(|s| RunDetail {
                record: s.record.clone(),
                state: s.state.clone(),
                request: s.request.clone(),
            }))
    }
    async fn runs_in_flight(&self) -> Result<Vec<RunDetail>, SessionError> {
        let runs = lock(&self.inner.runs);
        Ok(runs
            .order
            .iter()
            .filter_map(|k| runs.records.get(k))
            .filter(|s| !s.record.status.is_final())
            .map(|s| RunDetail {
                record: s.record.clone(),
                state: s.state.clone(),
                request: s.request.clone(),
            })
            .collect())
    }
    async fn due_approvals(&self, now: i64) -> Result<Vec<(String, String)>, SessionError> {
        let runs = lock(&self.inner.runs);
        Ok(runs
            .records
            .values()
            .filter(|s| {
                s.record.status == RunStatus::AwaitingApproval
                    && s.deadline.is_some_and(|d| d <= now)
            })
            .map(|s| (s.record.tenant.clone(), s.record.run_id.clone()))
            .collect())
    }
    async fn update_run(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError> {
        Ok(self.with_run(tenant, run_id, |slot| {
            if slot.record.status.is_final() {
                return false;
            }
            slot.record.status = update.status;
            slot.record.updated_at = now_ms();
            if let Some(s) = update.state {
                slot.state = Some(s);
            }
            if update.node_id.is_some() {
                slot.record.node_id = update.node_id;
            }
            if update.status != RunStatus::AwaitingApproval {
                slot.deadline = None;
            }
            true
        }))
    }
    async fn delete_run_items(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError> {
        let Some(e) = self.existing(tenant, session_id) else {
            return Ok(false);
        };
        let mut items = lock(&e.items);
        let before = items.len();
        items.retain(|(r, _)| r.as_deref() != Some(run_id));
        Ok(items.len() != before)
    }
    async fn close(&self) -> Result<(), SessionError> {
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

    #[tokio::test]
    async fn the_store_is_bounded_and_keeps_run_records() {
        let store = MemoryStore::new(10, 5);
        for i in 0..25 {
            store
                .session("t", &format!("s{i}"))
                .add_items(vec![msg("x")])
                .await
                .unwrap();
        }
        assert!(store.session_count() <= 10);
        for i in 0..8 {
            store
                .record_run_start(RunStart {
                    run_id: format!("r{i}"),
                    tenant: "t".into(),
                    session_id: Some("s".into()),
                    starting_agent: "A".into(),
                    trace_id: None,
                    seq_reserved: None,
                    status: RunStatus::Running,
                    request: None,
                    node_id: None,
                })
                .await
                .unwrap();
            let end = RunEnd::cancelled(Some("A".into()), None);
            assert!(store
                .record_run_end("t", &format!("r{i}"), end)
                .await
                .unwrap());
        }
        assert!(store.run_count() <= 5);
        let last = store.get_run("t", "r7").await.unwrap().unwrap();
        assert_eq!(last.status, RunStatus::Cancelled);
        assert!(store.get_run("other", "r7").await.unwrap().is_none());
    }
}
