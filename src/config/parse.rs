//! Config text to a [`Config`]: TOML parsed section by section, every issue collected (the
//! file, the dotted key, what is wrong) rather than stopping at the first.

use super::*;
use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

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

pub(super) struct Collector {
    issues: Vec<ConfigIssue>,
}

impl Collector {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
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
}

pub(super) fn join_or_none<'a>(it: impl Iterator<Item = impl AsRef<str> + 'a>) -> String {
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
