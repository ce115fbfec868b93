//! The one engine: a single turn of a run (model call, item resolution, tools, handoffs,
//! guardrails, max turns, final output), exactly as the SDK resolves it. The library
//! `Runner`, the CLI and the server all drive runs through here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::join_all;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::actor::Stage;
use crate::agent::{Agent, ModelRef, ToolUseBehavior};
use crate::bus::{CancelMode, FrameBody};
use crate::error::AgentsError;
use crate::events::StreamEvent;
use crate::guardrail::GuardrailResult;
use crate::handoff::{
    default_tool_description, transfer_message, Handoff, HandoffInputData, HandoffTarget,
};
use crate::items::{FunctionCallItem, FunctionCallOutputItem, Item, RunItem};
use crate::model::{
    Model, ModelApi, ModelRequest, RawEvent, ResponseEvent, ResponseObject, ToolSpec,
};
use crate::run::baton::{Baton, RunOutcome};
use crate::tool::{invoke_caught, Tool, ToolContext};
use crate::trace::{self, Span, SpanData};

/// The message an ignored extra handoff gets, as the SDK words it.
pub const MULTIPLE_HANDOFFS_MESSAGE: &str = "Multiple handoffs detected, ignoring this one.";

pub(crate) enum Step<C: Send + Sync + 'static> {
    /// Another turn: on the same agent, or on a new one after a handoff.
    Next(Baton<C>),
    /// The run is over.
    Done(Baton<C>, RunOutcome),
}

/// Drives one turn of a baton and routes what follows: the next turn to the right agent's
/// mailbox, or the end of the run.
pub(crate) async fn drive<C: Send + Sync + 'static>(baton: Baton<C>, stage: Stage<C>) {
    match run_turn(baton).await {
        Step::Next(b) => stage.dispatch(b),
        Step::Done(b, outcome) => finish(b, outcome),
    }
}

fn fail<C: Send + Sync + 'static>(b: Baton<C>, e: AgentsError) -> Step<C> {
    Step::Done(b, RunOutcome::Failed(e))
}

async fn start_agent<C: Send + Sync + 'static>(b: &mut Baton<C>) {
    let agent = b.agent.clone();
    *b.shared
        .current_agent
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = agent.name().to_owned();
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
    let tools: Vec<String> = agent.tool_names().into_iter().map(str::to_owned).collect();
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
    if let Some(h) = &b.env.hooks {
        h.on_agent_start(&b.ctx, agent.name()).await;
    }
    if let Some(h) = &agent.0.hooks {
        h.on_start(&b.ctx, agent.name()).await;
    }
    b.agent_started = true;
}

fn resolve_model<C: Send + Sync + 'static>(b: &Baton<C>) -> Result<Arc<dyn Model>, AgentsError> {
    if let Some(m) = &b.env.config.model {
        return Ok(m.clone());
    }
    let found = match &b.agent.0.model {
        ModelRef::Instance(m) => Some(m.clone()),
        ModelRef::Named(n) => b.env.provider.get_model(Some(n)),
        ModelRef::Default => b.env.provider.get_model(None),
    };
    found.ok_or_else(|| {
        let which = match &b.agent.0.model {
            ModelRef::Named(n) => format!("the model {n:?}, which the model provider does not know"),
            _ => "no model, and the model provider has no default".to_owned(),
        };
        AgentsError::UserError(format!(
            "Agent {} has {which}: give the agent a model, or give the Runner a model provider that has it",
            b.agent.name()
        ))
    })
}

fn resolve_handoff_target<C: Send + Sync + 'static>(
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

