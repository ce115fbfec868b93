//! Runs in the service: checked and set up ([`Core::prepare_run`]), started on the session
//! they claimed or queued behind its run ([`PreparedRun::launch`], double-texting), listed
//! while they go (the run registry, for cancel and client tool results), and settled when
//! they end (`RunSettler`): the record written, the tenant's place and the session's claim
//! released, and only then the end frame published; then the session's next queued run starts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::agent::Agent;
use crate::bus::{CancelMode, Frame, FrameBody, Topic};
use crate::error::AgentsError;
use crate::items::RunInput;
use crate::run::{gen_run_id, RunCanceller, RunConfig, RunEnded, RunOutcome, RunSettle};
use crate::service::error::ApiError;
use crate::service::request::{OnBusy, RunCreate};
use crate::service::sessions::{ClaimOrQueue, Claimed, NextRun, SessionOwner, StoredRequest};
use crate::service::Core;
use crate::session::{RunEnd, RunQuery, RunStart, RunStatus, RunUpdate};
use tokio::sync::oneshot;

/// A run in the registry. It is listed before it starts (its first frames, and so its id,
/// may reach clients before `start` returns); the canceller comes once it has started, and a
/// cancel asked for in between is applied then.
pub(crate) struct RunEntry {
    pub tenant: Arc<str>,
    control: std::sync::Mutex<RunControl>,
}

#[derive(Default)]
struct RunControl {
    canceller: Option<RunCanceller>,
    pending: Option<(CancelMode, Option<Arc<str>>)>,
}

impl RunEntry {
    pub fn cancel(&self, mode: CancelMode) {
        self.cancel_by(mode, None);
    }

    pub fn cancel_by(&self, mode: CancelMode, by: Option<Arc<str>>) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        match &c.canceller {
            Some(k) => k.cancel_by(mode, by),
            None => c.pending = Some((mode, by)),
        }
    }

    fn started(&self, canceller: RunCanceller) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((mode, by)) = c.pending.take() {
            canceller.cancel_by(mode, by);
        }
        c.canceller = Some(canceller);
    }
}

/// A run's place in its tenant's run count; released when dropped.
pub(crate) struct TenantSlot {
    core: Arc<Core>,
    tenant: Arc<str>,
}

impl TenantSlot {
    /// Takes a place for `tenant` whatever the limit (a queued run, admitted when queued).
    pub(crate) fn forced(core: &Arc<Core>, tenant: &Arc<str>) -> TenantSlot {
        *core.tenant_runs.entry(tenant.clone()).or_insert(0) += 1;
        TenantSlot {
            core: core.clone(),
            tenant: tenant.clone(),
        }
    }

    /// Takes a place for `tenant`, or answers `overloaded` at the tenant's limit.
    fn take(core: &Arc<Core>, tenant: &Arc<str>) -> Result<TenantSlot, ApiError> {
        let mut n = core.tenant_runs.entry(tenant.clone()).or_insert(0);
        if *n >= core.limits.max_runs_per_tenant {
            return Err(ApiError::Overloaded(format!(
                "this tenant already has {} runs in progress (the limit); wait for one to end",
                *n
            )));
        }
        *n += 1;
        Ok(TenantSlot {
            core: core.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.core.tenant_runs.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The session's claim for a run that has not started; released if dropped before launch.
struct Claim {
    owner: Arc<SessionOwner>,
    run_id: Arc<str>,
    armed: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            self.owner.release(&self.run_id);
        }
    }
}

/// Where a prepared run stands with its session.
enum Place {
    /// It has the session: it starts at once.
    Now {
        claimed: Claimed,
        slot: TenantSlot,
        claim: Claim,
    },
    /// It waits in the session's queue (and, for `interrupt` / `rollback`, stops the run
    /// before it).
    Queued {
        position: usize,
        stop: Option<(Arc<str>, bool)>,
        mode: OnBusy,
        epoch: String,
        topic: Arc<Topic>,
        queued: QueuedGuard,
        order: i64,
    },
}

/// A queued place, given back if the run is never recorded.
struct QueuedGuard {
    owner: Arc<SessionOwner>,
    run_id: Arc<str>,
    armed: bool,
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        if self.armed {
            self.owner.unqueue(&self.run_id);
        }
    }
}

/// A run checked and set up, not started yet; see [`Core::prepare_run`]. Dropping it
/// releases its places (tenant, session).
pub struct PreparedRun {
    core: Arc<Core>,
    tenant: Arc<str>,
    owner: Arc<SessionOwner>,
    agent: Agent,
    req: RunCreate,
    run_id: Arc<str>,
    cfg: RunConfig,
    place: Place,
}

/// A run that was started.
pub struct Started {
    /// Its id.
    pub run_id: String,
    /// Its trace id (when traced).
    pub trace_id: Option<String>,
    /// The topic it publishes on.
    pub topic: Arc<Topic>,
    /// The session's epoch.
    pub epoch: String,
    /// The run's end frame, once settled and published.
    pub end: oneshot::Receiver<Arc<Frame>>,
}

impl PreparedRun {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's trace id (`None` when tracing is off).
    pub fn trace_id(&self) -> Option<&str> {
        self.cfg.trace_id.as_deref()
    }

