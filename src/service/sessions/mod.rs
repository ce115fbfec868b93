//! Session owners: every session (per tenant) has exactly one owner while it is in use, and
//! every rule about a session lives here, for every store and every transport:
//!
//! - the **numbering**: the topic that assigns the gapless `seq`, the session's `epoch`, and
//!   the seq reservation that keeps numbering going across restarts (PROTOCOL.md 6.1);
//! - the **retained history** (the topic's, bounded per session and by a global budget);
//! - the **run claim**: one run at a time per session;
//! - the **subscribers** (the topic's).
//!
//! Owners are virtual actors in the manner of Orleans' grains: activated on first use (their
//! numbering loaded from the store), addressed by key, and passivated when idle (no run, no
//! subscriber, nothing new for `limits.session_idle_ms`), their final numbering saved. Memory
//! follows activity: a session nobody uses costs nothing but its rows in the store.
//!
//! An owner is one object with a short lock rather than an actix actor: every operation is a
//! few field updates that never wait, so a mailbox round trip would only add a hop (DESIGN.md
//! measured ~14 µs per `send().await`).
//!
//! - [`owner`]: one session's owner (numbering, retained history, run claim and queue,
//!   subscribers);
//! - this file: the active owners by key, activation and passivation, the history budget;
//! - [`conversation`]: the session's conversation as a run uses it (turn saves that top up
//!   the seq reservation).

mod conversation;
mod owner;

use conversation::OwnedSession;
use owner::{self_session_id, store_failed};

pub use crate::bus::MirrorFactory;
pub use owner::{ClaimOrQueue, Claimed, NextRun, SessionOwner, StoredRequest, Subscribed};

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::bus::{BusLimits, HistoryBudget, Topic};
use crate::service::error::ApiError;
use crate::session::{Session, SessionMeta, Store};

/// How many seqs a session reserves ahead in the store. A process that dies mid-run may have
/// published up to the reservation; the next one numbers after it (a gap, never a reuse).
pub const SEQ_RESERVATION: u64 = 1 << 20;

/// How long an owner retaining no frames stays active after its last use.
pub const EMPTY_IDLE: Duration = Duration::from_secs(5);

/// A session's key: tenant and session id.
pub type SessionKey = (Arc<str>, Arc<str>);

/// A new epoch: `e_` and 16 hex digits.
pub fn gen_epoch() -> String {
    let t = crate::trace::gen_trace_id();
    format!("e_{}", &t["trace_".len().."trace_".len() + 16])
}

/// The active sessions, each with its one owner.
pub struct Sessions {
    owners: DashMap<SessionKey, Arc<SessionOwner>>,
    store: Arc<dyn Store>,
    limits: BusLimits,
    budget: Arc<HistoryBudget>,
    idle: Duration,
    /// How long turn saves take (items, run record and run state in one store write).
    save_latency: Histogram,
    /// Gives each session's topic a mirror (the cluster's bus stream), when set.
    mirrors: std::sync::OnceLock<Arc<dyn MirrorFactory>>,
}

impl Sessions {
    /// No active session yet; sessions are kept in `store`, topics get `limits` (their
    /// history counted against `budget`), and owners idle for `idle` are passivated.
    pub fn new(
        store: Arc<dyn Store>,
        limits: BusLimits,
        budget: Arc<HistoryBudget>,
        idle: Duration,
    ) -> Self {
        let limits = BusLimits {
            budget: Some(budget.clone()),
            ..limits
        };
        Sessions {
            owners: DashMap::new(),
            store,
            limits,
            budget,
            idle,
            save_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            mirrors: std::sync::OnceLock::new(),
        }
    }

    /// Mirrors every session topic made from now on (once; later calls are ignored).
    pub fn set_mirrors(&self, factory: Arc<dyn MirrorFactory>) {
        let _ = self.mirrors.set(factory);
    }

    /// In a cluster: whether an idle owner's numbering is behind the store's (another node
    /// ran the session since), so it must be loaded again before use.
    async fn moved(&self, owner: &SessionOwner) -> Result<bool, ApiError> {
        let (epoch, reserved) = {
            let st = owner.lock();
            if st.run.is_some() || !st.queue.is_empty() {
                return Ok(false);
            }
            (st.epoch.clone(), st.reserved)
        };
        let meta = self
            .store
            .session_meta(&owner.tenant, &owner.session_id)
            .await
            .map_err(store_failed)?;
        Ok(meta.is_some_and(|m| {
            !m.epoch.is_empty() && (m.epoch != epoch || m.seq_reserved > reserved)
        }))
    }

