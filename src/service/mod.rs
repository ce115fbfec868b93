//! The service layer between the transports (HTTP in `crate::server`, WebSocket in
//! `crate::hub`) and the engine: the runner and its cast, the session bus, the runs in
//! progress, sessions, limits, metrics, and the shutdown switches. Every transport goes
//! through [`Core`], so they all behave alike.
//!
//! - [`error`]: `ApiError`, the one error type of every answer.
//! - [`cast`]: from config to agents, models and tools.
//! - [`tools`]: `http` and `client` tools.
//! - [`telemetry`]: named events that log and count (errors, lagged subscribers).

pub mod cast;
pub mod error;
pub mod telemetry;
pub mod tools;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actor::Stage;
use crate::agent::Agent;
use crate::bus::{Bus, BusLimits, CancelMode, Frame, Topic};
use crate::config::{Config, ConfigError, KeyTable, LimitsConfig};
use crate::error::AgentsError;
use crate::items::RunInput;
use crate::run::{gen_run_id, RunCanceller, RunConfig, Runner};
use crate::service::cast::{build_cast, AgentInfo};
use crate::service::error::ApiError;
use crate::service::tools::ClientCalls;
use crate::session::{MemorySession, Session};
pub use crate::wire::Format;

/// Where conversations are kept: opens the memory of a tenant's session.
pub trait SessionStore: Send + Sync + 'static {
    /// The session's memory (created empty if new).
    fn open(&self, tenant: &str, session_id: &str) -> Arc<dyn Session>;
    /// The durable store behind it, if any (run records, listing, one run per session).
    fn durable(&self) -> Option<&crate::session::SessionStore> {
        None
    }
}

/// Sessions kept in memory, lost at exit (`[sessions] store = "memory"`).
#[derive(Default)]
pub struct MemoryStore;

impl SessionStore for MemoryStore {
    fn open(&self, _tenant: &str, session_id: &str) -> Arc<dyn Session> {
        Arc::new(MemorySession::new(session_id))
    }
}

/// Sessions and run records in the embedded SQLite store (the default).
pub struct SqliteStore(pub crate::session::SessionStore);

impl SessionStore for SqliteStore {
    fn open(&self, tenant: &str, session_id: &str) -> Arc<dyn Session> {
        self.0.session(tenant, session_id)
    }
    fn durable(&self) -> Option<&crate::session::SessionStore> {
        Some(&self.0)
    }
}

/// The store `[sessions] store` names: `memory`, or an SQLite URL or path (default
/// `sqlite://callboard.db`, in the working directory).
pub fn open_store(config: &Config) -> Result<Arc<dyn SessionStore>, String> {
    let url = config
        .sessions
        .store
        .clone()
        .unwrap_or_else(|| "sqlite://callboard.db".to_owned());
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(MemoryStore));
    }
    match crate::session::SessionStore::open(&url) {
        Ok(store) => {
            let n = store.recovered_runs();
            if n > 0 {
                tracing::warn!(
                    runs = n,
                    "runs left running by a previous process are marked interrupted"
                );
            }
            Ok(Arc::new(SqliteStore(store)))
        }
        Err(e) => Err(format!(
            "{}: sessions.store: cannot open {url}: {e}",
            config.source
        )),
    }
}

/// Trace options of `run.create` (PROTOCOL.md section 2).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Workflow name of the run's trace.
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// A given trace id (`trace_<32 hex>`).
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Trace group; default: the session id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Trace metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// No trace for this run.
    #[serde(default)]
    pub disabled: bool,
}

/// The body of a run request: `run.create` minus its `type`, or the HTTP POST body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    /// `run.create` when an HTTP body carries the frame's `type` (ignored otherwise).
    #[serde(default, rename = "type")]
    pub frame_type: Option<String>,
    /// The client's request id (echoed in `run.accepted`).
    #[serde(default)]
    pub id: Option<Value>,
    /// The session (in the HTTP path for HTTP requests).
    #[serde(default)]
    pub session_id: Option<String>,
    /// The starting agent.
    pub agent: String,
    /// A string or a list of input items.
    pub input: RunInput,
    /// Turn limit (default 10).
    #[serde(default)]
    pub max_turns: Option<u64>,
    /// Free metadata kept with the run (added to the trace metadata).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Trace options.
    #[serde(default)]
    pub trace: Option<TraceRequest>,
    /// Format of the frames this request subscribes to.
    #[serde(default)]
    pub format: Option<Format>,
}

