//! `[[mcp_servers]]`: one MCP server as a tool source (how to reach it, which of its tools
//! to offer, how its calls are bounded) and its validation. Parsed with or without the `mcp`
//! feature, so `check-config` can say what a build lacks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::tool::{ToolPolicy, ToolTimeoutBehavior};

/// How callboard reaches an MCP server.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum McpTransport {
    /// A child process speaking MCP on its stdin/stdout (`command`, `args`, `env`, `cwd`).
    Stdio,
    /// MCP's streamable HTTP transport (`url`, `headers`).
    StreamableHttp,
}

impl McpTransport {
    /// `stdio` or `streamable_http`.
    pub fn as_str(&self) -> &'static str {
        match self {
            McpTransport::Stdio => "stdio",
            McpTransport::StreamableHttp => "streamable_http",
        }
    }
}

/// One `[[mcp_servers]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The server's name (unique); agents name it in `mcp_servers = [...]`.
    pub name: String,
    /// `stdio` or `streamable_http`.
    pub transport: McpTransport,
    /// stdio: the program to start.
    #[serde(default)]
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// stdio: environment variables set for it (on top of callboard's own).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// stdio: its working directory (default: callboard's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// streamable_http: the endpoint (`http://127.0.0.1:3001/mcp`).
    #[serde(default)]
    pub url: Option<String>,
    /// streamable_http: headers sent with every request (`Authorization = "Bearer ..."`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Only these tools are offered (default: all the server lists).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// These tools are never offered.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Keep the tool list from the server's start and its `notifications/tools/list_changed`
    /// (default true). `false` asks the server for its tools at every turn, as the SDK's
    /// default does.
    #[serde(default = "yes")]
    pub cache_tools_list: bool,
    /// Longest a tool call may take, in milliseconds (default 60000).
    #[serde(default = "default_call_timeout")]
    pub timeout_ms: u64,
    /// What a timeout does: `error_as_result` (default) or `raise_exception`.
    #[serde(default)]
    pub timeout_behavior: ToolTimeoutBehavior,
    /// Calls of one tool of this server running at once, over all runs (default: no limit).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Longest the connection (process start, handshake, first tool list) may take, in
    /// milliseconds (default 30000); past it the server is restarted with backoff.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_call_timeout() -> u64 {
    60_000
}
fn default_connect_timeout() -> u64 {
    30_000
}

impl McpServerConfig {
    /// A stdio server started as `command args...`.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>, args: &[&str]) -> Self {
        McpServerConfig {
            command: Some(command.into()),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Self::empty(name.into(), McpTransport::Stdio)
        }
    }

    /// A streamable HTTP server at `url`.
    pub fn streamable_http(name: impl Into<String>, url: impl Into<String>) -> Self {
        McpServerConfig {
            url: Some(url.into()),
            ..Self::empty(name.into(), McpTransport::StreamableHttp)
        }
    }

    fn empty(name: String, transport: McpTransport) -> Self {
        McpServerConfig {
            name,
            transport,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            url: None,
            headers: BTreeMap::new(),
            allow: None,
            deny: Vec::new(),
            cache_tools_list: true,
            timeout_ms: default_call_timeout(),
            timeout_behavior: ToolTimeoutBehavior::ErrorAsResult,
            max_concurrency: None,
            connect_timeout_ms: default_connect_timeout(),
        }
    }

    /// Whether the tool `name` may be offered.
    pub fn offers(&self, name: &str) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|n| n == name))
            && !self.deny.iter().any(|n| n == name)
    }

    /// The policy every tool of this server gets.
    pub fn policy(&self) -> ToolPolicy {
        let p = ToolPolicy::with_timeout(Duration::from_millis(self.timeout_ms))
            .timeout_behavior(self.timeout_behavior);
        match self.max_concurrency {
            Some(n) => p.max_concurrency(n),
            None => p,
        }
    }

    /// What is wrong with the entry: `(key under the entry, message)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(("name", "must not be empty".to_owned()));
        }
        match self.transport {
            McpTransport::Stdio => {
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    out.push((
                        "command",
                        "a stdio MCP server needs `command` (the program to start)".to_owned(),
                    ));
                }
                if self.url.is_some() || !self.headers.is_empty() {
                    out.push((
                        "url",
                        "`url` and `headers` belong to transport = \"streamable_http\"".to_owned(),
                    ));
                }
            }
            McpTransport::StreamableHttp => {
                match self.url.as_deref() {
                    None => out.push((
                        "url",
                        "a streamable_http MCP server needs `url` (e.g. \"http://127.0.0.1:3001/mcp\")"
                            .to_owned(),
                    )),
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => out
                        .push((
                            "url",
                            format!("{u:?} is not an http:// or https:// URL"),
                        )),
                    Some(_) => {}
                }
                if self.command.is_some() || !self.args.is_empty() || self.cwd.is_some() {
                    out.push((
                        "command",
                        "`command`, `args` and `cwd` belong to transport = \"stdio\"".to_owned(),
                    ));
                }
                for (k, v) in &self.headers {
                    if k.is_empty()
                        || !k
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        out.push(("headers", format!("{k:?} is not a valid HTTP header name")));
                    }
                    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                        out.push(("headers", format!("the value of {k:?} has a line break")));
                    }
                }
            }
        }
        if self.timeout_ms == 0 {
            out.push(("timeout_ms", "must be more than 0".to_owned()));
        }
        if self.connect_timeout_ms == 0 {
            out.push(("connect_timeout_ms", "must be more than 0".to_owned()));
        }
        if self.max_concurrency == Some(0) {
            out.push(("max_concurrency", "must be at least 1".to_owned()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_and_deny_filter_tools() {
        let mut c = McpServerConfig::stdio("s", "srv", &[]);
        assert!(c.offers("echo"));
        c.allow = Some(vec!["echo".into(), "get-sum".into()]);
        c.deny = vec!["get-sum".into()];
        assert!(c.offers("echo"));
        assert!(!c.offers("get-sum"));
        assert!(!c.offers("other"));
    }

    #[test]
    fn transports_need_their_fields() {
        let c: McpServerConfig =
            toml::from_str("name = \"x\"\ntransport = \"stdio\"\nurl = \"http://a\"").unwrap();
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["command", "url"]);
        let c: McpServerConfig =
            toml::from_str("name = \"x\"\ntransport = \"streamable_http\"\nurl = \"ftp://a\"")
                .unwrap();
        assert_eq!(c.problems()[0].0, "url");
        assert!(toml::from_str::<McpServerConfig>("name = \"x\"\ntransport = \"pigeon\"").is_err());
        let ok = McpServerConfig::streamable_http("h", "http://127.0.0.1:1/mcp");
        assert!(ok.problems().is_empty());
    }
}
