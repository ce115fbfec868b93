//! The server's TOML configuration (PROTOCOL.md section 5 plus `[limits]`), its validation
//! (every error at once, each naming the file, the key and what is wrong) and the embedded
//! defaults used when no file is given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The embedded default bind address.
pub const DEFAULT_BIND: &str = "127.0.0.1:7700";

/// One thing wrong with a config: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The dotted key (`agents[1].model`), or `(file)` for the file as a whole.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// A config that cannot be used: every issue found, with the file they are in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (`<embedded defaults>` when none).
    pub file: String,
    /// Everything wrong, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "{}: {} error{} in the config",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            writeln!(f, "  {}: {}: {}", self.file, i.key, i.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// A config error with one issue.
    pub fn single(file: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            issues: vec![ConfigIssue {
                key: key.to_owned(),
                message: message.into(),
            }],
        }
    }
}

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

/// A whole, validated config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Where it came from (`<embedded defaults>` when no file).
    pub source: String,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[models.NAME]`.
    pub models: BTreeMap<String, ModelConfig>,
    /// `[[agents]]` (empty: the demo cast).
    pub agents: Vec<AgentConfig>,
    /// `[[tools]]`.
    pub tools: Vec<ToolConfig>,
    /// `[[mcp_servers]]`.
    pub mcp_servers: Vec<McpServerConfig>,
    /// `[tracing]`.
    pub tracing: TracingConfig,
    /// `[sessions]`.
    pub sessions: SessionsConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[logging]`.
    pub logging: crate::logging::LoggingConfig,
    /// `[runs]`.
    pub runs: RunsConfig,
    /// `[cluster]`: more than one node (none: one process, as before).
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
    /// Whether this is the embedded default config.
    pub embedded: bool,
}

/// A resolved API key: its tenant and whether it may read operator endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant {
    /// The tenant.
    pub tenant: String,
    /// Operator access (`/metrics`).
    pub admin: bool,
}

/// What a resolved API key table looks like: key to its grant.
pub type KeyTable = BTreeMap<String, KeyGrant>;

const TOP_KEYS: &[&str] = &[
    "server",
    "auth",
    "models",
    "agents",
    "tools",
    "mcp_servers",
    "tracing",
    "sessions",
    "limits",
    "logging",
    "runs",
    "cluster",
];

struct Collector {
    issues: Vec<ConfigIssue>,
}

impl Collector {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn section<T: DeserializeOwned + Default>(&mut self, key: &str, v: Option<&toml::Value>) -> T {
        match v {
            None => T::default(),
            Some(v) => self.value(key, v).unwrap_or_default(),
        }
    }

    fn value<T: DeserializeOwned>(&mut self, key: &str, v: &toml::Value) -> Option<T> {
        match v.clone().try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(key, clean_toml_error(&e.to_string()));
                None
            }
        }
    }
}

fn clean_toml_error(s: &str) -> String {
    s.trim().replace('\n', " ").replace("  ", " ")
}