/// A run that was started.
pub struct Started {
    /// Its id.
    pub run_id: String,
    /// Its trace id (when traced).
    pub trace_id: Option<String>,
    /// The topic it publishes on.
    pub topic: Arc<Topic>,
    /// Its frames, lossless, when asked for.
    pub frames: Option<mpsc::UnboundedReceiver<Arc<Frame>>>,
}

/// A run in the registry. It is listed before it starts (its first frames, and so its id,
/// may reach clients before `start` returns); the canceller comes once it has started, and
/// a cancel asked for in between is applied then.
struct RunEntry {
    tenant: Arc<str>,
    control: std::sync::Mutex<RunControl>,
}

#[derive(Default)]
struct RunControl {
    canceller: Option<RunCanceller>,
    pending: Option<CancelMode>,
}

impl RunEntry {
    fn cancel(&self, mode: CancelMode) {
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

/// Counters behind `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Runs started.
    pub runs_started: AtomicU64,
    /// Runs that ended.
    pub runs_finished: AtomicU64,
    /// Frames written to WebSocket clients.
    pub frames_sent: AtomicU64,
    /// `lagged` notices sent.
    pub lagged: AtomicU64,
    /// Error frames and error answers sent.
    pub errors: AtomicU64,
    /// The same, by error code.
    pub errors_by_code: crate::service::telemetry::ErrorCounts,
    /// Live session subscriptions.
    pub subscriptions: AtomicUsize,
}

/// The server's shared state.
pub struct Core {
    runner: Runner,
    agents: BTreeMap<String, Agent>,
    /// What `GET /v1/agents` shows.
    pub agent_infos: Vec<AgentInfo>,
    /// Which models run the cast (for the banner).
    pub models_banner: String,
    bus: Bus,
    runs: DashMap<String, RunEntry>,
    tenant_runs: DashMap<Arc<str>, usize>,
    session_runs: DashMap<String, usize>,
    retired: DashMap<String, u64>,
    sessions: DashMap<String, Arc<dyn Session>>,
    store: Arc<dyn SessionStore>,
    /// Client-side tool calls waiting for `tool.result`.
    pub calls: Arc<ClientCalls>,
    /// The limits in force.
    pub limits: LimitsConfig,
    keys: KeyTable,
    /// Counters.
    pub metrics: Metrics,
    draining: AtomicBool,
    /// Fires when the server stops accepting connections.
    pub stop_accepting: CancellationToken,
    /// Fires when open sockets and streams must close (code 1001).
    pub close_sockets: CancellationToken,
    /// Grace period for running turns at shutdown.
    pub grace: Duration,
    /// How long a run cancelled after its turn may take to end that turn.
    pub turn_timeout: Duration,
    /// The config it was built from.
    pub config: Config,
    started: Instant,
    tracing: std::sync::OnceLock<crate::trace::config::TracingSetup>,
}

/// The bus key of a tenant's session.
fn session_key(tenant: &str, session_id: &str) -> String {
    format!("{tenant}/{session_id}")
}

impl Core {
    /// Builds the state from a validated config: cast, runner, bus with the configured sizes.
    pub fn new(config: Config) -> Result<Arc<Core>, ConfigError> {
        Self::with_store(config, Arc::new(MemoryStore))
    }

    /// Like [`new`](Self::new), keeping conversations in `store`.
    pub fn with_store(
        config: Config,
        store: Arc<dyn SessionStore>,
    ) -> Result<Arc<Core>, ConfigError> {
        let calls = Arc::new(ClientCalls::default());
        let cast = build_cast(&config, calls.clone())?;
        let limits = config.limits.clone();
        let bus = Bus::new(BusLimits {
            history: limits.history,
            subscriber_queue: limits.subscriber_queue,
        });
        let runner: Runner = Runner::new()
            .with_stage(Stage::with_limits(
                crate::actor::DEFAULT_MAILBOX,
                limits.max_runs_per_agent,
            ))
            .with_bus(bus.clone());
        for a in cast.agents.values() {
            runner.register(a);
        }
        Ok(Arc::new(Core {
            runner,
            agents: cast.agents,
            agent_infos: cast.infos,
            models_banner: cast.models_banner,
            bus,
            runs: DashMap::new(),
            tenant_runs: DashMap::new(),
            session_runs: DashMap::new(),
            retired: DashMap::new(),
            sessions: DashMap::new(),
            store,
            calls,
            keys: config.key_table(),
            limits,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            stop_accepting: CancellationToken::new(),
            close_sockets: CancellationToken::new(),
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
            turn_timeout: Duration::from_millis(config.server.shutdown_turn_timeout_ms),
            config,
            started: Instant::now(),
            tracing: std::sync::OnceLock::new(),
        }))
    }

