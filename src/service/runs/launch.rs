//! A prepared run started: at once on the session it claimed, or queued behind the
//! session's run (double-texting), and the next queued run started when a run ends.

use super::settle::RunSettler;
use super::*;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::agent::Agent;
use crate::bus::{CancelMode, Frame, FrameBody, Topic};
use crate::error::AgentsError;
use crate::items::RunInput;
use crate::run::RunConfig;
use crate::service::error::ApiError;
use crate::service::request::{OnBusy, RunCreate};
use crate::service::sessions::{Claimed, NextRun, SessionOwner, StoredRequest};
use crate::service::Core;
use crate::session::{RunEnd, RunStart, RunStatus, RunUpdate};
use tokio::sync::oneshot;

/// The session's claim for a run that has not started; released if dropped before launch.
pub(super) struct Claim {
    pub(super) owner: Arc<SessionOwner>,
    pub(super) run_id: Arc<str>,
    pub(super) armed: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            self.owner.release(&self.run_id);
        }
    }
}

/// Where a prepared run stands with its session.
pub(super) enum Place {
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
pub(super) struct QueuedGuard {
    pub(super) owner: Arc<SessionOwner>,
    pub(super) run_id: Arc<str>,
    pub(super) armed: bool,
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
    pub(super) core: Arc<Core>,
    pub(super) tenant: Arc<str>,
    pub(super) owner: Arc<SessionOwner>,
    pub(super) agent: Agent,
    pub(super) req: RunCreate,
    pub(super) run_id: Arc<str>,
    pub(super) cfg: RunConfig,
    pub(super) place: Place,
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
                    let handed = core
                        .hand_to_mailbox(&tenant, &owner, &run_id, agent.name(), false, Some(slot))
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
    pub(super) async fn start_queued(
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
                .hand_to_mailbox(&tenant, &owner, &run_id, &req.agent, false, None)
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
