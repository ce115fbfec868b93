//! The end of a turn and of a run: whether the turn produced the final output (tool-use
//! behaviour, structured output, refusals), the output guardrails, saving the turn, and the
//! run's end (spans, outcome, the terminal frame).

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::guardrails;
use super::hooks::{call_hooks, Hook};
use super::save_turn;
use crate::agent::ToolUseBehavior;
use crate::bus::FrameBody;
use crate::error::AgentsError;
use crate::items::RunItem;
use crate::run::baton::{Baton, RunOutcome};
use crate::trace::{self, SpanData};

/// What the turn decided, once its items are known.
pub(super) enum Decision {
    RunAgain,
    Final(Value),
}

pub(super) fn decide_final<C: Send + Sync + 'static>(
    b: &Baton<C>,
    new_items: &[RunItem],
    tool_results: &[(String, String)],
) -> Result<Decision, AgentsError> {
    if !tool_results.is_empty() {
        return Ok(match &b.agent.0.tool_use_behavior {
            ToolUseBehavior::RunLlmAgain => Decision::RunAgain,
            ToolUseBehavior::StopOnFirstTool => {
                Decision::Final(Value::String(tool_results[0].1.clone()))
            }
            ToolUseBehavior::StopAtTools(names) => {
                match tool_results.iter().find(|(n, _)| names.contains(n)) {
                    Some((_, out)) => Decision::Final(Value::String(out.clone())),
                    None => Decision::RunAgain,
                }
            }
        });
    }
    let last_message = new_items.iter().rev().find_map(|i| match i {
        RunItem::MessageOutput { raw_item, .. } => Some(raw_item),
        _ => None,
    });
    if let Some(refusal) = last_message.and_then(|m| m.refusal()) {
        return Err(AgentsError::ModelBehaviorError(format!(
            "Model refused to answer: {refusal}"
        )));
    }
    let text = last_message.map(|m| m.text());
    match &b.agent.0.output_type {
        Some(ot) => match text {
            Some(t) if !t.is_empty() => (ot.validate)(&t)
                .map(Decision::Final)
                .map_err(AgentsError::ModelBehaviorError),
            _ => Ok(Decision::RunAgain),
        },
        None => Ok(Decision::Final(Value::String(text.unwrap_or_default()))),
    }
}

/// Ends a turn that did not hand off: decides whether it produced the final output, runs
/// the output guardrails on it before anything is saved (a blocked answer is never kept),
/// then saves the turn. Answers the final output, or `None` to run again.
pub(super) async fn conclude<C: Send + Sync + 'static>(
    b: &mut Baton<C>,
    new_items: Vec<RunItem>,
    tool_results: &[(String, String)],
) -> Result<Option<Value>, AgentsError> {
    let agent_name = b.agent.name().to_owned();
    let decision = decide_final(b, &new_items, tool_results);
    let final_output = match decision {
        Ok(Decision::Final(v)) => {
            guardrails::run_output(b, &v).await?;
            Some(v)
        }
        Ok(Decision::RunAgain) => None,
        Err(e) => {
            // The turn's items stay in the conversation, as the SDK keeps them.
            save_turn(b, &new_items, &agent_name).await?;
            return Err(e);
        }
    };
    save_turn(b, &new_items, &agent_name).await?;
    b.generated.extend(new_items);
    if let Some(v) = &final_output {
        let agent = b.agent.clone();
        call_hooks(b, &agent, Hook::AgentEnd(v)).await;
    }
    Ok(final_output)
}

/// Ends a run: spans, the outcome for the result handle, and the terminal frame on the bus.
pub(crate) async fn finish<C: Send + Sync + 'static>(mut b: Baton<C>, outcome: RunOutcome) {
    if let RunOutcome::Failed(e) = &outcome {
        if b.agent_span.error().is_none() && !matches!(e, AgentsError::MaxTurnsExceeded { .. }) {
            b.agent_span
                .set_error("Error in agent run", Some(json!({"error": e.to_string()})));
        }
        tracing::debug!(run_id = %b.shared.run_id, error = %e, "run failed");
    }
    b.agent_span.finish();
    let usage = b.ctx.usage();
    b.task_span.update(|d| {
        if let SpanData::Task { usage: u, .. } = d {
            *u = Some(trace::task_usage_json(&usage));
        }
    });
    b.task_span.finish();
    if b.owns_trace {
        b.trace.finish();
    }
    let shared = b.shared.clone();
    shared.finished.store(true, Ordering::Release);
    let body = match &outcome {
        RunOutcome::Completed {
            final_output,
            last_agent,
        } => FrameBody::RunCompleted {
            final_output: final_output.clone(),
            last_agent: last_agent.clone(),
            usage: usage.summary(),
            trace_id: shared.trace_id.clone(),
        },
        RunOutcome::Failed(e) => FrameBody::RunFailed {
            error_type: e.sdk_name().into(),
            message: e.to_string(),
        },
        RunOutcome::Cancelled(mode) => FrameBody::RunCancelled {
            mode: *mode,
            by_run_id: shared.cancel_reason().1,
        },
    };
    *shared.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
    let ended = b.ended(outcome, body);
    let settle = b.env.settle.clone();
    b.slot = None;
    drop(b);
    // Complete before the end frame goes out, so whoever sees the end sees the outcome; and
    // settled (recorded, released) before it is announced.
    let _ = shared.done.send_replace(true);
    match settle {
        Some(s) => s.settle(ended).await,
        None => drop(ended.publish()),
    }
}