    /// Attaches the running tracing pipeline (its store backs `GET /v1/traces`, its counters
    /// go to `/metrics`). Once only.
    pub fn set_tracing(&self, setup: crate::trace::config::TracingSetup) {
        let _ = self.tracing.set(setup);
    }

    /// The tracing pipeline, when attached.
    pub fn tracing(&self) -> Option<&crate::trace::config::TracingSetup> {
        self.tracing.get()
    }

    /// The trace store, when the `store` sink is on.
    pub fn trace_store(&self) -> Option<crate::trace::sinks::store::TraceStore> {
        self.tracing.get().and_then(|t| t.store.clone())
    }

    /// Whether sessions and run records survive restarts.
    pub fn has_durable_store(&self) -> bool {
        self.store.durable().is_some()
    }

    /// Whether API keys are required (false only with no keys configured).
    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant of an API key.
    pub fn tenant_of(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs in progress.
    pub fn active_runs(&self) -> usize {
        self.runs.len()
    }

    /// The session bus (topics are keyed `"{tenant}/{session_id}"`).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Sessions (topics) held.
    pub fn session_count(&self) -> usize {
        self.bus.len()
    }

    /// A tenant's existing session topic, or `not_found`. A session whose retained frames
    /// were retired gets a fresh topic that continues its numbering.
    pub fn session(&self, tenant: &str, session_id: &str) -> Result<Arc<Topic>, ApiError> {
        let key = session_key(tenant, session_id);
        if let Some(t) = self.bus.get(&key) {
            return Ok(t);
        }
        match self.retired.get(&key).map(|e| *e) {
            Some(last) => Ok(self.bus.topic_resuming(&key, session_id, last)),
            None => Err(not_found_session(session_id)),
        }
    }

    /// The topic of a session, created (or revived after retirement) for a new run.
    fn session_topic(&self, key: &str, session_id: &str) -> Arc<Topic> {
        match self.retired.get(key).map(|e| *e) {
            Some(last) => self.bus.topic_resuming(key, session_id, last),
            None => self.bus.topic_with(key, session_id),
        }
    }

    /// Retires idle sessions' topics: no subscriber, no run, no new frame for
    /// `limits.session_idle_ms`. Their retained frames go (the conversation's items stay);
    /// the numbering continues when the session is used again. `seen` is the sweeper's
    /// memory of each session's last seq and since when it has not moved.
    pub fn retire_idle_sessions(&self, seen: &mut HashMap<String, (u64, Instant)>) -> usize {
        let idle = Duration::from_millis(self.limits.session_idle_ms);
        let now = Instant::now();
        let mut retired = 0;
        let keys: Vec<String> = self.sessions.iter().map(|e| e.key().clone()).collect();
        seen.retain(|k, _| self.sessions.contains_key(k));
        for key in keys {
            let Some(topic) = self.bus.get(&key) else {
                continue;
            };
            let last = topic.last_seq();
            let busy =
                topic.subscriber_count() > 0 || self.session_runs.get(&key).is_some_and(|n| *n > 0);
            let entry = seen.entry(key.clone()).or_insert((last, now));
            if busy || entry.0 != last {
                *entry = (last, now);
                continue;
            }
            if now.duration_since(entry.1) >= idle {
                self.retired.insert(key.clone(), last);
                self.bus.remove(&key);
                seen.remove(&key);
                retired += 1;
            }
        }
        retired
    }

    /// A tenant's session memory items.
    pub async fn session_items(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Vec<crate::items::Item>, ApiError> {
        let key = session_key(tenant, session_id);
        let cached = self.sessions.get(&key).map(|s| s.clone());
        let mem = match (cached, self.store.durable()) {
            (Some(m), _) => m,
            // After a restart a session is only in the durable store.
            (None, Some(_)) => self.store.open(tenant, session_id),
            (None, None) => return Err(not_found_session(session_id)),
        };
        let items = mem.get_items(None).await.map_err(|e| {
            tracing::error!(error = %e, "session store failed");
            ApiError::Internal
        })?;
        if items.is_empty() && !self.sessions.contains_key(&key) && self.bus.get(&key).is_none() {
            return Err(not_found_session(session_id));
        }
        Ok(items)
    }

    /// A tenant's sessions: id, item count and times (durable store), or the ids in memory.
    pub async fn list_sessions(&self, tenant: &str) -> Result<Value, ApiError> {
        if let Some(d) = self.store.durable() {
            let list = d.list_sessions(tenant, Some(1000)).await.map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?;
            return serde_json::to_value(list).map_err(|_| ApiError::Internal);
        }
        let prefix = format!("{tenant}/");
        let ids: Vec<Value> = self
            .sessions
            .iter()
            .filter_map(|e| {
                e.key()
                    .strip_prefix(&prefix)
                    .map(|id| serde_json::json!({"session_id": id}))
            })
            .collect();
        Ok(Value::Array(ids))
    }

    /// A tenant's run record (status, agents, final output, usage, error, trace id, times).
    pub async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Value, ApiError> {
        if let Some(d) = self.store.durable() {
            let rec = d.get_run(tenant, run_id).await.map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?;
            if let Some(r) = rec {
                return serde_json::to_value(r).map_err(|_| ApiError::Internal);
            }
        }
        match self.runs.get(run_id) {
            Some(e) if &*e.tenant == tenant => {
                Ok(serde_json::json!({"run_id": run_id, "status": "running"}))
            }
            _ => Err(not_found_run(run_id)),
        }
    }

    /// Clears a tenant's session: its items and its retained frames.
    pub async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<(), ApiError> {
        let key = session_key(tenant, session_id);
        let mem = self.sessions.remove(&key).map(|(_, s)| s);
        let topic = self.bus.remove(&key);
        let retired = self.retired.remove(&key);
        let stored = match self.store.durable() {
            Some(d) => d.delete_session(tenant, session_id).await.map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?,
            None => false,
        };
        if mem.is_none() && topic.is_none() && retired.is_none() && !stored {
            return Err(not_found_session(session_id));
        }
        if let Some(m) = mem {
            let _ = m.clear_session().await;
        }
        Ok(())
    }

    fn check_session_id(session_id: &str) -> Result<(), ApiError> {
        if session_id.is_empty()
            || session_id.len() > 200
            || session_id.chars().any(|c| c.is_control())
        {
            return Err(ApiError::BadRequest(
                "session_id must be 1 to 200 characters with no control characters".into(),
            ));
        }
        Ok(())
    }

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
        Ok(agent)
    }

    /// Starts a run for `tenant` in `session_id`. `want_frames` returns its frames losslessly
    /// (HTTP answers use them); subscribers read the session topic instead.
    pub fn start_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        session_id: &str,
        req: RunCreate,
        want_frames: bool,
    ) -> Result<Started, ApiError> {
        self.prepare_run(tenant, session_id, req)?
            .launch(want_frames)
    }

