//! Lifecycle hooks: the SDK's `RunHooks` (for a whole run) and `AgentHooks` (for one agent).
//! Every method has a no-op default; implement the ones you need.

use async_trait::async_trait;
use serde_json::Value;

use crate::context::RunContext;
use crate::items::Item;
use crate::model::ResponseObject;

/// Callbacks for every agent of a run.
#[async_trait]
pub trait RunHooks<C: Send + Sync + 'static>: Send + Sync {
    /// An agent starts (at the run's start and after each handoff).
    async fn on_agent_start(&self, _ctx: &RunContext<C>, _agent: &str) {}
    /// An agent produced the final output.
    async fn on_agent_end(&self, _ctx: &RunContext<C>, _agent: &str, _output: &Value) {}
    /// `from` handed off to `to`.
    async fn on_handoff(&self, _ctx: &RunContext<C>, _from: &str, _to: &str) {}
    /// A tool is about to run.
    async fn on_tool_start(&self, _ctx: &RunContext<C>, _agent: &str, _tool: &str) {}
    /// A tool finished with `result` (the text the model receives).
    async fn on_tool_end(&self, _ctx: &RunContext<C>, _agent: &str, _tool: &str, _result: &str) {}
    /// A model call is about to start.
    async fn on_llm_start(
        &self,
        _ctx: &RunContext<C>,
        _agent: &str,
        _system_prompt: Option<&str>,
        _input: &[Item],
    ) {
    }
    /// A model call finished.
    async fn on_llm_end(&self, _ctx: &RunContext<C>, _agent: &str, _response: &ResponseObject) {}
}

/// Callbacks for one agent (set on the agent).
#[async_trait]
pub trait AgentHooks<C: Send + Sync + 'static>: Send + Sync {
    /// This agent starts.
    async fn on_start(&self, _ctx: &RunContext<C>, _agent: &str) {}
    /// This agent produced the final output.
    async fn on_end(&self, _ctx: &RunContext<C>, _agent: &str, _output: &Value) {}
    /// This agent received a handoff from `source`.
    async fn on_handoff(&self, _ctx: &RunContext<C>, _agent: &str, _source: &str) {}
    /// One of this agent's tools is about to run.
    async fn on_tool_start(&self, _ctx: &RunContext<C>, _agent: &str, _tool: &str) {}
    /// One of this agent's tools finished.
    async fn on_tool_end(&self, _ctx: &RunContext<C>, _agent: &str, _tool: &str, _result: &str) {}
    /// This agent's model call is about to start.
    async fn on_llm_start(
        &self,
        _ctx: &RunContext<C>,
        _agent: &str,
        _system_prompt: Option<&str>,
        _input: &[Item],
    ) {
    }
    /// This agent's model call finished.
    async fn on_llm_end(&self, _ctx: &RunContext<C>, _agent: &str, _response: &ResponseObject) {}
}
