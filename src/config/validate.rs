//! The checks that span sections: agents name models, tools and MCP servers that exist,
//! limits make sense together, `[cluster]` has what it needs; every issue reported at once.

use super::parse::{join_or_none, Collector};
use super::*;
use std::net::SocketAddr;

use serde_json::Value;

impl Config {
    pub(super) fn validate(&self, c: &mut Collector) {
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
}