    /// The topic it will publish on.
    pub fn topic(&self) -> &Arc<Topic> {
        match &self.place {
            Place::Now { claimed, .. } => &claimed.topic,
            Place::Queued { topic, .. } => topic,
        }
    }

    /// The session's epoch.
    pub fn epoch(&self) -> &str {
        match &self.place {
            Place::Now { claimed, .. } => &claimed.epoch,
            Place::Queued { epoch, .. } => epoch,
        }
    }

    /// Whether the run waits in the session's queue.
    pub fn is_queued(&self) -> bool {
        matches!(self.place, Place::Queued { .. })
    }

    /// Starts the run: records it (with the session's seq reservation) and hands it to its
    /// agent; or, queued, records it as queued (durable: it survives a restart), announces
    /// `run.queued`, and stops the run before it for `interrupt` / `rollback`.
    pub async fn launch(self) -> Result<Started, ApiError> {
        let PreparedRun {
            core,
            tenant,
            owner,
            agent,
            req,
            run_id,
            cfg,
            place,
        } = self;
        let store = core.sessions.store().clone();
        let (end_tx, end) = oneshot::channel();
        match place {
            Place::Now {
                claimed,
                slot,
                mut claim,
            } => {
                let mailbox = core.uses_mailboxes();
                let start = RunStart {
                    run_id: run_id.to_string(),
                    tenant: tenant.to_string(),
                    session_id: Some(owner.session_id().to_string()),
                    starting_agent: agent.name().to_owned(),
                    trace_id: cfg.trace_id.clone(),
                    seq_reserved: claimed.reserve.clone(),
                    status: RunStatus::Running,
                    // Through a mailbox, the node that takes the baton starts it from this.
                    request: mailbox
                        .then(|| {
                            serde_json::to_string(&StoredRequest {
                                queue_order: 0,
                                request: req.clone(),
                            })
                            .ok()
                        })
                        .flatten(),
                    node_id: if mailbox {
                        None
                    } else {
                        core.node_id().map(str::to_owned)
                    },
                };
                // Recorded before the run can publish past the old reservation or save a turn.
                store.record_run_start(start).await.map_err(|e| match e {
                    // Another node's run holds the session (the cluster's store refused it).
                    crate::session::SessionError::Busy(_) => ApiError::SessionBusy(format!(
                        "session {} already has a run in progress on another node; wait for its end frame, or cancel it, before starting another",
                        owner.session_id()
                    )),
                    e => {
                        tracing::error!(run_id = %run_id, error = %e, "could not record the run's start");
                        ApiError::Internal
                    }
                })?;
                core.waiters.insert(run_id.to_string(), end_tx);
                let epoch = claimed.epoch.clone();
                let topic = claimed.topic.clone();
                let trace_id = cfg.trace_id.clone();
                #[cfg(feature = "nats")]
                if mailbox {
                    if let Some((epoch, upto)) = &claimed.reserve {
                        owner.reserved(epoch, *upto);
                    }
                    drop(slot);
                    let handed = core
                        .hand_to_mailbox(&tenant, &owner, &run_id, agent.name(), false)
                        .await;
                    // From here the end frame releases the session's claim (or the failure did).
                    claim.armed = false;
                    handed?;
                    return Ok(Started {
                        run_id: run_id.to_string(),
                        trace_id,
                        topic,
                        epoch,
                        end,
                    });
                }
                let started = core
                    .start_engine(
                        &tenant, &owner, &run_id, &agent, req.input, cfg, claimed, slot, None,
                    )
                    .await;
                // From here the settler releases the session's claim (or the failure did).
                claim.armed = false;
                started?;
                Ok(Started {
                    run_id: run_id.to_string(),
                    trace_id,
                    topic,
                    epoch,
                    end,
                })
            }
            Place::Queued {
                position,
                stop,
                mode,
                epoch,
                topic,
                mut queued,
                order,
            } => {
                let start = RunStart {
                    run_id: run_id.to_string(),
                    tenant: tenant.to_string(),
                    session_id: Some(owner.session_id().to_string()),
                    starting_agent: agent.name().to_owned(),
                    trace_id: cfg.trace_id.clone(),
                    seq_reserved: None,
                    status: RunStatus::Queued,
                    request: serde_json::to_string(&StoredRequest {
                        queue_order: order,
                        request: req.clone(),
                    })
                    .ok(),
                    node_id: core.node_id().map(str::to_owned),
                };
                if let Err(e) = store.record_run_start(start).await {
                    tracing::error!(run_id = %run_id, error = %e, "could not record the queued run");
                    // Its queued notice went out: say it will not run.
                    owner.publish(
                        &run_id,
                        FrameBody::RunFailed {
                            error_type: "UserError".into(),
                            message: "the run could not be queued: the session store failed".into(),
                        },
                    );
                    return Err(ApiError::Internal);
                }
                queued.armed = false;
                core.waiters.insert(run_id.to_string(), end_tx);
                let _ = position;
                if let Some(next) = owner.queue_ready(&run_id) {
                    // The session freed up while the record was written.
                    let core2 = core.clone();
                    let (t, o) = (tenant.clone(), owner.clone());
                    tokio::spawn(async move { core2.start_queued(t, o, next).await });
                }
                if let Some((stop_id, paused)) = stop {
                    let cancel = match mode {
                        OnBusy::Rollback => CancelMode::RolledBack,
                        _ => CancelMode::Interrupted,
                    };
                    if paused {
                        core.end_paused_run(&tenant, &owner, &stop_id, cancel, Some(&run_id))
                            .await;
                    } else if let Some(e) = core.runs.get(&*stop_id) {
                        e.cancel_by(cancel, Some(run_id.clone()));
                    } else {
                        #[cfg(feature = "nats")]
                        if core.uses_mailboxes() {
                            // Executing on another node: asked there.
                            let (c, t, by) = (core.clone(), tenant.clone(), run_id.clone());
                            tokio::spawn(async move {
                                let _ = c.cancel_remote(&t, &stop_id, cancel, Some(&by)).await;
                            });
                        }
                    }
                }
                Ok(Started {
                    run_id: run_id.to_string(),
                    trace_id: cfg.trace_id.clone(),
                    topic,
                    epoch,
                    end,
                })
            }
        }
    }
}

impl Core {
    /// Hands a claimed run to its agent: registry, client tools, settler. On failure the
    /// claim is released and the record says why.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_engine(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        agent: &Agent,
        input: RunInput,
        cfg: RunConfig,
        claimed: Claimed,
        slot: TenantSlot,
        resume: Option<crate::run::RunState>,
    ) -> Result<(), ApiError> {
        let store = self.sessions.store().clone();
        if let Some((epoch, upto)) = &claimed.reserve {
            owner.reserved(epoch, *upto);
        }
        // Client tools find the run's topic through this; registered before the run starts,
        // since its first turn may call one at once.
        self.calls
            .register_run(run_id.clone(), claimed.topic.clone());
        self.runs.insert(
            run_id.to_string(),
            RunEntry {
                tenant: tenant.clone(),
                control: Default::default(),
            },
        );
        let settler = Arc::new(RunSettler {
            core: self.clone(),
            tenant: tenant.clone(),
            owner: owner.clone(),
            slot: std::sync::Mutex::new(Some(slot)),
        });
        let mut request = self
            .runner
            .request_with(agent, input, ())
            .config(cfg)
            .topic(claimed.topic.clone())
            .session(self.sessions.conversation(owner))
            .run_id(run_id.to_string())
            .settle(settler)
            .listen(false)
            .keep_state(true);
        if let Some(state) = resume {
            request = request.resume_from(state);
        }
        let started = request.start();
        match started {
            Ok(run) => {
                if let Some(e) = self.runs.get(&**run_id) {
                    e.started(run.canceller());
                }
                self.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.calls.finish_run(run_id);
                self.runs.remove(&**run_id);
                let end = RunEnd::failed(&e, Some(agent.name().to_owned()), None);
                let _ = store.record_run_end(tenant, run_id, end).await;
                let body = FrameBody::RunFailed {
                    error_type: e.sdk_name().into(),
                    message: e.to_string(),
                };
                self.after_end(tenant, owner, run_id, owner.end_paused(run_id, body));
                Err(match e {
                    AgentsError::Overloaded(m) => ApiError::Overloaded(m),
                    other => {
                        tracing::error!(error = %other, "run could not start");
                        ApiError::Internal
                    }
                })
            }
        }
    }

