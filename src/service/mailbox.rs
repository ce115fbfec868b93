//! The service's side of the agents' mailboxes (`[cluster] mailboxes`, the default in a
//! cluster): a run accepted here is recorded, its session claimed here, and its baton put in
//! its agent's mailbox; whichever node takes the baton executes the run in its local actor
//! and acknowledges the baton once the run is settled. Meanwhile this node's session topic
//! is fed from the bus stream (the frames the executing node numbers), so every transport
//! here reads the run as if it ran here; its end frame releases the session here.
//!
//! A baton delivered again (its node died before the acknowledgement) resumes the run from
//! its last stored turn, its frames numbered on from the session's last frame on the bus.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bus::{CancelMode, FrameBody};
use crate::cluster::bus::RemoteDelivery;
use crate::cluster::mailbox::{Baton, Control, ControlAnswer, Holding, MailboxError, Taken};
use crate::cluster::Cluster;
use crate::error::AgentsError;
use crate::service::error::ApiError;
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::{RunEnd, RunStatus, RunUpdate};

/// The error type of a run whose baton was delivered more than `mailbox_max_deliver` times.
pub const REDELIVERY_LIMIT: &str = "MailboxRedeliveryLimit";

/// This node's mailbox work: the batons it holds, by run id.
pub struct Mailboxes {
    cluster: Arc<Cluster>,
    held: DashMap<String, Held>,
    room: Arc<Semaphore>,
}

/// A baton this node works: released (acknowledged, its place freed, its control subject
/// closed) once its run is settled.
struct Held {
    holding: Holding,
    _permit: OwnedSemaphorePermit,
    control: Option<tokio::task::JoinHandle<()>>,
}

impl Mailboxes {
    /// Mailbox work for `cluster`'s node, at most `mailbox_node_runs` batons at once.
    pub fn new(cluster: Arc<Cluster>) -> Arc<Mailboxes> {
        let room = Arc::new(Semaphore::new(cluster.config.mailbox_node_runs.max(1)));
        Arc::new(Mailboxes {
            cluster,
            held: DashMap::new(),
            room,
        })
    }

    /// Batons this node works now.
    pub fn working(&self) -> usize {
        self.held.len()
    }
}

impl Core {
    /// The mailboxes, when this node is in a cluster that runs through them.
    pub fn mailboxes(&self) -> Option<&Arc<Mailboxes>> {
        self.mailboxes.get()
    }

    /// Starts taking batons from the agents' mailboxes (once, after joining the cluster),
    /// until `stop`.
    pub fn take_batons(self: &Arc<Self>, stop: CancellationToken) {
        let Some(m) = self.mailboxes().cloned() else {
            return;
        };
        let core = Arc::downgrade(self);
        m.cluster.spawn_takers(
            m.room.clone(),
            move |taken, permit| {
                if let Some(core) = core.upgrade() {
                    tokio::spawn(async move { core.work_baton(taken, permit).await });
                }
            },
            stop,
        );
    }

