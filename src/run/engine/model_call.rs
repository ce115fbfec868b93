//! The model call of a turn: which model, the request (input so far, tools, handoffs as
//! tools, output schema, settings), its span, and the stream published onto the bus as it
//! arrives, with the first turn's parallel input guardrails alongside.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};

use super::guardrails;
use super::handoffs::resolve_handoff_target;
use super::hooks::{call_hooks, Hook};
use crate::agent::ModelRef;
use crate::error::AgentsError;
use crate::events::StreamEvent;
use crate::handoff::default_tool_description;
use crate::items::RunItem;
use crate::model::{
    Model, ModelApi, ModelRequest, RawEvent, ResponseEvent, ResponseObject, ToolSpec,
};
use crate::run::baton::Baton;
use crate::run::observer::ModelCallStats;
use crate::trace::{self, Span, SpanData};

/// Calls the model for this turn: the request, the stream onto the bus, usage and the model
/// span. `Ok(None)` when the run was cancelled during the call.
pub(super) async fn call<C: Send + Sync + 'static>(
    b: &Baton<C>,
    turn_span: &Span,
) -> Result<Option<ResponseObject>, AgentsError> {
    let model = resolve_model(b)?;
    let req = build_request(b).await?;
    let agent = b.agent.clone();
    call_hooks(
        b,
        &agent,
        Hook::LlmStart {
            system: req.system_instructions.as_deref(),
            input: &req.input,
        },
    )
    .await;
    let mspan = model_span(b, turn_span, model.as_ref(), &req);
    let started = Instant::now();
    let mut first_token = None;
    let end = stream_model(b, model.as_ref(), req, &mspan, &mut first_token).await;
    let report = |r: Option<&ResponseObject>| {
        if let Some(o) = &b.env.observer {
            let usage = r.and_then(|r| r.usage.as_ref());
            o.model_call(&ModelCallStats {
                agent: agent.name(),
                model: model.name(),
                duration: started.elapsed(),
                time_to_first_token: first_token.map(|t: Instant| t - started),
                input_tokens: usage.map(|u| u.input_tokens),
                output_tokens: usage.map(|u| u.output_tokens),
                error: r.is_none(),
            });
        }
    };
    let response = match end {
        StreamEnd::Response(r) => r,
        StreamEnd::Cancelled => {
            mspan.finish();
            return Ok(None);
        }
        StreamEnd::Error(e) => {
            report(None);
            mspan.finish();
            return Err(e);
        }
    };
    report(Some(&response));
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
        SpanData::Response {
            response_id, usage, ..
        } => {
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
    call_hooks(b, &agent, Hook::LlmEnd(&response)).await;
    Ok(Some(response))
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

async fn build_request<C: Send + Sync + 'static>(
    b: &Baton<C>,
) -> Result<ModelRequest, AgentsError> {
    let agent = &b.agent;
    let mut input = Vec::with_capacity(b.original_input.len() + b.generated.len());
    input.extend(b.original_input.iter().cloned());
    input.extend(b.generated.iter().map(RunItem::to_input_item));
    let mut tools: Vec<ToolSpec> = b
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
            model: Some(model.name().to_owned()),
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
    first_token: &mut Option<Instant>,
) -> StreamEnd {
    let shared = &b.shared;
    let mut stream = model.stream(req, shared.cancel.child_token());
    let mut guards = if b.turn == 1 {
        Some(Box::pin(guardrails::run_input(b, true)))
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
                            ResponseEvent::OutputTextDelta { .. }
                            | ResponseEvent::RefusalDelta { .. }
                            | ResponseEvent::FunctionCallArgumentsDelta { .. } => {
                                first_token.get_or_insert_with(Instant::now);
                            }
                            other => err = terminal_error(other),
                        }
                    }
                    shared.publish_event(StreamEvent::RawResponse(ev), None).await;
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