    /// After a run's end frame: wakes whoever waits for it, and starts the session's next
    /// queued run.
    pub(crate) fn after_end(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &str,
        (frame, next): (Option<Arc<Frame>>, Option<NextRun>),
    ) {
        if let (Some((_, tx)), Some(f)) = (self.waiters.remove(run_id), frame) {
            let _ = tx.send(f);
        }
        if let Some(next) = next {
            let core = self.clone();
            let (tenant, owner) = (tenant.clone(), owner.clone());
            tokio::spawn(async move { core.start_queued(tenant, owner, next).await });
        }
    }

    /// Starts a queued run that has just been given its session's claim.
    async fn start_queued(
        self: Arc<Self>,
        tenant: Arc<str>,
        owner: Arc<SessionOwner>,
        (run_id, request): NextRun,
    ) {
        let store = self.sessions.store().clone();
        let fail = |why: String| {
            let core = self.clone();
            let (tenant, owner, run_id) = (tenant.clone(), owner.clone(), run_id.clone());
            async move {
                tracing::warn!(run_id = %run_id, "a queued run could not start: {why}");
                let e = AgentsError::UserError(why);
                let _ = core
                    .sessions
                    .store()
                    .record_run_end(&tenant, &run_id, RunEnd::failed(&e, None, None))
                    .await;
                let body = FrameBody::RunFailed {
                    error_type: e.sdk_name().into(),
                    message: e.to_string(),
                };
                let ended = owner.end_paused(&run_id, body);
                core.after_end(&tenant, &owner, &run_id, ended);
            }
        };
        let detail = match store.run_detail(&tenant, &run_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return fail("its record is gone".into()).await,
            Err(e) => return fail(format!("the session store failed: {e}")).await,
        };
        let req = match request {
            Some(r) => (*r).clone(),
            None => match detail.request.as_deref().and_then(StoredRequest::parse) {
                Some(r) => r.request,
                None => return fail("its stored request cannot be read".into()).await,
            },
        };
        let agent = match self.agents.get(&req.agent) {
            Some(a) => a.clone(),
            None => return fail(format!("no agent named `{}` any more", req.agent)).await,
        };
        let claimed = match owner.claimed() {
            Ok(c) => c,
            Err(_) => return fail("its session is gone".into()).await,
        };
        let update = RunUpdate {
            status: RunStatus::Running,
            state: None,
            node_id: self.node_id().map(str::to_owned),
        };
        if let Err(e) = store.update_run(&tenant, &run_id, update).await {
            return fail(format!("the session store failed: {e}")).await;
        }
        #[cfg(feature = "nats")]
        if self.uses_mailboxes() {
            let _ = self
                .hand_to_mailbox(&tenant, &owner, &run_id, &req.agent, false)
                .await;
            return;
        }
        let cfg = run_config(
            &tenant,
            owner.session_id(),
            &run_id,
            &req,
            detail.record.trace_id,
        );
        let slot = TenantSlot::forced(&self, &tenant);
        let _ = self
            .start_engine(
                &tenant, &owner, &run_id, &agent, req.input, cfg, claimed, slot, None,
            )
            .await;
    }