    fn attach_mirror(&self, owner: &SessionOwner) {
        let Some(f) = self.mirrors.get() else { return };
        let (topic, epoch) = {
            let st = owner.lock();
            (st.topic.clone(), st.epoch.clone())
        };
        if let Some(t) = topic.filter(|t| !t.has_mirror()) {
            t.set_mirror(f.mirror(&owner.tenant, &owner.session_id, &epoch));
        }
    }

    /// The store behind the sessions.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Active sessions.
    pub fn active(&self) -> usize {
        self.owners.len()
    }

    /// The history budget.
    pub fn budget(&self) -> &Arc<HistoryBudget> {
        &self.budget
    }

    /// The owner of a tenant's session, activated (its numbering loaded) if needed.
    pub async fn owner(
        &self,
        tenant: &Arc<str>,
        session_id: &str,
    ) -> Result<Arc<SessionOwner>, ApiError> {
        let key: SessionKey = (tenant.clone(), Arc::from(session_id));
        loop {
            let owner = self
                .owners
                .entry(key.clone())
                .or_insert_with(|| Arc::new(SessionOwner::new(key.0.clone(), key.1.clone())))
                .clone();
            let loaded = owner
                .loaded
                .get_or_try_init(|| owner.load(&*self.store, &self.limits))
                .await;
            if let Err(e) = loaded {
                self.owners.remove_if(&key, |_, o| Arc::ptr_eq(o, &owner));
                return Err(e);
            }
            if owner.lock().passivated {
                // Being passivated: once its numbering is saved, activate a fresh one.
                owner.wait_saved().await;
                self.owners.remove_if(&key, |_, o| Arc::ptr_eq(o, &owner));
                continue;
            }
            if self.mirrors.get().is_some() && self.moved(&owner).await? {
                // Another node numbered the session since this owner loaded it.
                self.owners.remove_if(&key, |_, o| Arc::ptr_eq(o, &owner));
                continue;
            }
            self.attach_mirror(&owner);
            return Ok(owner);
        }
    }

    /// The owner of a session if it is active now.
    pub fn active_owner(&self, tenant: &str, session_id: &str) -> Option<Arc<SessionOwner>> {
        let key: SessionKey = (tenant.into(), session_id.into());
        self.owners.get(&key).map(|o| o.clone())
    }

    /// Whether a session was ever used for a run (its numbering is in the store, or its
    /// active owner published frames).
    pub async fn stored(&self, tenant: &str, session_id: &str) -> Result<bool, ApiError> {
        if self
            .active_owner(tenant, session_id)
            .is_some_and(|o| o.last_seq() > 0)
        {
            return Ok(true);
        }
        Ok(self
            .store
            .session_meta(tenant, session_id)
            .await
            .map_err(store_failed)?
            .is_some())
    }

    /// The conversation of a session, as the run engine uses it: turns are saved with the
    /// session's seq reservation topped up when it runs low.
    pub fn conversation(&self, owner: &Arc<SessionOwner>) -> Arc<dyn Session> {
        Arc::new(OwnedSession {
            inner: self.store.session(&owner.tenant, &owner.session_id),
            owner: owner.clone(),
            latency: self.save_latency.clone(),
        })
    }

    /// Turn saves' durations in seconds (for `/metrics`).
    pub fn save_latency(&self) -> &Histogram {
        &self.save_latency
    }

