//! The one engine: a single turn of a run, exactly as the SDK resolves it. The library
//! `Runner`, the CLI and the server all drive runs through here.
//!
//! A turn, in steps (one file each):
//! 0. [`sources`]: the tools of the agent's tool sources (MCP servers), listed for the turn;
//! 1. [`model_call`]: the model request and its stream onto the bus (with the first turn's
//!    input guardrails, [`guardrails`]);
//! 2. [`resolve`]: the response's output into run items;
//! 3. [`tools`]: the function tools, all at once;
//! 4. [`handoffs`]: the first handoff wins, the baton moves to the target's mailbox;
//! 5. [`finish`]: final output or another turn (output guardrails, then the turn is saved),
//!    and the end of the run.
//!
//! Hooks come in pairs (the run's, then the agent's): [`hooks`].

mod approvals;
mod finish;
mod guardrails;
mod handoffs;
mod hooks;
mod model_call;
mod resolve;
mod sources;
mod tools;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::actor::{AgentSlot, Stage, Work};
use crate::agent::Agent;
use crate::bus::CancelMode;
use crate::error::AgentsError;
use crate::events::StreamEvent;
use crate::items::{FunctionCallItem, RunItem};
use crate::run::baton::{Baton, RunOutcome};
use crate::run::state::PendingReason;
use crate::session::TurnRecord;
use crate::trace::{self, Span, SpanData};
pub(crate) use finish::finish;
pub use handoffs::MULTIPLE_HANDOFFS_MESSAGE;
use hooks::{call_hooks, Hook};

pub(crate) enum Step<C: Send + Sync + 'static> {
    /// Another turn on the same agent.
    Next(Baton<C>),
    /// Another turn on the agent the run was handed off to (in the baton).
    Handoff(Baton<C>),
    /// The run is over.
    Done(Baton<C>, RunOutcome),
}

/// An agent actor drives a baton by driving its turns ([`drive`]).
impl<C: Send + Sync + 'static> Work<C> for Baton<C> {
    fn agent(&self) -> &Agent<C> {
        &self.agent
    }
    fn admitted(&mut self, slot: AgentSlot) {
        self.slot = Some(slot);
    }
    fn drive(self: Box<Self>, stage: Stage<C>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(drive(*self, stage))
    }
    fn refused(self: Box<Self>) {
        // Not a run: nothing to announce or settle.
        self.shared
            .finished
            .store(true, std::sync::atomic::Ordering::Release);
        self.task_span.finish();
        if self.owns_trace {
            self.trace.finish();
        }
    }
}

/// Drives a baton's turns at its agent: the next turn on the same agent follows in this
/// task; a handoff sends the baton to the target's mailbox; the end finishes the run.
pub(crate) async fn drive<C: Send + Sync + 'static>(baton: Baton<C>, stage: Stage<C>) {
    use tracing::Instrument;
    // Everything logged while the run's turns run carries the run's ids.
    let span = baton.shared.log_span.clone();
    async move {
        let mut baton = baton;
        loop {
            match run_turn(baton).await {
                Step::Next(b) => {
                    b.shared.drain_turn().await;
                    baton = b;
                }
                Step::Handoff(b) => {
                    b.shared.drain_turn().await;
                    return stage.arrive(Box::new(b));
                }
                Step::Done(b, outcome) => return finish(b, outcome).await,
            }
        }
    }
    .instrument(span)
    .await
}

fn fail<C: Send + Sync + 'static>(b: Baton<C>, e: AgentsError) -> Step<C> {
    Step::Done(b, RunOutcome::Failed(e))
}

async fn start_agent<C: Send + Sync + 'static>(b: &mut Baton<C>) {
    let agent = b.agent.clone();
    b.shared.set_agent(agent.name());
    b.shared.log_span.record("agent", agent.name());
    b.agent_span = b.task_span.child(SpanData::Agent {
        name: agent.name().to_owned(),
        handoffs: vec![],
        tools: vec![],
        // The SDK names a plain-text agent's output type "str".
        output_type: Some(agent.output_type_name().unwrap_or("str").to_owned()),
    });
    let handoffs: Vec<String> = agent
        .handoff_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let tools: Vec<String> = b.tools().iter().map(|t| t.name().to_owned()).collect();
    b.agent_span.update(|d| {
        if let SpanData::Agent {
            handoffs: h,
            tools: t,
            ..
        } = d
        {
            *h = handoffs;
            *t = tools;
        }
    });
    call_hooks(b, &agent, Hook::AgentStart).await;
    b.agent_started = true;
}

