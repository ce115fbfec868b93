//! The service layer between the transports (HTTP and SSE in `crate::server`, WebSocket in
//! `crate::hub`) and the engine. Every transport goes through [`Core`], so every rule holds
//! alike on each: one run per session, tenant isolation, limits, numbering across restarts.
//!
//! - [`sessions`]: one owner per active session (numbering, history, run claim,
//!   subscribers), activated on use and passivated when idle.
//! - [`runs`]: preparing, launching and settling runs; the run registry; double-texting.
//! - [`approvals`]: decisions on paused runs, their timeouts, run states.
//! - [`request`]: the typed run request every transport parses into.
//! - [`cluster`]: `[cluster]`: node ids, bus mirrors, live nodes, taking over runs.
//! - [`mailbox`]: runs through the agents' mailboxes on JetStream: handing a run's baton
//!   over, feeding this node's session topic from the bus, working the batons this node
//!   takes.
//! - [`store`]: the session store `[sessions] store` names.
//! - [`metrics`], [`telemetry`]: counters, Prometheus text, named events that log and count;
//!   [`delivery`]: the publish-to-socket-write histogram.
//! - [`error`]: `ApiError`, the one error type of every answer.
//! - [`cast`], [`tools`], [`http_tool`]: from config to agents, models and tools (`http`,
//!   `client`, `agent`) and MCP servers.

pub mod approvals;
pub mod cast;
pub mod cluster;
pub mod delivery;
pub mod error;
pub mod http_tool;
#[cfg(feature = "nats")]
pub mod mailbox;
pub mod metrics;
pub mod request;
pub mod runs;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tools;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::actor::{Stage, StageLimits};
use crate::agent::Agent;
use crate::bus::{BusLimits, HistoryBudget};
use crate::config::{Config, ConfigError, KeyGrant, KeyTable, LimitsConfig};
use crate::run::Runner;
use crate::service::cast::{build_cast, AgentInfo};
use crate::service::error::ApiError;
use crate::service::runs::RunEntry;
use crate::service::sessions::{Sessions, Subscribed};
use crate::service::tools::ClientCalls;
use crate::session::{MemoryStore, Store};
pub use crate::wire::{Depth, Format};
pub use metrics::Metrics;
pub use request::{RunCreate, TraceRequest};
pub use runs::{PreparedRun, Started};
pub use store::open_store;

/// The service's shared state.
pub struct Core {
    runner: Runner,
    agents: BTreeMap<String, Agent>,
    /// What `GET /v1/agents` shows.
    pub agent_infos: Vec<AgentInfo>,
    /// Which models run the cast (for the banner).
    pub models_banner: String,
    /// The active sessions and their owners.
    pub sessions: Sessions,
    runs: DashMap<String, RunEntry>,
    tenant_runs: DashMap<Arc<str>, usize>,
    /// Who waits for a run's end frame (an HTTP run answered as JSON), by run id.
    waiters: DashMap<String, tokio::sync::oneshot::Sender<Arc<crate::bus::Frame>>>,
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
    /// The MCP servers of the cast.
    pub mcp: crate::mcp::McpServers,
    /// This node's id, with `[cluster]`.
    node_id: std::sync::OnceLock<String>,
    /// The cluster, with `[cluster]`.
    #[cfg(feature = "nats")]
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The agents' mailboxes, with `[cluster] mailboxes`.
    #[cfg(feature = "nats")]
    mailboxes: std::sync::OnceLock<Arc<mailbox::Mailboxes>>,
}