    /// Starts a recorded run from its stored request (a baton taken from a mailbox); the
    /// run holds its session's claim already. On failure its record and end frame say why.
    #[cfg(feature = "nats")]
    pub(crate) async fn start_fresh(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        detail: &crate::session::RunDetail,
    ) -> Result<(), ApiError> {
        let request = detail.request.as_deref().and_then(StoredRequest::parse);
        let agent = request
            .as_ref()
            .and_then(|r| self.agents.get(&r.request.agent).cloned());
        let (Some(r), Some(agent), Ok(claimed)) = (request, agent, owner.claimed()) else {
            let e = AgentsError::UserError(
                "the run's stored request cannot be read, or names an agent this node does not have".into(),
            );
            let _ = self
                .sessions
                .store()
                .record_run_end(tenant, run_id, RunEnd::failed(&e, None, None))
                .await;
            let body = FrameBody::RunFailed {
                error_type: e.sdk_name().into(),
                message: e.to_string(),
            };
            let ended = owner.end_paused(run_id, body);
            self.after_end(tenant, owner, run_id, ended);
            return Err(ApiError::Conflict(e.to_string()));
        };
        let cfg = run_config(
            tenant,
            owner.session_id(),
            run_id,
            &r.request,
            detail.record.trace_id.clone(),
        );
        let slot = TenantSlot::forced(self, tenant);
        self.start_engine(
            tenant,
            owner,
            run_id,
            &agent,
            r.request.input,
            cfg,
            claimed,
            slot,
            None,
        )
        .await
    }

    /// Ends a paused run (no task) as cancelled by a new message: its record, its items on
    /// `rollback`, its end frame; then the next queued run starts.
    pub(crate) async fn end_paused_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        mode: CancelMode,
        by: Option<&Arc<str>>,
    ) {
        let store = self.sessions.store().clone();
        if mode == CancelMode::RolledBack {
            let _ = store
                .delete_run_items(tenant, owner.session_id(), run_id)
                .await;
        }
        let mut end = RunEnd::cancelled(None, None);
        end.cancel_mode = Some(mode.as_str().into());
        end.by_run_id = by.map(|b| b.to_string());
        if let Err(e) = store.record_run_end(tenant, run_id, end).await {
            tracing::error!(run_id = %run_id, error = %e, "could not record the run's end");
        }
        let body = FrameBody::RunCancelled {
            mode,
            by_run_id: by.cloned(),
        };
        let ended = owner.end_paused(run_id, body);
        self.after_end(tenant, owner, run_id, ended);
    }
}

