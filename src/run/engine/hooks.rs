//! Lifecycle hooks in pairs: every moment calls the run's hooks, then the agent's own, with
//! one helper instead of hand-written pairs at each call site.

use serde_json::Value;

use crate::agent::Agent;
use crate::items::Item;
use crate::model::ResponseObject;
use crate::run::baton::Baton;

/// A moment of a run that hooks hear about.
pub(super) enum Hook<'a> {
    /// The agent starts (run hooks' `on_agent_start`, agent hooks' `on_start`).
    AgentStart,
    /// The agent produced the final output.
    AgentEnd(&'a Value),
    /// A tool is about to run.
    ToolStart(&'a str),
    /// A tool ended with this output.
    ToolEnd(&'a str, &'a str),
    /// The model is about to be called.
    LlmStart {
        /// The system prompt.
        system: Option<&'a str>,
        /// The input items.
        input: &'a [Item],
    },
    /// The model answered.
    LlmEnd(&'a ResponseObject),
    /// The run hands off from the baton's agent to `agent` (whose hooks hear it, as in the
    /// SDK, with the source agent's name).
    Handoff {
        /// The agent handed off from.
        from: &'a str,
    },
}

/// Calls the run's hooks and then `agent`'s hooks for `hook`.
pub(super) async fn call_hooks<C: Send + Sync + 'static>(
    b: &Baton<C>,
    agent: &Agent<C>,
    hook: Hook<'_>,
) {
    let ctx = &b.ctx;
    let name = agent.name();
    if let Some(h) = &b.env.hooks {
        match &hook {
            Hook::AgentStart => h.on_agent_start(ctx, name).await,
            Hook::AgentEnd(v) => h.on_agent_end(ctx, name, v).await,
            Hook::ToolStart(t) => h.on_tool_start(ctx, name, t).await,
            Hook::ToolEnd(t, out) => h.on_tool_end(ctx, name, t, out).await,
            Hook::LlmStart { system, input } => h.on_llm_start(ctx, name, *system, input).await,
            Hook::LlmEnd(r) => h.on_llm_end(ctx, name, r).await,
            Hook::Handoff { from } => h.on_handoff(ctx, from, name).await,
        }
    }
    if let Some(h) = &agent.0.hooks {
        match &hook {
            Hook::AgentStart => h.on_start(ctx, name).await,
            Hook::AgentEnd(v) => h.on_end(ctx, name, v).await,
            Hook::ToolStart(t) => h.on_tool_start(ctx, name, t).await,
            Hook::ToolEnd(t, out) => h.on_tool_end(ctx, name, t, out).await,
            Hook::LlmStart { system, input } => h.on_llm_start(ctx, name, *system, input).await,
            Hook::LlmEnd(r) => h.on_llm_end(ctx, name, r).await,
            Hook::Handoff { from } => h.on_handoff(ctx, name, from).await,
        }
    }
}
