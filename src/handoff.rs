//! Handoffs: the `transfer_to_<agent>` tools through which one agent passes the
//! conversation (the baton) to another.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::agent::Agent;
use crate::context::RunContext;
use crate::items::{Item, RunItem};

pub use crate::names::default_tool_name;

/// The SDK's tool description for a handoff.
pub fn default_tool_description(agent_name: &str, handoff_description: Option<&str>) -> String {
    format!(
        "Handoff to the {agent_name} agent to handle the request. {}",
        handoff_description.unwrap_or("")
    )
}

/// The output the model sees for a handoff call: `{"assistant": "<target>"}` as Python's
/// `json.dumps` writes it.
pub fn transfer_message(target: &str) -> String {
    format!(
        "{{\"assistant\": {}}}",
        serde_json::to_string(target).unwrap_or_else(|_| "\"\"".into())
    )
}

/// What the next agent will see; an input filter may rewrite it (the SDK's `HandoffInputData`).
#[derive(Clone, Debug, PartialEq)]
pub struct HandoffInputData {
    /// The run's original input.
    pub input_history: Vec<Item>,
    /// Items produced before the turn that handed off.
    pub pre_handoff_items: Vec<RunItem>,
    /// Items of the turn that handed off, including the handoff call and output.
    pub new_items: Vec<RunItem>,
}

type InputFilter = dyn Fn(HandoffInputData) -> HandoffInputData + Send + Sync;
type OnHandoff<C> = dyn Fn(RunContext<C>, String) -> BoxFuture<'static, ()> + Send + Sync;

/// Where a handoff leads: an agent value, or an agent registered by name (for cycles and
/// config-defined casts).
pub enum HandoffTarget<C> {
    /// A concrete agent.
    Agent(Agent<C>),
    /// An agent looked up by name on the runner's stage at run time.
    Named(String),
}

/// A handoff to another agent.
pub struct Handoff<C> {
    pub(crate) target: HandoffTarget<C>,
    pub(crate) tool_name: String,
    pub(crate) tool_description: Option<String>,
    pub(crate) input_filter: Option<Arc<InputFilter>>,
    pub(crate) on_handoff: Option<Arc<OnHandoff<C>>>,
    pub(crate) input_schema: Value,
}

impl<C> Clone for Handoff<C> {
    fn clone(&self) -> Self {
        Handoff {
            target: match &self.target {
                HandoffTarget::Agent(a) => HandoffTarget::Agent(a.clone()),
                HandoffTarget::Named(n) => HandoffTarget::Named(n.clone()),
            },
            tool_name: self.tool_name.clone(),
            tool_description: self.tool_description.clone(),
            input_filter: self.input_filter.clone(),
            on_handoff: self.on_handoff.clone(),
            input_schema: self.input_schema.clone(),
        }
    }
}

impl<C: Send + Sync + 'static> Handoff<C> {
    /// A handoff to `agent` with the SDK's default tool name and description.
    pub fn to(agent: &Agent<C>) -> Self {
        Handoff {
            tool_name: default_tool_name(agent.name()),
            target: HandoffTarget::Agent(agent.clone()),
            tool_description: None,
            input_filter: None,
            on_handoff: None,
            input_schema: crate::tool::ensure_strict(Value::Object(Default::default())),
        }
    }

    /// A handoff to the agent registered under `name` (resolved when the run needs it).
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Handoff {
            tool_name: default_tool_name(&name),
            target: HandoffTarget::Named(name),
            tool_description: None,
            input_filter: None,
            on_handoff: None,
            input_schema: crate::tool::ensure_strict(Value::Object(Default::default())),
        }
    }

    /// Overrides the tool name.
    pub fn tool_name(mut self, name: impl Into<String>) -> Self {
        self.tool_name = name.into();
        self
    }

    /// Overrides the tool description.
    pub fn tool_description(mut self, d: impl Into<String>) -> Self {
        self.tool_description = Some(d.into());
        self
    }

    /// Rewrites what the next agent sees (e.g. drop tool calls from the history).
    pub fn input_filter(
        mut self,
        f: impl Fn(HandoffInputData) -> HandoffInputData + Send + Sync + 'static,
    ) -> Self {
        self.input_filter = Some(Arc::new(f));
        self
    }

    /// Runs `f(ctx, arguments)` when the handoff is taken.
    pub fn on_handoff<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(RunContext<C>, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.on_handoff = Some(Arc::new(move |c, a| Box::pin(f(c, a))));
        self
    }

    /// The target agent's name.
    pub fn agent_name(&self) -> &str {
        match &self.target {
            HandoffTarget::Agent(a) => a.name(),
            HandoffTarget::Named(n) => n,
        }
    }

    /// The tool name the model calls.
    pub fn name(&self) -> &str {
        &self.tool_name
    }
}

impl<C: Send + Sync + 'static> From<&Agent<C>> for Handoff<C> {
    fn from(a: &Agent<C>) -> Self {
        Handoff::to(a)
    }
}

/// Ready-made input filters (the SDK's `handoff_filters`).
pub mod filters {
    use super::HandoffInputData;
    use crate::items::{Item, RunItem};

    /// Removes every tool call and tool output from what the next agent sees.
    pub fn remove_all_tools(mut data: HandoffInputData) -> HandoffInputData {
        let keep = |i: &RunItem| {
            !matches!(
                i,
                RunItem::ToolCall { .. }
                    | RunItem::ToolCallOutput { .. }
                    | RunItem::HandoffCall { .. }
                    | RunItem::HandoffOutput { .. }
            )
        };
        data.pre_handoff_items.retain(keep);
        data.new_items.retain(keep);
        data.input_history
            .retain(|i| !matches!(i, Item::FunctionCall(_) | Item::FunctionCallOutput(_)));
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages_match_the_sdk() {
        assert_eq!(default_tool_name("Billing"), "transfer_to_billing");
        assert_eq!(
            default_tool_name("Tech Support!"),
            "transfer_to_tech_support_"
        );
        assert_eq!(transfer_message("Billing"), r#"{"assistant": "Billing"}"#);
        assert_eq!(
            default_tool_description("Billing", Some("Billing questions.")),
            "Handoff to the Billing agent to handle the request. Billing questions."
        );
    }
}