/// Settles a server run's end before its end frame goes out: the run record, the registry,
/// the tenant's place, then the session's claim with the end frame (see
/// [`SessionOwner::end_run`]).
struct RunSettler {
    core: Arc<Core>,
    tenant: Arc<str>,
    owner: Arc<SessionOwner>,
    slot: std::sync::Mutex<Option<TenantSlot>>,
}

#[async_trait]
impl RunSettle for RunSettler {
    async fn settle(&self, ended: RunEnded) {
        let core = &self.core;
        let rid = ended.run_id.clone();
        if let RunOutcome::Interrupted(_) = &ended.outcome {
            // Paused: its state is saved (status awaiting_approval); it keeps the session as
            // stored state only, and holds no task, no place, no memory here.
            core.runs.remove(&*rid);
            core.calls.finish_run(&rid);
            drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
            let frame = self.owner.pause_run(ended);
            core.after_end(&self.tenant, &self.owner, &rid, (frame, None));
            #[cfg(feature = "nats")]
            core.baton_settled(&rid);
            return;
        }
        if let RunOutcome::Failed(e) = &ended.outcome {
            tracing::info!(run_id = %rid, error = %e, "run failed");
        }
        let store = core.sessions.store();
        if matches!(ended.outcome, RunOutcome::Cancelled(CancelMode::RolledBack)) {
            // Rolled back by a new message: the run's items leave the conversation first.
            if let Err(e) = store
                .delete_run_items(&self.tenant, self.owner.session_id(), &rid)
                .await
            {
                tracing::error!(run_id = %rid, error = %e, "could not remove a rolled-back run's items");
            }
        }
        let mut end = RunEnd::from_outcome(&ended.outcome, &ended.last_agent, ended.usage.clone());
        end.by_run_id = match ended.frame() {
            Some(FrameBody::RunCancelled { by_run_id, .. }) => {
                by_run_id.as_deref().map(str::to_owned)
            }
            _ => None,
        };
        end.seq_safe = Some((self.owner.epoch(), ended.topic().last_seq() + 1));
        if let Err(e) = store.record_run_end(&self.tenant, &rid, end).await {
            tracing::error!(run_id = %rid, error = %e, "could not record the run's end");
        }
        core.runs.remove(&*rid);
        core.calls.finish_run(&rid);
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        core.metrics.runs_finished.fetch_add(1, Ordering::Relaxed);
        core.metrics.run_ends.count(&ended.outcome);
        let done = self.owner.end_run(ended);
        core.after_end(&self.tenant, &self.owner, &rid, done);
        #[cfg(feature = "nats")]
        core.baton_settled(&rid);
    }
}

impl Core {
    /// Checks a run request without starting it.
    fn check_run(&self, req: &RunCreate) -> Result<Agent, ApiError> {
        if self.is_draining() {
            return Err(ApiError::ShuttingDown);
        }
        let agent = self
            .agents
            .get(&req.agent)
            .cloned()
            .ok_or_else(|| ApiError::UnknownAgent(req.agent.chars().take(100).collect()))?;
        let size = req.input.approx_len();
        if size > self.limits.max_input_bytes {
            return Err(ApiError::InputTooLarge {
                size,
                limit: self.limits.max_input_bytes,
            });
        }
        if req.max_turns == Some(0) {
            return Err(ApiError::BadRequest("max_turns must be at least 1".into()));
        }
        if let Some(id) = req.trace.as_ref().and_then(|t| t.trace_id.as_deref()) {
            if !crate::trace::is_valid_trace_id(id) {
                return Err(ApiError::BadRequest(format!(
                    "trace.trace_id `{}` is not a trace id: use `trace_` and 32 lowercase hex digits, as the SDK makes them",
                    id.chars().take(80).collect::<String>()
                )));
            }
        }
        if !self.runner.stage().can_admit(&agent) {
            return Err(ApiError::Overloaded(format!(
                "agent {} has no place and no room in its queue; try again later",
                agent.name()
            )));
        }
        Ok(agent)
    }