impl Config {
    /// The embedded defaults: bind 127.0.0.1:7700, the demo cast, no keys (auth off on
    /// loopback), on the scripted provider unless `OPENAI_API_KEY` is set.
    pub fn embedded() -> Config {
        let mut models = BTreeMap::new();
        let openai = std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.trim().is_empty());
        models.insert(
            "default".to_owned(),
            ModelConfig {
                provider: Some(if openai {
                    ProviderKind::OpenaiResponses
                } else {
                    ProviderKind::Scripted
                }),
                base_url: None,
                api_key_env: openai.then(|| "OPENAI_API_KEY".to_owned()),
                model: openai.then(|| "gpt-4.1-mini".to_owned()),
                ..Default::default()
            },
        );
        Config {
            source: "<embedded defaults>".into(),
            models,
            embedded: true,
            ..Config::default()
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(&file, "(file)", format!("cannot read the file: {e}"))
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let root: toml::Table = toml::from_str(text).map_err(|e| {
            ConfigError::single(
                file,
                "(file)",
                format!("not valid TOML: {}", clean_toml_error(&e.to_string())),
            )
        })?;
        let mut c = Collector { issues: Vec::new() };
        for k in root.keys() {
            if !TOP_KEYS.contains(&k.as_str()) {
                c.push(
                    k.clone(),
                    format!("unknown section; expected one of {}", TOP_KEYS.join(", ")),
                );
            }
        }
        let server: ServerConfig = c.section("server", root.get("server"));
        let auth: AuthConfig = c.section("auth", root.get("auth"));
        let tracing: TracingConfig = c.section("tracing", root.get("tracing"));
        let sessions: SessionsConfig = c.section("sessions", root.get("sessions"));
        let limits: LimitsConfig = c.section("limits", root.get("limits"));
        let logging: crate::logging::LoggingConfig = c.section("logging", root.get("logging"));
        let runs: RunsConfig = c.section("runs", root.get("runs"));
        let cluster: Option<crate::cluster::config::ClusterConfig> =
            root.get("cluster").and_then(|v| c.value("cluster", v));
        let mut models = BTreeMap::new();
        match root.get("models") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (name, v) in t {
                    if let Some(m) = c.value::<ModelConfig>(&format!("models.{name}"), v) {
                        models.insert(name.clone(), m);
                    }
                }
            }
            Some(_) => c.push("models", "must be a table of [models.NAME] entries"),
        }
        let agents: Vec<AgentConfig> = list(&mut c, &root, "agents");
        let tools: Vec<ToolConfig> = list(&mut c, &root, "tools");
        let mcp_servers: Vec<McpServerConfig> = list(&mut c, &root, "mcp_servers");
        let cfg = Config {
            source: file.to_owned(),
            server,
            auth,
            models,
            agents,
            tools,
            mcp_servers,
            tracing,
            sessions,
            limits,
            logging,
            runs,
            cluster,
            embedded: false,
        };
        cfg.validate(&mut c);
        if c.issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                issues: c.issues,
            })
        }
    }

    fn validate(&self, c: &mut Collector) {
        if let Some(cl) = &self.cluster {
            for (k, m) in cl.issues(self.sessions.store.as_deref()) {
                c.push(k, m);
            }
        }
        if self.server.bind.parse::<SocketAddr>().is_err() {
            c.push(
                "server.bind",
                format!(
                    "`{}` is not an address and port such as 127.0.0.1:7700",
                    self.server.bind
                ),
            );
        }
        for (i, k) in self.auth.keys.iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            match (&k.key, &k.key_env) {
                (Some(_), Some(_)) => c.push(&key, "set `key` or `key_env`, not both"),
                (None, None) => c.push(&key, "needs `key` or `key_env`"),
                (Some(v), None) if v.trim().is_empty() => c.push(format!("{key}.key"), "is empty"),
                (None, Some(env)) if std::env::var(env).map_or(true, |v| v.trim().is_empty()) => {
                    c.push(
                        format!("{key}.key_env"),
                        format!("the environment variable {env} is not set (or empty)"),
                    );
                }
                _ => {}
            }
            if k.tenant.trim().is_empty() || k.tenant.contains('/') {
                c.push(
                    format!("{key}.tenant"),
                    "must be a non-empty name without `/`",
                );
            }
        }
        for (name, m) in &self.models {
            let key = format!("models.{name}");
            match m.provider {
                None => c.push(
                    format!("{key}.provider"),
                    "missing: openai_responses, openai_chat_completions or scripted",
                ),
                Some(ProviderKind::Scripted) => {
                    if let Some(script) = &m.script {
                        if let Err(e) = crate::model::scripted::turns_from_json(script) {
                            c.push(format!("{key}.script"), e);
                        }
                    }
                }
                Some(_) => {
                    if m.model.as_deref().is_none_or(|s| s.trim().is_empty()) {
                        c.push(format!("{key}.model"), "the provider needs a model name");
                    }
                    if m.script.is_some() {
                        c.push(
                            format!("{key}.script"),
                            "only the scripted provider plays a script",
                        );
                    }
                    if let Some(u) = &m.base_url {
                        if !(u.starts_with("http://") || u.starts_with("https://")) {
                            c.push(
                                format!("{key}.base_url"),
                                "must start with http:// or https://",
                            );
                        }
                    }
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            let key = format!("tools[{i}]");
            if t.name.trim().is_empty() {
                c.push(format!("{key}.name"), "is empty");
            } else if !names.insert(t.name.as_str()) {
                c.push(
                    format!("{key}.name"),
                    format!("`{}` is defined twice", t.name),
                );
            }
            if t.kind != ToolKind::Agent && (t.agent.is_some() || t.max_turns.is_some()) {
                c.push(
                    format!("{key}.agent"),
                    "`agent` and `max_turns` belong to kind = \"agent\"",
                );
            }
            match t.kind {
                ToolKind::Agent => {
                    if t.url.is_some() || t.parameters.is_some() {
                        c.push(
                            format!("{key}.url"),
                            "an agent tool has no url or parameters (it takes {\"input\": string})",
                        );
                    }
                    if t.agent.as_deref().is_none_or(|a| a.trim().is_empty()) {
                        c.push(
                            format!("{key}.agent"),
                            "an agent tool needs `agent` (the agent it runs)",
                        );
                    }
                    if t.max_turns == Some(0) {
                        c.push(format!("{key}.max_turns"), "must be at least 1");
                    }
                }
                ToolKind::Http => match &t.url {
                    None => c.push(format!("{key}.url"), "an http tool needs a url"),
                    Some(u) if !u.starts_with("http://") && !u.starts_with("https://") => {
                        c.push(format!("{key}.url"), "must start with http:// or https://")
                    }
                    _ => {}
                },
                ToolKind::Client => {
                    if t.url.is_some() {
                        c.push(format!("{key}.url"), "a client tool has no url");
                    }
                }
            }
            if let Some(p) = &t.parameters {
                if p.get("type").and_then(Value::as_str) != Some("object") {
                    c.push(
                        format!("{key}.parameters"),
                        "must be a JSON schema with type = \"object\"",
                    );
                }
            }
            if t.timeout_ms == Some(0) {
                c.push(format!("{key}.timeout_ms"), "must be more than 0");
            }
            if t.max_concurrency == Some(0) {
                c.push(format!("{key}.max_concurrency"), "must be at least 1");
            }
        }
        let mut agent_names = std::collections::BTreeSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.trim().is_empty() {
                c.push(format!("agents[{i}].name"), "is empty");
            } else if !agent_names.insert(a.name.as_str()) {
                c.push(
                    format!("agents[{i}].name"),
                    format!("`{}` is defined twice", a.name),
                );
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}]");
            let model = a.model.as_deref().unwrap_or("default");
            let implicit_default = self.models.is_empty() && a.model.is_none();
            if !self.models.contains_key(model) && !implicit_default {
                c.push(
                    format!("{key}.model"),
                    format!(
                        "no [models.{model}] is defined (defined: {})",
                        join_or_none(self.models.keys())
                    ),
                );
            }
            for h in &a.handoffs {
                if !agent_names.contains(h.as_str()) {
                    c.push(
                        format!("{key}.handoffs"),
                        format!(
                            "no agent named `{h}` (agents: {})",
                            join_or_none(agent_names.iter())
                        ),
                    );
                }
            }
            for m in &a.mcp_servers {
                if !self.mcp_servers.iter().any(|s| &s.name == m) {
                    c.push(
                        format!("{key}.mcp_servers"),
                        format!(
                            "no [[mcp_servers]] entry named `{m}` (servers: {})",
                            join_or_none(self.mcp_servers.iter().map(|s| s.name.as_str()))
                        ),
                    );
                }
            }
            for t in &a.tools {
                if !names.contains(t.as_str()) {
                    c.push(
                        format!("{key}.tools"),
                        format!(
                            "no [[tools]] entry named `{t}` (tools: {})",
                            join_or_none(names.iter())
                        ),
                    );
                }
            }
        }
        for (i, t) in self.tools.iter().enumerate() {
            if let (ToolKind::Agent, Some(target)) = (t.kind, &t.agent) {
                if !target.trim().is_empty() && !agent_names.contains(target.as_str()) {
                    c.push(
                        format!("tools[{i}].agent"),
                        format!(
                            "no agent named `{target}` (agents: {})",
                            join_or_none(agent_names.iter())
                        ),
                    );
                }
            }
        }
        let mut servers = std::collections::BTreeSet::new();
        for (i, m) in self.mcp_servers.iter().enumerate() {
            let key = format!("mcp_servers[{i}]");
            if !m.name.trim().is_empty() && !servers.insert(m.name.as_str()) {
                c.push(
                    format!("{key}.name"),
                    format!("`{}` is defined twice", m.name),
                );
            }
            for (k, msg) in m.problems() {
                c.push(format!("{key}.{k}"), msg);
            }
        }
        for p in self.tracing.problems() {
            c.push("tracing", p.to_string());
        }
        for p in self.logging.problems() {
            c.push("logging", p);
        }
        let l = &self.limits;
        for (k, v) in [
            ("max_frame_bytes", l.max_frame_bytes),
            ("max_input_bytes", l.max_input_bytes),
            ("max_runs_per_tenant", l.max_runs_per_tenant),
            ("max_runs_per_agent", l.max_runs_per_agent),
            ("max_connections", l.max_connections),
            (
                "max_subscriptions_per_connection",
                l.max_subscriptions_per_connection,
            ),
            ("outbound_queue", l.outbound_queue),
            ("subscriber_queue", l.subscriber_queue),
            ("session_idle_ms", l.session_idle_ms as usize),
        ] {
            if v == 0 {
                c.push(format!("limits.{k}"), "must be more than 0");
            }
        }
        if !self.auth.keys.is_empty() || self.server.bind.parse::<SocketAddr>().is_err() {
            return;
        }
        if let Ok(addr) = self.server.bind.parse::<SocketAddr>() {
            if !addr.ip().is_loopback() {
                c.push(
                    "server.bind",
                    format!(
                        "{addr} is not a loopback address and no [[auth.keys]] are configured; \
                         add keys or bind to 127.0.0.1"
                    ),
                );
            }
        }
    }

    /// The API keys, resolved from the environment: key to tenant.
    pub fn key_table(&self) -> KeyTable {
        let mut t = KeyTable::new();
        for k in &self.auth.keys {
            let key = match (&k.key, &k.key_env) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(env)) => std::env::var(env).ok(),
                _ => None,
            };
            if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
                t.insert(
                    key,
                    KeyGrant {
                        tenant: k.tenant.clone(),
                        admin: k.admin,
                    },
                );
            }
        }
        t
    }

    /// The bind address (validated at load).
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError::single(&self.source, "server.bind", "not an address and port")
        })
    }
}

