//! Tool calls that wait for a person (the SDK's human-in-the-loop), and the run's state as
//! data. Before a turn's tools run, each call whose tool needs approval is looked up in the
//! run's decisions: approved calls run, rejected ones give the model the rejection message,
//! undecided ones pause the run after the other calls ran (their outputs are kept in the
//! paused turn, which resuming finishes without another model call).

use std::sync::Arc;

use super::publish_item;
use crate::items::{FunctionCallItem, FunctionCallOutputItem, RunItem};
use crate::run::baton::Baton;
use crate::run::state::{
    AgentRef, PendingReason, PendingTurn, RunState, StateContext, ToolApproval, TraceState,
    CURRENT_SCHEMA_VERSION, DEFAULT_REJECTION_MESSAGE,
};
use crate::tool::Tool;

/// What a turn's calls do about approval.
pub(super) struct Plan<C: Send + Sync + 'static> {
    /// Calls to run now.
    pub run: Vec<(FunctionCallItem, Arc<dyn Tool<C>>)>,
    /// Calls a person rejected: `(call, message the model reads)`.
    pub rejected: Vec<(FunctionCallItem, String)>,
    /// Calls waiting for a decision.
    pub pending: Vec<(FunctionCallItem, Arc<dyn Tool<C>>)>,
}

/// Sorts the turn's calls by their approval status.
pub(super) fn plan<C: Send + Sync + 'static>(
    b: &Baton<C>,
    calls: &[(FunctionCallItem, Arc<dyn Tool<C>>)],
) -> Plan<C> {
    let mut plan = Plan {
        run: Vec::with_capacity(calls.len()),
        rejected: Vec::new(),
        pending: Vec::new(),
    };
    for (call, tool) in calls {
        let asks = tool
            .policy()
            .is_some_and(|p| p.asks_approval(&call.arguments));
        match b.approvals.decision(&call.name, &call.call_id) {
            Some(d) if d.approved => plan.run.push((call.clone(), tool.clone())),
            Some(d) => plan.rejected.push((
                call.clone(),
                d.message
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REJECTION_MESSAGE.to_owned()),
            )),
            None if asks => plan.pending.push((call.clone(), tool.clone())),
            None => plan.run.push((call.clone(), tool.clone())),
        }
    }
    plan
}

/// Publishes a rejected call's output (the rejection message) and adds it to the turn.
pub(super) async fn reject<C: Send + Sync + 'static>(
    b: &Baton<C>,
    rejected: Vec<(FunctionCallItem, String)>,
    new_items: &mut Vec<RunItem>,
    results: &mut Vec<(String, String)>,
) {
    for (call, message) in rejected {
        let item = RunItem::ToolCallOutput {
            agent: b.agent.name().to_owned(),
            output: message.clone(),
            raw_item: FunctionCallOutputItem {
                call_id: call.call_id.clone(),
                output: message.clone(),
            },
        };
        publish_item(b, &item, Some(call.name.as_str().into())).await;
        new_items.push(item);
        results.push((call.name.clone(), message));
    }
}

/// The approval items of the pending calls, with their deadlines.
pub(super) fn interruptions<C: Send + Sync + 'static>(
    b: &Baton<C>,
    pending: &[(FunctionCallItem, Arc<dyn Tool<C>>)],
) -> Vec<ToolApproval> {
    let now = crate::session::records::now_ms();
    pending
        .iter()
        .map(|(call, tool)| {
            let mut a = ToolApproval::new(b.agent.name(), call);
            a.deadline_ms = tool
                .policy()
                .and_then(|p| p.approval_timeout)
                .map(|t| now + t.as_millis() as i64);
            a
        })
        .collect()
}

/// The run's state now: between turns (`pending` `None`), or inside a turn that stopped
/// after its model call.
pub(crate) fn snapshot<C: Send + Sync + 'static>(
    b: &Baton<C>,
    pending: Option<PendingTurn>,
    interruptions: Vec<ToolApproval>,
) -> RunState {
    let turn = if pending.is_some() {
        b.turn.saturating_sub(1)
    } else {
        b.turn
    };
    snapshot_with(b, &[], b.agent.name(), turn, pending, interruptions)
}

/// The run's state once a turn's `items` are added and the run goes on at `agent`.
pub(crate) fn snapshot_with<C: Send + Sync + 'static>(
    b: &Baton<C>,
    items: &[RunItem],
    agent: &str,
    turn: u64,
    pending: Option<PendingTurn>,
    interruptions: Vec<ToolApproval>,
) -> RunState {
    let mut generated = b.generated.clone();
    generated.extend(items.iter().cloned());
    let (original_input, session_items) = match b.history_len {
        Some(n) if b.env.session.is_some() => (
            b.original_input[n.min(b.original_input.len())..].to_vec(),
            Some(n),
        ),
        _ => (b.original_input.clone(), None),
    };
    let cfg = &b.env.config;
    RunState {
        schema_version: CURRENT_SCHEMA_VERSION.into(),
        run_id: b.shared.run_id.to_string(),
        current_turn: turn,
        current_agent: AgentRef::from(agent),
        starting_agent: AgentRef::from(b.shared.starting_agent().as_str()),
        max_turns: cfg.max_turns,
        original_input,
        session_items,
        generated_items: generated,
        context: StateContext {
            usage: b.ctx.usage(),
            approvals: b.approvals.clone(),
        },
        tool_use_tracker: b.agents_used_tools.iter().cloned().collect(),
        handoff_from: b.handoff_from.clone(),
        pending_turn: pending,
        interruptions,
        trace: TraceState {
            trace_id: b.shared.trace_id.clone(),
            workflow_name: Some(cfg.workflow_name.clone()),
            group_id: cfg.group_id.clone(),
            metadata: cfg.trace_metadata.clone(),
        },
        seq_safe: b.shared.topic.last_seq(),
    }
}

/// The paused turn: its items so far, the calls still to run, its handoffs.
pub(super) fn pending_turn<C: Send + Sync + 'static>(
    new_items: &[RunItem],
    pending: &[(FunctionCallItem, Arc<dyn Tool<C>>)],
    handoff_calls: &[FunctionCallItem],
    results: &[(String, String)],
    reason: PendingReason,
) -> PendingTurn {
    PendingTurn {
        new_items: new_items.to_vec(),
        tool_calls: pending.iter().map(|(c, _)| c.clone()).collect(),
        handoff_calls: handoff_calls.to_vec(),
        tool_results: results.to_vec(),
        reason,
    }
}
