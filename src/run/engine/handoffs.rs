//! Handoffs of a turn: the first requested handoff wins and the others are told they were
//! ignored (the SDK's message); a handoff span, the `on_handoff` callback and hooks, the
//! handoff output item, the turn saved, and the input filter applied to what the run carries
//! on with.

use serde_json::json;

use super::hooks::{call_hooks, Hook};
use super::{publish_item, save_turn};
use crate::agent::Agent;
use crate::error::AgentsError;
use crate::handoff::{transfer_message, Handoff, HandoffInputData, HandoffTarget};
use crate::items::{FunctionCallItem, FunctionCallOutputItem, RunItem};
use crate::run::baton::Baton;
use crate::trace::{Span, SpanData};

/// The message an ignored extra handoff gets, as the SDK words it.
pub const MULTIPLE_HANDOFFS_MESSAGE: &str = "Multiple handoffs detected, ignoring this one.";

pub(super) fn resolve_handoff_target<C: Send + Sync + 'static>(
    b: &Baton<C>,
    h: &Handoff<C>,
) -> Result<Agent<C>, AgentsError> {
    match &h.target {
        HandoffTarget::Agent(a) => Ok(a.clone()),
        HandoffTarget::Named(n) => b.env.stage.get(n).ok_or_else(|| {
            AgentsError::UserError(format!(
                "Agent {} hands off to {n}, but no agent named {n} is registered on the runner",
                b.agent.name()
            ))
        }),
    }
}

/// Performs the turn's handoff (the first of `calls`), saving the turn with `new_items`.
/// Answers the agent the run goes on with.
pub(super) async fn perform<C: Send + Sync + 'static>(
    b: &mut Baton<C>,
    turn_span: &Span,
    calls: &[(FunctionCallItem, Handoff<C>)],
    mut new_items: Vec<RunItem>,
) -> Result<Agent<C>, AgentsError> {
    let name = b.agent.name().to_owned();
    let Some((first_call, first)) = calls.first() else {
        return Err(AgentsError::UserError("no handoff to perform".into()));
    };
    for (call, _) in calls.iter().skip(1) {
        let item = RunItem::ToolCallOutput {
            agent: name.clone(),
            output: MULTIPLE_HANDOFFS_MESSAGE.into(),
            raw_item: FunctionCallOutputItem {
                call_id: call.call_id.clone(),
                output: MULTIPLE_HANDOFFS_MESSAGE.into(),
            },
        };
        publish_item(b, &item, Some(call.name.as_str().into())).await;
        new_items.push(item);
    }
    let hspan = turn_span.child(SpanData::Handoff {
        from_agent: Some(name.clone()),
        to_agent: None,
    });
    if calls.len() > 1 {
        let requested: Vec<&str> = calls.iter().map(|(_, h)| h.agent_name()).collect();
        hspan.set_error(
            "Multiple handoffs requested",
            Some(json!({"requested_agents": requested})),
        );
    }
    let target = match resolve_handoff_target(b, first) {
        Ok(t) => t,
        Err(e) => {
            hspan.finish();
            return Err(e);
        }
    };
    hspan.update(|d| {
        if let SpanData::Handoff { to_agent, .. } = d {
            *to_agent = Some(target.name().to_owned());
        }
    });
    hspan.finish();
    if let Some(cb) = &first.on_handoff {
        cb(b.ctx.clone(), first_call.arguments.clone()).await;
    }
    call_hooks(b, &target, Hook::Handoff { from: &name }).await;
    let item = RunItem::HandoffOutput {
        agent: name.clone(),
        source_agent: name.clone(),
        target_agent: target.name().to_owned(),
        raw_item: FunctionCallOutputItem {
            call_id: first_call.call_id.clone(),
            output: transfer_message(target.name()),
        },
    };
    publish_item(b, &item, None).await;
    new_items.push(item);
    save_turn(b, &new_items, target.name()).await?;
    match &first.input_filter {
        Some(filter) => {
            let data = filter(HandoffInputData {
                input_history: std::mem::take(&mut b.original_input),
                pre_handoff_items: std::mem::take(&mut b.generated),
                new_items,
            });
            b.original_input = data.input_history;
            b.generated = data.pre_handoff_items;
            b.generated.extend(data.new_items);
            // As in the SDK, the filtered items are what the run carries on with.
            *b.shared.new_items.lock().unwrap_or_else(|e| e.into_inner()) = b.generated.clone();
        }
        None => b.generated.extend(new_items),
    }
    Ok(target)
}