/// A connection's place under `limits.max_connections` (WebSocket or SSE); released when
/// dropped.
pub struct ConnectionSlot {
    core: Arc<Core>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.core.metrics.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live subscription (WebSocket or SSE), counted in `callboard_subscriptions` while held.
pub struct SubscriptionCount {
    core: Arc<Core>,
}

impl Drop for SubscriptionCount {
    fn drop(&mut self) {
        self.core
            .metrics
            .subscriptions
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Core {
    /// Counts a live subscription until the guard is dropped.
    pub fn count_subscription(self: &Arc<Self>) -> SubscriptionCount {
        self.metrics.subscriptions.fetch_add(1, Ordering::AcqRel);
        SubscriptionCount { core: self.clone() }
    }

    /// Builds the state from a validated config, keeping conversations in memory (bounded by
    /// `[sessions] memory_max_sessions` / `memory_max_runs`).
    pub fn new(config: Config) -> Result<Arc<Core>, ConfigError> {
        let store = MemoryStore::new(
            config.sessions.memory_max_sessions,
            config.sessions.memory_max_runs,
        );
        Self::with_store(config, Arc::new(store))
    }

    /// Like [`new`](Self::new), keeping conversations and run records in `store`.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Arc<Core>, ConfigError> {
        let calls = Arc::new(ClientCalls::default());
        let cast = build_cast(&config, calls.clone())?;
        let limits = config.limits.clone();
        let metrics = Metrics::default();
        let runner: Runner = Runner::new()
            .with_stage(Stage::with_limits(StageLimits {
                mailbox: crate::actor::DEFAULT_MAILBOX.max(limits.agent_queue),
                max_runs_per_agent: limits.max_runs_per_agent,
                queue_per_agent: limits.agent_queue,
            }))
            .with_observer(metrics.calls.clone());
        for a in cast.agents.values() {
            runner.register(a);
        }
        let sessions = Sessions::new(
            store,
            BusLimits {
                history: limits.history,
                subscriber_queue: limits.subscriber_queue,
                budget: None,
            },
            HistoryBudget::new(limits.history_bytes),
            Duration::from_millis(limits.session_idle_ms),
        );
        Ok(Arc::new(Core {
            runner,
            agents: cast.agents,
            agent_infos: cast.infos,
            models_banner: cast.models_banner,
            sessions,
            runs: DashMap::new(),
            tenant_runs: DashMap::new(),
            waiters: DashMap::new(),
            calls,
            keys: config.key_table(),
            limits,
            metrics,
            draining: AtomicBool::new(false),
            stop_accepting: CancellationToken::new(),
            close_sockets: CancellationToken::new(),
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
            turn_timeout: Duration::from_millis(config.server.shutdown_turn_timeout_ms),
            config,
            started: Instant::now(),
            tracing: std::sync::OnceLock::new(),
            mcp: cast.mcp,
            node_id: std::sync::OnceLock::new(),
            #[cfg(feature = "nats")]
            cluster: std::sync::OnceLock::new(),
            #[cfg(feature = "nats")]
            mailboxes: std::sync::OnceLock::new(),
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

    /// The runner (its stage of agent actors).
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Whether sessions and run records survive restarts.
    pub fn has_durable_store(&self) -> bool {
        self.sessions.store().is_durable()
    }

    /// Whether API keys are required (false only with no keys configured).
    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The grant (tenant, admin) of an API key.
    pub fn grant_of(&self, key: &str) -> Option<&KeyGrant> {
        self.keys.get(key)
    }

    /// The tenant of an API key.
    pub fn tenant_of(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(|g| g.tenant.as_str())
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs in progress.
    pub fn active_runs(&self) -> usize {
        self.runs.len()
    }

    /// Takes a place for a connection (WebSocket or SSE) under `limits.max_connections`, or
    /// answers `overloaded`.
    pub fn connection_slot(self: &Arc<Self>) -> Result<ConnectionSlot, ApiError> {
        let max = self.limits.max_connections;
        self.metrics
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                ApiError::Overloaded(format!(
                    "the server holds {max} connections (WebSocket and SSE; its limit); retry later"
                ))
            })?;
        Ok(ConnectionSlot { core: self.clone() })
    }

    /// Subscribes to a tenant's session (a session with no run yet is subscribable: its first
    /// run's frames start at seq 1), after `after_seq` and under `epoch` when given.
    pub async fn subscribe(
        &self,
        tenant: &Arc<str>,
        session_id: &str,
        after_seq: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<Subscribed, ApiError> {
        runs::check_session_id(session_id)?;
        let owner = self.sessions.owner(tenant, session_id).await?;
        owner.subscribe(after_seq, epoch)
    }

    /// A tenant's session items.
    pub async fn session_items(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Vec<crate::items::Item>, ApiError> {
        let items = self.session_store_items(tenant, session_id).await?;
        if items.is_empty() && !self.sessions.stored(tenant, session_id).await? {
            // Never used for a run (a subscriber alone does not make a conversation).
            return Err(not_found_session(session_id));
        }
        Ok(items)
    }

    async fn session_store_items(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Vec<crate::items::Item>, ApiError> {
        self.sessions
            .store()
            .session(tenant, session_id)
            .get_items(None)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })
    }

    /// A tenant's sessions: id, item count and times.
    pub async fn list_sessions(&self, tenant: &str) -> Result<Value, ApiError> {
        let list = self
            .sessions
            .store()
            .list_sessions(tenant, 1000)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "session store failed");
                ApiError::Internal
            })?;
        serde_json::to_value(list).map_err(|_| ApiError::Internal)
    }

    /// Clears a tenant's session (refused while a run holds it): its items, its numbering and
    /// its retained frames; its subscribers are told the numbering restarted.
    pub async fn delete_session(
        &self,
        tenant: &Arc<str>,
        session_id: &str,
    ) -> Result<(), ApiError> {
        runs::check_session_id(session_id)?;
        // Busy first (a run holds it: 409), then whether there was anything to delete.
        if self.sessions.delete(tenant, session_id).await? {
            Ok(())
        } else {
            Err(not_found_session(session_id))
        }
    }

    /// Housekeeping until `stop` fires: passivates idle sessions and keeps retained history
    /// within `limits.history_bytes`.
    pub async fn janitor(self: Arc<Self>, stop: CancellationToken) {
        let idle = Duration::from_millis(self.limits.session_idle_ms);
        let period = (idle / 4)
            .min(sessions::EMPTY_IDLE / 2)
            .clamp(Duration::from_millis(10), Duration::from_secs(30));
        let budget = self.sessions.budget().clone();
        // One clock for the housekeeping: the budget's wake-ups (as often as every publish
        // under load) must not restart it, or idle sessions would never be passivated.
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.reject_due_approvals().await;
                    self.sessions.release_idle_rings();
                    let n = self.sessions.passivate_idle().await;
                    if n > 0 {
                        tracing::debug!(sessions = n, "passivated idle sessions");
                    }
                }
                _ = budget.over() => {}
            }
            let freed = self.sessions.enforce_budget();
            if freed > 0 {
                tracing::info!(
                    bytes = freed,
                    "retained history over limits.history_bytes: the least recently used sessions' frames were dropped"
                );
            }
        }
    }