    /// Starts a run for `tenant` in `session_id` (see [`prepare_run`](Self::prepare_run)).
    pub async fn start_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        session_id: &str,
        req: RunCreate,
    ) -> Result<Started, ApiError> {
        self.prepare_run(tenant, session_id, req)
            .await?
            .launch()
            .await
    }

    /// Checks and sets up a run without starting it: the session is claimed (or the run
    /// queued behind its run, as `on_busy` says), and its id, trace id and the session's
    /// epoch are known, so a caller can announce it (`run.accepted`) and subscribe before any
    /// of its frames exist.
    pub async fn prepare_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        session_id: &str,
        req: RunCreate,
    ) -> Result<PreparedRun, ApiError> {
        check_session_id(session_id)?;
        let agent = self.check_run(&req)?;
        // A given trace id must be new or this tenant's: never join another tenant's trace.
        if let (Some(id), Some(store)) = (
            req.trace.as_ref().and_then(|t| t.trace_id.as_deref()),
            self.trace_store(),
        ) {
            use crate::trace::sinks::store::ClaimError;
            match store.claim_async(id, tenant).await {
                Ok(()) => {}
                Err(e @ (ClaimError::Taken(_) | ClaimError::InvalidId(_))) => {
                    return Err(ApiError::BadRequest(format!("trace.trace_id: {e}")))
                }
                Err(ClaimError::Store(e)) => {
                    tracing::error!(error = %e, "trace store failed");
                    return Err(ApiError::Internal);
                }
            }
        }
        let owner = self.sessions.owner(tenant, session_id).await?;
        #[cfg(feature = "nats")]
        if self.uses_mailboxes() && owner.current_run().is_none() {
            // Another node may have numbered the session's frames since.
            self.sync_numbering(&owner).await;
        }
        let run_id: Arc<str> = gen_run_id().into();
        let on_busy = req.on_busy.unwrap_or(self.config.sessions.on_busy);
        // One run per session at a time, so a session's items never interleave.
        let place = match owner.claim_or_queue(
            &run_id,
            &req,
            on_busy,
            self.config.sessions.max_queued_runs,
        )? {
            ClaimOrQueue::Claimed(claimed) => {
                let claim = Claim {
                    owner: owner.clone(),
                    run_id: run_id.clone(),
                    armed: true,
                };
                let slot = TenantSlot::take(self, tenant)?;
                Place::Now {
                    claimed,
                    slot,
                    claim,
                }
            }
            ClaimOrQueue::Queued {
                position,
                stop,
                order,
            } => {
                let queued = QueuedGuard {
                    owner: owner.clone(),
                    run_id: run_id.clone(),
                    armed: true,
                };
                let topic = owner.topic().ok_or(ApiError::Internal)?;
                Place::Queued {
                    position,
                    stop,
                    mode: on_busy,
                    epoch: owner.epoch(),
                    topic,
                    queued,
                    order,
                }
            }
        };
        let cfg = run_config(tenant, session_id, &run_id, &req, None);
        Ok(PreparedRun {
            core: self.clone(),
            tenant: tenant.clone(),
            owner,
            agent,
            req,
            run_id,
            cfg,
            place,
        })
    }

    /// Cancels a tenant's run.
    pub fn cancel_run(&self, tenant: &str, run_id: &str, mode: CancelMode) -> Result<(), ApiError> {
        match self.runs.get(run_id) {
            Some(e) if &*e.tenant == tenant => {
                e.cancel(mode);
                Ok(())
            }
            _ => Err(not_found_run(run_id)),
        }
    }

    /// Answers a client-side tool call of a tenant's run.
    pub fn tool_result(
        &self,
        tenant: &str,
        run_id: &str,
        call_id: &str,
        output: String,
    ) -> Result<(), ApiError> {
        match self.runs.get(run_id) {
            Some(e) if &*e.tenant == tenant => {}
            _ => return Err(not_found_run(run_id)),
        }
        if self.calls.answer(run_id, call_id, output) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "run {run_id} is not waiting for tool call `{}`",
                call_id.chars().take(100).collect::<String>()
            )))
        }
    }

    /// A tenant's run record (status, agents, final output, usage, error, trace id, times).
    pub async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Value, ApiError> {
        let rec = self
            .sessions
            .store()
            .get_run(tenant, run_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?;
        let Some(r) = rec else {
            return Err(not_found_run(run_id));
        };
        let paused = r.status == RunStatus::AwaitingApproval;
        let mut v = serde_json::to_value(r).map_err(|_| ApiError::Internal)?;
        if paused {
            // A paused run lists the calls waiting for a decision.
            if let Ok(state) = self.run_state(tenant, run_id).await {
                v["interruptions"] = state["interruptions"].clone();
            }
        }
        Ok(v)
    }

    /// A tenant's runs, newest first, filtered by session and status.
    pub async fn list_runs(&self, tenant: &str, query: &RunQuery) -> Result<Value, ApiError> {
        let list = self
            .sessions
            .store()
            .list_runs(tenant, query)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?;
        serde_json::to_value(list).map_err(|_| ApiError::Internal)
    }
}

pub(crate) fn not_found_run(run_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no run `{}` (runs are visible to the tenant that started them)",
        run_id.chars().take(100).collect::<String>()
    ))
}

/// A session id is 1 to 200 characters with no control characters.
pub(crate) fn check_session_id(session_id: &str) -> Result<(), ApiError> {
    if session_id.is_empty() || session_id.len() > 200 || session_id.chars().any(|c| c.is_control())
    {
        return Err(ApiError::BadRequest(
            "session_id must be 1 to 200 characters with no control characters".into(),
        ));
    }
    Ok(())
}

