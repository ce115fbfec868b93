//! Guardrails: the input guardrails of the first turn (those not run in parallel with the
//! model call before it, the others beside it) and the output guardrails of a final output.
//! Each is a guardrail span under the agent span; a tripwire fails the run.

use futures::future::join_all;
use serde_json::{json, Value};

use crate::error::AgentsError;
use crate::guardrail::GuardrailResult;
use crate::run::baton::Baton;
use crate::trace::SpanData;

/// Runs the input guardrails of a set (agent's and run's), all at once.
pub(super) async fn run_input<C: Send + Sync + 'static>(
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

/// Runs the output guardrails on a final output.
pub(super) async fn run_output<C: Send + Sync + 'static>(
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
