//! From a validated [`Config`] to a cast: models, tools and agents ready to run. The CLI and
//! the server build the same cast with [`build_cast`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::agent::Agent;
use crate::config::{Config, ConfigError, ModelConfig, ToolKind};
use crate::handoff::{default_tool_description, Handoff};
use crate::mcp::McpServers;
use crate::model::Model;
use crate::run::AgentTool;
use crate::service::tools::{ClientCalls, ClientTool, HttpTool};
use crate::tool::Tool;

/// What `GET /v1/agents` says about one agent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    /// Name.
    pub name: String,
    /// What it does (handoff description).
    pub handoff_description: Option<String>,
    /// The `[models.NAME]` it runs on.
    pub model: String,
    /// Its tools.
    pub tools: Vec<ToolInfo>,
    /// Agents it hands off to.
    pub handoffs: Vec<String>,
    /// MCP servers whose tools it gets (listed at each turn: `GET /v1/mcp_servers`).
    pub mcp_servers: Vec<String>,
}

/// A tool as `GET /v1/agents` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ToolInfo {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// `function`, `http`, `client` or `agent`.
    pub kind: &'static str,
    /// JSON schema of the arguments.
    pub parameters: Value,
}

/// The agents of a config, by name, with their descriptions.
pub struct Cast {
    /// Agents by name.
    pub agents: BTreeMap<String, Agent>,
    /// What `GET /v1/agents` lists, in config order.
    pub infos: Vec<AgentInfo>,
    /// A line saying which models run the cast (for the start banner).
    pub models_banner: String,
    /// The MCP servers (started, unless the cast was built for `check-config`).
    pub mcp: McpServers,
}

/// Builds the model of a `[models.NAME]` entry.
///
/// `scripted` models are built here; `openai_responses` and `openai_chat_completions` by the
/// providers' [`ProviderConfig`](crate::model::config::ProviderConfig) (a missing API key
/// refuses to start, naming the variable).
pub fn build_model(
    file: &str,
    name: &str,
    cfg: &ModelConfig,
) -> Result<Arc<dyn Model>, ConfigError> {
    cfg.build()
        .map_err(|e| ConfigError::single(file, &format!("models.{name}"), e.to_string()))
}

fn default_parameters() -> Value {
    serde_json::json!({"type": "object", "properties": {}, "additionalProperties": true})
}

/// Builds every agent of `cfg` (the demo cast when it defines none), starting its MCP
/// servers. Client tools are answered through `calls`.
pub fn build_cast(cfg: &Config, calls: Arc<ClientCalls>) -> Result<Cast, ConfigError> {
    build_cast_with(cfg, calls, true)
}