async fn build_request<C: Send + Sync + 'static>(
    b: &Baton<C>,
) -> Result<ModelRequest, AgentsError> {
    let agent = &b.agent;
    let mut input = Vec::with_capacity(b.original_input.len() + b.generated.len());
    input.extend(b.original_input.iter().cloned());
    input.extend(b.generated.iter().map(RunItem::to_input_item));
    let mut tools: Vec<ToolSpec> = agent
        .tools()
        .iter()
        .map(|t| ToolSpec {
            name: t.name().to_owned(),
            description: t.description().to_owned(),
            parameters: t.parameters().clone(),
            strict: t.strict(),
        })
        .collect();
    for h in agent.handoffs() {
        let description = match &h.tool_description {
            Some(d) => d.clone(),
            None => {
                let target = resolve_handoff_target(b, h)?;
                default_tool_description(target.name(), target.get_handoff_description())
            }
        };
        tools.push(ToolSpec {
            name: h.tool_name.clone(),
            description,
            parameters: h.input_schema.clone(),
            strict: true,
        });
    }
    let mut settings = match &b.env.config.model_settings {
        Some(over) => agent.0.model_settings.resolve(over),
        None => agent.0.model_settings.clone(),
    };
    if agent.0.reset_tool_choice
        && b.agents_used_tools.contains(agent.name())
        && settings
            .tool_choice
            .as_deref()
            .is_some_and(|c| c != "auto" && c != "none")
    {
        settings.tool_choice = None;
    }
    Ok(ModelRequest {
        system_instructions: agent.system_prompt(&b.ctx).await,
        input,
        tools,
        output_schema: agent.0.output_type.as_ref().map(|o| o.schema.clone()),
        settings,
    })
}

/// Runs the input guardrails of a set (agent's and run's), all at once.
async fn run_input_guardrails<C: Send + Sync + 'static>(
    b: &Baton<C>,
    parallel: bool,
) -> Result<Vec<GuardrailResult>, AgentsError> {
    let guards: Vec<_> = b
        .agent
        .0
        .input_guardrails
        .iter()
        .chain(b.env.input_guardrails.iter())
        .filter(|g| g.run_in_parallel == parallel)
        .cloned()
        .collect();
    if guards.is_empty() {
        return Ok(vec![]);
    }
    let agent_name = b.agent.name().to_owned();
    let runs = guards.iter().map(|g| {
        let span = b.agent_span.child(SpanData::Guardrail {
            name: g.name.clone(),
            triggered: false,
        });
        let fut = (g.func)(b.ctx.clone(), agent_name.clone(), b.original_input.clone());
        let name = g.name.clone();
        let agent_name = agent_name.clone();
        async move {
            let out = fut.await;
            span.update(|d| {
                if let SpanData::Guardrail { triggered, .. } = d {
                    *triggered = out.tripwire_triggered;
                }
            });
            span.finish();
            GuardrailResult {
                guardrail: name,
                agent: agent_name,
                output: out,
            }
        }
    });
    let results = join_all(runs).await;
    b.shared
        .input_guardrail_results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(results.iter().cloned());
    if let Some(r) = results.iter().find(|r| r.output.tripwire_triggered) {
        b.agent_span.set_error(
            "Guardrail tripwire triggered",
            Some(json!({"guardrail": r.guardrail, "type": "input_guardrail"})),
        );
        return Err(AgentsError::InputGuardrailTripwireTriggered {
            guardrail: r.guardrail.clone(),
            output_info: r.output.output_info.clone(),
        });
    }
    Ok(results)
}

fn model_span<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
    model: &dyn Model,
    req: &ModelRequest,
) -> Span {
    match model.api() {
        ModelApi::Responses => turn_span.child(SpanData::Response {
            response_id: None,
            usage: None,
        }),
        ModelApi::ChatCompletions => {
            // As in the SDK, the input is filled in after the span's start.
            let span = turn_span.child(SpanData::Generation {
                input: None,
                output: None,
                model: Some(model.name().to_owned()),
                model_config: Some(req.settings.to_json()),
                usage: None,
            });
            if b.env.include_sensitive {
                let messages = serde_json::to_value(&req.input).ok();
                span.update(|d| {
                    if let SpanData::Generation { input, .. } = d {
                        *input = messages;
                    }
                });
            }
            span
        }
    }
}

