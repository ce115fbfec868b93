//! Agents as tools (the SDK's `Agent.as_tool`, PROTOCOL.md section 6.4): calling the tool
//! runs the agent as a nested run on the caller's session topic. The nested run's frames
//! carry `path` and `depth`; it shares the caller's run id, context and usage (as the SDK's
//! nested `ToolContext` shares usage), its trace (its task span nests under the tool's
//! function span) and its cancellation (cancelling the caller cancels it). It publishes no
//! end frame: the caller's `tool_output` ends it, as the SDK's nested stream simply ends.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use crate::agent::Agent;
use crate::items::{RunInput, RunItem};
use crate::run::baton::{CallEnv, NestSpec, RunShared};
use crate::run::config::DEFAULT_MAX_TURNS;
use crate::run::result::{RunResult, RunResultStreaming};
use crate::run::{launch, Launch};
use crate::tool::{Tool, ToolContext, ToolError, ToolPolicy, ToolTimeoutBehavior};

/// How deep agents may call agents; a deeper call is a tool error (a guard against an agent
/// that calls itself without end).
pub const MAX_NESTING_DEPTH: u32 = 8;

type Extractor = dyn Fn(&RunResult) -> String + Send + Sync;

/// The agent an agent tool runs.
enum Target<C: Send + Sync + 'static> {
    /// This agent.
    Agent(Agent<C>),
    /// The agent registered under this name when the tool is called (config-built casts,
    /// where agents may call each other).
    Named(String),
}

/// An agent usable as a tool: `{"input": string}` in, the agent's final output out.
pub struct AgentTool<C: Send + Sync + 'static> {
    target: Target<C>,
    name: String,
    description: String,
    parameters: Value,
    max_turns: Option<u64>,
    extractor: Option<Arc<Extractor>>,
    policy: Option<ToolPolicy>,
}

/// The SDK's default name of an agent tool: the agent's name in snake case.
fn default_tool_name(agent: &str) -> String {
    let mut out = String::with_capacity(agent.len());
    for c in agent.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else {
            out.push('_');
        }
    }
    out
}

impl<C: Send + Sync + 'static> Agent<C> {
    /// This agent as a tool other agents can call (the SDK's `Agent.as_tool`): the model
    /// sends `{"input": "..."}`, the agent runs on it as a nested run, and its final output
    /// (or the last message) is the tool's output. An empty `name` gives the agent's name
    /// in snake case, as the SDK does.
    pub fn as_tool(&self, name: impl Into<String>, description: impl Into<String>) -> AgentTool<C> {
        let name = name.into();
        AgentTool::build(
            Target::Agent(self.clone()),
            if name.is_empty() {
                default_tool_name(self.name())
            } else {
                name
            },
            description.into(),
        )
    }
}

impl<C: Send + Sync + 'static> AgentTool<C> {
    /// A tool running the agent registered as `agent` on the runner's stage when called
    /// (how `kind = "agent"` tools of a config are built; agents may then call each other).
    pub fn named(
        agent: impl Into<String>,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        AgentTool::build(Target::Named(agent.into()), name.into(), description.into())
    }

    fn build(target: Target<C>, name: String, description: String) -> Self {
        AgentTool {
            target,
            name,
            description,
            parameters: json!({
                "type": "object",
                "properties": {"input": {"type": "string", "title": "Input"}},
                "required": ["input"],
                "additionalProperties": false,
            }),
            max_turns: None,
            extractor: None,
            policy: None,
        }
    }

    /// Turns the nested run may take (default 10, the SDK's).
    pub fn max_turns(mut self, n: u64) -> Self {
        self.max_turns = Some(n);
        self
    }

    /// Makes the tool's output from the nested run's result (the SDK's
    /// `custom_output_extractor`).
    pub fn output_extractor(
        mut self,
        f: impl Fn(&RunResult) -> String + Send + Sync + 'static,
    ) -> Self {
        self.extractor = Some(Arc::new(f));
        self
    }

    /// Bounds the tool's calls with `policy` (a timeout, a concurrency limit).
    pub fn policy(mut self, policy: ToolPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// A timeout for each call; a nested run that times out is cancelled.
    pub fn timeout(mut self, limit: std::time::Duration, behavior: ToolTimeoutBehavior) -> Self {
        let p = self.policy.take().unwrap_or_default();
        self.policy = Some(ToolPolicy {
            timeout: Some(limit),
            timeout_behavior: behavior,
            ..p
        });
        self
    }

    /// At most `n` nested runs of this tool at once, over all runs; more wait.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.policy = Some(self.policy.take().unwrap_or_default().max_concurrency(n));
        self
    }

    /// The name of the agent the tool runs.
    pub fn agent_name(&self) -> &str {
        match &self.target {
            Target::Agent(a) => a.name(),
            Target::Named(n) => n,
        }
    }
}