    /// Hands a recorded run whose session is claimed here to its agent's mailbox, and feeds
    /// this node's session topic from the bus until the run's end frame. On a full mailbox
    /// the run ends failed (`overloaded` to the caller).
    pub(crate) async fn hand_to_mailbox(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        agent: &str,
        resume: bool,
    ) -> Result<(), ApiError> {
        let Some(m) = self.mailboxes().cloned() else {
            return Err(ApiError::Internal);
        };
        // Follow the session's subject first, so no frame of the run is missed.
        self.sync_numbering(owner).await;
        let followed = m
            .cluster
            .follow(tenant, owner.session_id(), None)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not follow a session on the bus stream");
                ApiError::Internal
            });
        let baton = Baton {
            run_id: run_id.to_string(),
            tenant: tenant.to_string(),
            session_id: owner.session_id().to_string(),
            agent: agent.to_owned(),
            accepted_by: m.cluster.node_id.clone(),
            resume,
        };
        // A run's first baton is step 0; a resumed run's, a new step each time.
        let step = if resume {
            (crate::session::records::now_ms() & 0x7fff_ffff) as u32 | 1
        } else {
            0
        };
        let sent = match followed {
            Ok(f) => m.cluster.send_baton(&baton, step).await.map(|_| f),
            Err(e) => Err(MailboxError::Nats(e.to_string())),
        };
        let followed = match sent {
            Ok(f) => f,
            Err(e) => {
                let answer = match &e {
                    MailboxError::Full(_) => ApiError::Overloaded(e.to_string()),
                    MailboxError::Nats(_) => {
                        tracing::error!(run_id = %run_id, error = %e, "a run could not be handed to its mailbox");
                        ApiError::Internal
                    }
                };
                let err = AgentsError::UserError(e.to_string());
                let _ = self
                    .sessions
                    .store()
                    .record_run_end(tenant, run_id, RunEnd::failed(&err, None, None))
                    .await;
                let body = FrameBody::RunFailed {
                    error_type: err.sdk_name().into(),
                    message: err.to_string(),
                };
                let ended = owner.end_paused(run_id, body);
                self.after_end(tenant, owner, run_id, ended);
                return Err(answer);
            }
        };
        owner.set_remote(run_id, true);
        let core = self.clone();
        let (tenant, owner, run_id) = (tenant.clone(), owner.clone(), run_id.clone());
        tokio::spawn(async move {
            core.feed_from_bus(tenant, owner, run_id, followed.follow)
                .await
        });
        Ok(())
    }

    /// Relays the session's frames from the bus into this node's topic until `run_id`'s end
    /// (or pause); then releases the session here and wakes whoever waits for the end.
    async fn feed_from_bus(
        self: Arc<Self>,
        tenant: Arc<str>,
        owner: Arc<SessionOwner>,
        run_id: Arc<str>,
        mut follow: crate::cluster::bus::RemoteFollow,
    ) {
        let session_id = owner.session_id().clone();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), follow.recv()).await;
            let r = match next {
                Ok(Some(RemoteDelivery::Frame(r))) => r,
                Ok(Some(RemoteDelivery::Truncated { .. })) => continue,
                Ok(None) | Err(_) => {
                    // Quiet or unreadable: the run may have ended without its frames
                    // reaching the bus (its node's bus queue overflowed).
                    if self.run_is_over(&tenant, &run_id).await {
                        tracing::warn!(run_id = %run_id, "a run executing elsewhere ended without its end frame on the bus; its session is released here");
                        owner.set_remote(&run_id, false);
                        owner.release(&run_id);
                        self.waiters.remove(&*run_id);
                        return;
                    }
                    continue;
                }
            };
            let Some(frame) = crate::cluster::relay::frame_of(&r, &session_id) else {
                tracing::warn!(
                    seq = r.seq,
                    "a frame from the bus that this node cannot read is skipped"
                );
                continue;
            };
            let ours = *frame.run_id == *run_id && frame.nesting.is_none();
            match &frame.body {
                FrameBody::RunInterrupted { .. } if ours => {
                    let f = owner.relay(frame);
                    owner.set_paused(&run_id, true);
                    owner.set_remote(&run_id, false);
                    self.after_end(&tenant, &owner, &run_id, (f, None));
                    return;
                }
                b if ours && b.is_terminal() => {
                    let ended = owner.end_relayed(&run_id, frame);
                    self.after_end(&tenant, &owner, &run_id, ended);
                    return;
                }
                _ => {
                    owner.relay(frame);
                }
            }
        }
    }

    async fn run_is_over(&self, tenant: &str, run_id: &str) -> bool {
        matches!(
            self.sessions.store().get_run(tenant, run_id).await,
            Ok(Some(r)) if r.status.is_final() || r.status == RunStatus::AwaitingApproval
        ) || matches!(
            self.sessions.store().get_run(tenant, run_id).await,
            Ok(None)
        )
    }

    /// Works a baton this node took: takes the run over in the store, claims its session
    /// here (numbering on from the bus), and starts it (from its request, or from its last
    /// stored turn when a node before this one got that far). Acknowledged when settled.
    async fn work_baton(self: Arc<Self>, taken: Taken, permit: OwnedSemaphorePermit) {
        let Some(m) = self.mailboxes().cloned() else {
            return;
        };
        let holding = taken.hold();
        let b = taken.baton.clone();
        let tenant: Arc<str> = b.tenant.as_str().into();
        let run_id: Arc<str> = b.run_id.as_str().into();
        let store = self.sessions.store().clone();
        let detail = match store.run_detail(&tenant, &run_id).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::warn!(run_id = %run_id, "a baton whose run has no record is dropped");
                holding.done().await;
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "the store failed; the baton goes back to its mailbox");
                holding.give_back(Duration::from_secs(1)).await;
                return;
            }
        };
        if detail.record.status != RunStatus::Running {
            // Settled (or paused) already: a delivery after the run's end.
            holding.done().await;
            return;
        }
        let me = m.cluster.node_id.clone();
        let before = detail.record.node_id.clone();
        if taken.delivered > 1 {
            if let Some(n) = before.as_deref().filter(|n| *n != me) {
                // Delivered again while the node on it may still be alive (slow, or cut off
                // from NATS for a moment): only a node that is gone gives its runs up.
                if let Ok(live) = m.cluster.live_nodes().await {
                    if live.iter().any(|l| l.node_id == n) {
                        holding.give_back(m.cluster.config.ack_wait()).await;
                        return;
                    }
                }
            }
        }
        let owner = match self.sessions.owner(&tenant, &b.session_id).await {
            Ok(o) => o,
            Err(_) => {
                holding.give_back(Duration::from_secs(1)).await;
                return;
            }
        };
        if taken.delivered > m.cluster.config.mailbox_max_deliver {
            let why = format!(
                "the run's baton was delivered {} times (cluster.mailbox_max_deliver is {}): the nodes executing it kept stopping before it ended",
                taken.delivered - 1,
                m.cluster.config.mailbox_max_deliver
            );
            self.sync_numbering(&owner).await;
            let mut end = RunEnd::interrupted(why.clone());
            if let Some(e) = end.error.as_mut() {
                e.error_type = REDELIVERY_LIMIT.into();
            }
            let _ = store.record_run_end(&tenant, &run_id, end).await;
            let ended = owner.end_paused(
                &run_id,
                FrameBody::RunFailed {
                    error_type: REDELIVERY_LIMIT.into(),
                    message: why,
                },
            );
            self.after_end(&tenant, &owner, &run_id, ended);
            holding.done().await;
            return;
        }
        match store
            .take_over_run(&tenant, &run_id, before.as_deref(), &me)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another node took it meanwhile (or it ended).
                holding.done().await;
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "could not take a run; the baton goes back");
                holding.give_back(Duration::from_secs(1)).await;
                return;
            }
        }
        self.sync_numbering(&owner).await;
        if owner.current_run().as_deref() != Some(&*run_id) && owner.claim(&run_id).is_err() {
            // This node's owner holds another run of the session (it will end soon).
            let _ = store
                .take_over_run(&tenant, &run_id, Some(&me), before.as_deref().unwrap_or(""))
                .await;
            holding.give_back(Duration::from_millis(500)).await;
            return;
        }
        let control = {
            let core = Arc::downgrade(&self);
            let (tenant, run_id2) = (tenant.clone(), run_id.clone());
            m.cluster
                .serve_control(&run_id, move |c| match core.upgrade() {
                    Some(core) => core.answer_control(&tenant, &run_id2, c),
                    None => ControlAnswer {
                        ok: false,
                        error: Some("the node is stopping".into()),
                    },
                })
                .await
        };
        m.held.insert(
            run_id.to_string(),
            Held {
                holding,
                _permit: permit,
                control,
            },
        );
        let started = match detail.state.is_some() {
            true => match self.resumable(&detail) {
                Ok(state) => {
                    tracing::info!(run_id = %run_id, turn = state.current_turn, delivered = taken.delivered, "resuming a run from its last stored turn");
                    if b.resume && taken.delivered == 1 {
                        // Decided after a pause: announced as a local resume is.
                        owner.publish(&run_id, FrameBody::RunResumed);
                    }
                    self.start_from_state(&tenant, &owner, state).await
                }
                Err(reason) => {
                    let end = RunEnd::interrupted(reason.clone());
                    let _ = store.record_run_end(&tenant, &run_id, end).await;
                    let ended = owner.end_paused(
                        &run_id,
                        FrameBody::RunFailed {
                            error_type: crate::session::records::INTERRUPTED_ERROR_TYPE.into(),
                            message: reason,
                        },
                    );
                    self.after_end(&tenant, &owner, &run_id, ended);
                    Err(ApiError::Internal)
                }
            },
            false => {
                let update = RunUpdate {
                    status: RunStatus::Running,
                    state: None,
                    node_id: Some(me),
                };
                let _ = store.update_run(&tenant, &run_id, update).await;
                self.start_fresh(&tenant, &owner, &run_id, &detail).await
            }
        };
        if started.is_err() {
            // Ended already (its record and end frame written by the failure).
            self.baton_settled(&run_id);
        }
    }

    /// Starts a recorded run from its stored request (a baton taken from a mailbox); the
    /// run holds its session's claim already. On failure its record and end frame say why.
    pub(crate) async fn start_fresh(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        detail: &crate::session::RunDetail,
    ) -> Result<(), ApiError> {
        let request = detail
            .request
            .as_deref()
            .and_then(crate::service::sessions::StoredRequest::parse);
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
        let cfg = crate::service::runs::run_config(
            tenant,
            owner.session_id(),
            run_id,
            &r.request,
            detail.record.trace_id.clone(),
        );
        let slot = crate::service::runs::TenantSlot::forced(self, tenant);
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

    /// A run executed here is settled: its baton leaves the mailbox.
    pub(crate) fn baton_settled(&self, run_id: &str) {
        let Some(m) = self.mailboxes() else { return };
        if let Some((_, held)) = m.held.remove(run_id) {
            if let Some(c) = &held.control {
                c.abort();
            }
            tokio::spawn(async move { held.holding.done().await });
        }
    }

    /// In a cluster: this node's numbering of the session goes on from the session's last
    /// frame on the bus (another node may have numbered frames since).
    pub(crate) async fn sync_numbering(&self, owner: &SessionOwner) {
        let Some(c) = self.cluster() else { return };
        let subject = c.bus_subject(owner.tenant(), owner.session_id());
        match c.last_on(&subject).await {
            Ok((_, seq, Some(epoch))) if epoch == owner.epoch() => {
                if let Some(t) = owner.topic() {
                    t.continue_after(seq);
                }
            }
            Ok((_, 0, None)) => {
                // Nothing of the session on the bus: no node numbered past the last seq
                // the store knows published.
                if let Some(t) = owner.topic() {
                    t.continue_after_safe();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the session's last frame on the bus; numbering from the store")
            }
        }
    }

    fn answer_control(&self, tenant: &str, run_id: &str, c: Control) -> ControlAnswer {
        let answer = |r: Result<(), ApiError>| match r {
            Ok(()) => ControlAnswer {
                ok: true,
                error: None,
            },
            Err(e) => ControlAnswer {
                ok: false,
                error: Some(e.to_string()),
            },
        };
        match c {
            Control::Cancel {
                tenant: t,
                mode,
                by_run_id,
            } if t == tenant => match self.runs.get(run_id) {
                Some(e) => {
                    e.cancel_by(mode, by_run_id.map(Arc::from));
                    answer(Ok(()))
                }
                None => answer(Err(crate::service::runs::not_found_run(run_id))),
            },
            Control::ToolResult {
                tenant: t,
                call_id,
                output,
            } if t == tenant => answer(self.tool_result(tenant, run_id, &call_id, output)),
            _ => answer(Err(crate::service::runs::not_found_run(run_id))),
        }
    }

    /// Asks the node executing `run_id` (anywhere in the cluster) to cancel it.
    pub(crate) async fn cancel_remote(
        &self,
        tenant: &str,
        run_id: &str,
        mode: CancelMode,
        by_run_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(m) = self.mailboxes() else {
            return Err(crate::service::runs::not_found_run(run_id));
        };
        let c = Control::Cancel {
            tenant: tenant.to_owned(),
            mode,
            by_run_id: by_run_id.map(str::to_owned),
        };
        match m.cluster.control(run_id, &c).await {
            Some(a) if a.ok => Ok(()),
            _ => Err(crate::service::runs::not_found_run(run_id)),
        }
    }

    /// Sends a client tool's result to the node executing `run_id`.
    pub async fn tool_result_remote(
        &self,
        tenant: &str,
        run_id: &str,
        call_id: &str,
        output: String,
    ) -> Result<(), ApiError> {
        let Some(m) = self.mailboxes() else {
            return Err(crate::service::runs::not_found_run(run_id));
        };
        let c = Control::ToolResult {
            tenant: tenant.to_owned(),
            call_id: call_id.to_owned(),
            output,
        };
        match m.cluster.control(run_id, &c).await {
            Some(a) if a.ok => Ok(()),
            Some(a) => Err(ApiError::NotFound(a.error.unwrap_or_default())),
            None => Err(crate::service::runs::not_found_run(run_id)),
        }
    }
}
