//! Rust ports of the SDK's conformance tests (tests/test_stream_events.py,
//! test_agent_runner_streamed.py, test_cancel_streaming.py, test_soft_cancel.py,
//! test_max_turns.py, test_usage.py, guardrails, multiple handoffs, tool errors), each
//! asserting the exact sequence of event types, names and item types.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callboard::agent::ToolUseBehavior;
use callboard::model::scripted::{ScriptedModel, ScriptedOutput, ScriptedTurn};
use callboard::model::{ModelError, ModelErrorKind};
use callboard::session::{MemorySession, Session};
use callboard::{
    Agent, AgentsError, CancelMode, FunctionTool, GuardrailFunctionOutput, Handoff, InputGuardrail,
    Item, OutputGuardrail, RunConfig, RunContext, RunHooks, RunItem, Runner, StreamEvent,
    ToolContext, ToolError,
};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize, JsonSchema)]
struct CityArgs {
    city: String,
}

fn weather_tool() -> FunctionTool<()> {
    FunctionTool::new(
        "get_weather",
        "Weather for a city.",
        |_c: ToolContext<()>, a: CityArgs| async move {
            Ok::<_, String>(format!("Sunny in {}", a.city))
        },
    )
}

fn model(turns: Vec<ScriptedTurn>) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(turns))
}

/// One line per event: `agent:Name`, `raw:<type>`, `item:<name>:<item type>`.
fn describe(e: &StreamEvent) -> String {
    match e {
        StreamEvent::AgentUpdated { new_agent } => format!("agent:{new_agent}"),
        StreamEvent::RawResponse(r) => format!("raw:{}", r.type_name()),
        StreamEvent::RunItem(i) => format!("item:{}:{}", i.event_name(), i.type_name()),
    }
}

async fn collect<C: Send + Sync + 'static>(
    run: &mut callboard::RunResultStreaming<C>,
) -> Vec<String> {
    let mut s = run.stream_events();
    let mut out = vec![];
    loop {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(e)) => out.push(describe(&e)),
            Ok(None) => break,
            Err(_) => panic!("stream_events hung; got so far: {out:?}"),
        }
    }
    out
}

fn raw_function_call(args_deltas: usize) -> Vec<String> {
    let mut v = vec![
        "raw:response.created".to_string(),
        "raw:response.in_progress".into(),
        "raw:response.output_item.added".into(),
    ];
    v.extend((0..args_deltas).map(|_| "raw:response.function_call_arguments.delta".to_string()));
    v.extend([
        "raw:response.function_call_arguments.done".to_string(),
        "raw:response.output_item.done".into(),
        "raw:response.completed".into(),
    ]);
    v
}

fn raw_message(deltas: usize) -> Vec<String> {
    let mut v = vec![
        "raw:response.created".to_string(),
        "raw:response.in_progress".into(),
        "raw:response.output_item.added".into(),
        "raw:response.content_part.added".into(),
    ];
    v.extend((0..deltas).map(|_| "raw:response.output_text.delta".to_string()));
    v.extend([
        "raw:response.output_text.done".to_string(),
        "raw:response.content_part.done".into(),
        "raw:response.output_item.done".into(),
        "raw:response.completed".into(),
    ]);
    v
}

fn complete_cast() -> Agent {
    let m = model(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("B"),
        ScriptedTurn::message("It is sunny in Oslo today.", 5),
    ]);
    let b = Agent::new("B")
        .instructions("answer")
        .model_instance(m.clone());
    Agent::new("A")
        .instructions("route")
        .model_instance(m)
        .tool(weather_tool())
        .handoff(&b)
}

