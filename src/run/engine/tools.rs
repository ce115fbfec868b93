//! Function tools of a turn: all called at once, each in a function span with its hooks; a
//! failing tool gives the model the SDK's error message and the run goes on.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::json;

use super::hooks::{call_hooks, Hook};
use super::publish_item;
use crate::items::{FunctionCallItem, FunctionCallOutputItem, RunItem};
use crate::run::baton::Baton;
use crate::tool::{invoke_caught, Tool, ToolContext};
use crate::trace::{self, Span, SpanData};

/// Runs the turn's function tool calls concurrently, publishing and appending each output
/// item in call order. Answers `(tool name, output)` per call, or `None` when the run was
/// cancelled meanwhile.
pub(super) async fn run_all<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    calls: &[(FunctionCallItem, Arc<dyn Tool<C>>)],
    new_items: &mut Vec<RunItem>,
) -> Option<Vec<(String, String)>> {
    let mut results = Vec::with_capacity(calls.len());
    if calls.is_empty() {
        return Some(results);
    }
    let runs = join_all(calls.iter().map(|(c, t)| run_tool(b, turn_span, c, t)));
    let outputs = tokio::select! {
        biased;
        _ = b.shared.cancel.cancelled() => return None,
        o = runs => o,
    };
    let name = b.agent.name();
    for ((call, _), output) in calls.iter().zip(outputs) {
        let item = RunItem::ToolCallOutput {
            agent: name.to_owned(),
            output: output.clone(),
            raw_item: FunctionCallOutputItem {
                call_id: call.call_id.clone(),
                output: output.clone(),
            },
        };
        publish_item(b, &item, Some(call.name.as_str().into())).await;
        new_items.push(item);
        results.push((call.name.clone(), output));
    }
    Some(results)
}

async fn run_tool<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    call: &FunctionCallItem,
    tool: &Arc<dyn Tool<C>>,
) -> String {
    let sensitive = b.env.include_sensitive;
    // As in the SDK, the span starts bare and the arguments are filled in after its start.
    let span = turn_span.child(SpanData::Function {
        name: call.name.clone(),
        input: None,
        output: None,
        mcp_data: None,
    });
    if sensitive {
        span.update(|d| {
            if let SpanData::Function { input, .. } = d {
                *input = Some(call.arguments.clone());
            }
        });
    }
    call_hooks(b, &b.agent, Hook::ToolStart(tool.name())).await;
    let tctx = ToolContext {
        run: b.ctx.clone(),
        tool_name: tool.name().into(),
        call_id: call.call_id.as_str().into(),
    };
    let started = std::time::Instant::now();
    let result = trace::with_span(
        span.clone(),
        invoke_caught(tool.as_ref(), tctx.clone(), call.arguments.clone()),
    )
    .await;
    if let Some(o) = &b.env.observer {
        o.tool_call(&crate::run::observer::ToolCallStats {
            agent: b.agent.name(),
            tool: tool.name(),
            duration: started.elapsed(),
            error: result.is_err(),
        });
    }
    let output = match result {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(tool = %call.name, error = %e, "tool failed; the model is told");
            span.set_error(
                "Error running tool (non-fatal)",
                Some(json!({"tool_name": call.name, "error": e.to_string()})),
            );
            tool.error_message(&tctx, &e)
        }
    };
    if sensitive {
        let o = output.clone();
        span.update(|d| {
            if let SpanData::Function { output, .. } = d {
                *output = Some(o);
            }
        });
    }
    span.finish();
    call_hooks(b, &b.agent, Hook::ToolEnd(tool.name(), &output)).await;
    output
}
