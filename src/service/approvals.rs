//! Human approval of tool calls (PROTOCOL.md 6.3) in the service: a paused run is only its
//! stored state (status `awaiting_approval`, the pending calls in its state): no task, no
//! memory. A decision (`run.approve` / `run.reject`, `POST /v1/runs/{id}/decisions`) is
//! recorded in that state; when every pending call is decided the run resumes. Decisions on
//! one session are taken one at a time (the session owner's decision lock), so none is lost.
//! Calls whose tool has an approval timeout are rejected when due (the janitor asks the store).

use std::sync::Arc;

use serde_json::Value;

use crate::bus::CancelMode;
use crate::run::state::{Decision, RunState, DEFAULT_REJECTION_MESSAGE};
use crate::service::error::ApiError;
use crate::service::runs::not_found_run;
use crate::service::Core;
use crate::session::{RunStatus, RunUpdate};

impl Core {
    /// A tenant's run state (`GET /v1/runs/{run_id}/state`), as its last turn end saved it.
    pub async fn run_state(&self, tenant: &str, run_id: &str) -> Result<Value, ApiError> {
        let detail = self
            .sessions
            .store()
            .run_detail(tenant, run_id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| not_found_run(run_id))?;
        let Some(text) = detail.state else {
            return Err(ApiError::NotFound(format!(
                "run {run_id} has no saved state yet (it is saved at each turn end)"
            )));
        };
        serde_json::from_str(&text).map_err(|e| {
            tracing::error!(run_id, error = %e, "a stored run state is not JSON");
            ApiError::Internal
        })
    }

    /// Records a decision on a pending tool call of a tenant's paused run; when every
    /// pending call is decided, the run resumes.
    pub async fn decide(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        run_id: &str,
        call_id: &str,
        decision: Decision,
        always: bool,
    ) -> Result<(), ApiError> {
        let store = self.sessions.store().clone();
        let detail = store
            .run_detail(tenant, run_id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| not_found_run(run_id))?;
        let Some(session_id) = detail.record.session_id.clone() else {
            return Err(not_found_run(run_id));
        };
        let owner = self.sessions.owner(tenant, &session_id).await?;
        // One decision at a time per session: each reads the state the last one wrote.
        let _turn = owner.decisions().lock().await;
        let detail = store
            .run_detail(tenant, run_id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| not_found_run(run_id))?;
        if detail.record.status != RunStatus::AwaitingApproval {
            return Err(ApiError::Conflict(format!(
                "run {run_id} is not waiting for approval (it is {})",
                detail.record.status.as_str()
            )));
        }
        let mut state = parse_state(run_id, detail.state.as_deref())?;
        if !state.interruptions().iter().any(|i| i.call_id == call_id) {
            return Err(ApiError::NotFound(format!(
                "run {run_id} has no tool call `{}` waiting for approval",
                call_id.chars().take(100).collect::<String>()
            )));
        }
        state
            .decide(call_id, decision, always)
            .map_err(|e| ApiError::Conflict(e.to_string()))?;
        let decided = state.is_decided();
        let update = RunUpdate {
            status: if decided {
                RunStatus::Running
            } else {
                RunStatus::AwaitingApproval
            },
            state: Some(state.to_text()),
            node_id: None,
        };
        if !store
            .update_run(tenant, run_id, update)
            .await
            .map_err(store_failed)?
        {
            return Err(ApiError::Conflict(format!(
                "run {run_id} is not waiting for approval any more"
            )));
        }
        if decided {
            self.resume_paused(tenant, &owner, state).await?;
        }
        Ok(())
    }

    /// Rejects the pending calls whose approval deadline has passed (the janitor calls it).
    /// Answers how many runs it decided.
    pub async fn reject_due_approvals(self: &Arc<Self>) -> usize {
        let now = crate::session::records::now_ms();
        let due = match self.sessions.store().due_approvals(now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not look for due approvals");
                return 0;
            }
        };
        let mut n = 0;
        for (tenant, run_id) in due {
            let tenant: Arc<str> = tenant.into();
            let Ok(value) = self.run_state(&tenant, &run_id).await else {
                continue;
            };
            let Ok(state) = RunState::from_json(value) else {
                continue;
            };
            for p in state.interruptions() {
                let due = p.deadline_ms.is_some_and(|d| d <= now);
                if due
                    && state
                        .context
                        .approvals
                        .decision(&p.tool, &p.call_id)
                        .is_none()
                {
                    let d = Decision {
                        approved: false,
                        message: Some(format!(
                            "{DEFAULT_REJECTION_MESSAGE} (No decision came in time.)"
                        )),
                    };
                    if self
                        .decide(&tenant, &run_id, &p.call_id, d, false)
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Answers a client-side tool call of a tenant's run, wherever it executes (in a
    /// cluster with mailboxes, the node executing it is asked).
    pub async fn tool_result_any(
        &self,
        tenant: &str,
        run_id: &str,
        call_id: &str,
        output: String,
    ) -> Result<(), ApiError> {
        #[cfg(feature = "nats")]
        if self.mailboxes().is_some() && self.runs.get(run_id).is_none() {
            return self
                .tool_result_remote(tenant, run_id, call_id, output)
                .await;
        }
        self.tool_result(tenant, run_id, call_id, output)
    }

    /// Cancels a tenant's run whatever it is doing: running (through its task), or paused
    /// or queued (only stored state: ended here).
    pub async fn cancel_any(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        run_id: &str,
        mode: CancelMode,
    ) -> Result<(), ApiError> {
        if self.cancel_run(tenant, run_id, mode).is_ok() {
            return Ok(());
        }
        let detail = self
            .sessions
            .store()
            .run_detail(tenant, run_id)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| not_found_run(run_id))?;
        let Some(session_id) = detail.record.session_id.clone() else {
            return Err(not_found_run(run_id));
        };
        match detail.record.status {
            RunStatus::AwaitingApproval => {
                let owner = self.sessions.owner(tenant, &session_id).await?;
                let _turn = owner.decisions().lock().await;
                let run: Arc<str> = run_id.into();
                self.end_paused_run(tenant, &owner, &run, CancelMode::Immediate, None)
                    .await;
                Ok(())
            }
            RunStatus::Queued => {
                let owner = self.sessions.owner(tenant, &session_id).await?;
                let run: Arc<str> = run_id.into();
                owner.unqueue(run_id);
                self.end_paused_run(tenant, &owner, &run, CancelMode::Immediate, None)
                    .await;
                Ok(())
            }
            #[cfg(feature = "nats")]
            RunStatus::Running if self.mailboxes().is_some() => {
                // Executing on another node: asked there.
                self.cancel_remote(tenant, run_id, mode, None).await
            }
            _ => Err(not_found_run(run_id)),
        }
    }
}

fn parse_state(run_id: &str, text: Option<&str>) -> Result<RunState, ApiError> {
    let Some(text) = text else {
        tracing::error!(run_id, "a paused run has no saved state");
        return Err(ApiError::Internal);
    };
    RunState::from_text(text).map_err(|e| {
        tracing::error!(run_id, error = %e, "a paused run's state cannot be read");
        ApiError::Internal
    })
}

fn store_failed(e: crate::session::SessionError) -> ApiError {
    tracing::error!(error = %e, "session store failed");
    ApiError::Internal
}