/// The run config of a request: turns, workflow, the trace (its id chosen here, so it can be
/// announced first; `trace_id` when the run already has one) grouped by the session.
pub(crate) fn run_config(
    tenant: &str,
    session_id: &str,
    run_id: &str,
    req: &RunCreate,
    trace_id: Option<String>,
) -> RunConfig {
    let trace = req.trace.clone().unwrap_or_default();
    let mut metadata = trace.metadata.unwrap_or_default();
    if let Some(m) = &req.metadata {
        for (k, v) in m {
            metadata.entry(k.clone()).or_insert(v.clone());
        }
    }
    // The trace store scopes traces by this key, so a tenant sees only its own.
    metadata.insert("tenant".into(), Value::String(tenant.to_string()));
    // The trace browser links a trace to its session and run record by these.
    metadata.insert("session_id".into(), Value::String(session_id.to_owned()));
    metadata.insert("run_id".into(), Value::String(run_id.to_owned()));
    let mut cfg = RunConfig::default();
    if let Some(n) = req.max_turns {
        cfg.max_turns = n;
    }
    if let Some(w) = trace.workflow_name {
        cfg.workflow_name = w;
    }
    let traced = !trace.disabled && !crate::trace::global_tracer().is_disabled();
    cfg.trace_id = traced.then(|| {
        trace_id
            .or(trace.trace_id)
            .unwrap_or_else(crate::trace::gen_trace_id)
    });
    cfg.group_id = Some(trace.group_id.unwrap_or_else(|| session_id.to_owned()));
    cfg.trace_metadata = (!metadata.is_empty()).then_some(metadata);
    cfg.tracing_disabled = trace.disabled;
    cfg
}

impl Core {
    /// Takes up what a previous process left in flight (call once, before serving): runs that
    /// were running resume from their last completed turn (`[runs] on_restart = "resume"`,
    /// the default), or end as interrupted, their sessions told with a `run.failed` frame of
    /// type `Interrupted` (so a client resuming after the restart learns the run's fate);
    /// queued runs start in order once their session is free; paused runs stay paused.
    /// Answers how many runs were resumed and how many interrupted.
    pub async fn recover(self: &Arc<Self>) -> (usize, usize) {
        #[cfg(feature = "nats")]
        if let Some(c) = self.cluster().cloned() {
            return self.recover_in_cluster(&c).await;
        }
        self.recover_where(&|_| true).await
    }