fn terminal_error(ev: &ResponseEvent) -> Option<AgentsError> {
    let msg = match ev {
        ResponseEvent::Failed { response, .. } => format!(
            "The model's response failed: {}",
            response
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        ),
        ResponseEvent::Incomplete { response, .. } => format!(
            "The model's response is incomplete: {}",
            response
                .incomplete_details
                .as_ref()
                .and_then(|e| e.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        ),
        ResponseEvent::Error { code, message, .. } => format!(
            "The model stream reported an error{}: {message}",
            code.as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        ),
        _ => return None,
    };
    Some(AgentsError::ModelBehaviorError(msg))
}

enum StreamEnd {
    Response(ResponseObject),
    Cancelled,
    Error(AgentsError),
}

/// Streams one model call onto the bus, with the first turn's parallel input guardrails
/// running alongside; a tripwire stops the stream at once.
async fn stream_model<C: Send + Sync + 'static>(
    b: &Baton<C>,
    model: &dyn Model,
    req: ModelRequest,
    mspan: &Span,
) -> StreamEnd {
    let shared = &b.shared;
    let mut stream = model.stream(req, shared.cancel.child_token());
    let mut guards = if b.turn == 1 {
        Some(Box::pin(run_input_guardrails(b, true)))
    } else {
        None
    };
    let mut response = None;
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return StreamEnd::Cancelled,
            g = async {
                match guards.as_mut() {
                    Some(g) => g.await,
                    None => std::future::pending().await,
                }
            }, if guards.is_some() => {
                guards = None;
                if let Err(e) = g {
                    return StreamEnd::Error(e);
                }
            }
            ev = stream.next() => match ev {
                None => break,
                Some(Err(e)) => {
                    mspan.set_error("Error streaming response", Some(json!({"error": e.message})));
                    return StreamEnd::Error(e.into());
                }
                Some(Ok(ev)) => {
                    let ev = Arc::new(ev);
                    let mut err = None;
                    if let RawEvent::Typed(t) = ev.as_ref() {
                        match t {
                            ResponseEvent::Completed { response: r, .. } => response = Some(r.clone()),
                            other => err = terminal_error(other),
                        }
                    }
                    shared.publish_event(StreamEvent::RawResponse(ev), None);
                    if let Some(e) = err {
                        mspan.set_error("Error streaming response", Some(json!({"error": e.to_string()})));
                        return StreamEnd::Error(e);
                    }
                }
            }
        }
    }
    drop(stream);
    if let Some(g) = guards {
        if let Err(e) = g.await {
            return StreamEnd::Error(e);
        }
    }
    match response {
        Some(r) => StreamEnd::Response(r),
        None => {
            let e =
                AgentsError::ModelBehaviorError("Model did not produce a final response!".into());
            mspan.set_error(
                "Error streaming response",
                Some(json!({"error": e.to_string()})),
            );
            StreamEnd::Error(e)
        }
    }
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
    let agent = b.agent.name();
    if let Some(h) = &b.env.hooks {
        h.on_tool_start(&b.ctx, agent, tool.name()).await;
    }
    if let Some(h) = &b.agent.0.hooks {
        h.on_tool_start(&b.ctx, agent, tool.name()).await;
    }
    let tctx = ToolContext {
        run: b.ctx.clone(),
        tool_name: tool.name().into(),
        call_id: call.call_id.as_str().into(),
        scope: None,
    };
    let result = trace::with_span(
        span.clone(),
        invoke_caught(tool.as_ref(), tctx.clone(), call.arguments.clone()),
    )
    .await;
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
    if let Some(h) = &b.env.hooks {
        h.on_tool_end(&b.ctx, agent, tool.name(), &output).await;
    }
    if let Some(h) = &b.agent.0.hooks {
        h.on_tool_end(&b.ctx, agent, tool.name(), &output).await;
    }
    output
}

fn publish_item<C: Send + Sync + 'static>(b: &Baton<C>, item: &RunItem, tool: Option<Arc<str>>) {
    b.shared
        .publish_event(StreamEvent::RunItem(Arc::new(item.clone())), tool);
}

