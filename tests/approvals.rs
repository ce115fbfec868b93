//! Human approval of tool calls, in the library: a tool that needs approval pauses the run
//! where the SDK's stream stops (after the call's `tool_called`), the state survives a trip
//! through text (another process, a schema migration), and resuming streams what the SDK's
//! resumed stream does; rejection gives the model the SDK's message and never runs the tool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::run::RunState;
use callboard::session::{MemorySession, Session};
use callboard::{Agent, FunctionTool, Runner, StreamEvent, ToolContext};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize, JsonSchema)]
struct PathArgs {
    path: String,
}

/// `delete_file`, counting its calls.
fn delete_tool(calls: Arc<AtomicUsize>) -> FunctionTool<()> {
    FunctionTool::new(
        "delete_file",
        "Deletes a file.",
        move |_c: ToolContext<()>, a: PathArgs| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(format!("deleted {}", a.path))
            }
        },
    )
}

fn describe(e: &StreamEvent) -> String {
    match e {
        StreamEvent::AgentUpdated { new_agent } => format!("agent:{new_agent}"),
        StreamEvent::RawResponse(r) => format!("raw:{}", r.type_name()),
        StreamEvent::RunItem(i) => format!("item:{}", i.event_name()),
    }
}

/// Every event of the stream, raw model events left out.
async fn items(run: &mut callboard::RunResultStreaming<()>) -> Vec<String> {
    let mut s = run.stream_events();
    let mut out = vec![];
    loop {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(e)) => {
                let d = describe(&e);
                if !d.starts_with("raw:") {
                    out.push(d);
                }
            }
            Ok(None) => break,
            Err(_) => panic!("stream_events hung; got so far: {out:?}"),
        }
    }
    out
}

/// The outputs the model read for tool calls, in order.
fn tool_outputs(run: &callboard::RunResultStreaming<()>) -> Vec<String> {
    run.new_items()
        .iter()
        .filter_map(|i| match i {
            callboard::RunItem::ToolCallOutput { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect()
}

fn two_turns() -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("delete_file", json!({"path": "/tmp/a"})),
        ScriptedTurn::message("done", 2),
    ]))
}

#[tokio::test]
async fn the_stream_stops_after_tool_called_and_resumes_like_the_sdk() {
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::new("Ops")
        .model_instance(two_turns())
        .tool(delete_tool(calls.clone()).needs_approval(true));
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&agent, "clean up").unwrap();
    let first = items(&mut run).await;
    assert_eq!(first, ["agent:Ops", "item:tool_called"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "not run before approval");
    let pending = run.interruptions();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].item_type, "tool_approval_item");
    assert_eq!(pending[0].tool, "delete_file");
    assert_eq!(pending[0].agent, "Ops");
    assert_eq!(pending[0].arguments, r#"{"path":"/tmp/a"}"#);
    assert!(run.final_output().is_none());

    // Through text, as a state kept elsewhere would be.
    let text = run.to_state().expect("a paused run has a state").to_text();
    let mut state = RunState::from_text(&text).unwrap();
    let call_id = state.interruptions()[0].call_id.clone();
    assert!(!state.is_decided());
    state.approve(&call_id, false).unwrap();
    assert!(state.approve(&call_id, false).is_err(), "decided twice");
    assert!(state.approve("call_nope", false).is_err(), "unknown call");

    let mut resumed = runner.resume(&agent, state).unwrap();
    let rest = items(&mut resumed).await;
    assert_eq!(
        rest,
        [
            "agent:Ops",
            "item:tool_output",
            "item:message_output_created"
        ]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(resumed.final_output(), Some(json!("done")));
    assert_eq!(tool_outputs(&resumed), ["deleted /tmp/a"]);
    assert!(resumed.interruptions().is_empty());
    // The resumed result holds the whole run's items, as the SDK's does.
    let types: Vec<_> = resumed.new_items().iter().map(|i| i.type_name()).collect();
    assert_eq!(
        types,
        [
            "tool_call_item",
            "tool_call_output_item",
            "message_output_item"
        ]
    );
}

#[tokio::test]
async fn a_rejected_call_never_runs_and_the_model_reads_the_sdk_message() {
    for (message, expected) in [
        (None, "Tool execution was not approved."),
        (
            Some("Not in production, please."),
            "Not in production, please.",
        ),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let agent = Agent::new("Ops")
            .model_instance(two_turns())
            .tool(delete_tool(calls.clone()).needs_approval(true));
        let runner: Runner = Runner::new();
        let mut run = runner.run_streamed(&agent, "clean up").unwrap();
        items(&mut run).await;
        let mut state = run.to_state().unwrap();
        let id = state.interruptions()[0].call_id.clone();
        state.reject(&id, message.map(str::to_owned)).unwrap();
        let mut resumed = runner.resume(&agent, state).unwrap();
        let rest = items(&mut resumed).await;
        assert_eq!(
            rest,
            [
                "agent:Ops",
                "item:tool_output",
                "item:message_output_created"
            ]
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(tool_outputs(&resumed), [expected]);
    }
}

#[tokio::test]
async fn a_predicate_picks_the_calls_and_the_others_of_the_turn_run_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("delete_file", json!({"path": "/tmp/scratch"}))
            .with_call("delete_file", json!({"path": "/etc/passwd"})),
        ScriptedTurn::message("done", 1),
    ]));
    let agent = Agent::new("Ops").model_instance(m).tool(
        delete_tool(calls.clone())
            .needs_approval_when(|args| !args["path"].as_str().unwrap_or("").starts_with("/tmp/")),
    );
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&agent, "clean up").unwrap();
    items(&mut run).await;
    let pending = run.interruptions();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].arguments, r#"{"path":"/etc/passwd"}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the /tmp call ran already");
    let mut state = run.to_state().unwrap();
    let id = pending[0].call_id.clone();
    state.approve(&id, false).unwrap();
    let mut resumed = runner.resume(&agent, state).unwrap();
    items(&mut resumed).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each call ran exactly once"
    );
    assert_eq!(resumed.final_output(), Some(json!("done")));
    let mut outs = tool_outputs(&resumed);
    outs.sort();
    assert_eq!(outs, ["deleted /etc/passwd", "deleted /tmp/scratch"]);
}

