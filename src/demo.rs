//! The demo cast: a triage agent handing off to two specialists, one with a weather tool, or,
//! for a question about both, to an orchestrator that calls both specialists at once as agent
//! tools (their runs stream nested, with `path` and `depth`). The example program and the
//! server's embedded defaults use it; on the scripted provider it behaves deterministically
//! (the scripted model is labelled as what it is).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::agent::Agent;
use crate::items::{Item, Role};
use crate::model::scripted::{ScriptedModel, ScriptedTurn};
use crate::model::{Model, ModelRequest};
use crate::tool::{FunctionTool, ToolContext};

/// Arguments of the demo's `get_weather` tool.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct WeatherArgs {
    /// The city.
    pub city: String,
}

/// Deterministic weather for a city (the demo has no network).
pub fn weather_for(city: &str) -> String {
    const SKIES: [&str; 4] = ["sunny", "cloudy", "rainy", "windy"];
    let h = city
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    format!(
        "{} in {city}, {}°C",
        SKIES[(h % 4) as usize],
        (h % 25) as i32 + 2
    )
}

fn last_user_text(input: &[Item]) -> String {
    input
        .iter()
        .rev()
        .find_map(|i| match i {
            Item::Message(m) if m.role == Role::User => Some(m.text()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether `tool` was called after the last user message.
fn called_since_user(input: &[Item], tool: &str) -> bool {
    input
        .iter()
        .rev()
        .take_while(|i| !matches!(i, Item::Message(m) if m.role == Role::User))
        .any(|i| matches!(i, Item::FunctionCall(c) if c.name == tool))
}

fn guess_city(text: &str) -> String {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if let Some(p) = words.iter().position(|w| w.eq_ignore_ascii_case("in")) {
        if let Some(c) = words.get(p + 1) {
            return c.to_string();
        }
    }
    words
        .iter()
        .rev()
        .find(|w| w.chars().next().is_some_and(char::is_uppercase))
        .map_or_else(|| "Oslo".to_owned(), |w| w.to_string())
}

/// The scripted model of the demo: routes by keyword, calls the weather tool, answers in
/// 20 deltas. Deterministic and offline.
pub fn demo_model() -> ScriptedModel {
    ScriptedModel::from_fn(|req: &ModelRequest, turn| {
        let text = last_user_text(&req.input);
        let lower = text.to_lowercase();
        let has = |name: &str| req.tools.iter().any(|t| t.name == name);
        let weathery = ["weather", "rain", "sun", "forecast"]
            .iter()
            .any(|w| lower.contains(w));
        let billy = ["bill", "invoice", "payment", "refund"]
            .iter()
            .any(|w| lower.contains(w));
        if has("transfer_to_weather") && turn == 0 {
            if weathery && billy && has("transfer_to_orchestrator") {
                return ScriptedTurn::handoff("Orchestrator");
            }
            if weathery {
                return ScriptedTurn::handoff("Weather");
            }
            return ScriptedTurn::handoff("Billing");
        }
        if has(ASK_WEATHER) {
            return orchestrate(req, &text);
        }
        if has("get_weather") && turn <= 1 && !called_since_user(&req.input, "get_weather") {
            let args = serde_json::json!({ "city": guess_city(&text) });
            return ScriptedTurn::call("get_weather", args);
        }
        let answer = if has("get_weather") {
            let out = req
                .input
                .iter()
                .rev()
                .find_map(|i| match i {
                    Item::FunctionCallOutput(o) if !o.output.starts_with('{') => Some(o.output.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            format!("Here is the forecast you asked for: it is {out}. Anything else I can check for you today?")
        } else {
            format!(
                "Thanks for reaching Billing. About \"{}\": your account is in good standing and no payment is due. Anything else?",
                text.chars().take(60).collect::<String>()
            )
        };
        ScriptedTurn::message(answer, 20)
    })
    .with_name("scripted-demo")
}

/// The orchestrator's agent tools.
const ASK_WEATHER: &str = "ask_weather";
const ASK_BILLING: &str = "ask_billing";

/// The orchestrator's turns: both specialists at once, then an answer made of theirs.
fn orchestrate(req: &ModelRequest, text: &str) -> ScriptedTurn {
    let output_of = |tool: &str| {
        let call_id = req.input.iter().rev().find_map(|i| match i {
            Item::FunctionCall(c) if c.name == tool => Some(c.call_id.clone()),
            _ => None,
        })?;
        req.input.iter().find_map(|i| match i {
            Item::FunctionCallOutput(o) if o.call_id == call_id => Some(o.output.clone()),
            _ => None,
        })
    };
    match (output_of(ASK_WEATHER), output_of(ASK_BILLING)) {
        (Some(w), Some(b)) => ScriptedTurn::message(
            format!("I asked both specialists at once. Weather: {w} Billing: {b}"),
            20,
        ),
        _ => {
            let input = serde_json::json!({ "input": text });
            ScriptedTurn::new()
                .with_call(ASK_WEATHER, input.clone())
                .with_call(ASK_BILLING, input)
        }
    }
}

/// The demo cast on `model`: `Triage` hands off to `Weather` (which has `get_weather`),
/// `Billing`, or, for a question about both, `Orchestrator`, which calls `Weather` and
/// `Billing` at once as agent tools. Returns the starting agent.
pub fn cast(model: Arc<dyn Model>) -> Agent {
    let weather_tool = FunctionTool::new(
        "get_weather",
        "Weather for a city.",
        |_ctx: ToolContext<()>, args: WeatherArgs| async move {
            Ok::<_, String>(weather_for(&args.city))
        },
    );
    let weather = Agent::new("Weather")
        .instructions("Answer weather questions. Use get_weather for the forecast.")
        .handoff_description("Weather forecasts for any city.")
        .model_instance(model.clone())
        .tool(weather_tool);
    let billing = Agent::new("Billing")
        .instructions("Answer billing questions.")
        .handoff_description("Billing questions: invoices, payments, refunds.")
        .model_instance(model.clone());
    let orchestrator = Agent::new("Orchestrator")
        .instructions("Ask the specialists what the user needs, all at once, and sum up.")
        .handoff_description("Questions for more than one specialist.")
        .model_instance(model.clone())
        .tool(weather.as_tool(ASK_WEATHER, "Asks the weather specialist."))
        .tool(billing.as_tool(ASK_BILLING, "Asks the billing specialist."));
    Agent::new("Triage")
        .instructions("Route the user to the right specialist.")
        .handoff_description("Routes the user to the right specialist.")
        .model_instance(model)
        .handoff(&weather)
        .handoff(&billing)
        .handoff(&orchestrator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runner;

    #[tokio::test]
    async fn a_question_for_both_specialists_fans_out() {
        let runner: Runner = Runner::new();
        let triage = cast(Arc::new(demo_model()));
        let r = runner
            .run(&triage, "What is the weather in Oslo, and is my bill paid?")
            .await
            .unwrap();
        assert_eq!(r.last_agent, "Orchestrator");
        let text = r.final_output_text().unwrap();
        assert!(
            text.contains("in Oslo") && text.contains("Billing"),
            "{text}"
        );
    }
}