pub(super) async fn publish_item<C: Send + Sync + 'static>(
    b: &Baton<C>,
    item: &RunItem,
    tool: Option<Arc<str>>,
) {
    b.shared
        .publish_event(StreamEvent::RunItem(Arc::new(item.clone())), tool)
        .await;
}

/// Saves a turn's items: into the run's new items and the session (with the run's progress:
/// the turn, the agent the run goes on with, usage so far).
pub(super) async fn save_turn<C: Send + Sync + 'static>(
    b: &Baton<C>,
    items: &[RunItem],
    agent: &str,
) -> Result<(), AgentsError> {
    b.shared
        .new_items
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(items.iter().cloned());
    if let Some(s) = &b.env.session {
        let state = b.env.keep_state.then(|| {
            approvals::snapshot_with(b, items, agent, b.turn, None, Vec::new())
                .to_text()
                .into()
        });
        let record = TurnRecord {
            run_id: b.shared.run_id.clone(),
            turn: b.turn,
            agent: agent.to_owned(),
            usage: b.ctx.usage(),
            seq_reserved: None,
            state,
            seq_safe: None,
            pause: None,
        };
        s.save_turn(items.iter().map(RunItem::to_input_item).collect(), &record)
            .await
            .map_err(|e| {
                AgentsError::UserError(format!("could not save the turn to the session: {e}"))
            })?;
    }
    Ok(())
}