#[tokio::test]
async fn complete_streaming_events_in_sdk_order() {
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&complete_cast(), "weather?").unwrap();
    let got = collect(&mut run).await;
    let mut want = vec!["agent:A".to_string()];
    want.extend(raw_function_call(3));
    want.push("item:tool_called:tool_call_item".into());
    want.push("item:tool_output:tool_call_output_item".into());
    want.extend(raw_function_call(1));
    want.push("item:handoff_requested:handoff_call_item".into());
    want.push("item:handoff_occured:handoff_output_item".into());
    want.push("agent:B".into());
    want.extend(raw_message(5));
    want.push("item:message_output_created:message_output_item".into());
    assert_eq!(got, want);
    assert_eq!(got.len(), 36);
    assert!(run.is_complete());
    assert_eq!(
        run.final_output(),
        Some(json!("It is sunny in Oslo today."))
    );
    assert_eq!(run.last_agent(), "B");
    assert_eq!(run.current_turn(), 3);
    let types: Vec<_> = run.new_items().iter().map(|i| i.type_name()).collect();
    assert_eq!(
        types,
        [
            "tool_call_item",
            "tool_call_output_item",
            "handoff_call_item",
            "handoff_output_item",
            "message_output_item"
        ]
    );
    // to_input_list: the user message, then every new item as model input.
    let input = run.to_input_list();
    assert_eq!(input.len(), 6);
    assert_eq!(
        serde_json::to_value(&input[0]).unwrap(),
        json!({"role":"user","content":"weather?"})
    );
    assert_eq!(
        serde_json::to_value(&input[4]).unwrap()["output"],
        json!("{\"assistant\": \"B\"}")
    );
    let u = run.usage();
    assert_eq!(u.requests, 3);
    assert!(u.input_tokens > 0 && u.output_tokens > 0);
    assert_eq!(u.total_tokens, u.input_tokens + u.output_tokens);
}

#[tokio::test]
async fn run_returns_the_same_result_as_streaming() {
    let runner: Runner = Runner::new();
    let r = runner.run(&complete_cast(), "weather?").await.unwrap();
    assert_eq!(r.final_output_text(), Some("It is sunny in Oslo today."));
    assert_eq!(r.last_agent, "B");
    assert_eq!(r.new_items.len(), 5);
    assert_eq!(r.raw_responses.len(), 3);
    assert_eq!(r.usage.requests, 3);
    match &r.new_items[1] {
        RunItem::ToolCallOutput { output, agent, .. } => {
            assert_eq!(output, "Sunny in Oslo");
            assert_eq!(agent, "A");
        }
        other => panic!("unexpected {other:?}"),
    }
    match &r.new_items[3] {
        RunItem::HandoffOutput {
            source_agent,
            target_agent,
            ..
        } => assert_eq!((source_agent.as_str(), target_agent.as_str()), ("A", "B")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn stream_event_json_matches_the_protocol() {
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&complete_cast(), "weather?").unwrap();
    let mut s = run.stream_events();
    let mut tool_called = None;
    let mut handoff = None;
    while let Some(e) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        let v = serde_json::to_value(&e).unwrap();
        if v["name"] == "tool_called" {
            tool_called = Some(v.clone());
        }
        if v["name"] == "handoff_occured" {
            handoff = Some(v);
        }
    }
    let tc = tool_called.unwrap();
    assert_eq!(tc["type"], "run_item_stream_event");
    assert_eq!(tc["item"]["type"], "tool_call_item");
    assert_eq!(tc["item"]["agent"], "A");
    assert_eq!(tc["item"]["raw_item"]["type"], "function_call");
    assert_eq!(tc["item"]["raw_item"]["name"], "get_weather");
    assert_eq!(tc["item"]["raw_item"]["arguments"], "{\"city\":\"Oslo\"}");
    let h = handoff.unwrap();
    assert_eq!(h["item"]["source_agent"], "A");
    assert_eq!(h["item"]["target_agent"], "B");
    assert_eq!(h["item"]["raw_item"]["type"], "function_call_output");
}

#[tokio::test]
async fn function_tools_run_before_handoffs_in_one_turn() {
    let m = model(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})).with_handoff("B"),
        ScriptedTurn::message("done", 2),
    ]);
    let b = Agent::new("B").model_instance(m.clone());
    let a = Agent::new("A")
        .model_instance(m)
        .tool(weather_tool())
        .handoff(&b);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got: Vec<_> = collect(&mut run)
        .await
        .into_iter()
        .filter(|e| !e.starts_with("raw:"))
        .collect();
    assert_eq!(
        got,
        [
            "agent:A",
            "item:tool_called:tool_call_item",
            "item:handoff_requested:handoff_call_item",
            "item:tool_output:tool_call_output_item",
            "item:handoff_occured:handoff_output_item",
            "agent:B",
            "item:message_output_created:message_output_item"
        ]
    );
}

