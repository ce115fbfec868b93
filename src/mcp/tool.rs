//! One tool of an MCP server as an agent's tool: the call goes to the server's current
//! connection (whichever its actor holds now), carries an MCP progress token whose
//! notifications become `tool.progress` frames, and any failure (the server restarting, a
//! protocol error) is a tool error the model reads, never a dead run.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientRequest, ContentBlock, JsonObject, RequestId, RequestMetaObject, ServerResult,
};
use rmcp::service::{PeerRequestOptions, RoleClient};
use rmcp::Peer;
use serde_json::{json, Value};

use crate::mcp::actor::Core;
use crate::tool::{Tool, ToolContext, ToolError, ToolPolicy};
use crate::trace::{self, SpanData};

/// A tool listed by an MCP server.
pub struct McpTool {
    pub(crate) server: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) description: String,
    pub(crate) parameters: Value,
    pub(crate) policy: ToolPolicy,
    pub(crate) core: Weak<Core>,
}

impl McpTool {
    /// Makes the tool from the server's description of it. As in the SDK, a schema without
    /// `properties` gets an empty one, and the schema is not made strict.
    pub(crate) fn from_listed(
        t: &rmcp::model::Tool,
        server: &Arc<str>,
        policy: &ToolPolicy,
        core: Weak<Core>,
    ) -> McpTool {
        let mut parameters = Value::Object((*t.input_schema).clone());
        if let Some(o) = parameters.as_object_mut() {
            o.entry("properties").or_insert_with(|| json!({}));
        }
        McpTool {
            server: server.clone(),
            name: t.name.as_ref().into(),
            description: t.description.as_deref().unwrap_or_default().to_owned(),
            parameters,
            policy: policy.clone(),
            core,
        }
    }

    /// The server the tool belongs to.
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// Text for the model from a call's result, as the SDK gives it: the text of a single text
/// block; several blocks joined by new lines, non-text blocks as their JSON. A result the
/// server flags as an error is returned the same way (the model reads what went wrong).
pub(crate) fn result_text(r: &CallToolResult) -> String {
    if r.content.is_empty() {
        return match &r.structured_content {
            Some(v) => v.to_string(),
            None => String::new(),
        };
    }
    let parts: Vec<String> = r
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => t.text.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        })
        .collect();
    parts.join("\n")
}

/// Sends `notifications/cancelled` for a request abandoned before its answer (the run was
/// cancelled or the call timed out), so the server can stop working on it.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let peer = self.peer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let p = CancelledNotificationParam::new(
                    Some(id),
                    Some("the calling run no longer waits for this call".into()),
                );
                let _ = peer.notify_cancelled(p).await;
            });
        }
    }
}

impl<C: Send + Sync + 'static> Tool<C> for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> &Value {
        &self.parameters
    }
    fn strict(&self) -> bool {
        false
    }
    fn policy(&self) -> Option<&ToolPolicy> {
        Some(&self.policy)
    }
    fn mcp_server(&self) -> Option<&str> {
        Some(&self.server)
    }
    fn invoke(
        &self,
        ctx: ToolContext<C>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let server = self.server.clone();
        let name = self.name.clone();
        let core = self.core.clone();
        async move {
            let args: JsonObject = if arguments.trim().is_empty() {
                JsonObject::new()
            } else {
                match serde_json::from_str::<Value>(&arguments) {
                    Ok(Value::Object(o)) => o,
                    Ok(_) => {
                        return Err(ToolError::InvalidArguments {
                            tool: name.to_string(),
                            message: "expected a JSON object".into(),
                        })
                    }
                    Err(e) => {
                        return Err(ToolError::InvalidArguments {
                            tool: name.to_string(),
                            message: e.to_string(),
                        })
                    }
                }
            };
            if let Some(span) = trace::current_span() {
                span.update(|d| {
                    if let SpanData::Function { mcp_data, .. } = d {
                        *mcp_data = Some(json!({ "server": server.as_ref() }));
                    }
                });
            }
            let Some(core) = core.upgrade() else {
                return Err(ToolError::Failed(format!(
                    "the MCP server {server} was shut down"
                )));
            };
            let conn = core.connection().map_err(ToolError::Failed)?;
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(
                CallToolRequestParams::new(name.to_string()).with_arguments(args),
            ));
            let handle = conn
                .peer
                .send_request_with_option(request, trace_meta())
                .await
                .map_err(|e| {
                    ToolError::Failed(format!("the MCP server {server} is unreachable: {e}"))
                })?;
            let _route = ctx.scope().map(|s| {
                conn.events.route(
                    handle.progress_token.clone(),
                    s.clone(),
                    ctx.call_id.clone(),
                    ctx.tool_name.clone(),
                )
            });
            let mut cancel = CancelOnDrop {
                peer: conn.peer.clone(),
                id: Some(handle.id.clone()),
            };
            let answer = handle.await_response().await;
            cancel.id = None;
            match answer {
                Ok(ServerResult::CallToolResult(r)) => Ok(result_text(&r)),
                Ok(_) => Err(ToolError::Failed(format!(
                    "the MCP server {server} answered the call of {name} with something else than a tool result"
                ))),
                Err(e) => {
                    core.report_call_failure(&conn);
                    Err(ToolError::Failed(format!(
                        "the call to the MCP server {server} failed: {e}"
                    )))
                }
            }
        }
        .boxed()
    }
}

/// Request options carrying the calling span's trace context in `_meta` (`traceparent`, as
/// OpenTelemetry's MCP conventions put it, and callboard's own trace and span ids), so an MCP
/// server's spans join the run's trace as an HTTP tool's do from its headers.
fn trace_meta() -> PeerRequestOptions {
    let mut options = PeerRequestOptions::no_options();
    let headers = trace::context::current_headers();
    if !headers.is_empty() {
        let mut meta = RequestMetaObject::new();
        for (name, value) in headers {
            meta.0 .0.insert(name.to_owned(), Value::String(value));
        }
        options.meta = Some(meta);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_as_the_sdk_reads_them() {
        let one = CallToolResult::success(vec![ContentBlock::text("Echo: hi")]);
        assert_eq!(result_text(&one), "Echo: hi");
        let two = CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(result_text(&two), "a\nb");
        let err = CallToolResult::error(vec![ContentBlock::text("bad city")]);
        assert_eq!(result_text(&err), "bad city");
    }
}