/// Runs one turn of the baton's current agent.
pub(crate) async fn run_turn<C: Send + Sync + 'static>(mut b: Baton<C>) -> Step<C> {
    let shared = b.shared.clone();
    if shared.cancel.is_cancelled() {
        return Step::Done(b, RunOutcome::Cancelled(shared.cancel_reason().0));
    }
    if b.turn > 0 && shared.cancel_after_turn.load(Ordering::Acquire) {
        return Step::Done(b, RunOutcome::Cancelled(CancelMode::AfterTurn));
    }
    if let Some(session_items) = b.resuming.take() {
        // A resumed run: its stream opens with its agent, as the SDK's resumed stream does;
        // the conversation before its own input comes back from the session.
        shared
            .publish_event(
                StreamEvent::AgentUpdated {
                    new_agent: b.agent.name().into(),
                },
                None,
            )
            .await;
        if let (Some(n), Some(s)) = (session_items, b.env.session.clone()) {
            match s.get_items(Some(usize::MAX)).await {
                Ok(history) => {
                    let mut all: Vec<_> = history.into_iter().take(n).collect();
                    b.history_len = Some(all.len());
                    all.extend(std::mem::take(&mut b.original_input));
                    *shared.input.lock().unwrap_or_else(|e| e.into_inner()) = all.clone();
                    b.original_input = all;
                }
                Err(e) => {
                    return fail(
                        b,
                        AgentsError::UserError(format!("could not read the session: {e}")),
                    );
                }
            }
        }
    } else if b.turn == 0 {
        shared
            .publish_event(
                StreamEvent::AgentUpdated {
                    new_agent: b.agent.name().into(),
                },
                None,
            )
            .await;
        if let Some(s) = b.env.session.clone() {
            match s.get_items(None).await {
                Ok(mut history) => {
                    let input = std::mem::take(&mut b.original_input);
                    b.history_len = Some(history.len());
                    history.extend(input.iter().cloned());
                    b.original_input = history;
                    // Saved as the run's (turn 0), so a rollback removes it with the run;
                    // with its state, so a restart can take the run up from the start.
                    let state = b
                        .env
                        .keep_state
                        .then(|| approvals::snapshot(&b, None, Vec::new()).to_text().into());
                    let record = TurnRecord {
                        run_id: shared.run_id.clone(),
                        turn: 0,
                        agent: b.agent.name().to_owned(),
                        state,
                        ..Default::default()
                    };
                    if let Err(e) = s.save_turn(input.clone(), &record).await {
                        return fail(
                            b,
                            AgentsError::UserError(format!(
                                "could not save the input to the session: {e}"
                            )),
                        );
                    }
                    *shared.input.lock().unwrap_or_else(|e| e.into_inner()) =
                        b.original_input.clone();
                }
                Err(e) => {
                    return fail(
                        b,
                        AgentsError::UserError(format!("could not read the session: {e}")),
                    );
                }
            }
        }
    }
    // The tools of the turn; on an agent's first turn (before its span, as the SDK lists
    // them) the sources' listings are announced.
    let starting = !b.agent_started;
    if !b.agent.tool_sources().is_empty() {
        let parent = if starting {
            b.task_span.clone()
        } else {
            b.agent_span.clone()
        };
        if let Err(e) = sources::gather(&mut b, &parent, starting).await {
            return fail(b, e);
        }
    }
    if starting {
        start_agent(&mut b).await;
    }
    b.turn += 1;
    shared.current_turn.store(b.turn, Ordering::Release);
    let max_turns = b.env.config.max_turns;
    if b.turn > max_turns {
        b.agent_span
            .set_error("Max turns exceeded", Some(json!({"max_turns": max_turns})));
        return fail(b, AgentsError::MaxTurnsExceeded { max_turns });
    }

    let turn_span = b.agent_span.child(SpanData::Turn {
        turn: b.turn,
        agent_name: b.agent.name().to_owned(),
        usage: None,
    });
    let usage_before = b.ctx.usage();
    let step = turn_body(&mut b, &turn_span).await;
    let usage_after = b.ctx.usage();
    let mut turn_usage = usage_after;
    turn_usage.input_tokens -= usage_before.input_tokens;
    turn_usage.output_tokens -= usage_before.output_tokens;
    turn_usage.input_tokens_details.cached_tokens -=
        usage_before.input_tokens_details.cached_tokens;
    turn_span.update(|d| {
        if let SpanData::Turn { usage, .. } = d {
            *usage = Some(trace::turn_usage_json(&turn_usage));
        }
    });
    turn_span.finish();
    match step {
        Ok(TurnEnd::Again) => Step::Next(b),
        Ok(TurnEnd::Handoff(target)) => {
            let from = b.agent.name().to_owned();
            b.agent_span.finish();
            // The run leaves this agent; the target admits it when the baton arrives.
            b.slot = None;
            shared.set_agent(target.name());
            shared
                .publish_event(
                    StreamEvent::AgentUpdated {
                        new_agent: target.name().into(),
                    },
                    None,
                )
                .await;
            b.agent = target;
            b.agent_started = false;
            b.handoff_from = Some(from);
            Step::Handoff(b)
        }
        Ok(TurnEnd::Final(v)) => {
            let last_agent = b.agent.name().to_owned();
            Step::Done(
                b,
                RunOutcome::Completed {
                    final_output: v,
                    last_agent,
                },
            )
        }
        Ok(TurnEnd::Cancelled) => Step::Done(b, RunOutcome::Cancelled(shared.cancel_reason().0)),
        Ok(TurnEnd::Interrupted(interruptions, pending)) => {
            // Paused: the state (with the turn's progress) is saved, then the run ends here.
            if let Err(e) = pause(&b, pending, &interruptions).await {
                return fail(b, e);
            }
            Step::Done(b, RunOutcome::Interrupted(interruptions))
        }
        Err(e) => fail(b, e),
    }
}

enum TurnEnd<C: Send + Sync + 'static> {
    Again,
    Handoff(Agent<C>),
    Final(Value),
    Cancelled,
    Interrupted(
        Vec<crate::run::state::ToolApproval>,
        crate::run::state::PendingTurn,
    ),
}

