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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, OnceCell};

use crate::bus::{BusLimits, HistoryBudget, Subscription, Topic};
use crate::items::Item;
use crate::run::RunEnded;
use crate::service::error::ApiError;
use crate::service::request::{OnBusy, RunCreate};
use crate::session::{RunQuery, RunStatus, Session, SessionError, SessionMeta, Store, TurnRecord};

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

struct OwnerState {
    topic: Option<Arc<Topic>>,
    epoch: String,
    /// The highest seq saved as reserved in the store.
    reserved: u64,
    /// Whether the session has a numbering row in the store.
    stored: bool,
    /// The run holding the session (running, or paused for approval).
    run: Option<Arc<str>>,
    /// Whether that run is paused (stored state only: no task holds the owner).
    paused: bool,
    /// Runs waiting for the session, in the order they start.
    queue: VecDeque<Queued>,
    /// The run holding the session executes on another node (its frames are relayed here
    /// from the cluster's bus): this node numbers none of the session's frames meanwhile.
    remote: Option<Arc<str>>,
    last_used: Instant,
    passivated: bool,
}

/// The one owner of a session while it is active.
pub struct SessionOwner {
    tenant: Arc<str>,
    session_id: Arc<str>,
    loaded: OnceCell<()>,
    state: Mutex<OwnerState>,
    /// Set once a passivated owner's numbering is saved: a new owner of the session waits
    /// for it, so it loads the exact numbering.
    saved: AtomicBool,
    saved_signal: Notify,
    /// Taken while a decision on the session's paused run is recorded (one at a time).
    decisions: tokio::sync::Mutex<()>,
}

/// A subscription granted by an owner, with the numbering it belongs to.
pub struct Subscribed {
    /// The subscription.
    pub sub: Subscription,
    /// The session's epoch.
    pub epoch: String,
    /// The last seq published.
    pub last_seq: u64,
}

/// A run in a session's queue.
struct Queued {
    run_id: Arc<str>,
    /// Whether its record is written: only then may it start.
    ready: bool,
    /// Its request, when this process took it (else it is read from the store).
    request: Option<Arc<RunCreate>>,
    /// Its place in the durable order (stored with the request): smaller starts first.
    order: i64,
}

/// A queued run's stored request: the request and its place in the session's queue (the
/// queue's order survives a restart exactly, whatever order the records were written in).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct StoredRequest {
    /// Smaller starts first.
    pub queue_order: i64,
    /// The request.
    pub request: RunCreate,
}

impl StoredRequest {
    /// Reads a stored request (a bare request, without an order, reads as order 0).
    pub fn parse(text: &str) -> Option<StoredRequest> {
        serde_json::from_str::<StoredRequest>(text)
            .ok()
            .or_else(|| {
                serde_json::from_str::<RunCreate>(text)
                    .ok()
                    .map(|request| StoredRequest {
                        queue_order: 0,
                        request,
                    })
            })
    }
}

/// A queued run that now has the session: its id and (when known here) its request.
pub type NextRun = (Arc<str>, Option<Arc<RunCreate>>);

/// What [`SessionOwner::claim_or_queue`] did.
pub enum ClaimOrQueue {
    /// The session was free: the run has it.
    Claimed(Claimed),
    /// The run waits in the session's queue.
    Queued {
        /// Its place (1 is next).
        position: usize,
        /// The run to stop for it (`interrupt` / `rollback`), and whether it is paused.
        stop: Option<(Arc<str>, bool)>,
        /// Its place in the durable order (see [`StoredRequest`]).
        order: i64,
    },
}

/// The session's claim for one run, with what the run needs from the owner.
pub struct Claimed {
    /// The topic the run publishes on.
    pub topic: Arc<Topic>,
    /// The session's epoch.
    pub epoch: String,
    /// A seq reservation to save with the run's start, when the old one runs low.
    pub reserve: Option<(String, u64)>,
}

