//! Runs a previous process (or a node that is gone) left in flight, taken up: resumed from
//! their last stored turn, or ended as interrupted; paused runs resumed when decided.

use super::*;

use std::sync::Arc;

use crate::bus::FrameBody;
use crate::error::AgentsError;
use crate::items::RunInput;
use crate::run::RunConfig;
use crate::service::error::ApiError;
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::{RunEnd, RunStatus};

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
                .hand_to_mailbox(tenant, owner, &run_id, &agent, true, None)
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