/// Like [`build_cast`]; `start_mcp = false` (for `check-config`) starts no MCP server and
/// leaves their tools out.
pub fn build_cast_with(
    cfg: &Config,
    calls: Arc<ClientCalls>,
    start_mcp: bool,
) -> Result<Cast, ConfigError> {
    let file = cfg.source.as_str();
    let mut models: BTreeMap<String, Arc<dyn Model>> = BTreeMap::new();
    let mut issues = Vec::new();
    for (name, m) in &cfg.models {
        match build_model(file, name, m) {
            Ok(model) => {
                models.insert(name.clone(), model);
            }
            Err(e) => issues.extend(e.issues),
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError {
            file: file.to_owned(),
            issues,
        });
    }
    let banner = cfg
        .models
        .iter()
        .map(|(n, m)| {
            format!(
                "{n} = {}{}",
                m.provider.map_or("?", |p| p.as_str()),
                m.model
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let fallback = || -> Arc<dyn Model> { Arc::new(crate::demo::demo_model()) };
    if cfg.agents.is_empty() {
        let model = models.get("default").cloned().unwrap_or_else(fallback);
        let triage = crate::demo::cast(model);
        let mut agents = BTreeMap::new();
        let mut infos = Vec::new();
        let mut stack = vec![triage];
        while let Some(a) = stack.pop() {
            if agents.contains_key(a.name()) {
                continue;
            }
            infos.push(info_of(&a, "default", "function"));
            for h in a.handoffs() {
                if let crate::handoff::HandoffTarget::Agent(t) = &h.target {
                    stack.push(t.clone());
                }
            }
            agents.insert(a.name().to_owned(), a);
        }
        return Ok(Cast {
            agents,
            infos,
            models_banner: if banner.is_empty() {
                "scripted (demo)".into()
            } else {
                banner
            },
            mcp: McpServers::default(),
        });
    }
    let in_file = |e: crate::mcp::McpConfigError| ConfigError::single(file, &e.key, e.message);
    let mcp = if start_mcp {
        McpServers::start(&cfg.mcp_servers).map_err(in_file)?
    } else {
        McpServers::check(&cfg.mcp_servers).map_err(in_file)?;
        McpServers::default()
    };
    let client = reqwest::Client::new();
    let mut tools: BTreeMap<&str, (Arc<dyn Tool<()>>, &'static str)> = BTreeMap::new();
    for t in &cfg.tools {
        let params = t.parameters.clone().unwrap_or_else(default_parameters);
        let policy = t.policy();
        let tool: (Arc<dyn Tool<()>>, &'static str) = match t.kind {
            ToolKind::Http => (
                Arc::new(HttpTool::new(
                    t.name.clone(),
                    t.description.clone(),
                    params,
                    t.url.clone().unwrap_or_default(),
                    policy,
                    client.clone(),
                )),
                "http",
            ),
            ToolKind::Client => (
                Arc::new(ClientTool::new(
                    t.name.clone(),
                    t.description.clone(),
                    params,
                    policy,
                    calls.clone(),
                )),
                "client",
            ),
            ToolKind::Agent => {
                let mut tool = AgentTool::named(
                    t.agent.clone().unwrap_or_default(),
                    t.name.clone(),
                    t.description.clone(),
                )
                .policy(policy);
                if let Some(n) = t.max_turns {
                    tool = tool.max_turns(n);
                }
                (Arc::new(tool), "agent")
            }
        };
        tools.insert(t.name.as_str(), tool);
    }
    let descriptions: BTreeMap<&str, Option<&str>> = cfg
        .agents
        .iter()
        .map(|a| (a.name.as_str(), a.handoff_description.as_deref()))
        .collect();
    let mut agents = BTreeMap::new();
    let mut infos = Vec::new();
    for a in &cfg.agents {
        let model_name = a.model.clone().unwrap_or_else(|| "default".into());
        let model = models.get(&model_name).cloned().unwrap_or_else(fallback);
        let mut agent = Agent::new(a.name.clone()).model_instance(model);
        if let Some(i) = &a.instructions {
            agent = agent.instructions(i.clone());
        }
        if let Some(d) = &a.handoff_description {
            agent = agent.handoff_description(d.clone());
        }
        let mut tool_infos = Vec::new();
        for t in &a.tools {
            if let Some((tool, kind)) = tools.get(t.as_str()) {
                tool_infos.push(ToolInfo {
                    name: tool.name().to_owned(),
                    description: tool.description().to_owned(),
                    kind,
                    parameters: tool.parameters().clone(),
                });
                agent = agent.tool_arc(tool.clone());
            }
        }
        for h in &a.handoffs {
            let desc = descriptions.get(h.as_str()).copied().flatten();
            agent = agent.handoff(
                Handoff::named(h.clone()).tool_description(default_tool_description(h, desc)),
            );
        }
        agent = mcp.attach(agent, &a.mcp_servers);
        infos.push(AgentInfo {
            name: a.name.clone(),
            handoff_description: a.handoff_description.clone(),
            model: model_name,
            tools: tool_infos,
            handoffs: a.handoffs.clone(),
            mcp_servers: a.mcp_servers.clone(),
        });
        agents.insert(a.name.clone(), agent);
    }
    Ok(Cast {
        agents,
        infos,
        models_banner: banner,
        mcp,
    })
}

fn info_of(a: &Agent, model: &str, kind: &'static str) -> AgentInfo {
    AgentInfo {
        name: a.name().to_owned(),
        handoff_description: a.get_handoff_description().map(str::to_owned),
        model: model.to_owned(),
        tools: a
            .tools()
            .iter()
            .map(|t| ToolInfo {
                name: t.name().to_owned(),
                description: t.description().to_owned(),
                kind,
                parameters: t.parameters().clone(),
            })
            .collect(),
        handoffs: a.handoff_names().iter().map(|s| s.to_string()).collect(),
        mcp_servers: Vec::new(),
    }
}