    /// Checks and sets up a run without starting it: its id and trace id are known, so a
    /// caller can announce it (`run.accepted`) before any of its frames exist.
    pub fn prepare_run(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        session_id: &str,
        req: RunCreate,
    ) -> Result<PreparedRun, ApiError> {
        Self::check_session_id(session_id)?;
        let agent = self.check_run(&req)?;
        // One run per session at a time, so a session's items never interleave.
        let claim = match self.store.durable() {
            Some(d) => Some(d.try_claim(tenant, session_id).map_err(|e| match e {
                crate::session::SessionError::Busy(_) => ApiError::SessionBusy(format!(
                    "session {session_id} already has a run in progress; wait for its end frame (or cancel it) before starting another"
                )),
                other => {
                    tracing::error!(error = %other, "session store failed");
                    ApiError::Internal
                }
            })?),
            None => None,
        };
        // Per-tenant concurrency: counted before the run starts, released when it ends.
        {
            let mut n = self.tenant_runs.entry(tenant.clone()).or_insert(0);
            if *n >= self.limits.max_runs_per_tenant {
                return Err(ApiError::Overloaded(format!(
                    "this tenant already has {} runs in progress (the limit); wait for one to end",
                    *n
                )));
            }
            *n += 1;
        }
        let key = session_key(tenant, session_id);
        *self.session_runs.entry(key.clone()).or_insert(0) += 1;
        let release = TenantSlot {
            core: self.clone(),
            tenant: tenant.clone(),
            session: key.clone(),
        };
        let topic = self.session_topic(&key, session_id);
        let memory = self
            .sessions
            .entry(key.clone())
            .or_insert_with(|| self.store.open(tenant, session_id))
            .clone();
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
        let run_id = gen_run_id();
        metadata.insert("session_id".into(), Value::String(session_id.to_owned()));
        metadata.insert("run_id".into(), Value::String(run_id.clone()));
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
            trace_id: cfg.trace_id.clone(),
            cfg,
            topic,
            memory,
            release,
            claim,
        })
    }
}

