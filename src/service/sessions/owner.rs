//! One session's owner: its numbering (seq, epoch, reservation), retained history, run claim
//! and queue (double-texting), and subscribers, behind one short lock.

use super::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, OnceCell};

use crate::bus::{BusLimits, Subscription, Topic};
use crate::run::RunEnded;
use crate::service::error::ApiError;
use crate::service::request::{OnBusy, RunCreate};
use crate::session::{RunQuery, RunStatus, SessionError, Store};

pub(super) struct OwnerState {
    pub(super) topic: Option<Arc<Topic>>,
    pub(super) epoch: String,
    /// The highest seq saved as reserved in the store.
    pub(super) reserved: u64,
    /// Whether the session has a numbering row in the store.
    pub(super) stored: bool,
    /// The run holding the session (running, or paused for approval).
    pub(super) run: Option<Arc<str>>,
    /// Whether that run is paused (stored state only: no task holds the owner).
    pub(super) paused: bool,
    /// Runs waiting for the session, in the order they start.
    pub(super) queue: VecDeque<Queued>,
    /// The run holding the session executes on another node (its frames are relayed here
    /// from the cluster's bus): this node numbers none of the session's frames meanwhile.
    pub(super) remote: Option<Arc<str>>,
    pub(super) last_used: Instant,
    pub(super) passivated: bool,
}

/// The one owner of a session while it is active.
pub struct SessionOwner {
    pub(super) tenant: Arc<str>,
    pub(super) session_id: Arc<str>,
    pub(super) loaded: OnceCell<()>,
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
pub(super) struct Queued {
    pub(super) run_id: Arc<str>,
    /// Whether its record is written: only then may it start.
    pub(super) ready: bool,
    /// Its request, when this process took it (else it is read from the store).
    pub(super) request: Option<Arc<RunCreate>>,
    /// Its place in the durable order (stored with the request): smaller starts first.
    pub(super) order: i64,
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
    pub(super) fn new(tenant: Arc<str>, session_id: Arc<str>) -> SessionOwner {
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

    pub(super) fn mark_saved(&self) {
        self.saved.store(true, Ordering::Release);
        self.saved_signal.notify_waiters();
    }

    pub(super) async fn wait_saved(&self) {
        loop {
            let notified = self.saved_signal.notified();
            if self.saved.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, OwnerState> {
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

    pub(super) async fn load(&self, store: &dyn Store, limits: &BusLimits) -> Result<(), ApiError> {
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
    pub(super) fn reservation(&self) -> Option<(String, u64)> {
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
    pub(super) fn idle(st: &OwnerState, idle: Duration, now: Instant) -> bool {
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

pub(super) fn self_session_id(owner: &SessionOwner) -> Arc<str> {
    owner.session_id.clone()
}

pub(super) fn store_failed(e: SessionError) -> ApiError {
    tracing::error!(error = %e, "session store failed");
    ApiError::Internal
}
