//! Runs in the service: checked and set up ([`Core::prepare_run`]), started on the session
//! they claimed or queued behind its run ([`PreparedRun::launch`], double-texting), listed
//! while they go (the run registry, for cancel and client tool results), and settled when
//! they end (`RunSettler`): the record written, the tenant's place and the session's claim
//! released, and only then the end frame published; then the session's next queued run starts.
//!
//! - this file: the run registry, the tenant's places, and the requests on runs (prepare,
//!   cancel, client tool results, read, list);
//! - [`launch`]: a prepared run started now or queued behind the session's run;
//! - [`settle`]: a run's end settled before its end frame goes out;
//! - [`recover`]: runs left in flight by a previous process (or a node that is gone) taken up.

mod launch;
mod recover;
mod settle;

use launch::{Claim, Place, QueuedGuard};
pub use launch::{PreparedRun, Started};

use std::sync::Arc;

use serde_json::Value;

use crate::agent::Agent;
use crate::bus::CancelMode;
use crate::run::{gen_run_id, RunCanceller, RunConfig};
use crate::service::error::ApiError;
use crate::service::request::RunCreate;
use crate::service::sessions::ClaimOrQueue;
use crate::service::Core;
use crate::session::{RunQuery, RunStatus};

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