async fn save_turn<C: Send + Sync + 'static>(
    b: &Baton<C>,
    items: &[RunItem],
) -> Result<(), AgentsError> {
    b.shared
        .new_items
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(items.iter().cloned());
    if let Some(s) = &b.env.session {
        s.add_items(items.iter().map(RunItem::to_input_item).collect())
            .await
            .map_err(|e| {
                AgentsError::UserError(format!("could not save the turn to the session: {e}"))
            })?;
    }
    Ok(())
}

/// Runs the output guardrails on a final output.
async fn run_output_guardrails<C: Send + Sync + 'static>(
    b: &Baton<C>,
    output: &Value,
) -> Result<(), AgentsError> {
    let guards: Vec<_> = b
        .agent
        .0
        .output_guardrails
        .iter()
        .chain(b.env.output_guardrails.iter())
        .cloned()
        .collect();
    if guards.is_empty() {
        return Ok(());
    }
    let agent_name = b.agent.name().to_owned();
    let results = join_all(guards.iter().map(|g| {
        let span = b.agent_span.child(SpanData::Guardrail {
            name: g.name.clone(),
            triggered: false,
        });
        let fut = (g.func)(b.ctx.clone(), agent_name.clone(), output.clone());
        let (name, agent_name) = (g.name.clone(), agent_name.clone());
        async move {
            let out = fut.await;
            span.update(|d| {
                if let SpanData::Guardrail { triggered, .. } = d {
                    *triggered = out.tripwire_triggered;
                }
            });
            span.finish();
            GuardrailResult {
                guardrail: name,
                agent: agent_name,
                output: out,
            }
        }
    }))
    .await;
    b.shared
        .output_guardrail_results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(results.iter().cloned());
    if let Some(r) = results.iter().find(|r| r.output.tripwire_triggered) {
        b.agent_span.set_error(
            "Guardrail tripwire triggered",
            Some(json!({"guardrail": r.guardrail, "type": "output_guardrail"})),
        );
        return Err(AgentsError::OutputGuardrailTripwireTriggered {
            guardrail: r.guardrail.clone(),
            output_info: r.output.output_info.clone(),
        });
    }
    Ok(())
}

/// What the turn decided, once its items are known.
enum Decision {
    RunAgain,
    Final(Value),
}

fn decide_final<C: Send + Sync + 'static>(
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