#[tokio::test]
async fn multiple_handoffs_first_wins() {
    let m = model(vec![
        ScriptedTurn::handoff("B").with_handoff("C"),
        ScriptedTurn::message("from B", 1),
    ]);
    let b = Agent::new("B").model_instance(m.clone());
    let c = Agent::new("C").model_instance(m.clone());
    let a = Agent::new("A").model_instance(m).handoff(&b).handoff(&c);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got: Vec<_> = collect(&mut run)
        .await
        .into_iter()
        .filter(|e| !e.starts_with("raw:"))
        .collect();
    assert_eq!(
        got,
        [
            "agent:A",
            "item:handoff_requested:handoff_call_item",
            "item:handoff_requested:handoff_call_item",
            "item:tool_output:tool_call_output_item",
            "item:handoff_occured:handoff_output_item",
            "agent:B",
            "item:message_output_created:message_output_item"
        ]
    );
    let items = run.new_items();
    match &items[2] {
        RunItem::ToolCallOutput { output, .. } => {
            assert_eq!(output, "Multiple handoffs detected, ignoring this one.")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(run.last_agent(), "B");
}

#[tokio::test]
async fn max_turns_runs_full_turns_drains_then_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let tool = FunctionTool::new(
        "t",
        "d",
        move |_c: ToolContext<()>, _a: serde_json::Value| {
            let c = c2.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>("ok")
            }
        },
    );
    let m = Arc::new(ScriptedModel::new(vec![ScriptedTurn::call("t", json!({}))]).repeat_last());
    let a = Agent::new("A").model_instance(m).tool(tool);
    let runner: Runner = Runner::new();
    let mut run = runner
        .request(&a, "x")
        .config(RunConfig::default().max_turns(3))
        .start()
        .unwrap();
    let got = collect(&mut run).await;
    assert_eq!(
        got.iter()
            .filter(|e| *e == "raw:response.completed")
            .count(),
        3
    );
    assert_eq!(
        got.iter()
            .filter(|e| e.starts_with("item:tool_output"))
            .count(),
        3
    );
    assert_eq!(
        got.last().unwrap(),
        "item:tool_output:tool_call_output_item"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let e = run.error().unwrap();
    assert_eq!(e, AgentsError::MaxTurnsExceeded { max_turns: 3 });
    assert_eq!(e.to_string(), "Max turns (3) exceeded");
    assert_eq!(e.sdk_name(), "MaxTurnsExceeded");
    let r = runner
        .request(&a, "x")
        .config(RunConfig::default().max_turns(1))
        .run()
        .await;
    assert!(matches!(
        r,
        Err(AgentsError::MaxTurnsExceeded { max_turns: 1 })
    ));
}

#[tokio::test]
async fn no_terminal_response_is_a_model_behavior_error() {
    let m = model(vec![ScriptedTurn::NoTerminal(vec![
        ScriptedOutput::Message {
            text: "partial".into(),
            deltas: 2,
        },
    ])]);
    let a = Agent::new("A").model_instance(m);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got = collect(&mut run).await;
    assert_eq!(got.last().unwrap(), "raw:response.output_item.done");
    let e = run.error().unwrap();
    assert_eq!(
        e,
        AgentsError::ModelBehaviorError("Model did not produce a final response!".into())
    );
}

#[tokio::test]
async fn failed_and_erroring_models_end_the_stream() {
    let runner: Runner = Runner::new();
    let a = Agent::new("A").model_instance(model(vec![ScriptedTurn::ResponseFailed(
        "overloaded".into(),
    )]));
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got = collect(&mut run).await;
    assert_eq!(
        got,
        ["agent:A", "raw:response.created", "raw:response.failed"]
    );
    assert_eq!(run.error().unwrap().sdk_name(), "ModelBehaviorError");

    let a = Agent::new("A").model_instance(model(vec![ScriptedTurn::Fail(ModelError::new(
        ModelErrorKind::RateLimit,
        "rate limited",
    ))]));
    let mut run = runner.run_streamed(&a, "x").unwrap();
    assert_eq!(collect(&mut run).await, ["agent:A"]);
    let e = run.error().unwrap();
    assert_eq!(e.sdk_name(), "RateLimitError");
    assert_eq!(e.to_string(), "rate limited");
}

#[tokio::test]
async fn unknown_tool_is_a_model_behavior_error() {
    let a = Agent::new("A").model_instance(model(vec![ScriptedTurn::call("nope", json!({}))]));
    let runner: Runner = Runner::new();
    let e = runner.run(&a, "x").await.unwrap_err();
    assert_eq!(
        e,
        AgentsError::ModelBehaviorError("Tool nope not found in agent A".into())
    );
}

#[tokio::test]
async fn tool_errors_and_panics_go_to_the_model() {
    let failing = FunctionTool::new(
        "fails",
        "d",
        |_c: ToolContext<()>, _a: serde_json::Value| async move { Err::<String, _>("database down") },
    );
    let panicking = FunctionTool::new(
        "panics",
        "d",
        |_c: ToolContext<()>, _a: serde_json::Value| async move {
            if true {
                panic!("bug in tool");
            }
            Ok::<String, String>(String::new())
        },
    );
    let custom = FunctionTool::new(
        "custom",
        "d",
        |_c: ToolContext<()>, _a: serde_json::Value| async move { Err::<String, _>("nope") },
    )
    .with_error_message(|_c, e: &ToolError| format!("custom says: {e}"));
    let m = model(vec![
        ScriptedTurn::call("fails", json!({}))
            .with_call("panics", json!({}))
            .with_call("custom", json!({}))
            .with_call("get_weather", json!({"wrong": 1})),
        ScriptedTurn::message("recovered", 1),
    ]);
    let a = Agent::new("A")
        .model_instance(m)
        .tool(failing)
        .tool(panicking)
        .tool(custom)
        .tool(weather_tool());
    let runner: Runner = Runner::new();
    let r = runner.run(&a, "x").await.unwrap();
    assert_eq!(r.final_output_text(), Some("recovered"));
    let outputs: Vec<_> = r
        .new_items
        .iter()
        .filter_map(|i| match i {
            RunItem::ToolCallOutput { output, .. } => Some(output.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        outputs,
        [
            "An error occurred while running the tool. Please try again.",
            "An error occurred while running the tool. Please try again.",
            "custom says: nope",
            "An error occurred while running the tool. Please try again.",
        ]
    );
}

#[tokio::test]
async fn tools_of_one_turn_run_concurrently() {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mk = |name: &'static str, b: Arc<tokio::sync::Barrier>| {
        FunctionTool::new(
            name,
            "d",
            move |_c: ToolContext<()>, _a: serde_json::Value| {
                let b = b.clone();
                async move {
                    // Each tool waits for the other: only concurrent execution gets past this.
                    tokio::time::timeout(Duration::from_secs(5), b.wait())
                        .await
                        .map(|_| name)
                        .map_err(|_| "not concurrent")
                }
            },
        )
    };
    let m = model(vec![
        ScriptedTurn::call("one", json!({})).with_call("two", json!({})),
        ScriptedTurn::message("ok", 1),
    ]);
    let a = Agent::new("A")
        .model_instance(m)
        .tool(mk("one", barrier.clone()))
        .tool(mk("two", barrier));
    let runner: Runner = Runner::new();
    let r = runner.run(&a, "x").await.unwrap();
    let outs: Vec<_> = r
        .new_items
        .iter()
        .filter_map(|i| match i {
            RunItem::ToolCallOutput { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outs, ["one", "two"]);
}

#[tokio::test]
async fn cancel_immediate_ends_the_stream_promptly() {
    let m = Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::message("a b c d e f g h i j", 10)])
            .with_delay(Duration::from_millis(50)),
    );
    let a = Agent::new("A").model_instance(m);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let mut s = run.stream_events();
    let mut deltas = 0;
    while let Some(e) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        if describe(&e) == "raw:response.output_text.delta" {
            deltas += 1;
            if deltas == 2 {
                run.cancel(CancelMode::Immediate);
            }
        }
    }
    assert!(deltas < 10, "the stream went on after cancel");
    assert!(run.is_complete());
    assert_eq!(run.cancelled(), Some(CancelMode::Immediate));
    assert_eq!(run.final_output(), None);
    assert!(run.error().is_none());
}

