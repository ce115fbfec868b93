//! The sections of the config file (`[server]`, `[auth]`, `[[agents]]`, `[[tools]]`,
//! `[sessions]`, `[runs]`, `[limits]`; the providers', MCP servers' and tracing sections from
//! their own modules), each with its defaults.

use super::*;

use serde::Deserialize;
use serde_json::Value;

/// `[server]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`host:port`); default `127.0.0.1:7700`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// How long running turns may take to finish at shutdown before they are cancelled
    /// after their turn (milliseconds; default 10000).
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// After the grace period, how long a run cancelled "after its turn" may take to end
    /// its turn before it is cancelled immediately (milliseconds; default 30000).
    #[serde(default = "default_turn_timeout")]
    pub shutdown_turn_timeout_ms: u64,
}

fn default_bind() -> String {
    DEFAULT_BIND.to_owned()
}
fn default_grace() -> u64 {
    10_000
}
fn default_turn_timeout() -> u64 {
    30_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: default_bind(),
            shutdown_grace_ms: default_grace(),
            shutdown_turn_timeout_ms: default_turn_timeout(),
        }
    }
}

/// One `[[auth.keys]]` entry: an API key (inline or from an environment variable) and the
/// tenant it stands for.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key itself (prefer `key_env`).
    #[serde(default)]
    pub key: Option<String>,
    /// The environment variable holding the key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// The tenant the key belongs to.
    pub tenant: String,
    /// Whether the key may read operator endpoints (`/metrics`, every tenant's counts).
    #[serde(default)]
    pub admin: bool,
}

/// `[auth]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys and their tenants.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// One `[models.NAME]` entry: the providers' own config (provider, model, settings,
/// retries, timeouts; a script for `scripted`).
pub use crate::model::config::{ProviderConfig as ModelConfig, ProviderKind};

/// One `[[agents]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name (unique).
    pub name: String,
    /// Its instructions (system prompt).
    #[serde(default)]
    pub instructions: Option<String>,
    /// What it does, as other agents' handoff tools describe it.
    #[serde(default)]
    pub handoff_description: Option<String>,
    /// A `[models.NAME]` name (default `default`).
    #[serde(default)]
    pub model: Option<String>,
    /// Agents it may hand off to.
    #[serde(default)]
    pub handoffs: Vec<String>,
    /// Tools it may call (`[[tools]]` names).
    #[serde(default)]
    pub tools: Vec<String>,
    /// MCP servers whose tools it gets (`[[mcp_servers]]` names), listed at each turn.
    #[serde(default)]
    pub mcp_servers: Vec<String>,
}

/// How a configured tool runs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// POST the arguments as JSON to `url`; the response body is the output.
    Http,
    /// Sent to the session's clients as `tool.call`; answered by `tool.result`.
    Client,
    /// Runs the agent `agent` on `{"input": string}` as a nested run (the SDK's
    /// `Agent.as_tool`).
    Agent,
}

/// One `[[tools]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The tool's name as the model sees it.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// `http` or `client`.
    pub kind: ToolKind,
    /// For `http` tools: where to POST.
    #[serde(default)]
    pub url: Option<String>,
    /// JSON schema of the arguments (default: an object with any properties).
    #[serde(default)]
    pub parameters: Option<Value>,
    /// For `agent` tools: the agent it runs.
    #[serde(default)]
    pub agent: Option<String>,
    /// For `agent` tools: turns of the nested run (default 10).
    #[serde(default)]
    pub max_turns: Option<u64>,
    /// Longest a call may take, in milliseconds (default 30000 for `http` and `client`
    /// tools; none for `agent` tools).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What a timeout does: `error_as_result` (default: the model reads the SDK's timeout
    /// message) or `raise_exception` (the run fails with `ToolTimeoutError`).
    #[serde(default)]
    pub timeout_behavior: crate::tool::ToolTimeoutBehavior,
    /// Calls of this tool running at once, over all runs (default: no limit); more wait.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Each call waits for a person's approval first (`run.approve` / `run.reject`).
    #[serde(default)]
    pub needs_approval: bool,
    /// A call no one decided on within this many milliseconds is rejected (default: never).
    #[serde(default)]
    pub approval_timeout_ms: Option<u64>,
    /// Running a call twice does no harm: a run whose process died while it ran re-runs it
    /// at restart (otherwise the run ends `interrupted`).
    #[serde(default)]
    pub idempotent: bool,
}

/// Default timeout of `http` and `client` tools.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;

impl ToolConfig {
    /// The timeout and concurrency limit of the tool's calls.
    pub fn policy(&self) -> crate::tool::ToolPolicy {
        let timeout = match (self.timeout_ms, self.kind) {
            (Some(ms), _) => Some(ms),
            (None, ToolKind::Agent) => None,
            (None, _) => Some(DEFAULT_TOOL_TIMEOUT_MS),
        };
        let p = crate::tool::ToolPolicy {
            timeout: timeout.map(std::time::Duration::from_millis),
            timeout_behavior: self.timeout_behavior,
            concurrency: None,
            needs_approval: Default::default(),
            approval_timeout: self
                .approval_timeout_ms
                .map(std::time::Duration::from_millis),
            idempotent: self.idempotent,
        }
        .needs_approval(self.needs_approval);
        match self.max_concurrency {
            Some(n) => p.max_concurrency(n),
            None => p,
        }
    }
}

