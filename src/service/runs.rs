//! Runs in the service: checked and set up ([`Core::prepare_run`]), started on the session
//! they claimed ([`PreparedRun::launch`]), listed while they go (the run registry, for cancel
//! and client tool results), and settled when they end ([`RunSettler`]): the record written,
//! the tenant's place and the session's claim released, and only then the end frame published.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::agent::Agent;
use crate::bus::{CancelMode, Frame, Topic};
use crate::error::AgentsError;
use crate::items::RunInput;
use crate::run::{gen_run_id, RunCanceller, RunConfig, RunEnded, RunOutcome, RunSettle};
use crate::service::error::ApiError;
use crate::service::request::RunCreate;
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::{RunEnd, RunQuery, RunStart};
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
    pending: Option<CancelMode>,
}

impl RunEntry {
    pub fn cancel(&self, mode: CancelMode) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        match &c.canceller {
            Some(k) => k.cancel(mode),
            None => c.pending = Some(mode),
        }
    }

    fn started(&self, canceller: RunCanceller) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mode) = c.pending.take() {
            canceller.cancel(mode);
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

/// A run checked and set up, not started yet; see [`Core::prepare_run`]. Dropping it
/// releases its places (tenant, session).
pub struct PreparedRun {
    core: Arc<Core>,
    tenant: Arc<str>,
    agent: Agent,
    input: RunInput,
    run_id: Arc<str>,
    cfg: RunConfig,
    topic: Arc<Topic>,
    epoch: String,
    reserve: Option<(String, u64)>,
    slot: TenantSlot,
    claim: Claim,
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
        &self.topic
    }

    /// The session's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Starts the run: records it (with the session's seq reservation) and hands it to its
    /// agent.
    pub async fn launch(self) -> Result<Started, ApiError> {
        let PreparedRun {
            core,
            tenant,
            agent,
            input,
            run_id,
            cfg,
            topic,
            epoch,
            reserve,
            slot,
            mut claim,
        } = self;
        let owner = claim.owner.clone();
        let store = core.sessions.store().clone();
        let start = RunStart {
            run_id: run_id.to_string(),
            tenant: tenant.to_string(),
            session_id: Some(owner.session_id().to_string()),
            starting_agent: agent.name().to_owned(),
            trace_id: cfg.trace_id.clone(),
            seq_reserved: reserve.clone(),
        };
        // Recorded before the run can publish past the old reservation or save a turn.
        store.record_run_start(start).await.map_err(|e| {
            tracing::error!(run_id = %run_id, error = %e, "could not record the run's start");
            ApiError::Internal
        })?;
        if let Some((epoch, upto)) = &reserve {
            owner.reserved(epoch, *upto);
        }
        // Client tools find the run's topic through this; registered before the run starts,
        // since its first turn may call one at once.
        core.calls.register_run(run_id.clone(), topic.clone());
        core.runs.insert(
            run_id.to_string(),
            RunEntry {
                tenant: tenant.clone(),
                control: Default::default(),
            },
        );
        let (end_tx, end) = oneshot::channel();
        let settler = Arc::new(RunSettler {
            core: core.clone(),
            tenant: tenant.clone(),
            owner: owner.clone(),
            slot: std::sync::Mutex::new(Some(slot)),
            end: std::sync::Mutex::new(Some(end_tx)),
        });
        let trace_id = cfg.trace_id.clone();
        let started = core
            .runner
            .request_with(&agent, input, ())
            .config(cfg)
            .topic(topic.clone())
            .session(core.sessions.conversation(&owner))
            .run_id(run_id.to_string())
            .settle(settler)
            .listen(false)
            .start();
        let run = match started {
            Ok(run) => run,
            Err(e) => {
                core.calls.finish_run(&run_id);
                core.runs.remove(&*run_id);
                let end = RunEnd::failed(&e, Some(agent.name().to_owned()), None);
                let _ = store.record_run_end(&tenant, &run_id, end).await;
                return Err(match e {
                    AgentsError::Overloaded(m) => ApiError::Overloaded(m),
                    other => {
                        tracing::error!(error = %other, "run could not start");
                        ApiError::Internal
                    }
                });
            }
        };
        // The settler releases the session's claim from now on.
        claim.armed = false;
        if let Some(e) = core.runs.get(&*run_id) {
            e.started(run.canceller());
        }
        core.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
        Ok(Started {
            run_id: run_id.to_string(),
            trace_id,
            topic,
            epoch,
            end,
        })
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
    end: std::sync::Mutex<Option<oneshot::Sender<Arc<Frame>>>>,
}

#[async_trait]
impl RunSettle for RunSettler {
    async fn settle(&self, ended: RunEnded) {
        let core = &self.core;
        let rid = &ended.run_id;
        if let RunOutcome::Failed(e) = &ended.outcome {
            tracing::info!(run_id = %rid, error = %e, "run failed");
        }
        let end = RunEnd::from_outcome(&ended.outcome, &ended.last_agent, ended.usage.clone());
        if let Err(e) = core
            .sessions
            .store()
            .record_run_end(&self.tenant, rid, end)
            .await
        {
            tracing::error!(run_id = %rid, error = %e, "could not record the run's end");
        }
        core.runs.remove(&**rid);
        core.calls.finish_run(rid);
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        core.metrics.runs_finished.fetch_add(1, Ordering::Relaxed);
        core.metrics.run_ends.count(&ended.outcome);
        let frame = self.owner.end_run(ended);
        let tx = self.end.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(tx), Some(f)) = (tx, frame) {
            let _ = tx.send(f);
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

    /// Checks and sets up a run without starting it: the session is claimed, and its id,
    /// trace id and the session's epoch are known, so a caller can announce it
    /// (`run.accepted`) and subscribe before any of its frames exist.
    pub async fn prepare_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        session_id: &str,
        req: RunCreate,
    ) -> Result<PreparedRun, ApiError> {
        check_session_id(session_id)?;
        let agent = self.check_run(&req)?;
        let slot = TenantSlot::take(self, tenant)?;
        let owner = self.sessions.owner(tenant, session_id).await?;
        let run_id: Arc<str> = gen_run_id().into();
        // One run per session at a time, so a session's items never interleave.
        let claimed = owner.claim(&run_id)?;
        let claim = Claim {
            owner: owner.clone(),
            run_id: run_id.clone(),
            armed: true,
        };
        let trace = req.trace.unwrap_or_default();
        let mut metadata = trace.metadata.unwrap_or_default();
        if let Some(m) = req.metadata {
            for (k, v) in m {
                metadata.entry(k).or_insert(v);
            }
        }
        // The trace store scopes traces by this key, so a tenant sees only its own.
        metadata.insert("tenant".into(), Value::String(tenant.to_string()));
        // The trace browser links a trace to its session and run record by these.
        metadata.insert("session_id".into(), Value::String(session_id.to_owned()));
        metadata.insert("run_id".into(), Value::String(run_id.to_string()));
        let mut cfg = RunConfig::default();
        if let Some(n) = req.max_turns {
            cfg.max_turns = n;
        }
        if let Some(w) = trace.workflow_name {
            cfg.workflow_name = w;
        }
        // The trace id is chosen here (not by the engine) so it can be announced first.
        let traced = !trace.disabled && !crate::trace::global_tracer().is_disabled();
        cfg.trace_id = traced.then(|| trace.trace_id.unwrap_or_else(crate::trace::gen_trace_id));
        cfg.group_id = Some(trace.group_id.unwrap_or_else(|| session_id.to_owned()));
        cfg.trace_metadata = (!metadata.is_empty()).then_some(metadata);
        cfg.tracing_disabled = trace.disabled;
        Ok(PreparedRun {
            core: self.clone(),
            tenant: tenant.clone(),
            agent,
            input: req.input,
            run_id,
            cfg,
            topic: claimed.topic,
            epoch: claimed.epoch,
            reserve: claimed.reserve,
            slot,
            claim,
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
        match rec {
            Some(r) => serde_json::to_value(r).map_err(|_| ApiError::Internal),
            None => Err(not_found_run(run_id)),
        }
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
