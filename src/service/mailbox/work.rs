//! Working the batons this node takes: the run moved to this node in the store, its session
//! claimed here with its numbering on from the bus, the run started from its request or its
//! last stored turn (or ended when delivered too often); and the control requests (cancel,
//! client tool results) other nodes send to the node executing a run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::{Held, REDELIVERY_LIMIT};
use crate::bus::{CancelMode, FrameBody};
use crate::cluster::mailbox::{Control, ControlAnswer, Taken};
use crate::error::AgentsError;
use crate::service::error::ApiError;
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::{RunEnd, RunStatus, RunUpdate};

impl Core {
    /// Works a baton this node took: takes the run over in the store, claims its session
    /// here (numbering on from the bus), and starts it (from its request, or from its last
    /// stored turn when a node before this one got that far). Acknowledged when settled.
    pub(super) async fn work_baton(self: Arc<Self>, taken: Taken, permit: OwnedSemaphorePermit) {
        let Some(m) = self.mailboxes().cloned() else {
            return;
        };
        let holding = taken.hold();
        if self.is_draining() {
            // Stopping: another node takes it.
            holding.give_back(Duration::ZERO).await;
            return;
        }
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
            // Delivered again: while a node still works it (slow, or cut off from NATS for a
            // moment) it answers on the run's control subject; only then is it left there.
            let ping = Control::Ping {
                tenant: b.tenant.clone(),
            };
            if m.cluster
                .control(&run_id, &ping)
                .await
                .is_some_and(|a| a.ok)
            {
                holding.give_back(m.cluster.config.ack_wait()).await;
                return;
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
        // The session here: the accepting node holds it for this run already; another node
        // claims it now, or finds it held by a run whose end has not reached it yet.
        let claimed_here = owner.current_run().as_deref() != Some(&*run_id);
        if claimed_here {
            self.sync_numbering(&owner).await;
            if owner.claim(&run_id).is_err() {
                holding.give_back(Duration::from_millis(500)).await;
                return;
            }
        }
        let taken_over = store
            .take_over_run(&tenant, &run_id, before.as_deref(), &me)
            .await;
        if !matches!(taken_over, Ok(true)) {
            if claimed_here {
                owner.release(&run_id);
            }
            match taken_over {
                Err(e) => {
                    tracing::warn!(run_id = %run_id, error = %e, "could not take a run; the baton goes back");
                    holding.give_back(Duration::from_secs(1)).await;
                }
                // Another node took it meanwhile (or it ended).
                _ => holding.done().await,
            }
            return;
        }
        if !claimed_here {
            self.sync_numbering(&owner).await;
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
            Control::Ping { tenant: t } if t == tenant && self.runs.contains_key(run_id) => {
                answer(Ok(()))
            }
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
