//! The demo's scripted model: routes by keyword to the demo cast's agents (`crate::demo`),
//! calls the weather tool, asks both specialists at once for a question about both, and
//! answers in 20 deltas. Deterministic and offline; labelled `scripted-demo`. It is also what a
//! `scripted` model without a script plays.

use crate::items::{Item, Role};
use crate::model::scripted::{ScriptedModel, ScriptedTurn};
use crate::model::ModelRequest;

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
pub(crate) const ASK_WEATHER: &str = "ask_weather";
pub(crate) const ASK_BILLING: &str = "ask_billing";

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