/// Runs one turn of the baton's current agent.
pub(crate) async fn run_turn<C: Send + Sync + 'static>(mut b: Baton<C>) -> Step<C> {
    let shared = b.shared.clone();
    if shared.cancel.is_cancelled() {
        return Step::Done(b, RunOutcome::Cancelled(CancelMode::Immediate));
    }
    if b.turn > 0 && shared.cancel_after_turn.load(Ordering::Acquire) {
        return Step::Done(b, RunOutcome::Cancelled(CancelMode::AfterTurn));
    }
    if b.turn == 0 {
        shared.publish_event(
            StreamEvent::AgentUpdated {
                new_agent: b.agent.name().into(),
            },
            None,
        );
        if let Some(s) = b.env.session.clone() {
            match s.get_items(None).await {
                Ok(mut history) => {
                    let input = std::mem::take(&mut b.original_input);
                    if let Err(e) = s.add_items(input.clone()).await {
                        return fail(
                            b,
                            AgentsError::UserError(format!(
                                "could not save the input to the session: {e}"
                            )),
                        );
                    }
                    history.extend(input);
                    *shared.input.lock().unwrap_or_else(|e| e.into_inner()) = history.clone();
                    b.original_input = history;
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
    if !b.agent_started {
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
            b.slot = Some(b.env.stage.admit_handoff(&target));
            shared.publish_event(
                StreamEvent::AgentUpdated {
                    new_agent: target.name().into(),
                },
                None,
            );
            b.agent = target;
            b.agent_started = false;
            b.handoff_from = Some(from);
            Step::Next(b)
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
        Ok(TurnEnd::Cancelled) => Step::Done(b, RunOutcome::Cancelled(CancelMode::Immediate)),
        Err(e) => fail(b, e),
    }
}

enum TurnEnd<C: Send + Sync + 'static> {
    Again,
    Handoff(Agent<C>),
    Final(Value),
    Cancelled,
}

async fn turn_body<C: Send + Sync + 'static>(
    b: &mut Baton<C>,
    turn_span: &Span,
) -> Result<TurnEnd<C>, AgentsError> {
    if b.turn == 1 {
        run_input_guardrails(b, false).await?;
    }
    let model = resolve_model(b)?;
    let req = build_request(b).await?;
    let agent = b.agent.clone();
    if let Some(h) = &b.env.hooks {
        h.on_llm_start(
            &b.ctx,
            agent.name(),
            req.system_instructions.as_deref(),
            &req.input,
        )
        .await;
    }
    if let Some(h) = &agent.0.hooks {
        h.on_llm_start(
            &b.ctx,
            agent.name(),
            req.system_instructions.as_deref(),
            &req.input,
        )
        .await;
    }
    let mspan = model_span(b, turn_span, model.as_ref(), &req);
    let response = match stream_model(b, model.as_ref(), req, &mspan).await {
        StreamEnd::Response(r) => r,
        StreamEnd::Cancelled => {
            mspan.finish();
            return Ok(TurnEnd::Cancelled);
        }
        StreamEnd::Error(e) => {
            mspan.finish();
            return Err(e);
        }
    };
    b.ctx.with_usage(|u| match &response.usage {
        Some(r) => u.add_request(r),
        None => u.add_request_without_usage(),
    });
    let sensitive = b.env.include_sensitive;
    let usage_json = if mspan.is_enabled() {
        response.usage.as_ref().map(trace::model_usage_json)
    } else {
        None
    };
    mspan.update(|d| match d {
        SpanData::Response { response_id, usage } => {
            *response_id = Some(response.id.clone());
            *usage = usage_json.clone();
        }
        SpanData::Generation { output, usage, .. } => {
            if sensitive {
                *output = serde_json::to_value(&response.output).ok();
            }
            *usage = usage_json.clone();
        }
        _ => {}
    });
    mspan.finish();
    if let Some(h) = &b.env.hooks {
        h.on_llm_end(&b.ctx, agent.name(), &response).await;
    }
    if let Some(h) = &agent.0.hooks {
        h.on_llm_end(&b.ctx, agent.name(), &response).await;
    }

    // Resolve the model's output into run items: function tools, handoffs, messages.
    let name = agent.name().to_owned();
    let mut new_items: Vec<RunItem> = Vec::with_capacity(response.output.len() + 2);
    let mut tool_calls: Vec<(FunctionCallItem, Arc<dyn Tool<C>>)> = Vec::new();
    let mut handoff_calls: Vec<(FunctionCallItem, Handoff<C>)> = Vec::new();
    for item in &response.output {
        match item {
            Item::Message(m) => new_items.push(RunItem::MessageOutput {
                agent: name.clone(),
                raw_item: m.clone(),
            }),
            Item::FunctionCall(fc) => {
                if let Some(h) = agent.handoffs().iter().find(|h| h.tool_name == fc.name) {
                    new_items.push(RunItem::HandoffCall {
                        agent: name.clone(),
                        raw_item: fc.clone(),
                    });
                    handoff_calls.push((fc.clone(), h.clone()));
                } else if let Some(t) = agent.tools().iter().find(|t| t.name() == fc.name) {
                    new_items.push(RunItem::ToolCall {
                        agent: name.clone(),
                        raw_item: fc.clone(),
                    });
                    tool_calls.push((fc.clone(), t.clone()));
                } else {
                    // The SDK puts this on the current span, the turn's; the agent span
                    // then gets "Error in agent run" as the run fails.
                    turn_span.set_error("Tool not found", Some(json!({"tool_name": fc.name})));
                    b.shared
                        .raw_responses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(response.clone());
                    return Err(AgentsError::ModelBehaviorError(format!(
                        "Tool {} not found in agent {}",
                        fc.name, name
                    )));
                }
            }
            Item::Reasoning(r) => new_items.push(RunItem::Reasoning {
                agent: name.clone(),
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
    for item in &new_items {
        let tool = match item {
            RunItem::ToolCall { raw_item, .. } => Some(raw_item.name.as_str().into()),
            _ => None,
        };
        publish_item(b, item, tool);
    }

    // Function tools run first, all at once.
    let mut tool_results: Vec<(String, String)> = Vec::with_capacity(tool_calls.len());
    if !tool_calls.is_empty() {
        b.agents_used_tools.insert(name.clone());
        let runs = join_all(tool_calls.iter().map(|(c, t)| run_tool(b, turn_span, c, t)));
        let outputs = tokio::select! {
            biased;
            _ = b.shared.cancel.cancelled() => return Ok(TurnEnd::Cancelled),
            o = runs => o,
        };
        for ((call, _), output) in tool_calls.iter().zip(outputs) {
            let item = RunItem::ToolCallOutput {
                agent: name.clone(),
                output: output.clone(),
                raw_item: FunctionCallOutputItem {
                    call_id: call.call_id.clone(),
                    output: output.clone(),
                },
            };
            publish_item(b, &item, Some(call.name.as_str().into()));
            new_items.push(item);
            tool_results.push((call.name.clone(), output));
        }
    }

    // Then handoffs: the first wins, the others are told they were ignored.
    if let Some((first_call, first)) = handoff_calls.first() {
        for (call, _) in handoff_calls.iter().skip(1) {
            let item = RunItem::ToolCallOutput {
                agent: name.clone(),
                output: MULTIPLE_HANDOFFS_MESSAGE.into(),
                raw_item: FunctionCallOutputItem {
                    call_id: call.call_id.clone(),
                    output: MULTIPLE_HANDOFFS_MESSAGE.into(),
                },
            };
            publish_item(b, &item, Some(call.name.as_str().into()));
            new_items.push(item);
        }
        let hspan = turn_span.child(SpanData::Handoff {
            from_agent: Some(name.clone()),
            to_agent: None,
        });
        if handoff_calls.len() > 1 {
            let requested: Vec<&str> = handoff_calls.iter().map(|(_, h)| h.agent_name()).collect();
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
        if let Some(h) = &b.env.hooks {
            h.on_handoff(&b.ctx, &name, target.name()).await;
        }
        if let Some(h) = &target.0.hooks {
            h.on_handoff(&b.ctx, target.name(), &name).await;
        }
        let item = RunItem::HandoffOutput {
            agent: name.clone(),
            source_agent: name.clone(),
            target_agent: target.name().to_owned(),
            raw_item: FunctionCallOutputItem {
                call_id: first_call.call_id.clone(),
                output: transfer_message(target.name()),
            },
        };
        publish_item(b, &item, None);
        new_items.push(item);
        save_turn(b, &new_items).await?;
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
        return Ok(TurnEnd::Handoff(target));
    }

    save_turn(b, &new_items).await?;
    let decision = decide_final(b, &new_items, &tool_results);
    b.generated.extend(new_items);
    match decision? {
        Decision::RunAgain => Ok(TurnEnd::Again),
        Decision::Final(v) => {
            run_output_guardrails(b, &v).await?;
            if let Some(h) = &b.env.hooks {
                h.on_agent_end(&b.ctx, &name, &v).await;
            }
            if let Some(h) = &agent.0.hooks {
                h.on_end(&b.ctx, &name, &v).await;
            }
            Ok(TurnEnd::Final(v))
        }
    }
}

/// Ends a run: spans, the outcome for the result handle, and the terminal frame on the bus.
pub(crate) fn finish<C: Send + Sync + 'static>(mut b: Baton<C>, outcome: RunOutcome) {
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
        RunOutcome::Cancelled(mode) => FrameBody::RunCancelled { mode: *mode },
    };
    *shared.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    b.slot = None;
    drop(b);
    // Complete before the terminal frame goes out, so whoever sees the end sees the outcome.
    let _ = shared.done.send_replace(true);
    shared.topic.publish(&shared.run_id, body);
}
