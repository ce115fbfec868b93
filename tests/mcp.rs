//! MCP servers as tool sources, against real servers: `server-everything` over stdio and
//! streamable HTTP, `mcp-server-time` over stdio.

mod mcp_support;

use std::sync::Arc;
use std::time::Duration;

use callboard::context::RunContext;
use callboard::mcp::{McpServer, McpServerConfig, Phase};
use callboard::tool::{Tool, ToolContext, ToolSource};

const READY: Duration = Duration::from_secs(60);

fn ctx(tool: &str) -> ToolContext<()> {
    ToolContext::new(
        RunContext::new(Arc::new(()), "run_t".into()),
        tool,
        "call_1",
    )
}

async fn tool_named(server: &McpServer, name: &str) -> Arc<dyn Tool<()>> {
    let tools = ToolSource::<()>::list_tools(server).await.expect("tools");
    tools
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

#[tokio::test]
async fn stdio_everything_lists_and_calls_tools() {
    let Some(bin) = mcp_support::everything() else {
        return;
    };
    let server = McpServer::start(McpServerConfig::stdio(
        "everything",
        "node",
        &[bin.to_str().unwrap(), "stdio"],
    ))
    .unwrap();
    server.wait_ready(READY).await.unwrap();
    let st = server.status();
    assert_eq!(st.state, Phase::Ready);
    for t in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(
            st.tools.iter().any(|n| n == t),
            "{t} missing from {:?}",
            st.tools
        );
    }
    let echo = tool_named(&server, "echo").await;
    let out = echo
        .invoke(ctx("echo"), r#"{"message":"hi there"}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "Echo: hi there");
    let sum = tool_named(&server, "get-sum").await;
    let out = sum
        .invoke(ctx("get-sum"), r#"{"a":2,"b":40}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "The sum of 2 and 40 is 42.");
    server.shutdown();
    assert!(server.wait_for(READY, |s| s.state == Phase::Stopped).await);
}

mod common;

use callboard::bus::{Delivery, Frame, FrameBody, Subscription};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::{Agent, Runner};
use serde_json::{json, Value};

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
    match tokio::time::timeout(READY, sub.recv())
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

fn progress_of(frames: &[Arc<Frame>]) -> Vec<(f64, Option<f64>)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            FrameBody::ToolProgress {
                progress, total, ..
            } => Some((*progress, *total)),
            _ => None,
        })
        .collect()
}

fn long_running_agent(server: &McpServer, seconds: u32, steps: u32, answer: &str) -> Agent {
    Agent::new("Operator")
        .mcp_server(server)
        .model_instance(Arc::new(ScriptedModel::new(vec![
            ScriptedTurn::call(
                "trigger-long-running-operation",
                json!({"duration": seconds, "steps": steps}),
            ),
            ScriptedTurn::message(answer, 2),
        ])))
}

fn tool_output(frames: &[Arc<Frame>]) -> String {
    frames
        .iter()
        .filter_map(|f| f.event())
        .map(|e| serde_json::to_value(e).unwrap())
        .find(|e| e["name"] == "tool_output")
        .map(|e| e["item"]["output"].as_str().unwrap().to_owned())
        .expect("a tool_output event")
}

#[tokio::test]
async fn time_server_over_stdio_answers_in_utc() {
    let Some((cmd, args)) = mcp_support::time_server() else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = McpServer::start(McpServerConfig::stdio("time", cmd, &args)).unwrap();
    server.wait_ready(READY).await.unwrap();
    assert!(server
        .status()
        .tools
        .iter()
        .any(|t| t == "get_current_time"));
    let t = tool_named(&server, "get_current_time").await;
    let out = t
        .invoke(ctx("get_current_time"), r#"{"timezone":"UTC"}"#.into())
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["timezone"], "UTC");
    assert!(v["datetime"].as_str().unwrap().starts_with("20"));
    server.shutdown();
}