/// A run checked and set up, not started yet; see [`Core::prepare_run`]. Dropping it
/// releases its place in the limits.
pub struct PreparedRun {
    core: Arc<Core>,
    tenant: Arc<str>,
    agent: Agent,
    input: RunInput,
    run_id: String,
    trace_id: Option<String>,
    cfg: RunConfig,
    topic: Arc<Topic>,
    memory: Arc<dyn Session>,
    release: TenantSlot,
    claim: Option<crate::session::SessionClaim>,
}

impl PreparedRun {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's trace id (`None` when tracing is off).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// The topic it will publish on.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// Starts the run. `want_frames` returns its frames losslessly.
    pub fn launch(self, want_frames: bool) -> Result<Started, ApiError> {
        let PreparedRun {
            core,
            tenant,
            agent,
            input,
            run_id,
            trace_id: _,
            cfg,
            topic,
            memory,
            release,
            claim,
        } = self;
        let starting_agent = agent.name().to_owned();
        let session_id = topic.session_id().to_string();
        let this = &core;
        // Client tools find the run's topic through this; registered before the run starts,
        // since its first turn may call one at once.
        this.calls
            .register_run(Arc::from(run_id.as_str()), topic.clone());
        this.runs.insert(
            run_id.clone(),
            RunEntry {
                tenant,
                control: Default::default(),
            },
        );
        let started = this
            .runner
            .request_with(&agent, input, ())
            .config(cfg)
            .topic(topic.clone())
            .session(memory)
            .run_id(run_id.clone())
            .start();
        let mut run = match started {
            Ok(run) => run,
            Err(e) => {
                this.calls.finish_run(&run_id);
                this.runs.remove(&run_id);
                return Err(match e {
                    AgentsError::Overloaded(m) => ApiError::Overloaded(m),
                    other => {
                        tracing::error!(error = %other, "run could not start");
                        ApiError::Internal
                    }
                });
            }
        };
        let frames = if want_frames { run.frames() } else { None };
        let trace_id = run.trace_id().map(str::to_owned);
        if let Some(e) = this.runs.get(&run_id) {
            e.started(run.canceller());
        }
        this.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
        let core = core.clone();
        let rid = run_id.clone();
        let tenant_name = this
            .runs
            .get(&run_id)
            .map(|e| e.tenant.to_string())
            .unwrap_or_default();
        // The run's bookkeeping logs with its ids too.
        let log_span = run.log_span().clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _release = release;
                let _claim = claim;
                let durable = core.store.durable();
                if let Some(d) = durable {
                    let start = crate::session::RunStart {
                        run_id: rid.clone(),
                        tenant: tenant_name.clone(),
                        session_id: Some(session_id),
                        starting_agent,
                        trace_id: run.trace_id().map(str::to_owned),
                    };
                    if let Err(e) = d.record_run_start(start).await {
                        tracing::error!(run_id = %rid, error = %e, "could not record the run's start");
                    }
                }
                run.done().await;
                if let Some(outcome) = run.outcome() {
                    if let crate::run::RunOutcome::Failed(e) = &outcome {
                        tracing::info!(run_id = %rid, error = %e, "run failed");
                    }
                    if let Some(d) = durable {
                        let end = crate::session::RunEnd::from_outcome(
                            &outcome,
                            &run.last_agent(),
                            run.usage(),
                        );
                        if let Err(e) = d.record_run_end(&tenant_name, &rid, end).await {
                            tracing::error!(run_id = %rid, error = %e, "could not record the run's end");
                        }
                    }
                }
                core.runs.remove(&rid);
                core.calls.finish_run(&rid);
                core.metrics.runs_finished.fetch_add(1, Ordering::Relaxed);
            },
            log_span,
        ));
        Ok(Started {
            run_id,
            trace_id,
            topic,
            frames,
        })
    }
}