#[tokio::test]
async fn approving_always_covers_later_calls_of_that_tool_in_the_run() {
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("delete_file", json!({"path": "/a"})),
        ScriptedTurn::call("delete_file", json!({"path": "/b"})),
        ScriptedTurn::message("done", 1),
    ]));
    let agent = Agent::new("Ops")
        .model_instance(m)
        .tool(delete_tool(calls.clone()).needs_approval(true));
    let runner: Runner = Runner::new();
    let mut run = runner.run_streamed(&agent, "clean up").unwrap();
    items(&mut run).await;
    let mut state = run.to_state().unwrap();
    let id = state.interruptions()[0].call_id.clone();
    state.approve(&id, true).unwrap();
    let mut resumed = runner.resume(&agent, state).unwrap();
    let rest = items(&mut resumed).await;
    assert!(resumed.interruptions().is_empty(), "{rest:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(resumed.final_output(), Some(json!("done")));
}

#[tokio::test]
async fn a_session_run_pauses_and_resumes_with_its_history_saved_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::new("Ops")
        .model_instance(two_turns())
        .tool(delete_tool(calls.clone()).needs_approval(true));
    let session: Arc<dyn Session> = Arc::new(MemorySession::new("s"));
    let runner: Runner = Runner::new();
    let mut run = runner
        .request(&agent, "clean up")
        .session(session.clone())
        .start()
        .unwrap();
    items(&mut run).await;
    let mut state = run.to_state().unwrap();
    let id = state.interruptions()[0].call_id.clone();
    state.approve(&id, false).unwrap();
    let mut resumed = runner
        .request(&agent, callboard::RunInput::Items(vec![]))
        .session(session.clone())
        .resume_from(state)
        .start()
        .unwrap();
    items(&mut resumed).await;
    assert_eq!(resumed.final_output(), Some(json!("done")));
    let saved = session.get_items(None).await.unwrap();
    let kinds: Vec<String> = saved
        .iter()
        .map(|i| {
            let v = serde_json::to_value(i).unwrap();
            v["type"]
                .as_str()
                .or(v["role"].as_str())
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["user", "function_call", "function_call_output", "message"],
        "{saved:?}"
    );
}

#[tokio::test]
async fn a_state_written_by_schema_1_0_is_read_and_resumed() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/run_state_1_0.json"
    ))
    .unwrap();
    let state = RunState::from_text(&text).unwrap();
    assert_eq!(state.schema_version, "1.1");
    assert_eq!(state.interruptions().len(), 1);
    assert!(
        state.is_decided(),
        "the 1.0 approval list became call decisions"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::new("Ops")
        .model_instance(two_turns())
        .tool(delete_tool(calls.clone()).needs_approval(true));
    let runner: Runner = Runner::new();
    let mut resumed = runner.resume(&agent, state).unwrap();
    items(&mut resumed).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(resumed.final_output(), Some(json!("done")));
    // A state from a newer build is refused with a clear message.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["$schemaVersion"] = json!("9.0");
    let e = RunState::from_json(v).unwrap_err().to_string();
    assert!(e.contains("9.0") && e.contains("upgrade"), "{e}");
}
