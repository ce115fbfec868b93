//! The demo cast: a triage agent handing off to two specialists, one with a weather tool, or,
//! for a question about both, to an orchestrator that calls both specialists at once as agent
//! tools (their runs stream nested, with `path` and `depth`). The example program and the
//! server's embedded defaults use it; on the scripted provider it behaves deterministically
//! (the scripted model is labelled as what it is).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::agent::Agent;
use crate::model::scripted::demo::{ASK_BILLING, ASK_WEATHER};
use crate::model::Model;

pub use crate::model::scripted::demo::demo_model;
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
