//! Agents as tools (nested runs with `path` and `depth`), tool progress, tool timeouts with
//! both behaviours, and per-tool concurrency limits, through the library's `Runner`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callboard::bus::{Delivery, Frame, FrameBody, Subscription};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::trace::{self, TraceProcessor, Tracer};
use callboard::{
    Agent, AgentsError, CancelMode, FunctionTool, RunConfig, Runner, StreamEvent, ToolContext,
    ToolTimeoutBehavior,
};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn scripted(turns: Vec<ScriptedTurn>) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(turns))
}

/// The orchestrator's script: one turn calling `research` and `write` at once, then an answer.
fn orchestrator_model() -> Arc<ScriptedModel> {
    scripted(vec![
        ScriptedTurn::new()
            .with_call("research", json!({"input": "tides"}))
            .with_call("write", json!({"input": "a haiku"})),
        ScriptedTurn::message("Done: both came back.", 4),
    ])
}

fn researcher(delay: Duration) -> Agent {
    Agent::new("Researcher")
        .instructions("Research.")
        .model_instance(Arc::new(
            ScriptedModel::new(vec![ScriptedTurn::message("Tides follow the moon.", 6)])
                .with_delay(delay),
        ))
}

fn writer(delay: Duration) -> Agent {
    Agent::new("Writer")
        .instructions("Write.")
        .model_instance(Arc::new(
            ScriptedModel::new(vec![ScriptedTurn::message("Moon pulls the sea.", 6)])
                .with_delay(delay),
        ))
}

fn nested_orchestrator(delay: Duration) -> Agent {
    Agent::new("Orchestrator")
        .instructions("Fan out.")
        .model_instance(orchestrator_model())
        .tool(researcher(delay).as_tool("research", "Researches a topic."))
        .tool(writer(delay).as_tool("write", "Writes a text."))
}

#[derive(Deserialize, JsonSchema)]
#[allow(dead_code)]
struct Input {
    input: String,
}

/// The same orchestrator whose tools are plain functions answering what the agents answer.
fn flat_orchestrator() -> Agent {
    let fixed = |name: &'static str, out: &'static str| {
        FunctionTool::new(
            name,
            "fixed",
            move |_c: ToolContext<()>, _a: Input| async move { Ok::<_, String>(out) },
        )
    };
    Agent::new("Orchestrator")
        .instructions("Fan out.")
        .model_instance(orchestrator_model())
        .tool(fixed("research", "Tides follow the moon."))
        .tool(fixed("write", "Moon pulls the sea."))
}

/// Starts `agent` on the runner's session topic `s` and follows that topic from the start.
fn start_followed(
    runner: &Runner,
    agent: &Agent,
) -> (callboard::RunResultStreaming<()>, Subscription) {
    let sid = callboard::run::gen_run_id();
    let sub = runner.bus().topic(&sid).subscribe(None).unwrap();
    let run = runner
        .request(agent, "go")
        .session_id(&sid)
        .start()
        .unwrap();
    (run, sub)
}

/// The next frame of a followed topic.
async fn next(sub: &mut Subscription) -> Arc<Frame> {
    match tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("frames stalled")
    {
        Some(Delivery::Frame(f)) => f,
        other => panic!("the topic ended or lagged: {other:?}"),
    }
}

/// Frames of a followed topic until the top run's end.
async fn drain(sub: &mut Subscription) -> Vec<Arc<Frame>> {
    let mut out = Vec::new();
    loop {
        let f = next(sub).await;
        let end = f.nesting.is_none() && f.body.is_terminal();
        out.push(f);
        if end {
            return out;
        }
    }
}

fn event_json(f: &Frame) -> Option<Value> {
    f.event().map(|e| serde_json::to_value(e).unwrap())
}

