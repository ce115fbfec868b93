//! The server's TOML configuration (PROTOCOL.md section 5 plus `[limits]`), its validation
//! (every error at once, each naming the file, the key and what is wrong) and the embedded
//! defaults used when no file is given.
//!
//! - this file: the whole config, its errors, the embedded defaults, keys and bind address;
//! - [`sections`]: one type per section of the file, with its defaults;
//! - [`parse`]: TOML text to a config, collecting every issue;
//! - [`validate`]: the checks across sections (agents, models, tools, limits, cluster).

mod parse;
mod sections;
mod validate;

pub use sections::*;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

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