impl SessionOwner {
    fn new(tenant: Arc<str>, session_id: Arc<str>) -> SessionOwner {
        SessionOwner {
            tenant,
            session_id,
            loaded: OnceCell::new(),
            state: Mutex::new(OwnerState {
                topic: None,
                epoch: String::new(),
                reserved: 0,
                stored: false,
                run: None,
                paused: false,
                queue: VecDeque::new(),
                remote: None,
                last_used: Instant::now(),
                passivated: false,
            }),
            saved: AtomicBool::new(false),
            saved_signal: Notify::new(),
            decisions: tokio::sync::Mutex::new(()),
        }
    }

    /// The lock decisions on the session's paused run take.
    pub fn decisions(&self) -> &tokio::sync::Mutex<()> {
        &self.decisions
    }

    fn mark_saved(&self) {
        self.saved.store(true, Ordering::Release);
        self.saved_signal.notify_waiters();
    }

    async fn wait_saved(&self) {
        loop {
            let notified = self.saved_signal.notified();
            if self.saved.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant.
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// The session id.
    pub fn session_id(&self) -> &Arc<str> {
        &self.session_id
    }

    /// The session's epoch.
    pub fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }

    /// The last seq published.
    pub fn last_seq(&self) -> u64 {
        self.lock().topic.as_ref().map_or(0, |t| t.last_seq())
    }

    /// The run holding the session, if any.
    pub fn current_run(&self) -> Option<Arc<str>> {
        self.lock().run.clone()
    }

    async fn load(&self, store: &dyn Store, limits: &BusLimits) -> Result<(), ApiError> {
        let meta = store
            .session_meta(&self.tenant, &self.session_id)
            .await
            .map_err(store_failed)?;
        // A paused run holds the session from its stored state; queued runs wait in order.
        let mut paused = None;
        let mut queue = VecDeque::new();
        if meta.is_some() {
            for status in [RunStatus::AwaitingApproval, RunStatus::Queued] {
                let query = RunQuery {
                    session_id: Some(self.session_id.to_string()),
                    status: Some(status),
                    limit: 10_000,
                };
                let mut runs = store
                    .list_runs(&self.tenant, &query)
                    .await
                    .map_err(store_failed)?;
                runs.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
                for r in runs {
                    match status {
                        RunStatus::AwaitingApproval => paused = Some(Arc::from(r.run_id)),
                        _ => {
                            // The stored order, not the records' times, says which starts
                            // first (records of one burst share a millisecond).
                            let stored = store
                                .run_detail(&self.tenant, &r.run_id)
                                .await
                                .map_err(store_failed)?
                                .and_then(|d| d.request)
                                .and_then(|t| StoredRequest::parse(&t));
                            queue.push_back(Queued {
                                run_id: Arc::from(r.run_id),
                                ready: true,
                                order: stored.as_ref().map_or(0, |s| s.queue_order),
                                request: stored.map(|s| Arc::new(s.request)),
                            });
                        }
                    }
                }
            }
        }
        queue.make_contiguous().sort_by_key(|q| q.order);
        let mut st = self.lock();
        let (epoch, after, safe, stored) = match meta {
            Some(m) if !m.epoch.is_empty() => (m.epoch, m.seq_reserved, m.seq_safe, true),
            // Items but no numbering (written before numbering was stored): a new one.
            Some(_) => (gen_epoch(), 0, 0, false),
            None => (gen_epoch(), 0, 0, false),
        };
        st.topic = Some(Topic::resuming_after_gap(
            self.session_id.clone(),
            limits.clone(),
            safe,
            after,
        ));
        st.epoch = epoch;
        st.reserved = after;
        st.stored = stored;
        st.paused = paused.is_some();
        st.run = paused;
        st.queue = queue;
        Ok(())
    }

    /// Claims the session for `run_id` if it is free, else queues the run (at the front for
    /// `interrupt` / `rollback`, whose caller then stops the current run). Answers the claim,
    /// or the run to stop and the queued run's position.
    pub fn claim_or_queue(
        &self,
        run_id: &Arc<str>,
        request: &RunCreate,
        on_busy: OnBusy,
        max_queued: usize,
    ) -> Result<ClaimOrQueue, ApiError> {
        let mut st = self.lock();
        if st.run.is_none() && st.queue.is_empty() {
            drop(st);
            return self.claim(run_id).map(ClaimOrQueue::Claimed);
        }
        let busy = || {
            ApiError::SessionBusy(format!(
                "session {} already has a run in progress; wait for its end frame, or cancel it, or send on_busy = enqueue, interrupt or rollback",
                self.session_id
            ))
        };
        match on_busy {
            OnBusy::Reject => Err(busy()),
            _ if st.queue.len() >= max_queued => Err(ApiError::Overloaded(format!(
                "session {} already has {} runs waiting (the limit); wait for them to start",
                self.session_id,
                st.queue.len()
            ))),
            OnBusy::Enqueue | OnBusy::Interrupt | OnBusy::Rollback => {
                let mut entry = Queued {
                    run_id: run_id.clone(),
                    ready: false,
                    request: Some(Arc::new(request.clone())),
                    order: 0,
                };
                let (position, stop) = if on_busy == OnBusy::Enqueue {
                    entry.order = st.queue.back().map_or(0, |q| q.order.saturating_add(1));
                    st.queue.push_back(entry);
                    (st.queue.len(), None)
                } else {
                    entry.order = st.queue.front().map_or(0, |q| q.order.saturating_sub(1));
                    st.queue.push_front(entry);
                    (1, st.run.clone().map(|r| (r, st.paused)))
                };
                let order = st
                    .queue
                    .iter()
                    .find(|q| &q.run_id == run_id)
                    .map_or(0, |q| q.order);
                // Announced in queue order, under the lock that ordered it (not while another
                // node numbers the session's frames).
                if let Some(t) = st.topic.as_ref().filter(|_| st.remote.is_none()) {
                    t.publish(run_id, crate::bus::FrameBody::RunQueued { position });
                }
                Ok(ClaimOrQueue::Queued {
                    position,
                    stop,
                    order,
                })
            }
        }
    }

    /// Takes a queued run out of the queue (it could not be recorded).
    pub fn unqueue(&self, run_id: &str) {
        self.lock().queue.retain(|q| &*q.run_id != run_id);
    }

    /// A queued run's record is written: it may start. Answers the run that takes the
    /// session now, if it was free and waiting for this.
    pub fn queue_ready(&self, run_id: &str) -> Option<NextRun> {
        let mut st = self.lock();
        if let Some(q) = st.queue.iter_mut().find(|q| &*q.run_id == run_id) {
            q.ready = true;
        }
        if st.run.is_none() {
            Self::take_next(&mut st)
        } else {
            None
        }
    }

    /// If the session is free and runs wait, gives the claim to the first (after a restart).
    pub fn start_waiting(&self) -> Option<NextRun> {
        let mut st = self.lock();
        if st.run.is_some() {
            return None;
        }
        Self::take_next(&mut st)
    }

    /// Gives the claim to the next queued run, if its record is written.
    fn take_next(st: &mut OwnerState) -> Option<NextRun> {
        if !st.queue.front().is_some_and(|q| q.ready) {
            return None;
        }
        let q = st.queue.pop_front()?;
        st.run = Some(q.run_id.clone());
        Some((q.run_id, q.request))
    }

    /// Marks the session's run paused (stored state only) or running again.
    pub fn set_paused(&self, run_id: &str, paused: bool) {
        let mut st = self.lock();
        if st.run.as_deref() == Some(run_id) {
            st.paused = paused;
        }
    }

    /// The session's topic (its numbering, history and subscribers).
    pub fn topic(&self) -> Option<Arc<Topic>> {
        self.lock().topic.clone()
    }

    fn topic_of(st: &OwnerState) -> Result<&Arc<Topic>, ApiError> {
        st.topic.as_ref().ok_or(ApiError::Internal)
    }

    /// Subscribes after `after_seq` (live only when `None`), checking the client's `epoch`.
    /// A resume that cannot be served exactly gets `history_truncated`, never frames of
    /// another numbering.
    pub fn subscribe(
        &self,
        after_seq: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<Subscribed, ApiError> {
        let mut st = self.lock();
        st.last_used = Instant::now();
        let topic = Self::topic_of(&st)?.clone();
        let truncated = |oldest_seq: u64, st: &OwnerState| ApiError::HistoryTruncated {
            after_seq: after_seq.unwrap_or(0),
            oldest_seq,
            epoch: Some(st.epoch.clone()),
        };
        if epoch.is_some_and(|e| e != st.epoch) {
            // Another numbering: everything retained of this one is new to the client.
            let oldest = topic
                .subscribe(Some(0))
                .map_or_else(|t| t.oldest_seq, |_| 1);
            return Err(truncated(oldest, &st));
        }
        let sub = topic
            .subscribe(after_seq)
            .map_err(|t| truncated(t.oldest_seq, &st))?;
        Ok(Subscribed {
            sub,
            epoch: st.epoch.clone(),
            last_seq: topic.last_seq(),
        })
    }

    /// Claims the session for run `run_id`, or answers `session_busy`.
    pub fn claim(&self, run_id: &Arc<str>) -> Result<Claimed, ApiError> {
        let mut st = self.lock();
        if let Some(other) = &st.run {
            return Err(ApiError::SessionBusy(format!(
                "session {} already has a run in progress ({other}); wait for its end frame, or cancel it, before starting another",
                self.session_id
            )));
        }
        st.run = Some(run_id.clone());
        st.last_used = Instant::now();
        let topic = Self::topic_of(&st)?.clone();
        let reserve = Self::reservation_due(&st, &topic);
        Ok(Claimed {
            topic,
            epoch: st.epoch.clone(),
            reserve,
        })
    }

    fn reservation_due(st: &OwnerState, topic: &Topic) -> Option<(String, u64)> {
        let last = topic.last_seq();
        (!st.stored || st.reserved < last + SEQ_RESERVATION / 2)
            .then(|| (st.epoch.clone(), last + SEQ_RESERVATION))
    }

    /// A seq reservation to save with a turn, when the current one runs low.
    fn reservation(&self) -> Option<(String, u64)> {
        let st = self.lock();
        let topic = st.topic.as_ref()?;
        Self::reservation_due(&st, topic)
    }

    /// Records that the store now holds `reserved` for `epoch`.
    pub fn reserved(&self, epoch: &str, reserved: u64) {
        let mut st = self.lock();
        if st.epoch == epoch {
            st.reserved = st.reserved.max(reserved);
            st.stored = true;
        }
    }

    /// Releases a claim that never became a run.
    pub fn release(&self, run_id: &str) {
        let mut st = self.lock();
        if st.run.as_deref() == Some(run_id) {
            st.run = None;
        }
        if st.remote.as_deref() == Some(run_id) {
            st.remote = None;
        }
        st.last_used = Instant::now();
    }

    /// Ends the session's run: releases the claim and publishes the run's end frame, in that
    /// order and under the owner's lock, so whoever sees the end frame finds the session free;
    /// the next queued run, if any, takes the claim at once. Answers the end frame and that
    /// next run.
    pub fn end_run(&self, ended: RunEnded) -> (Option<Arc<crate::bus::Frame>>, Option<NextRun>) {
        let mut st = self.lock();
        st.last_used = Instant::now();
        if st.run.as_deref() != Some(&*ended.run_id) {
            return (ended.publish(), None);
        }
        st.run = None;
        st.paused = false;
        let frame = ended.publish();
        (frame, Self::take_next(&mut st))
    }

    /// Pauses the session's run (waiting for a decision): publishes its `run.interrupted`
    /// frame; the run keeps the session, as stored state only.
    pub fn pause_run(&self, ended: RunEnded) -> Option<Arc<crate::bus::Frame>> {
        let mut st = self.lock();
        st.last_used = Instant::now();
        if st.run.as_deref() == Some(&*ended.run_id) {
            st.paused = true;
        }
        ended.publish()
    }

    /// Ends a paused run without a task (a decision's timeout, a new message interrupting
    /// it): publishes `body` as its end frame and hands the claim to the next queued run.
    pub fn end_paused(
        &self,
        run_id: &Arc<str>,
        body: crate::bus::FrameBody,
    ) -> (Option<Arc<crate::bus::Frame>>, Option<NextRun>) {
        let mut st = self.lock();
        st.last_used = Instant::now();
        let frame = st.topic.as_ref().map(|t| t.publish(run_id, body));
        if st.run.as_deref() != Some(&**run_id) {
            return (frame, None);
        }
        st.run = None;
        st.paused = false;
        (frame, Self::take_next(&mut st))
    }

    /// Marks the session's run as executing on another node (`on`), or here again.
    pub fn set_remote(&self, run_id: &Arc<str>, on: bool) {
        let mut st = self.lock();
        if on && st.run.as_deref() == Some(&**run_id) {
            st.remote = Some(run_id.clone());
        } else if !on && st.remote.as_deref() == Some(&**run_id) {
            st.remote = None;
        }
    }

    /// Takes a frame of the session numbered on another node (see [`Topic::relay`]).
    pub fn relay(&self, frame: crate::bus::Frame) -> Option<Arc<crate::bus::Frame>> {
        let st = self.lock();
        st.topic.as_ref().and_then(|t| t.relay(frame))
    }

    /// The end frame of `run_id`, executed on another node, came from the bus: releases the
    /// claim and relays the frame, in that order and under the owner's lock (as
    /// [`end_run`](Self::end_run)); the next queued run, if any, takes the claim at once.
    pub fn end_relayed(
        &self,
        run_id: &Arc<str>,
        frame: crate::bus::Frame,
    ) -> (Option<Arc<crate::bus::Frame>>, Option<NextRun>) {
        let mut st = self.lock();
        st.last_used = Instant::now();
        if st.remote.as_deref() == Some(&**run_id) {
            st.remote = None;
        }
        if st.run.as_deref() != Some(&**run_id) {
            // Settled here already (this node executed it too).
            let f = st.topic.as_ref().and_then(|t| t.relay(frame));
            return (f, None);
        }
        st.run = None;
        st.paused = false;
        let f = st.topic.as_ref().and_then(|t| t.relay(frame));
        (f, Self::take_next(&mut st))
    }

    /// Publishes a frame of the session (a queued notice) under the owner's lock.
    pub fn publish(&self, run_id: &Arc<str>, body: crate::bus::FrameBody) {
        if let Some(t) = &self.lock().topic {
            t.publish(run_id, body);
        }
    }

    /// The claim and what it gives a run that got the session from the queue.
    pub fn claimed(&self) -> Result<Claimed, ApiError> {
        let st = self.lock();
        let topic = Self::topic_of(&st)?.clone();
        let reserve = Self::reservation_due(&st, &topic);
        Ok(Claimed {
            topic,
            epoch: st.epoch.clone(),
            reserve,
        })
    }

    /// Whether the owner can be passivated now: no run, no subscriber, and unused for
    /// `idle` (or for [`EMPTY_IDLE`] when it retains no frames, e.g. after the history budget
    /// took them: then it only holds what the store already has).
    fn idle(st: &OwnerState, idle: Duration, now: Instant) -> bool {
        // A paused run and queued runs are stored state: they do not keep the owner.
        if st.run.is_some() && !st.paused {
            return false;
        }
        let retained = match &st.topic {
            Some(t) if t.subscriber_count() > 0 => return false,
            Some(t) => t.retained_bytes() > 0,
            None => false,
        };
        let quiet = now.duration_since(st.last_used);
        quiet >= idle || (!retained && quiet >= idle.min(EMPTY_IDLE))
    }
}

fn self_session_id(owner: &SessionOwner) -> Arc<str> {
    owner.session_id.clone()
}

fn store_failed(e: SessionError) -> ApiError {
    tracing::error!(error = %e, "session store failed");
    ApiError::Internal
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

/// Makes the mirror of a session's topic (see [`crate::bus::TopicMirror`]).
pub trait MirrorFactory: Send + Sync {
    /// The mirror of `tenant`'s session `session_id`, whose numbering is `epoch`.
    fn mirror(
        &self,
        tenant: &Arc<str>,
        session_id: &Arc<str>,
        epoch: &str,
    ) -> Arc<dyn crate::bus::TopicMirror>;
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

/// A session's conversation as a run uses it: the store's session, whose turn saves also top
/// up the session's seq reservation in the same transaction when it runs low.
struct OwnedSession {
    inner: Arc<dyn Session>,
    owner: Arc<SessionOwner>,
    latency: Histogram,
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