    /// [`recover`](Self::recover) for the runs in flight `mine` accepts (with `[cluster]`: the
    /// runs of this node and of nodes that are gone, each taken over here only if no other
    /// node took it first).
    pub(crate) async fn recover_where(
        self: &Arc<Self>,
        mine: &(dyn Fn(&crate::session::RunRecord) -> bool + Sync),
    ) -> (usize, usize) {
        let store = self.sessions.store().clone();
        let runs = match store.runs_in_flight().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not read the runs left in flight");
                return (0, 0);
            }
        };
        let (mut resumed, mut interrupted) = (0, 0);
        let mut sessions = Vec::new();
        for d in runs {
            let r = &d.record;
            if !mine(r) {
                continue;
            }
            let (Some(sid), tenant) = (r.session_id.clone(), Arc::<str>::from(r.tenant.as_str()))
            else {
                continue;
            };
            if r.status != RunStatus::Running {
                // Queued and paused runs are taken up by the node that accepted them (alone:
                // this process; in a cluster: the node restarting under the same id).
                let own = self.node_id().is_none() || r.node_id.as_deref() == self.node_id();
                if own && !sessions.contains(&(tenant.clone(), sid.clone())) {
                    sessions.push((tenant.clone(), sid.clone()));
                }
                continue;
            }
            if let Some(me) = self.node_id() {
                // Several nodes may see the same orphan: one takes it, atomically.
                match store
                    .take_over_run(&r.tenant, &r.run_id, r.node_id.as_deref(), me)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(run_id = %r.run_id, error = %e, "could not take over a run");
                        continue;
                    }
                }
            }
            if !sessions.contains(&(tenant.clone(), sid.clone())) {
                sessions.push((tenant.clone(), sid.clone()));
            }
            let Ok(owner) = self.sessions.owner(&tenant, &sid).await else {
                continue;
            };
            let run_id: Arc<str> = r.run_id.as_str().into();
            let why_not = match self.config.runs.on_restart {
                crate::config::OnRestart::MarkInterrupted => Err(format!(
                    "the server stopped while this run was in progress (its last completed turn: {}); [runs] on_restart = \"mark_interrupted\"",
                    r.turn
                )),
                crate::config::OnRestart::Resume => self.resumable(&d),
            };
            match why_not {
                Ok(state) if owner.claim(&run_id).is_ok() => {
                    tracing::info!(run_id = %run_id, turn = state.current_turn, "resuming a run the previous process left running");
                    if self.start_from_state(&tenant, &owner, state).await.is_ok() {
                        resumed += 1;
                    }
                }
                Ok(_) => {}
                Err(reason) => {
                    let end = RunEnd::interrupted(reason.clone());
                    if let Err(e) = store.record_run_end(&tenant, &r.run_id, end).await {
                        tracing::error!(run_id = %r.run_id, error = %e, "could not record an interrupted run");
                        continue;
                    }
                    interrupted += 1;
                    owner.publish(
                        &run_id,
                        FrameBody::RunFailed {
                            error_type: crate::session::records::INTERRUPTED_ERROR_TYPE.into(),
                            message: reason,
                        },
                    );
                }
            }
        }
        // Sessions with queued runs and nothing holding them: the first queued run starts.
        for (tenant, sid) in sessions {
            if let Ok(owner) = self.sessions.owner(&tenant, &sid).await {
                if let Some(next) = owner.start_waiting() {
                    let core = self.clone();
                    tokio::spawn(async move { core.start_queued(tenant, owner, next).await });
                }
            }
        }
        if resumed + interrupted > 0 {
            tracing::warn!(
                resumed,
                interrupted,
                "took up the runs the previous process left running"
            );
        }
        (resumed, interrupted)
    }

    /// A run left running can resume from its state, unless it has none, or it died while
    /// tools that are not idempotent ran (running them twice could do harm): then the reason.
    pub(crate) fn resumable(
        &self,
        d: &crate::session::RunDetail,
    ) -> Result<crate::run::RunState, String> {
        let r = &d.record;
        let state = d
            .state
            .as_deref()
            .ok_or_else(|| "the server stopped before this run saved any state".to_owned())
            .and_then(|t| {
                crate::run::RunState::from_text(t)
                    .map_err(|e| format!("its saved state cannot be read: {e}"))
            })?;
        if let Some(p) = &state.pending_turn {
            if p.reason == crate::run::state::PendingReason::ToolsStarted {
                let agent = self.agents.get(&state.current_agent.name);
                for call in &p.tool_calls {
                    let idempotent = agent
                        .and_then(|a| a.tools().iter().find(|t| t.name() == call.name).cloned())
                        .is_some_and(|t| t.policy().is_some_and(|p| p.idempotent));
                    if !idempotent {
                        return Err(format!(
                            "the server stopped while tool `{}` was running (turn {}); it is not marked idempotent, so it is not run again",
                            call.name,
                            r.turn + 1
                        ));
                    }
                }
            }
        }
        Ok(state)
    }
}

impl Core {
    /// Resumes a paused run whose pending calls are all decided: `run.resumed` on its
    /// session, then the engine goes on from its state.
    pub(crate) async fn resume_paused(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        state: crate::run::RunState,
    ) -> Result<(), ApiError> {
        let run_id: Arc<str> = state.run_id.as_str().into();
        #[cfg(feature = "nats")]
        if self.uses_mailboxes() {
            // Decided: the run goes on wherever its baton is taken (which says run.resumed).
            owner.set_paused(&run_id, false);
            let agent = state.current_agent.name.clone();
            return self
                .hand_to_mailbox(tenant, owner, &run_id, &agent, true)
                .await;
        }
        owner.set_paused(&run_id, false);
        owner.publish(&run_id, FrameBody::RunResumed);
        self.start_from_state(tenant, owner, state).await
    }

    /// Starts the engine on a run's saved state (a decided paused run, or a run taken up
    /// after a restart); the run holds its session's claim already.
    pub(crate) async fn start_from_state(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        state: crate::run::RunState,
    ) -> Result<(), ApiError> {
        let run_id: Arc<str> = state.run_id.as_str().into();
        let Some(agent) = self.agents.get(&state.starting_agent.name).cloned() else {
            let e = AgentsError::UserError(format!(
                "the run started with agent {}, which the config no longer has",
                state.starting_agent.name
            ));
            let _ = self
                .sessions
                .store()
                .record_run_end(tenant, &run_id, RunEnd::failed(&e, None, None))
                .await;
            let body = FrameBody::RunFailed {
                error_type: e.sdk_name().into(),
                message: e.to_string(),
            };
            let ended = owner.end_paused(&run_id, body);
            self.after_end(tenant, owner, &run_id, ended);
            return Err(ApiError::Conflict(e.to_string()));
        };
        let claimed = owner.claimed()?;
        let slot = TenantSlot::forced(self, tenant);
        let cfg = RunConfig::default();
        self.start_engine(
            tenant,
            owner,
            &run_id,
            &agent,
            RunInput::Items(Vec::new()),
            cfg,
            claimed,
            slot,
            Some(state),
        )
        .await
    }
}
