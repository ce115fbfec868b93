//! The seed's debugging story, reproducible: a support agent whose order lookup fails on
//! every other call, and a model that keeps calling it, with `max_turns = 5`. The run fails
//! with `MaxTurnsExceeded`; its trace (printed by the console sink) shows which calls failed
//! and why the run stopped. With the server the same trace is in the trace browser
//! (`/traces`); tests/trace_browser.rs runs this story there.
//!
//! `cargo run --example flaky_tool`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::trace::sinks::ConsoleSink;
use callboard::trace::{BatchConfig, BatchTraceProcessor, Tracer};
use callboard::{Agent, FunctionTool, RunConfig, Runner, ToolContext};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, JsonSchema)]
struct Order {
    order: String,
}

#[tokio::main]
async fn main() {
    // A model that calls the tool every turn (the scripted provider: deterministic).
    let model = Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::call(
            "lookup_order",
            json!({"order": "A-1"}),
        )])
        .repeat_last(),
    );
    // A tool that fails on every other call, as a flaky backend would.
    let calls = Arc::new(AtomicUsize::new(0));
    let tool = FunctionTool::new(
        "lookup_order",
        "An order's state.",
        move |_ctx: ToolContext<()>, a: Order| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n % 2 == 1 {
                    Err(format!(
                        "inventory service timed out looking up {}",
                        a.order
                    ))
                } else {
                    Ok(format!("order {} shipped", a.order))
                }
            }
        },
    );
    let agent = Agent::new("Support")
        .instructions("Look orders up.")
        .model_instance(model)
        .tool(tool);

    let tracer = Tracer::new();
    tracer.set_disabled(false);
    let processor = BatchTraceProcessor::new(
        vec![Arc::new(ConsoleSink::stdout())],
        BatchConfig::default(),
    );
    tracer.add_processor(Arc::new(processor.clone()));

    let runner: Runner = Runner::new();
    let config = RunConfig {
        max_turns: 5,
        tracer: Some(tracer),
        ..RunConfig::default()
    };
    match runner
        .request(&agent, "Where is my order A-1?")
        .config(config)
        .run()
        .await
    {
        Ok(r) => println!("finished: {:?}", r.final_output),
        Err(e) => println!("the run failed: {e}"),
    }
    // Print the trace tree: failed calls and the agent's error say what happened.
    processor.shutdown_async().await;
}