impl Core {
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

    /// Shutdown, step 1: refuse new runs and connections.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.stop_accepting.cancel();
    }

    /// Shutdown, step 2: lets running turns finish within the grace period, then cancels
    /// the rest after their current turn (and immediately if they still hang on).
    pub async fn drain_runs(&self) {
        let deadline = Instant::now() + self.grace;
        while !self.runs.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.runs.is_empty() {
            return;
        }
        tracing::warn!(
            runs = self.runs.len(),
            "grace period over: cancelling the remaining runs after their current turn"
        );
        for e in self.runs.iter() {
            e.cancel(CancelMode::AfterTurn);
        }
        let deadline = Instant::now() + self.turn_timeout;
        while !self.runs.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for e in self.runs.iter() {
            e.cancel(CancelMode::Immediate);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.runs.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shutdown, last step: closes every socket and stream (code 1001) and waits, briefly,
    /// until the connections are gone.
    pub async fn close_connections(&self) {
        self.close_sockets.cancel();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.metrics.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let mut s = String::with_capacity(1024);
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        line(
            "callboard_ws_connections",
            "gauge",
            "Open WebSocket connections.",
            m.connections.load(Ordering::Relaxed) as u64,
        );
        line(
            "callboard_ws_connections_total",
            "counter",
            "WebSocket connections accepted.",
            m.connections_total.load(Ordering::Relaxed),
        );
        line(
            "callboard_subscriptions",
            "gauge",
            "Live session subscriptions.",
            m.subscriptions.load(Ordering::Relaxed) as u64,
        );
        line(
            "callboard_sessions",
            "gauge",
            "Sessions held on the bus.",
            self.bus.len() as u64,
        );
        line(
            "callboard_runs_active",
            "gauge",
            "Runs in progress.",
            self.runs.len() as u64,
        );
        line(
            "callboard_runs_started_total",
            "counter",
            "Runs started.",
            m.runs_started.load(Ordering::Relaxed),
        );
        line(
            "callboard_runs_finished_total",
            "counter",
            "Runs ended.",
            m.runs_finished.load(Ordering::Relaxed),
        );
        line(
            "callboard_ws_frames_sent_total",
            "counter",
            "Frames written to WebSocket clients.",
            m.frames_sent.load(Ordering::Relaxed),
        );
        line(
            "callboard_lagged_total",
            "counter",
            "Lagged notices sent to slow clients.",
            m.lagged.load(Ordering::Relaxed),
        );
        line(
            "callboard_errors_total",
            "counter",
            "Error frames and error answers sent.",
            m.errors.load(Ordering::Relaxed),
        );
        line(
            "callboard_client_tool_calls_waiting",
            "gauge",
            "Client-side tool calls waiting for tool.result.",
            self.calls.waiting() as u64,
        );
        line(
            "callboard_draining",
            "gauge",
            "1 while shutting down.",
            self.is_draining() as u64,
        );
        s.push_str(
            "# HELP callboard_errors_by_code_total Error frames and answers by code.\n# TYPE callboard_errors_by_code_total counter\n",
        );
        for (code, n) in m.errors_by_code.snapshot() {
            s.push_str(&format!(
                "callboard_errors_by_code_total{{code=\"{code}\"}} {n}\n"
            ));
        }
        if let Some(p) = self.tracing().and_then(|t| t.processor.as_ref()) {
            s.push_str(&p.stats().snapshot().prometheus());
        }
        s
    }
}

/// A run's place in its tenant's and its session's run counts; released when dropped.
struct TenantSlot {
    core: Arc<Core>,
    tenant: Arc<str>,
    session: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.core.tenant_runs.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
        if let Some(mut n) = self.core.session_runs.get_mut(&self.session) {
            *n = n.saturating_sub(1);
        }
        self.core
            .session_runs
            .remove_if(&self.session, |_, n| *n == 0);
    }
}

fn not_found_session(session_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no session `{}`; start one with run.create",
        session_id.chars().take(100).collect::<String>()
    ))
}

fn not_found_run(run_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no run `{}` (runs are visible to the tenant that started them)",
        run_id.chars().take(100).collect::<String>()
    ))
}
