//! Tools from the agent's tool sources (MCP servers), gathered at the start of each turn as
//! the SDK gathers an agent's MCP tools: an `mcp_tools` span per server (its `result` the
//! tool names), and when the agent starts, an `mcp_list_tools` item per server on the bus.
//! A server that cannot list its tools leaves them out of the turn; the run goes on.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::publish_item;
use crate::error::AgentsError;
use crate::items::RunItem;
use crate::run::baton::Baton;
use crate::tool::Tool;
use crate::trace::{Span, SpanData};

/// The `mcp_list_tools` object of a listing (as the Responses API's hosted MCP item).
fn list_tools_item<C: 'static>(
    server: &str,
    tools: &[Arc<dyn Tool<C>>],
    error: Option<&str>,
) -> Value {
    let listed: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "name": t.name(),
                "description": t.description(),
                "input_schema": t.parameters(),
                "annotations": null,
            })
        })
        .collect();
    let id = crate::trace::gen_trace_id();
    json!({
        "type": "mcp_list_tools",
        "id": format!("mcpl_{}", &id["trace_".len()..]),
        "server_label": server,
        "tools": listed,
        "error": error,
    })
}

/// Sets the baton's tools for this turn: the agent's own plus each source's. `parent` is the
/// span the `mcp_tools` spans go under; `announce` publishes the `mcp_list_tools` items.
/// Two tools of one name fail the run, as in the SDK.
pub(super) async fn gather<C: Send + Sync + 'static>(
    b: &mut Baton<C>,
    parent: &Span,
    announce: bool,
) -> Result<(), AgentsError> {
    let sources = b.agent.tool_sources();
    if sources.is_empty() {
        b.turn_tools = None;
        return Ok(());
    }
    let mut all: Vec<Arc<dyn Tool<C>>> = b.agent.tools().to_vec();
    let mut names: HashSet<String> = all.iter().map(|t| t.name().to_owned()).collect();
    let agent = b.agent.name().to_owned();
    for source in sources {
        let span = parent.child(SpanData::McpTools {
            server: source.name().to_owned(),
            result: None,
        });
        let listed = source.list_tools().await;
        let (tools, error) = match listed {
            Ok(t) => (t, None),
            Err(e) => {
                tracing::warn!(server = %source.name(), error = %e, "MCP tools unavailable for this turn");
                span.set_error(
                    "Error listing MCP tools",
                    Some(json!({"server": source.name(), "error": e.to_string()})),
                );
                (Vec::new(), Some(e.to_string()))
            }
        };
        let tool_names: Vec<String> = tools.iter().map(|t| t.name().to_owned()).collect();
        span.update(|d| {
            if let SpanData::McpTools { result, .. } = d {
                *result = Some(tool_names.clone());
            }
        });
        span.finish();
        if announce {
            let item = RunItem::McpListTools {
                agent: agent.clone(),
                raw_item: list_tools_item(source.name(), &tools, error.as_deref()),
            };
            publish_item(b, &item, None).await;
        }
        let mut dup: Vec<&str> = tool_names
            .iter()
            .filter(|n| names.contains(n.as_str()))
            .map(String::as_str)
            .collect();
        if !dup.is_empty() {
            dup.sort_unstable();
            return Err(AgentsError::UserError(format!(
                "Duplicate tool names found across MCP servers: {} (agent {agent}, server {}); \
                 leave them out with the server's `deny` list",
                dup.join(", "),
                source.name()
            )));
        }
        names.extend(tool_names);
        all.extend(tools);
    }
    b.turn_tools = Some(all);
    Ok(())
}