/// Saves a paused run's state: in its session's store (the run's status becomes
/// `awaiting_approval`), and for the result handle (`to_state`).
async fn pause<C: Send + Sync + 'static>(
    b: &Baton<C>,
    pending: crate::run::state::PendingTurn,
    interruptions: &[crate::run::state::ToolApproval],
) -> Result<(), AgentsError> {
    let state = approvals::snapshot(b, Some(pending), interruptions.to_vec());
    let text: Arc<str> = state.to_text().into();
    *b.shared.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    if let Some(s) = &b.env.session {
        let deadline = interruptions.iter().filter_map(|i| i.deadline_ms).min();
        let record = TurnRecord {
            run_id: b.shared.run_id.clone(),
            turn: b.turn.saturating_sub(1),
            agent: b.agent.name().to_owned(),
            usage: b.ctx.usage(),
            state: Some(text),
            pause: Some(deadline),
            ..Default::default()
        };
        s.save_turn(Vec::new(), &record).await.map_err(|e| {
            AgentsError::UserError(format!("could not save the paused run's state: {e}"))
        })?;
    }
    Ok(())
}

/// Saves the run's state as its tools start (the server's runs): a process that dies while
/// they run leaves this state, from which only idempotent tools are run again.
async fn tools_started<C: Send + Sync + 'static>(
    b: &Baton<C>,
    pending: crate::run::state::PendingTurn,
) -> Result<(), AgentsError> {
    let Some(s) = &b.env.session else {
        return Ok(());
    };
    let state = approvals::snapshot(b, Some(pending), Vec::new());
    let record = TurnRecord {
        run_id: b.shared.run_id.clone(),
        turn: b.turn.saturating_sub(1),
        agent: b.agent.name().to_owned(),
        usage: b.ctx.usage(),
        state: Some(state.to_text().into()),
        ..Default::default()
    };
    s.save_turn(Vec::new(), &record)
        .await
        .map_err(|e| AgentsError::UserError(format!("could not save the run's state: {e}")))
}

async fn turn_body<C: Send + Sync + 'static>(
    b: &mut Baton<C>,
    turn_span: &Span,
) -> Result<TurnEnd<C>, AgentsError> {
    let (mut new_items, tool_calls, handoff_calls, mut tool_results) = match b.resume_turn.take() {
        // A paused turn resumed: its model call was made; its remaining calls are decided.
        Some(p) => resolve::resume(b, p)?,
        None => {
            if b.turn == 1 {
                guardrails::run_input(b, false).await?;
            }
            let Some(response) = model_call::call(b, turn_span).await? else {
                return Ok(TurnEnd::Cancelled);
            };
            let r = resolve::resolve(b, turn_span, response).await?;
            (r.new_items, r.tool_calls, r.handoff_calls, Vec::new())
        }
    };
    if !tool_calls.is_empty() {
        b.agents_used_tools.insert(b.agent.name().to_owned());
    }
    // Calls that need a person: rejected ones answer with the rejection message, undecided
    // ones pause the run once the others ran.
    let plan = approvals::plan(b, &tool_calls);
    approvals::reject(b, plan.rejected, &mut new_items, &mut tool_results).await;
    if b.env.keep_state && !plan.run.is_empty() {
        let calls: Vec<FunctionCallItem> = handoff_calls.iter().map(|(c, _)| c.clone()).collect();
        let started = approvals::pending_turn(
            &new_items,
            &plan.run,
            &calls,
            &tool_results,
            PendingReason::ToolsStarted,
        );
        tools_started(b, started).await?;
    }
    // Function tools run first, all at once; then the first handoff, if any.
    let Some(results) = tools::run_all(b, turn_span, &plan.run, &mut new_items).await? else {
        return Ok(TurnEnd::Cancelled);
    };
    tool_results.extend(results);
    if !plan.pending.is_empty() {
        let interruptions = approvals::interruptions(b, &plan.pending);
        let calls: Vec<FunctionCallItem> = handoff_calls.iter().map(|(c, _)| c.clone()).collect();
        let pending = approvals::pending_turn(
            &new_items,
            &plan.pending,
            &calls,
            &tool_results,
            PendingReason::Approval,
        );
        return Ok(TurnEnd::Interrupted(interruptions, pending));
    }
    if !handoff_calls.is_empty() {
        let target = handoffs::perform(b, turn_span, &handoff_calls, new_items).await?;
        return Ok(TurnEnd::Handoff(target));
    }
    Ok(match finish::conclude(b, new_items, &tool_results).await? {
        Some(v) => TurnEnd::Final(v),
        None => TurnEnd::Again,
    })
}
