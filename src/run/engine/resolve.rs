//! Item resolution: the model's output becomes run items (messages, tool calls, handoff
//! calls, reasoning), published in output order after the response completed, as the SDK
//! orders them; a call to a tool the agent does not have fails the run.

use std::sync::Arc;

use serde_json::json;

use super::publish_item;
use crate::error::AgentsError;
use crate::handoff::Handoff;
use crate::items::{FunctionCallItem, Item, RunItem};
use crate::model::ResponseObject;
use crate::run::baton::Baton;
use crate::tool::Tool;
use crate::trace::Span;

/// What a model response asks for.
pub(super) struct Resolved<C: Send + Sync + 'static> {
    /// The turn's run items so far (tool and handoff outputs are added later).
    pub new_items: Vec<RunItem>,
    /// Function tool calls, with their tools.
    pub tool_calls: Vec<(FunctionCallItem, Arc<dyn Tool<C>>)>,
    /// Handoff calls, with their handoffs.
    pub handoff_calls: Vec<(FunctionCallItem, Handoff<C>)>,
}

/// Resolves `response` into run items, keeps it among the run's raw responses and publishes
/// the items.
pub(super) async fn resolve<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    response: ResponseObject,
) -> Result<Resolved<C>, AgentsError> {
    let agent = &b.agent;
    let name = agent.name();
    let mut out = Resolved {
        new_items: Vec::with_capacity(response.output.len() + 2),
        tool_calls: Vec::new(),
        handoff_calls: Vec::new(),
    };
    let mut missing = None;
    for item in &response.output {
        match item {
            Item::Message(m) => out.new_items.push(RunItem::MessageOutput {
                agent: name.to_owned(),
                raw_item: m.clone(),
            }),
            Item::FunctionCall(fc) => {
                if let Some(h) = agent.handoffs().iter().find(|h| h.tool_name == fc.name) {
                    out.new_items.push(RunItem::HandoffCall {
                        agent: name.to_owned(),
                        raw_item: fc.clone(),
                    });
                    out.handoff_calls.push((fc.clone(), h.clone()));
                } else if let Some(t) = agent.tools().iter().find(|t| t.name() == fc.name) {
                    out.new_items.push(RunItem::ToolCall {
                        agent: name.to_owned(),
                        raw_item: fc.clone(),
                    });
                    out.tool_calls.push((fc.clone(), t.clone()));
                } else {
                    missing = Some(fc.name.clone());
                    break;
                }
            }
            Item::Reasoning(r) => out.new_items.push(RunItem::Reasoning {
                agent: name.to_owned(),
                raw_item: r.clone(),
            }),
            _ => {}
        }
    }
    b.shared
        .raw_responses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(response);
    if let Some(tool) = missing {
        // The SDK puts this on the current span, the turn's; the agent span then gets
        // "Error in agent run" as the run fails.
        turn_span.set_error("Tool not found", Some(json!({"tool_name": tool})));
        return Err(AgentsError::ModelBehaviorError(format!(
            "Tool {tool} not found in agent {name}"
        )));
    }
    for item in &out.new_items {
        let tool = match item {
            RunItem::ToolCall { raw_item, .. } => Some(raw_item.name.as_str().into()),
            _ => None,
        };
        publish_item(b, item, tool).await;
    }
    Ok(out)
}