    /// Shutdown, step 1: refuse new runs and connections.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.stop_accepting.cancel();
    }

    /// Shutdown, step 2: lets running turns finish within the grace period, then cancels
    /// the rest after their current turn (and immediately if they still hang on); then saves
    /// every session's exact numbering.
    pub async fn drain_runs(&self) {
        let deadline = Instant::now() + self.grace;
        while !self.runs.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.runs.is_empty() {
            tracing::warn!(
                runs = self.runs.len(),
                "grace period over: cancelling the remaining runs after their current turn"
            );
            for e in self.runs.iter() {
                e.cancel(crate::bus::CancelMode::AfterTurn);
            }
            let deadline = Instant::now() + self.turn_timeout;
            while !self.runs.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for e in self.runs.iter() {
                e.cancel(crate::bus::CancelMode::Immediate);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.runs.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.sessions.save_all().await;
    }

    /// Shutdown, last step: closes every socket and stream (code 1001) and waits, briefly,
    /// until the connections are gone; then closes the session store.
    pub async fn close_connections(&self) {
        self.mcp.shutdown();
        self.close_sockets.cancel();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.metrics.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub(crate) fn not_found_session(session_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no session `{}`; start one with run.create",
        session_id.chars().take(100).collect::<String>()
    ))
}
