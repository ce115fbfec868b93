//! Function tools of a turn: all called at once, each in a function span with its hooks; a
//! failing tool gives the model the SDK's error message and the run goes on. A tool's policy
//! bounds its calls: a concurrency slot first, and a timeout over the whole call, whose
//! `timeout_behavior` either gives the model the SDK's timeout message or fails the run with
//! `ToolTimeoutError`. Each call gets the run's scope, through which it reports progress
//! (`tool.progress` frames) and agent tools start their nested runs.

use std::sync::Arc;

use futures::future::try_join_all;
use serde_json::json;

use super::hooks::{call_hooks, Hook};
use super::publish_item;
use crate::error::AgentsError;
use crate::items::{FunctionCallItem, FunctionCallOutputItem, RunItem};
use crate::run::baton::{Baton, CallEnv};
use crate::tool::{
    invoke_caught, timeout_message, CallScope, Tool, ToolContext, ToolTimeoutBehavior,
};
use crate::trace::{self, Span, SpanData};

/// Runs the turn's function tool calls concurrently, publishing and appending each output
/// item in call order. Answers `(tool name, output)` per call, or `None` when the run was
/// cancelled meanwhile; an error when a tool's timeout fails the run.
pub(super) async fn run_all<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    calls: &[(FunctionCallItem, Arc<dyn Tool<C>>)],
    new_items: &mut Vec<RunItem>,
) -> Result<Option<Vec<(String, String)>>, AgentsError> {
    let mut results = Vec::with_capacity(calls.len());
    if calls.is_empty() {
        return Ok(Some(results));
    }
    let scope: Arc<dyn CallScope> = Arc::new(CallEnv {
        shared: b.shared.clone(),
        env: b.env.clone(),
    });
    let runs = try_join_all(
        calls
            .iter()
            .map(|(c, t)| run_tool(b, turn_span, c, t, &scope)),
    );
    let outputs = tokio::select! {
        biased;
        _ = b.shared.cancel.cancelled() => return Ok(None),
        o = runs => o?,
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
    Ok(Some(results))
}

async fn run_tool<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    call: &FunctionCallItem,
    tool: &Arc<dyn Tool<C>>,
    scope: &Arc<dyn CallScope>,
) -> Result<String, AgentsError> {
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
        scope: Some(scope.clone()),
    };
    let policy = tool.policy();
    let call_fut = invoke_caught(tool.as_ref(), tctx.clone(), call.arguments.clone());
    let bounded = async {
        // Waiting for a slot counts towards the timeout; a closed semaphore cannot happen
        // (nothing closes it), and would only mean no limit.
        let _slot = match policy.and_then(|p| p.concurrency.clone()) {
            Some(sem) => sem.acquire_owned().await.ok(),
            None => None,
        };
        call_fut.await
    };
    let started = std::time::Instant::now();
    let traced = trace::with_span(span.clone(), bounded);
    let result = match policy.and_then(|p| p.timeout) {
        None => Some(traced.await),
        Some(limit) => tokio::time::timeout(limit, traced).await.ok(),
    };
    if let Some(o) = &b.env.observer {
        o.tool_call(&crate::run::observer::ToolCallStats {
            agent: b.agent.name(),
            tool: tool.name(),
            duration: started.elapsed(),
            error: !matches!(result, Some(Ok(_))),
        });
    }
    let output = match result {
        None => {
            let p = policy.map(|p| (p.timeout, p.timeout_behavior));
            let (limit, behavior) = match p {
                Some((Some(l), b)) => (l, b),
                _ => (
                    std::time::Duration::ZERO,
                    ToolTimeoutBehavior::ErrorAsResult,
                ),
            };
            let seconds = limit.as_secs_f64();
            let message = timeout_message(tool.name(), seconds);
            tracing::warn!(tool = %call.name, "{message}");
            if behavior == ToolTimeoutBehavior::RaiseException {
                span.set_error(
                    "Error running tool",
                    Some(json!({"tool_name": call.name, "error": message})),
                );
                span.finish();
                return Err(AgentsError::ToolTimeoutError {
                    tool_name: call.name.clone(),
                    timeout_seconds: seconds,
                });
            }
            span.set_error(
                "Error running tool (non-fatal)",
                Some(json!({"tool_name": call.name, "error": message})),
            );
            message
        }
        Some(Ok(o)) => o,
        Some(Err(e)) => {
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
    Ok(output)
}