/// The SDK's output of a nested run: the final output when it is not empty text, else the
/// last message's text, else the last tool output.
fn default_output(r: &RunResult) -> String {
    match &r.final_output {
        Value::String(s) if !s.is_empty() => return s.clone(),
        Value::String(_) | Value::Null => {}
        other => return other.to_string(),
    }
    for item in r.new_items.iter().rev() {
        match item {
            RunItem::MessageOutput { raw_item, .. } => {
                let t = raw_item.text();
                if !t.is_empty() {
                    return t;
                }
            }
            RunItem::ToolCallOutput { output, .. } if !output.is_empty() => {
                return output.clone();
            }
            _ => {}
        }
    }
    String::new()
}

/// Cancels a nested run whose call was abandoned (a timeout, the caller cancelled).
struct CancelOnDrop(Arc<RunShared>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.0.is_complete() {
            self.0.cancel.cancel();
        }
    }
}

#[derive(serde::Deserialize)]
struct Input {
    input: String,
}

impl<C: Send + Sync + 'static> Tool<C> for AgentTool<C> {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> &Value {
        &self.parameters
    }
    fn policy(&self) -> Option<&ToolPolicy> {
        self.policy.as_ref()
    }
    fn invoke(
        &self,
        ctx: ToolContext<C>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let target = match &self.target {
            Target::Agent(a) => Ok(a.clone()),
            Target::Named(n) => Err(n.clone()),
        };
        let name = self.name.clone();
        let max_turns = self.max_turns.unwrap_or(DEFAULT_MAX_TURNS);
        let extractor = self.extractor.clone();
        async move {
            let input = serde_json::from_str::<Input>(&arguments)
                .map_err(|e| ToolError::InvalidArguments {
                    tool: name.clone(),
                    message: e.to_string(),
                })?
                .input;
            let Some(call) = ctx
                .scope()
                .and_then(|s| s.as_any().downcast_ref::<CallEnv<C>>())
            else {
                return Err(ToolError::Failed(format!(
                    "the agent tool {name} runs only inside a run (its context was made outside one)"
                )));
            };
            let caller = &call.shared;
            let depth = caller.depth() + 1;
            if depth > MAX_NESTING_DEPTH {
                return Err(ToolError::Failed(format!(
                    "agents called as tools nest deeper than {MAX_NESTING_DEPTH} levels"
                )));
            }
            let stage = call.env.stage.clone();
            let agent = match target {
                Ok(a) => a,
                Err(n) => stage.get(&n).ok_or_else(|| {
                    ToolError::Failed(format!("no agent named {n} is registered on the runner"))
                })?,
            };
            stage.register(&agent);
            let mut config = call.env.config.clone();
            config.max_turns = max_turns;
            let shared = launch(Launch {
                stage,
                provider: call.env.provider.clone(),
                agent,
                input: RunInput::Text(input),
                ctx: ctx.run.clone(),
                config,
                hooks: None,
                session: None,
                topic: caller.topic.clone(),
                input_guardrails: Vec::new(),
                output_guardrails: Vec::new(),
                cancel: caller.cancel.child_token(),
                keep_state: false,
                resume: None,
                observer: call.env.observer.clone(),
                nest: Some(NestSpec {
                    ancestors: caller.path(),
                    depth,
                    parent_call_id: ctx.call_id.clone(),
                }),
                settle: None,
                listener: None,
            })
            .map_err(|e| ToolError::Failed(e.to_string()))?;
            let _guard = CancelOnDrop(shared.clone());
            let handle = RunResultStreaming {
                shared,
                ctx: ctx.run.clone(),
                rx: std::sync::Mutex::new(None),
                max_turns,
            };
            let cancelled = {
                handle.done().await;
                handle.cancelled().is_some()
            };
            if cancelled {
                return Err(ToolError::Failed(format!("the nested run of {name} was cancelled")));
            }
            match handle.wait().await {
                Ok(r) => Ok(match &extractor {
                    Some(f) => f(&r),
                    None => default_output(&r),
                }),
                Err(e) => Err(ToolError::Failed(format!("the agent failed: {e}"))),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_snake_case() {
        assert_eq!(default_tool_name("Researcher"), "researcher");
        assert_eq!(default_tool_name("Spanish Agent"), "spanish_agent");
    }
}