/// One `[[mcp_servers]]` entry.
pub use crate::mcp::config::{McpServerConfig, McpTransport};

/// `[tracing]`: the tracing pipeline's config (sinks, batching, sink options).
pub use crate::trace::config::TracingConfig;

/// `[sessions]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Where conversations are kept (`sqlite://callboard.db`, `memory`).
    #[serde(default)]
    pub store: Option<String>,
    /// With `store = "memory"`: the most conversations kept (the least recently used one is
    /// dropped to make room). Default 10000.
    #[serde(default = "default_memory_sessions")]
    pub memory_max_sessions: usize,
    /// With `store = "memory"`: the most run records kept (the oldest finished go first).
    /// Default 10000.
    #[serde(default = "default_memory_runs")]
    pub memory_max_runs: usize,
    /// What a run request does on a busy session when it does not say (`reject`, `enqueue`,
    /// `interrupt`, `rollback`). Default `reject`.
    #[serde(default)]
    pub on_busy: crate::session::OnBusy,
    /// Runs that may wait in one session's queue; past it `overloaded`. Default 64.
    #[serde(default = "default_session_queue")]
    pub max_queued_runs: usize,
    /// With a PostgreSQL store: the most connections open at once (more calls wait for
    /// one, at most 10 s). Default 16.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    16
}

fn default_session_queue() -> usize {
    64
}

fn default_memory_sessions() -> usize {
    crate::session::memory::DEFAULT_MAX_SESSIONS
}
fn default_memory_runs() -> usize {
    crate::session::memory::DEFAULT_MAX_RUNS
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            store: None,
            memory_max_sessions: default_memory_sessions(),
            memory_max_runs: default_memory_runs(),
            on_busy: Default::default(),
            max_queued_runs: default_session_queue(),
            max_connections: default_max_connections(),
        }
    }
}

/// What a restarted server does with the runs the previous process left running.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRestart {
    /// Take them up from their last completed turn, on the same session with seq
    /// continuing (a turn whose tools had started runs them again only if they are all
    /// `idempotent`; otherwise the run ends `interrupted`, saying so).
    #[default]
    Resume,
    /// End them `interrupted`.
    MarkInterrupted,
}

/// `[runs]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunsConfig {
    /// `resume` (default) or `mark_interrupted`.
    #[serde(default)]
    pub on_restart: OnRestart,
}

/// `[limits]`: sizes and counts the server enforces.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client WebSocket message accepted (bytes); larger ones get `frame_too_large`.
    pub max_frame_bytes: usize,
    /// Largest run input (bytes of text or item JSON); larger gets `input_too_large`.
    pub max_input_bytes: usize,
    /// Concurrent runs per tenant; more get `overloaded`.
    pub max_runs_per_tenant: usize,
    /// Runs an agent runs at once; more new runs wait in its queue.
    pub max_runs_per_agent: usize,
    /// New runs that may wait for a place at a busy agent; past that, `overloaded`.
    pub agent_queue: usize,
    /// Open WebSocket connections; more are refused with 503.
    pub max_connections: usize,
    /// Sessions one connection may follow at once.
    pub max_subscriptions_per_connection: usize,
    /// Frames queued for one connection before its subscriptions are told `lagged`.
    pub outbound_queue: usize,
    /// Frames kept per session for resume.
    pub history: usize,
    /// Bytes of retained frames over all sessions (approximate); past it the least recently
    /// used sessions lose their retained frames first (resuming from them then gets
    /// `history_truncated`). Default 64 MiB.
    pub history_bytes: usize,
    /// Frames a live subscriber may fall behind the bus before it is told `lagged`.
    pub subscriber_queue: usize,
    /// A connection whose socket takes longer than this to accept a write is closed (ms).
    pub write_timeout_ms: u64,
    /// A session with no subscriber, no run and no new frame for this long has its retained
    /// frames dropped (its numbering continues; resuming from before gets
    /// `history_truncated`). Milliseconds; default 15 minutes.
    pub session_idle_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 1024 * 1024,
            max_input_bytes: 256 * 1024,
            max_runs_per_tenant: 256,
            max_runs_per_agent: 100_000,
            agent_queue: 1024,
            max_connections: 20_000,
            max_subscriptions_per_connection: 64,
            outbound_queue: 512,
            history: 4096,
            history_bytes: 64 * 1024 * 1024,
            subscriber_queue: 256,
            write_timeout_ms: 30_000,
            session_idle_ms: 15 * 60 * 1000,
        }
    }
}