fn join_or_none<'a>(it: impl Iterator<Item = impl AsRef<str> + 'a>) -> String {
    let v: Vec<String> = it.map(|s| s.as_ref().to_owned()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn list<T: DeserializeOwned>(c: &mut Collector, root: &toml::Table, key: &str) -> Vec<T> {
    match root.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| c.value::<T>(&format!("{key}[{i}]"), v))
            .collect(),
        Some(_) => {
            c.push(key, format!("must be a list of [[{key}]] tables"));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
bind = "127.0.0.1:7700"

[[auth.keys]]
key = "k1"
tenant = "acme"

[models.default]
provider = "scripted"

[[agents]]
name = "Triage"
instructions = "Route."
model = "default"
handoffs = ["Billing"]
tools = ["get_weather", "confirm_with_user"]

[[agents]]
name = "Billing"
instructions = "Bill."

[[tools]]
name = "get_weather"
description = "Weather for a city."
kind = "http"
url = "http://127.0.0.1:9000/weather"
parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
timeout_ms = 5000

[[tools]]
name = "confirm_with_user"
kind = "client"
timeout_ms = 60000

[tracing]
sinks = ["store"]

[sessions]
store = "sqlite://callboard.db"
"#;

    #[test]
    fn the_protocol_example_parses() {
        let c = Config::parse("x.toml", EXAMPLE).unwrap();
        assert_eq!(c.agents.len(), 2);
        assert_eq!(c.tools[0].kind, ToolKind::Http);
        assert_eq!(
            c.key_table().get("k1").map(|g| g.tenant.as_str()),
            Some("acme")
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let bad = r#"
[server]
bind = "0.0.0.0:80"
colour = "blue"

[models.default]
provider = "carrier-pigeon"

[[agents]]
name = "A"
model = "nope"
handoffs = ["Ghost"]
tools = ["missing"]

[[tools]]
name = "t"
kind = "http"
"#;
        let e = Config::parse("bad.toml", bad).unwrap_err();
        let keys: Vec<&str> = e.issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"server"), "{e}");
        assert!(keys.contains(&"models.default"), "{e}");
        assert!(keys.contains(&"agents[0].model"), "{e}");
        assert!(keys.contains(&"agents[0].handoffs"), "{e}");
        assert!(keys.contains(&"agents[0].tools"), "{e}");
        assert!(keys.contains(&"tools[0].url"), "{e}");
        assert!(e.to_string().contains("bad.toml: agents[0].handoffs"));
    }

    #[test]
    fn agent_tools_and_mcp_servers_are_checked() {
        let cfg = r#"
[[agents]]
name = "Boss"
tools = ["ask_researcher"]
mcp_servers = ["everything", "ghost"]

[[agents]]
name = "Researcher"

[[tools]]
name = "ask_researcher"
kind = "agent"
agent = "Researcher"
max_turns = 3
timeout_behavior = "raise_exception"
max_concurrency = 2

[[tools]]
name = "lost"
kind = "agent"
agent = "Nobody"

[[mcp_servers]]
name = "everything"
transport = "stdio"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-everything"]
deny = ["get-env"]
"#;
        let e = Config::parse("m.toml", cfg).unwrap_err();
        let keys: Vec<&str> = e.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["agents[0].mcp_servers", "tools[1].agent"], "{e}");
        let ok = cfg
            .replace(", \"ghost\"", "")
            .replace("\"Nobody\"", "\"Boss\"");
        let c = Config::parse("m.toml", &ok).unwrap();
        assert_eq!(c.mcp_servers[0].deny, vec!["get-env"]);
        let p = c.tools[0].policy();
        assert_eq!(p.timeout, None);
        assert_eq!(
            p.timeout_behavior,
            crate::tool::ToolTimeoutBehavior::RaiseException
        );
        assert!(p.concurrency.is_some());
    }

    #[test]
    fn non_loopback_without_keys_is_refused() {
        let e = Config::parse("b.toml", "[server]\nbind = \"0.0.0.0:7700\"\n").unwrap_err();
        assert_eq!(e.issues[0].key, "server.bind");
    }
}