#[tokio::test]
async fn cancel_after_turn_finishes_the_turn_and_saves_it() {
    let m = Arc::new(
        ScriptedModel::new(vec![
            ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
            ScriptedTurn::message("never", 1),
        ])
        .with_delay(Duration::from_millis(20)),
    );
    let a = Agent::new("A").model_instance(m).tool(weather_tool());
    let session = Arc::new(MemorySession::new("s"));
    let runner: Runner = Runner::new();
    let mut run = runner
        .request(&a, "x")
        .session(session.clone())
        .start()
        .unwrap();
    let mut s = run.stream_events();
    let mut got = vec![];
    while let Some(e) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        let d = describe(&e);
        if d == "raw:response.created" {
            run.cancel(CancelMode::AfterTurn);
        }
        got.push(d);
    }
    assert_eq!(
        got.last().unwrap(),
        "item:tool_output:tool_call_output_item"
    );
    assert_eq!(
        got.iter().filter(|e| *e == "raw:response.created").count(),
        1
    );
    assert_eq!(run.cancelled(), Some(CancelMode::AfterTurn));
    assert_eq!(run.usage().requests, 1);
    let items = session.get_items(None).await.unwrap();
    assert_eq!(
        items.len(),
        3,
        "input, tool call and tool output are saved: {items:?}"
    );
}