#[tokio::test]
async fn depth_zero_is_the_run_without_nesting_and_all_depths_show_every_inner_frame() {
    let runner: Runner = Runner::new();
    let (nested, mut rx) = start_followed(&runner, &nested_orchestrator(Duration::ZERO));
    let frames = drain(&mut rx).await;
    let flat_runner: Runner = Runner::new();
    let (_flat, mut frx) = start_followed(&flat_runner, &flat_orchestrator());
    let flat_frames = drain(&mut frx).await;

    // Depth 0: the very same events, in the same order, as without nesting.
    let top: Vec<Value> = frames
        .iter()
        .filter(|f| f.nesting.is_none())
        .filter_map(|f| event_json(f))
        .collect();
    let plain: Vec<Value> = flat_frames.iter().filter_map(|f| event_json(f)).collect();
    assert_eq!(top, plain);
    assert!(flat_frames.iter().all(|f| f.nesting.is_none()));

    // Depth "all": every inner frame carries its path, depth 1 and its call.
    let calls: Vec<(String, String)> = top
        .iter()
        .filter(|e| e["name"] == "tool_called")
        .map(|e| {
            (
                e["item"]["raw_item"]["name"].as_str().unwrap().to_owned(),
                e["item"]["raw_item"]["call_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(calls.len(), 2);
    for (tool, agent) in [("research", "Researcher"), ("write", "Writer")] {
        let call_id = &calls.iter().find(|(t, _)| t == tool).unwrap().1;
        let inner: Vec<&Arc<Frame>> = frames
            .iter()
            .filter(|f| f.nesting.as_ref().is_some_and(|n| n.agent() == agent))
            .collect();
        // agent_updated, 3 raw + 6 deltas + 4 raw, message_output_created.
        assert!(inner.len() >= 10, "{agent}: {} frames", inner.len());
        for f in &inner {
            let n = f.nesting.as_ref().unwrap();
            assert_eq!(n.depth, 1);
            assert_eq!(&*n.parent_call_id, call_id.as_str());
            let path: Vec<&str> = n.path.iter().map(|a| &**a).collect();
            assert_eq!(path, vec!["Orchestrator", agent]);
            assert_eq!(f.run_id, nested.run_id().into());
            assert!(!f.body.is_terminal(), "nested runs publish no end frame");
        }
        match inner[0].event() {
            Some(StreamEvent::AgentUpdated { new_agent }) => assert_eq!(&**new_agent, agent),
            other => panic!("first inner event: {other:?}"),
        }
        let last = serde_json::to_value(inner.last().unwrap().event().unwrap()).unwrap();
        assert_eq!(last["name"], "message_output_created");
    }
    // The library's event stream is the SDK's: no nested events.
    let result = nested.wait().await.unwrap();
    assert_eq!(result.final_output_text(), Some("Done: both came back."));
    let outputs: Vec<String> = result
        .new_items
        .iter()
        .filter_map(|i| match i {
            callboard::RunItem::ToolCallOutput { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        outputs,
        vec!["Tides follow the moon.", "Moon pulls the sea."]
    );
    // Inner model calls count in the run's usage (4 requests: 2 outer, 2 inner).
    assert_eq!(result.usage.requests, 4);
}

#[tokio::test]
async fn agent_tools_of_one_turn_run_concurrently() {
    let runner: Runner = Runner::new();
    // Each inner model waits 40 ms before each of its ~9 delta events; in sequence the two
    // would take twice as long as one, and their frames would not interleave.
    let (_run, mut rx) = start_followed(&runner, &nested_orchestrator(Duration::from_millis(40)));
    let frames = drain(&mut rx).await;
    let owners: Vec<&str> = frames
        .iter()
        .filter_map(|f| f.nesting.as_ref().map(|n| n.agent()))
        .collect();
    let first_writer = owners.iter().position(|a| *a == "Writer").unwrap();
    let last_researcher = owners.iter().rposition(|a| *a == "Researcher").unwrap();
    assert!(
        first_writer < last_researcher,
        "the inner runs did not overlap: {owners:?}"
    );
}

#[tokio::test]
async fn cancelling_the_outer_run_cancels_the_inner_ones() {
    let runner: Runner = Runner::new();
    let slow = Duration::from_millis(300);
    let orchestrator = nested_orchestrator(slow);
    let (run, mut rx) = start_followed(&runner, &orchestrator);
    // Wait until both inner runs streamed something.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let f = next(&mut rx).await;
        if let Some(n) = &f.nesting {
            seen.insert(n.agent().to_owned());
        }
    }
    assert_eq!(runner.stage().active_runs("Researcher"), 1);
    run.cancel(CancelMode::Immediate);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let active =
            runner.stage().active_runs("Researcher") + runner.stage().active_runs("Writer");
        if active == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inner runs still active"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.done().await;
    assert_eq!(run.cancelled(), Some(CancelMode::Immediate));
    // The run ends cancelled; nothing of the inner runs comes after its end.
    let rest = drain(&mut rx).await;
    assert!(matches!(
        rest.last().map(|f| &f.body),
        Some(FrameBody::RunCancelled { .. })
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_none(), "frames after the end");
}

#[derive(Default)]
struct Spans(Mutex<Vec<Value>>);

impl TraceProcessor for Spans {
    fn on_trace_start(&self, _t: &trace::Trace) {}
    fn on_trace_end(&self, _t: &trace::Trace) {}
    fn on_span_start(&self, _s: &trace::Span) {}
    fn on_span_end(&self, s: &trace::Span) {
        if let Some(v) = s.export() {
            self.0.lock().unwrap().push(v);
        }
    }
}

#[tokio::test]
async fn inner_spans_nest_under_the_tools_function_span() {
    let tracer = Tracer::new();
    tracer.set_disabled(false);
    let spans = Arc::new(Spans::default());
    tracer.add_processor(spans.clone());
    let runner: Runner = Runner::new();
    let result = runner
        .request(&nested_orchestrator(Duration::ZERO), "go")
        .config(RunConfig::default().tracer(tracer.clone()))
        .run()
        .await
        .unwrap();
    let trace_id = result.trace_id.clone().unwrap();
    let all = spans.0.lock().unwrap().clone();
    assert!(all.iter().all(|s| s["trace_id"] == trace_id), "one trace");
    let by_id = |id: &Value| all.iter().find(|s| &s["id"] == id).cloned();
    for (tool, agent) in [("research", "Researcher"), ("write", "Writer")] {
        let function = all
            .iter()
            .find(|s| s["span_data"]["type"] == "function" && s["span_data"]["name"] == tool)
            .unwrap_or_else(|| panic!("no function span for {tool}"));
        let agent_span = all
            .iter()
            .find(|s| s["span_data"]["type"] == "agent" && s["span_data"]["name"] == agent)
            .unwrap();
        let task = by_id(&agent_span["parent_id"]).unwrap();
        assert_eq!(task["span_data"]["name"], "task");
        assert_eq!(task["parent_id"], function["id"], "{agent}'s task span");
    }
}

#[derive(Deserialize, JsonSchema)]
struct Steps {
    steps: u32,
}

#[tokio::test]
async fn rust_tools_report_progress_as_tool_progress_frames() {
    let tool = FunctionTool::new(
        "crunch",
        "Crunches.",
        |ctx: ToolContext<()>, a: Steps| async move {
            for i in 1..=a.steps {
                ctx.progress(i as f64, Some(a.steps as f64), Some(format!("step {i}")));
            }
            Ok::<_, String>("crunched")
        },
    );
    let agent = Agent::new("Worker")
        .tool(tool)
        .model_instance(scripted(vec![
            ScriptedTurn::call("crunch", json!({"steps": 3})),
            ScriptedTurn::message("ok", 1),
        ]));
    let runner: Runner = Runner::new();
    let (_run, mut rx) = start_followed(&runner, &agent);
    let frames = drain(&mut rx).await;
    let progress: Vec<(f64, Option<f64>, Option<String>)> = frames
        .iter()
        .filter_map(|f| match &f.body {
            FrameBody::ToolProgress {
                tool,
                progress,
                total,
                message,
                ..
            } => {
                assert_eq!(&**tool, "crunch");
                Some((*progress, *total, message.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (1.0, Some(3.0), Some("step 1".into())),
            (2.0, Some(3.0), Some("step 2".into())),
            (3.0, Some(3.0), Some("step 3".into())),
        ]
    );
    // Between the call and its output.
    let pos = |pred: &dyn Fn(&Frame) -> bool| frames.iter().position(|f| pred(f)).unwrap();
    let called = pos(&|f| event_json(f).is_some_and(|e| e["name"] == "tool_called"));
    let first = pos(&|f| matches!(f.body, FrameBody::ToolProgress { .. }));
    let output = pos(&|f| event_json(f).is_some_and(|e| e["name"] == "tool_output"));
    assert!(called < first && first < output);
}

fn sleeper(name: &str, behavior: ToolTimeoutBehavior) -> FunctionTool<()> {
    FunctionTool::new(
        name.to_owned(),
        "Sleeps.",
        |_c: ToolContext<()>, _a: Steps| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>("woke up")
        },
    )
    .timeout(Duration::from_millis(100), behavior)
}

#[tokio::test]
async fn a_timeout_as_result_gives_the_model_the_sdk_message() {
    let agent = Agent::new("A")
        .tool(sleeper("nap", ToolTimeoutBehavior::ErrorAsResult))
        .model_instance(scripted(vec![
            ScriptedTurn::call("nap", json!({"steps": 1})),
            ScriptedTurn::message("ok", 1),
        ]));
    let runner: Runner = Runner::new();
    let r = tokio::time::timeout(WAIT, runner.run(&agent, "go"))
        .await
        .unwrap()
        .unwrap();
    let out = r
        .new_items
        .iter()
        .find_map(|i| match i {
            callboard::RunItem::ToolCallOutput { output, .. } => Some(output.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(out, "Tool 'nap' timed out after 0.1 seconds.");
    assert_eq!(r.final_output_text(), Some("ok"));
}

#[tokio::test]
async fn a_timeout_raising_fails_the_run_with_tool_timeout_error() {
    let agent = Agent::new("A")
        .tool(sleeper("nap", ToolTimeoutBehavior::RaiseException))
        .model_instance(scripted(vec![
            ScriptedTurn::call("nap", json!({"steps": 1})),
            ScriptedTurn::message("never", 1),
        ]));
    let runner: Runner = Runner::new();
    let (run, mut rx) = start_followed(&runner, &agent);
    let frames = drain(&mut rx).await;
    match &frames.last().unwrap().body {
        FrameBody::RunFailed {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "ToolTimeoutError");
            assert_eq!(message, "Tool 'nap' timed out after 0.1 seconds.");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run.wait().await,
        Err(AgentsError::ToolTimeoutError { .. })
    ));
}

#[tokio::test]
async fn an_agent_tool_that_times_out_cancels_its_nested_run() {
    let slow = researcher(Duration::from_millis(500))
        .as_tool("research", "Researches.")
        .timeout(
            Duration::from_millis(200),
            ToolTimeoutBehavior::ErrorAsResult,
        );
    let agent = Agent::new("Boss").tool(slow).model_instance(scripted(vec![
        ScriptedTurn::call("research", json!({"input": "x"})),
        ScriptedTurn::message("fine", 1),
    ]));
    let runner: Runner = Runner::new();
    let r = tokio::time::timeout(WAIT, runner.run(&agent, "go"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.final_output_text(), Some("fine"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while runner.stage().active_runs("Researcher") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nested run went on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_calls_and_runs() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r2, p2) = (running.clone(), peak.clone());
    let tool = FunctionTool::new(
        "one_at_a_time",
        "Busy.",
        move |_c: ToolContext<()>, _a: Steps| {
            let (running, peak) = (r2.clone(), p2.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>("done")
            }
        },
    )
    .max_concurrency(1);
    let tool: Arc<dyn callboard::Tool<()>> = Arc::new(tool);
    let turn = ScriptedTurn::new()
        .with_call("one_at_a_time", json!({"steps": 1}))
        .with_call("one_at_a_time", json!({"steps": 2}))
        .with_call("one_at_a_time", json!({"steps": 3}));
    let runner: Runner = Runner::new();
    let mut runs = Vec::new();
    for i in 0..2 {
        let agent = Agent::new(format!("A{i}"))
            .tool_arc(tool.clone())
            .model_instance(scripted(vec![turn.clone(), ScriptedTurn::message("ok", 1)]));
        runs.push(runner.run_streamed(&agent, "go").unwrap());
    }
    for r in runs {
        let res = tokio::time::timeout(WAIT, r.wait()).await.unwrap().unwrap();
        assert_eq!(res.final_output_text(), Some("ok"));
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "more than one call ran at once"
    );
}

mod common;

/// The demo cast's orchestrator over the server: a run read at depth "all" carries every
/// nested frame with its path; a subscriber at depth 0 reads exactly the top run's frames;
/// the chat format says a nested token's agent and depth; SSE takes `?depth=`.
#[tokio::test]
async fn subscribers_pick_their_depth_over_websocket_and_sse() {
    let srv = common::start(common::TWO_TENANTS).await;
    let question = "What is the weather in Oslo, and is my bill paid?";
    let mut all = common::connect(&srv, Some("key-acme")).await;
    let mut req = common::run_create("r1", "fan", "Triage", question);
    req["depth"] = json!("all");
    common::send(&mut all, req).await;
    let accepted = common::recv(&mut all).await;
    assert_eq!(accepted["type"], "run.accepted");
    let frames = common::recv_run(&mut all).await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "run.completed",
        "{frames:?}"
    );
    assert_eq!(frames.last().unwrap()["last_agent"], "Orchestrator");
    let nested: Vec<&Value> = frames.iter().filter(|f| f.get("depth").is_some()).collect();
    assert!(nested.len() > 20, "{} nested frames", nested.len());
    for f in &nested {
        assert_eq!(f["depth"], 1);
        let path: Vec<&str> = f["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(path[0], "Orchestrator");
        assert!(path[1] == "Weather" || path[1] == "Billing", "{path:?}");
        assert!(f["parent_call_id"].as_str().unwrap().starts_with("call_"));
    }
    // The nested Weather agent's own tool call is among its frames.
    assert!(nested
        .iter()
        .any(|f| f["event"]["name"] == "tool_called" && f["path"][1] == "Weather"));

    // Depth 0 (the default): exactly the top frames, the same bytes.
    let mut top = common::connect(&srv, Some("key-acme")).await;
    common::send(
        &mut top,
        json!({"type": "session.subscribe", "session_id": "fan", "after_seq": 0}),
    )
    .await;
    let subscribed = common::recv(&mut top).await;
    assert_eq!(subscribed["type"], "session.subscribed", "{subscribed}");
    let top_frames = common::recv_run(&mut top).await;
    let expected: Vec<&Value> = frames.iter().filter(|f| f.get("depth").is_none()).collect();
    assert_eq!(top_frames.iter().collect::<Vec<_>>(), expected);

    // Chat format at depth 1: nested tokens say their agent and depth.
    let mut chat = common::connect(&srv, Some("key-acme")).await;
    common::send(
        &mut chat,
        json!({"type": "session.subscribe", "session_id": "fan", "after_seq": 0, "format": "chat", "depth": 1}),
    )
    .await;
    common::recv(&mut chat).await;
    let chat_frames = common::recv_run(&mut chat).await;
    let nested_tokens: Vec<&Value> = chat_frames
        .iter()
        .filter(|f| f["type"] == "token" && f.get("depth").is_some())
        .collect();
    assert!(!nested_tokens.is_empty());
    assert!(nested_tokens
        .iter()
        .all(|t| t["depth"] == 1 && (t["agent"] == "Weather" || t["agent"] == "Billing")));
    assert!(chat_frames
        .iter()
        .any(|f| f["type"] == "token" && f.get("depth").is_none()));

    // SSE of a run with ?depth=all.
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/sessions/fan2/runs?depth=all"))
        .header("authorization", "Bearer key-acme")
        .header("accept", "text/event-stream")
        .json(&json!({"agent": "Triage", "input": question}))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(WAIT, resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(
        body.contains("\"depth\":1"),
        "no nested frame in the SSE stream"
    );
    assert!(body.contains("event: run.completed"));
}

/// An HTTP tool answering NDJSON: its progress lines reach subscribers as `tool.progress`
/// before the output; a configured `raise_exception` timeout fails the run.
#[tokio::test]
async fn http_tools_stream_ndjson_progress_and_configured_timeouts_raise() {
    use axum::routing::post;
    let tool_app = axum::Router::new()
        .route(
            "/crunch",
            post(|| async {
                let lines = futures::stream::iter([
                    "{\"progress\": 1, \"total\": 2, \"message\": \"half way\"}\n",
                    "{\"progress\": 2, \"total\": 2}\n",
                    "{\"output\": \"crunched\"}\n",
                ])
                .then(|l| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from(l))
                });
                (
                    [("content-type", "application/x-ndjson")],
                    axum::body::Body::from_stream(lines),
                )
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "too late"
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, tool_app).await });
    let cfg = format!(
        r#"
[models.default]
provider = "scripted"
[[models.default.script]]
outputs = [{{ kind = "call", name = "crunch", arguments = '{{}}' }}]
[[models.default.script]]
outputs = [{{ kind = "message", text = "done", deltas = 1 }}]

[models.impatient]
provider = "scripted"
[[models.impatient.script]]
outputs = [{{ kind = "call", name = "slow", arguments = '{{}}' }}]

[[agents]]
name = "Cruncher"
tools = ["crunch"]

[[agents]]
name = "Impatient"
model = "impatient"
tools = ["slow"]

[[tools]]
name = "crunch"
kind = "http"
url = "http://{tool_addr}/crunch"

[[tools]]
name = "slow"
kind = "http"
url = "http://{tool_addr}/slow"
timeout_ms = 300
timeout_behavior = "raise_exception"
max_concurrency = 1
"#
    );
    let srv = common::start(&cfg).await;
    let mut ws = common::connect(&srv, None).await;
    common::send(&mut ws, common::run_create("r1", "nd", "Cruncher", "go")).await;
    common::recv(&mut ws).await;
    let frames = common::recv_run(&mut ws).await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "run.completed",
        "{frames:?}"
    );
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "tool.progress")
        .collect();
    assert_eq!(progress.len(), 2, "{frames:?}");
    assert_eq!(progress[0]["message"], "half way");
    assert_eq!(progress[0]["tool"], "crunch");
    assert_eq!(progress[1]["progress"], json!(2.0));
    assert!(progress[1].get("message").is_none());
    let out_at = frames
        .iter()
        .position(|f| f["event"]["name"] == "tool_output")
        .unwrap();
    assert_eq!(frames[out_at]["event"]["item"]["output"], "crunched");
    let first_progress = frames
        .iter()
        .position(|f| f["type"] == "tool.progress")
        .unwrap();
    assert!(first_progress < out_at);

    common::send(&mut ws, common::run_create("r2", "slow", "Impatient", "go")).await;
    common::recv(&mut ws).await;
    let frames = common::recv_run(&mut ws).await;
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.failed", "{frames:?}");
    assert_eq!(end["error"]["type"], "ToolTimeoutError");
    assert_eq!(
        end["error"]["message"],
        "Tool 'slow' timed out after 0.3 seconds."
    );
}