#[tokio::test]
async fn streamable_http_everything_calls_tools_and_forwards_progress() {
    let Some(bin) = mcp_support::everything() else {
        return;
    };
    let http = mcp_support::HttpEverything::start(&bin);
    let server = McpServer::start(McpServerConfig::streamable_http(
        "everything-http",
        &http.url,
    ))
    .unwrap();
    server.wait_ready(READY).await.unwrap();
    let echo = tool_named(&server, "echo").await;
    let out = echo
        .invoke(ctx("echo"), r#"{"message":"over http"}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "Echo: over http");
    let runner: Runner = Runner::new();
    let (_run, mut rx) = start_followed(&runner, &long_running_agent(&server, 1, 3, "done"));
    let frames = drain(&mut rx).await;
    assert_eq!(
        progress_of(&frames),
        vec![(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))]
    );
    assert!(tool_output(&frames).starts_with("Long running operation completed."));
    server.shutdown();
}

#[tokio::test]
async fn a_server_killed_mid_run_gives_a_tool_error_and_comes_back() {
    let Some(bin) = mcp_support::everything() else {
        return;
    };
    let server = McpServer::start(McpServerConfig::stdio(
        "everything",
        "node",
        &[bin.to_str().unwrap(), "stdio"],
    ))
    .unwrap();
    server.wait_ready(READY).await.unwrap();
    let pid = server.status().pid.expect("a child pid");
    let runner: Runner = Runner::new();
    let (_run, mut rx) =
        start_followed(&runner, &long_running_agent(&server, 30, 30, "carried on"));
    let mut frames = Vec::new();
    loop {
        let f = next(&mut rx).await;
        let progressed = matches!(f.body, FrameBody::ToolProgress { .. });
        frames.push(f);
        if progressed {
            break;
        }
    }
    mcp_support::kill(pid);
    frames.extend(drain(&mut rx).await);
    let out = tool_output(&frames);
    assert!(out == callboard::tool::DEFAULT_TOOL_ERROR_MESSAGE, "{out}");
    match &frames.last().unwrap().body {
        FrameBody::RunCompleted { final_output, .. } => assert_eq!(final_output, "carried on"),
        other => panic!("the run did not complete: {other:?}"),
    }
    assert!(
        server
            .wait_for(READY, |s| s.state == Phase::Ready && s.restarts >= 1)
            .await,
        "the server did not come back: {:?}",
        server.status()
    );
    assert_ne!(server.status().pid, Some(pid));
    let echo = tool_named(&server, "echo").await;
    let out = echo
        .invoke(ctx("echo"), r#"{"message":"back"}"#.into())
        .await
        .unwrap();
    assert_eq!(out, "Echo: back");
    server.shutdown();
}

#[tokio::test]
async fn the_server_streams_mcp_progress_to_subscribers_in_both_formats() {
    let Some(bin) = mcp_support::everything() else {
        return;
    };
    let cfg = format!(
        r#"
[models.default]
provider = "scripted"
script = [
  {{ outputs = [ {{ kind = "call", name = "trigger-long-running-operation", arguments = '{{"duration": 1, "steps": 4}}' }} ] }},
  {{ outputs = [ {{ kind = "message", text = "All four steps done.", deltas = 2 }} ] }},
]

[[agents]]
name = "Operator"
mcp_servers = ["everything"]

[[mcp_servers]]
name = "everything"
transport = "stdio"
command = "node"
args = [{bin:?}, "stdio"]
allow = ["echo", "get-sum", "trigger-long-running-operation"]
"#
    );
    let srv = common::start(&cfg).await;
    let http = reqwest::Client::new();
    // The server comes up while the MCP server connects; wait until it is ready.
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        let v: Value = http
            .get(srv.http("/v1/mcp_servers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s = &v["mcp_servers"][0];
        if s["state"] == "ready" {
            let mut tools: Vec<&str> = s["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            tools.sort_unstable();
            assert_eq!(
                tools,
                vec!["echo", "get-sum", "trigger-long-running-operation"]
            );
            assert!(s["pid"].as_u64().is_some());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = common::connect(&srv, None).await;
    common::send(&mut ws, common::run_create("r1", "s1", "Operator", "go")).await;
    let frames = common::recv_run(&mut ws).await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "run.completed",
        "{frames:?}"
    );
    let events: Vec<&Value> = frames.iter().filter(|f| f["type"] == "event").collect();
    let listed = events
        .iter()
        .find(|f| f["event"]["name"] == "mcp_list_tools")
        .expect("an mcp_list_tools event");
    assert_eq!(listed["event"]["item"]["type"], "mcp_list_tools_item");
    assert_eq!(
        listed["event"]["item"]["raw_item"]["server_label"],
        "everything"
    );
    assert_eq!(
        listed["event"]["item"]["raw_item"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let call_id = events
        .iter()
        .find(|f| f["event"]["name"] == "tool_called")
        .map(|f| f["event"]["item"]["raw_item"]["call_id"].clone())
        .unwrap();
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "tool.progress")
        .collect();
    assert_eq!(progress.len(), 4, "{frames:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["call_id"], call_id);
        assert_eq!(p["tool"], "trigger-long-running-operation");
        assert_eq!(p["progress"], json!((i + 1) as f64));
        assert_eq!(p["total"], json!(4.0));
    }
    // A chat-format subscriber replaying the session reads the same progress.
    let mut chat = common::connect(&srv, None).await;
    common::send(
        &mut chat,
        json!({"type": "session.subscribe", "session_id": "s1", "after_seq": 0, "format": "chat"}),
    )
    .await;
    let chat_frames = common::recv_run(&mut chat).await;
    let chat_progress: Vec<&Value> = chat_frames
        .iter()
        .filter(|f| f["type"] == "tool_progress")
        .collect();
    assert_eq!(chat_progress.len(), 4, "{chat_frames:?}");
    assert_eq!(chat_progress[3]["progress"], json!(4.0));
}

#[tokio::test]
async fn tools_are_listed_again_on_list_changed() {
    if mcp_support::time_server().is_none() {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mcp-servers/changing_tools.py"
    );
    let python = mcp_support::python();
    let server = McpServer::start(McpServerConfig::stdio("changing", python, &[script])).unwrap();
    server.wait_ready(READY).await.unwrap();
    let mut tools = server.status().tools;
    tools.sort();
    assert_eq!(tools, vec!["trace_context", "unlock"]);
    let unlock = tool_named(&server, "unlock").await;
    let out = unlock.invoke(ctx("unlock"), "{}".into()).await.unwrap();
    assert_eq!(out, "unlocked");
    assert!(
        server
            .wait_for(READY, |s| s.tools.iter().any(|t| t == "secret"))
            .await,
        "the new tool was not listed: {:?}",
        server.status()
    );
    let secret = tool_named(&server, "secret").await;
    assert_eq!(
        secret.invoke(ctx("secret"), "{}".into()).await.unwrap(),
        "42"
    );
    server.shutdown();
}

#[tokio::test]
async fn calls_carry_the_calling_spans_trace_context_in_meta() {
    use callboard::trace::{with_span, SpanData, TraceOptions, Tracer};
    if mcp_support::time_server().is_none() {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mcp-servers/changing_tools.py"
    );
    let python = mcp_support::python();
    let server = McpServer::start(McpServerConfig::stdio("changing", python, &[script])).unwrap();
    server.wait_ready(READY).await.unwrap();
    let tool = tool_named(&server, "trace_context").await;
    // Outside a traced run: no trace context.
    let out = tool
        .invoke(ctx("trace_context"), "{}".into())
        .await
        .unwrap();
    assert_eq!(out, "none");
    // Inside a tool's span: the W3C traceparent of that span.
    let tracer = Tracer::new();
    tracer.set_disabled(false);
    let t = tracer.start_trace(TraceOptions::default());
    let span = t.span(
        SpanData::Custom {
            name: "tool".into(),
            data: serde_json::Value::Null,
        },
        None,
    );
    let (tid, sid) = (t.trace_id().to_owned(), span.span_id().unwrap().to_owned());
    let out = with_span(span, tool.invoke(ctx("trace_context"), "{}".into()))
        .await
        .unwrap();
    assert_eq!(out, format!("00-{}-{}-01", &tid[6..], &sid[5..21]));
    server.shutdown();
}