#[tokio::test]
async fn input_guardrail_trips_and_stops_the_run() {
    let m = Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::message("should not finish", 5)])
            .with_delay(Duration::from_millis(30)),
    );
    let g = InputGuardrail::new(
        "no_math",
        |_ctx: RunContext<()>, _agent, input: Vec<Item>| async move {
            let text = serde_json::to_string(&input).unwrap_or_default();
            if text.contains("homework") {
                GuardrailFunctionOutput::trip(json!({"reason": "homework"}))
            } else {
                GuardrailFunctionOutput::pass(json!({}))
            }
        },
    );
    let a = Agent::new("A").model_instance(m).input_guardrail(g);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "do my homework").unwrap();
    let got = collect(&mut run).await;
    assert!(!got.contains(&"raw:response.completed".to_string()));
    let e = run.error().unwrap();
    assert_eq!(e.to_string(), "Guardrail InputGuardrail triggered tripwire");
    assert_eq!(e.sdk_name(), "InputGuardrailTripwireTriggered");

    let r = runner.run(&a, "hello").await.unwrap();
    assert_eq!(r.final_output_text(), Some("should not finish"));
    assert_eq!(r.input_guardrail_results.len(), 1);
}

#[tokio::test]
async fn input_guardrails_run_on_the_first_turn_only() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let g = InputGuardrail::new("count", move |_ctx: RunContext<()>, _a, _i| {
        c.fetch_add(1, Ordering::SeqCst);
        async { GuardrailFunctionOutput::pass(json!(null)) }
    });
    let m = model(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::message("done", 1),
    ]);
    let a = Agent::new("A")
        .model_instance(m)
        .tool(weather_tool())
        .input_guardrail(g);
    let runner: Runner = Runner::new();
    runner.run(&a, "x").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn output_guardrail_trips_on_the_final_output() {
    let g = OutputGuardrail::new(
        "no_secrets",
        |_ctx: RunContext<()>, _agent, out: serde_json::Value| async move {
            GuardrailFunctionOutput {
                tripwire_triggered: out.as_str().is_some_and(|s| s.contains("secret")),
                output_info: json!({"checked": true}),
            }
        },
    );
    let a = Agent::new("A")
        .model_instance(model(vec![ScriptedTurn::message("the secret is 42", 3)]))
        .output_guardrail(g);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got = collect(&mut run).await;
    assert_eq!(
        got.last().unwrap(),
        "item:message_output_created:message_output_item"
    );
    let e = run.error().unwrap();
    assert_eq!(
        e.to_string(),
        "Guardrail OutputGuardrail triggered tripwire"
    );
    assert_eq!(e.sdk_name(), "OutputGuardrailTripwireTriggered");
}

#[tokio::test]
async fn a_blocked_final_answer_is_never_saved_to_the_session() {
    let g = OutputGuardrail::new(
        "no_secrets",
        |_ctx: RunContext<()>, _agent, out: serde_json::Value| async move {
            GuardrailFunctionOutput {
                tripwire_triggered: out.as_str().is_some_and(|s| s.contains("secret")),
                output_info: json!({}),
            }
        },
    );
    let a = Agent::new("A")
        .model_instance(model(vec![ScriptedTurn::message("the secret is 42", 3)]))
        .output_guardrail(g);
    let session = Arc::new(MemorySession::new("s"));
    let runner: Runner = Runner::new();
    let r = runner
        .request(&a, "tell me")
        .session(session.clone())
        .run()
        .await;
    assert!(matches!(
        r,
        Err(AgentsError::OutputGuardrailTripwireTriggered { .. })
    ));
    // The input is kept; the blocked answer is not, so the next run never reads it.
    let items = session.get_items(None).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
}