    /// Deletes a session: refused with `session_busy` while a run holds it; otherwise its
    /// items and numbering go, its subscribers are told the numbering restarted, and the next
    /// use numbers from 1 under a new epoch. Answers whether it existed.
    pub async fn delete(&self, tenant: &Arc<str>, session_id: &str) -> Result<bool, ApiError> {
        let owner = self.owner(tenant, session_id).await?;
        // Hold the claim for the deletion, so no run starts meanwhile.
        let marker: Arc<str> = Arc::from("(deleting)");
        let claimed = owner.claim(&marker).map_err(|_| {
            ApiError::SessionBusy(format!(
                "session {session_id} has a run in progress; cancel it (run.cancel) and wait for its end frame before deleting the session"
            ))
        })?;
        let existed = match self.store.delete_session(tenant, session_id).await {
            Ok(e) => e || claimed.topic.last_seq() > 0,
            Err(e) => {
                owner.release(&marker);
                return Err(store_failed(e));
            }
        };
        if !existed {
            // Nothing to delete: the session (and its subscribers) stay as they are.
            owner.release(&marker);
            return Ok(false);
        }
        let new_epoch = gen_epoch();
        {
            // A new numbering from 1, under a new epoch, on a fresh topic.
            let mut st = owner.lock();
            st.run = None;
            st.topic = Some(Topic::new(self_session_id(&owner), self.limits.clone()));
            st.epoch = new_epoch.clone();
            st.stored = false;
            st.reserved = 0;
            st.last_used = Instant::now();
        }
        self.attach_mirror(&owner);
        // Subscribers of the old numbering are told (history_truncated, the new epoch).
        claimed.topic.reset(&new_epoch);
        Ok(true)
    }

    /// Passivates owners idle for the idle time: they leave memory, their exact numbering is
    /// saved. Only an owner nobody else holds (no run, no request in flight) is passivated,
    /// so no operation ever acts on a passivated owner. Answers how many.
    pub async fn passivate_idle(&self) -> usize {
        let now = Instant::now();
        let mut done = Vec::new();
        for entry in self.owners.iter() {
            let owner = entry.value();
            // The map's reference and this loop's: nobody else holds it.
            if Arc::strong_count(owner) > 1 || !owner.loaded.initialized() {
                continue;
            }
            let mut st = owner.lock();
            if !SessionOwner::idle(&st, self.idle, now) {
                continue;
            }
            st.passivated = true;
            let last = st.topic.as_ref().map_or(0, |t| t.last_seq());
            if let Some(t) = st.topic.take() {
                t.drop_history();
            }
            let save = (st.stored && last != st.reserved).then(|| SessionMeta {
                epoch: st.epoch.clone(),
                seq_reserved: last,
                seq_safe: last,
            });
            done.push((entry.key().clone(), owner.clone(), save));
        }
        let n = done.len();
        for (key, owner, save) in done {
            if let Some(meta) = save {
                if let Err(e) = self
                    .store
                    .set_session_meta(&owner.tenant, &owner.session_id, meta)
                    .await
                {
                    tracing::warn!(error = %e, session_id = %owner.session_id, "could not save a passivated session's numbering");
                }
            }
            owner.mark_saved();
            self.owners.remove_if(&key, |_, o| Arc::ptr_eq(o, &owner));
        }
        n
    }

    /// Frees the live rings of sessions nobody follows any more. Answers how many.
    pub fn release_idle_rings(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| o.topic().is_some_and(|t| t.release_idle_ring()))
            .count()
    }

    /// Saves every active session's exact numbering (at shutdown, after the runs ended).
    pub async fn save_all(&self) {
        let list: Vec<(Arc<SessionOwner>, String, u64)> = self
            .owners
            .iter()
            .filter_map(|o| {
                let st = o.lock();
                let last = st.topic.as_ref().map_or(0, |t| t.last_seq());
                (st.stored && st.run.is_none() && last != st.reserved)
                    .then(|| (o.clone(), st.epoch.clone(), last))
            })
            .collect();
        for (owner, epoch, last) in list {
            let meta = SessionMeta {
                epoch,
                seq_reserved: last,
                seq_safe: last,
            };
            let _ = self
                .store
                .set_session_meta(&owner.tenant, &owner.session_id, meta)
                .await;
        }
    }

    /// Brings retained history back under the budget: the least recently used sessions lose
    /// their retained frames first. Answers the bytes freed.
    pub fn enforce_budget(&self) -> usize {
        let limit = self.budget.limit();
        if self.budget.used() <= limit {
            return 0;
        }
        let target = limit / 10 * 9;
        let mut by_use: Vec<(Instant, Arc<Topic>)> = self
            .owners
            .iter()
            .filter_map(|o| {
                let st = o.lock();
                st.topic.clone().map(|t| (st.last_used, t))
            })
            .collect();
        by_use.sort_by_key(|(t, _)| *t);
        let mut freed = 0;
        for (_, topic) in by_use {
            if self.budget.used() <= target {
                break;
            }
            freed += topic.drop_history();
        }
        freed
    }
}