#[tokio::test]
async fn a_busy_agent_queues_new_runs_in_order_and_refuses_past_its_queue() {
    let stage = callboard::actor::Stage::with_limits(callboard::actor::StageLimits {
        mailbox: 16,
        max_runs_per_agent: 1,
        queue_per_agent: 2,
    });
    let runner: Runner = Runner::new().with_stage(stage);
    let slow = Agent::new("Slow").model_instance(Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::message("x y", 2)])
            .repeat_last()
            .with_delay(Duration::from_millis(50)),
    ));
    let first = runner.run_streamed(&slow, "1").unwrap();
    let second = runner.run_streamed(&slow, "2").unwrap();
    let third = runner.run_streamed(&slow, "3").unwrap();
    match runner.run_streamed(&slow, "4") {
        Err(AgentsError::Overloaded(m)) => assert!(m.contains("Slow"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the fourth run is past the queue"),
    }
    let stats = runner.stage().stats();
    let (_, slow_stats) = stats.iter().find(|(n, _)| n == "Slow").unwrap();
    // The actor takes the runs from its mailbox on its own thread.
    let deadline = std::time::Instant::now() + WAIT;
    while slow_stats.running() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(slow_stats.running(), 1);
    assert_eq!(slow_stats.waiting(), 2);
    // They run one at a time, in the order accepted.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, r) in [first, second, third].into_iter().enumerate() {
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            r.wait().await.unwrap();
            order.lock().unwrap().push(i);
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    // The places come back as the actor hears the runs leave.
    let deadline = std::time::Instant::now() + WAIT;
    while slow_stats.running() > 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(slow_stats.waiting(), 0);
}

#[tokio::test]
async fn a_reader_that_stops_reading_pauses_its_run_and_memory_stays_bounded() {
    // 3,000 deltas: more than the run's event buffer holds.
    let a = Agent::new("A").model_instance(model(vec![ScriptedTurn::message(
        "word ".repeat(3000),
        3000,
    )]));
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let mut events = run.stream_events();
    let first = tokio::time::timeout(WAIT, events.next()).await.unwrap();
    assert!(first.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Paused on the full buffer, not finished.
    assert!(!run.is_complete());
    let mut n = 1;
    while tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    assert!(n > 3000, "{n}");
    assert!(run.is_complete());
    // A handle whose events are not read still ends: `wait` gives the stream up.
    let run = runner.run_streamed(&a, "y").unwrap();
    tokio::time::timeout(WAIT, run.wait())
        .await
        .unwrap()
        .unwrap();
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Forecast {
    city: String,
    celsius: i32,
}

#[tokio::test]
async fn structured_output_is_parsed_or_refused() {
    let runner: Runner = Runner::new();
    let a = Agent::new("A")
        .model_instance(model(vec![ScriptedTurn::message(
            r#"{"city":"Oslo","celsius":12}"#,
            4,
        )]))
        .output_type::<Forecast>();
    let r = runner.run(&a, "x").await.unwrap();
    assert_eq!(
        r.final_output_as::<Forecast>().unwrap(),
        Forecast {
            city: "Oslo".into(),
            celsius: 12
        }
    );
    let bad = Agent::new("A")
        .model_instance(model(vec![ScriptedTurn::message(r#"{"city":"Oslo"}"#, 2)]))
        .output_type::<Forecast>();
    match runner.run(&bad, "x").await {
        Err(AgentsError::ModelBehaviorError(m)) => {
            assert!(m.starts_with("Invalid JSON when parsing"), "{m}");
            assert!(m.contains("celsius"), "{m}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn tool_use_behavior_stops_at_tools() {
    let runner: Runner = Runner::new();
    let m = model(vec![ScriptedTurn::call(
        "get_weather",
        json!({"city": "Rome"}),
    )]);
    let a = Agent::new("A")
        .model_instance(m.clone())
        .tool(weather_tool())
        .tool_use_behavior(ToolUseBehavior::StopOnFirstTool);
    let r = runner.run(&a, "x").await.unwrap();
    assert_eq!(r.final_output_text(), Some("Sunny in Rome"));
    assert_eq!(r.usage.requests, 1);
    let a = Agent::new("A")
        .model_instance(m)
        .tool(weather_tool())
        .tool_use_behavior(ToolUseBehavior::StopAtTools(vec!["get_weather".into()]));
    assert_eq!(
        runner.run(&a, "x").await.unwrap().final_output_text(),
        Some("Sunny in Rome")
    );
}

#[derive(Default)]
struct Ctx {
    user: String,
    tool_saw: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl RunHooks<Ctx> for Recorder {
    async fn on_agent_start(&self, _c: &RunContext<Ctx>, agent: &str) {
        self.0.lock().unwrap().push(format!("agent_start:{agent}"));
    }
    async fn on_agent_end(&self, _c: &RunContext<Ctx>, agent: &str, _o: &serde_json::Value) {
        self.0.lock().unwrap().push(format!("agent_end:{agent}"));
    }
    async fn on_handoff(&self, _c: &RunContext<Ctx>, from: &str, to: &str) {
        self.0.lock().unwrap().push(format!("handoff:{from}->{to}"));
    }
    async fn on_tool_start(&self, _c: &RunContext<Ctx>, _a: &str, tool: &str) {
        self.0.lock().unwrap().push(format!("tool_start:{tool}"));
    }
    async fn on_tool_end(&self, _c: &RunContext<Ctx>, _a: &str, tool: &str, r: &str) {
        self.0.lock().unwrap().push(format!("tool_end:{tool}:{r}"));
    }
    async fn on_llm_start(
        &self,
        _c: &RunContext<Ctx>,
        agent: &str,
        sys: Option<&str>,
        _i: &[Item],
    ) {
        self.0
            .lock()
            .unwrap()
            .push(format!("llm_start:{agent}:{}", sys.unwrap_or("")));
    }
    async fn on_llm_end(
        &self,
        c: &RunContext<Ctx>,
        agent: &str,
        _r: &callboard::model::ResponseObject,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(format!("llm_end:{agent}:{}", c.usage().requests));
    }
}

#[tokio::test]
async fn context_hooks_and_dynamic_instructions() {
    let m = model(vec![
        ScriptedTurn::call("whoami", json!({})),
        ScriptedTurn::handoff("B"),
        ScriptedTurn::message("bye", 1),
    ]);
    let whoami = FunctionTool::new(
        "whoami",
        "d",
        |c: ToolContext<Ctx>, _a: serde_json::Value| async move {
            c.tool_saw.lock().unwrap().push(c.call_id.to_string());
            Ok::<_, String>(c.user.clone())
        },
    );
    let b = Agent::<Ctx>::new("B")
        .model_instance(m.clone())
        .instructions("static");
    let a = Agent::<Ctx>::new("A")
        .model_instance(m)
        .dynamic_instructions(|c: RunContext<Ctx>, name| async move {
            format!("{name} serves {}", c.user)
        })
        .tool(whoami)
        .handoff(&b);
    let hooks = Arc::new(Recorder::default());
    let ctx = Ctx {
        user: "ada".into(),
        ..Default::default()
    };
    let runner: Runner<Ctx> = Runner::new();
    let r = runner
        .request_with(&a, "x", ctx)
        .hooks(hooks.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(r.final_output_text(), Some("bye"));
    let log = hooks.0.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "agent_start:A",
            "llm_start:A:A serves ada",
            "llm_end:A:1",
            "tool_start:whoami",
            "tool_end:whoami:ada",
            "llm_start:A:A serves ada",
            "llm_end:A:2",
            "handoff:A->B",
            "agent_start:B",
            "llm_start:B:static",
            "llm_end:B:3",
            "agent_end:B"
        ]
    );
}

#[tokio::test]
async fn handoff_by_name_allows_cycles_and_input_filters() {
    let m = model(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("B"),
    ]);
    let a = Agent::new("A")
        .model_instance(m)
        .tool(weather_tool())
        .handoff(Handoff::named("B").input_filter(callboard::handoff::filters::remove_all_tools));
    let b = Agent::new("B")
        .model_instance(model(vec![ScriptedTurn::message("B here", 1)]))
        .handoff(Handoff::named("A"));
    let runner: Runner = Runner::new();
    runner.register(&a);
    runner.register(&b);
    let r = runner.run(&a, "x").await.unwrap();
    assert_eq!(r.last_agent, "B");
    // The filter removed every tool item from what B (and the result) carries on with.
    assert!(r
        .new_items
        .iter()
        .all(|i| matches!(i, RunItem::MessageOutput { .. })));

    let lonely = Agent::new("A")
        .model_instance(model(vec![ScriptedTurn::handoff("Ghost")]))
        .handoff(Handoff::named("Ghost"));
    let e = Runner::<()>::new().run(&lonely, "x").await.unwrap_err();
    assert_eq!(e.sdk_name(), "UserError");
}

#[tokio::test]
async fn usage_is_readable_while_streaming() {
    let m = Arc::new(
        ScriptedModel::new(vec![
            ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
            ScriptedTurn::message("done and dusted", 3),
        ])
        .with_delay(Duration::from_millis(5)),
    );
    let a = Agent::new("A").model_instance(m).tool(weather_tool());
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let mut s = run.stream_events();
    let mut seen_mid = None;
    while let Some(e) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        if describe(&e) == "item:tool_output:tool_call_output_item" {
            seen_mid = Some(run.usage().requests);
        }
    }
    assert_eq!(seen_mid, Some(1));
    assert_eq!(run.usage().requests, 2);
}

#[tokio::test]
async fn session_memory_carries_the_conversation() {
    let m = model(vec![ScriptedTurn::message("first answer", 1)]);
    let a = Agent::new("A").model_instance(m);
    let session = Arc::new(MemorySession::new("conv"));
    let runner: Runner = Runner::new();
    let r1 = runner
        .request(&a, "hello")
        .session(session.clone())
        .run()
        .await
        .unwrap();
    let r2 = runner
        .request(&a, "again")
        .session(session.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(r1.to_input_list().len(), 2);
    let stored = session.get_items(None).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(r2.to_input_list(), stored);
}

#[tokio::test]
async fn many_concurrent_runs_and_overload() {
    let runner: Runner = Runner::new();
    let cast = complete_cast();
    let mut runs = Vec::new();
    for i in 0..1000 {
        runs.push(runner.request(&cast, format!("q{i}")).start().unwrap());
    }
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(runs.into_iter().map(|r| r.wait())),
    )
    .await
    .unwrap();
    assert!(results.iter().all(|r| r.is_ok()));

    let stage = callboard::actor::Stage::with_limits(callboard::actor::StageLimits {
        mailbox: 16,
        max_runs_per_agent: 1,
        queue_per_agent: 0,
    });
    let limited: Runner = Runner::new().with_stage(stage);
    let slow = Agent::new("Slow").model_instance(Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::message("x y", 2)])
            .with_delay(Duration::from_millis(100)),
    ));
    let first = limited.run_streamed(&slow, "a").unwrap();
    match limited.run_streamed(&slow, "b") {
        Err(AgentsError::Overloaded(m)) => assert!(m.contains("Slow"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the second run should be refused"),
    }
    first.wait().await.unwrap();
    assert!(limited.run_streamed(&slow, "c").is_ok());
}

#[tokio::test]
async fn bus_subscribers_see_the_run_with_gapless_seq() {
    let runner: Runner = Runner::new();
    let topic = runner.bus().topic("sess-1");
    let mut sub = topic.subscribe(None).unwrap();
    let run = runner
        .request(&complete_cast(), "x")
        .session_id("sess-1")
        .start()
        .unwrap();
    let mut seqs = vec![];
    loop {
        match tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap()
        {
            callboard::bus::Delivery::Frame(f) => {
                seqs.push(f.seq);
                if f.body.is_terminal() {
                    assert_eq!(f.body.type_name(), "run.completed");
                    let v: serde_json::Value =
                        serde_json::from_slice(callboard::wire::sdk::bytes(&f)).unwrap();
                    assert_eq!(v["final_output"], "It is sunny in Oslo today.");
                    assert_eq!(v["last_agent"], "B");
                    assert_eq!(v["usage"]["requests"], 3);
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, (1..=37).collect::<Vec<u64>>());
    run.wait().await.unwrap();
}

#[tokio::test]
async fn a_panic_inside_a_turn_still_ends_the_stream() {
    let m = Arc::new(ScriptedModel::from_fn(|_req, _turn| panic!("model bug")));
    let a = Agent::new("A").model_instance(m);
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&a, "x").unwrap();
    let got = collect(&mut run).await;
    assert_eq!(got, ["agent:A"]);
    let e = run.error().unwrap();
    assert_eq!(e.sdk_name(), "UserError");
    assert!(run.is_complete());
}
