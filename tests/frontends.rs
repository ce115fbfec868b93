//! Chat front ends in their own protocols (PROTOCOL.md section 6.5), against the real server:
//! the AI SDK UI message stream and AG-UI endpoints over HTTP, a run followed over `/v1/ws`
//! and an AI SDK stream at once, and the real clients nobody here wrote: the npm packages
//! `ai` (useChat's chat and `readUIMessageStream`) and `@ag-ui/client` (`HttpAgent`), run by
//! Node on the programs in `tests/node/`.
//!
//! The Node tests need `node` (20 or later) and `npm ci` run in `tests/node/`; without them
//! they say what is missing and skip, unless `CALLBOARD_REQUIRE_NODE=1` (then it fails).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, recv_run, send, start, TestServer};
use serde_json::{json, Value};

const KEY: &str = "key-acme";

/// The demo cast on the scripted model, slowed so that a stream can be cut mid-answer.
const DEMO: &str = r#"
[[auth.keys]]
key = "key-acme"
tenant = "acme"

[[auth.keys]]
key = "key-globex"
tenant = "globex"

[models.default]
provider = "scripted"
delay_ms = 20
"#;

/// A concierge that asks the user (a client-side tool) before answering, an agent whose
/// model fails, and a banker whose `wire_money` (an HTTP tool at `tool_addr`) needs approval.
fn tools_config(tool_addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[[auth.keys]]
key = "key-acme"
tenant = "acme"

[models.concierge]
provider = "scripted"
[[models.concierge.script]]
outputs = [{{ kind = "call", name = "confirm_with_user", arguments = '{{"question":"Book the table for two at 8?"}}' }}]
[[models.concierge.script]]
outputs = [{{ kind = "message", text = "Booked: a table for two at 8.", deltas = 4 }}]

[models.broken]
provider = "scripted"
[[models.broken.script]]
fail = "the model answered nonsense"

[models.banker]
provider = "scripted"
[[models.banker.script]]
outputs = [{{ kind = "call", name = "wire_money", arguments = '{{"amount":5}}' }}]
[[models.banker.script]]
outputs = [{{ kind = "message", text = "Done.", deltas = 2 }}]

[[agents]]
name = "Concierge"
instructions = "Book tables; confirm with the user first."
model = "concierge"
tools = ["confirm_with_user"]

[[agents]]
name = "Broken"
instructions = "Fails."
model = "broken"

[[agents]]
name = "Banker"
instructions = "Sends money when asked."
model = "banker"
tools = ["wire_money"]

[[tools]]
name = "confirm_with_user"
description = "Ask the user to confirm."
kind = "client"
parameters = {{ type = "object", properties = {{ question = {{ type = "string" }} }}, required = ["question"] }}
timeout_ms = 30000

[[tools]]
name = "wire_money"
description = "Sends money."
kind = "http"
url = "http://{tool_addr}/wire"
parameters = {{ type = "object", properties = {{ amount = {{ type = "number" }} }}, required = ["amount"] }}
needs_approval = true
"#
    )
}

/// The HTTP tool behind `wire_money`: answers `sent <amount>`.
async fn wire_money_server() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/wire",
        axum::routing::post(|body: String| async move {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            format!("sent {}", v["amount"])
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn chat_body(id: &str, text: &str) -> Value {
    json!({"id": id, "trigger": "submit-message", "messages": [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    ]})
}

/// The `data:` payloads of an SSE body (comments skipped), JSON where they parse.
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_owned())))
        .collect()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            e => e["type"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

async fn post(srv: &TestServer, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = client().post(srv.http(path)).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn ai_sdk_stream_has_the_header_and_the_protocol_s_parts() {
    let srv = start(DEMO).await;
    let res = post(
        &srv,
        "/v1/agents/Triage/ai-sdk",
        Some(KEY),
        &chat_body("s-ai", "What is the weather in Oslo?"),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-vercel-ai-ui-message-stream"], "v1");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let ev = sse_data(&res.text().await.unwrap());
    let t = types(&ev);
    assert_eq!(t[0], "start");
    assert_eq!(t.last().unwrap(), "[DONE]");
    assert_eq!(t[t.len() - 2], "finish");
    for needed in [
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "data-agent",
    ] {
        assert!(t.iter().any(|x| x == needed), "no {needed} in {t:?}");
    }
}

#[tokio::test]
async fn ag_ui_stream_is_run_started_to_run_finished() {
    let srv = start(DEMO).await;
    let input = json!({"threadId": "s-agui", "runId": "r1", "state": {}, "tools": [],
        "context": [], "forwardedProps": {},
        "messages": [{"id": "1", "role": "user", "content": "What is the weather in Oslo?"}]});
    let res = post(&srv, "/v1/agents/Triage/ag-ui", Some(KEY), &input).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let ev = sse_data(&res.text().await.unwrap());
    let t = types(&ev);
    assert_eq!(t[0], "RUN_STARTED");
    assert_eq!(ev[0]["threadId"], "s-agui");
    assert_eq!(t.last().unwrap(), "RUN_FINISHED");
    assert_eq!(ev.last().unwrap()["runId"], "r1");
    for needed in [
        "STEP_STARTED",
        "STEP_FINISHED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
    ] {
        assert!(t.iter().any(|x| x == needed), "no {needed} in {t:?}");
    }
}

#[tokio::test]
async fn a_run_is_followed_over_the_websocket_and_an_ai_sdk_stream_at_once() {
    let srv = start(DEMO).await;
    let body = chat_body("s-both", "What is the weather in Oslo?");
    let res = post(&srv, "/v1/agents/Triage/ai-sdk", Some(KEY), &body).await;
    let stream = tokio::spawn(async move { res.text().await.unwrap() });
    // The run has started (its stream answered); a WebSocket client joins from seq 1.
    let mut ws = connect(&srv, Some(KEY)).await;
    send(
        &mut ws,
        json!({"type": "session.subscribe", "session_id": "s-both", "after_seq": 0}),
    )
    .await;
    let frames = recv_run(&mut ws).await;
    let ev = sse_data(&stream.await.unwrap());
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.completed");
    let run_id = end["run_id"].as_str().unwrap();
    assert_eq!(ev[0]["messageId"], run_id, "both follow the same run");
    let ws_text: String = frames
        .iter()
        .filter(|f| f["event"]["data"]["type"] == "response.output_text.delta")
        .map(|f| f["event"]["data"]["delta"].as_str().unwrap())
        .collect();
    let sse_text: String = ev
        .iter()
        .filter(|e| e["type"] == "text-delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(ws_text, sse_text);
    assert_eq!(ws_text, end["final_output"].as_str().unwrap());
}

#[tokio::test]
async fn refusals_are_protocol_md_errors_with_their_status() {
    let srv = start(DEMO).await;
    let ok = chat_body("s-err", "hi");
    let agui = json!({"threadId": "s-err2", "runId": "r", "messages": [
        {"id": "1", "role": "user", "content": "hi"}]});
    for (path, body) in [
        ("/v1/agents/Triage/ai-sdk", &ok),
        ("/v1/agents/Triage/ag-ui", &agui),
    ] {
        let res = post(&srv, path, None, body).await;
        assert_eq!(res.status(), 401, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");

        let res = post(&srv, path, Some(KEY), &json!({"nope": 1})).await;
        assert_eq!(res.status(), 400, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");

        let res = post(&srv, &path.replace("Triage", "Nobody"), Some(KEY), body).await;
        assert_eq!(res.status(), 404, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unknown_agent");
    }
    // An assistant message that answers nothing the session waits for.
    let body = json!({"id": "s-err", "messages": [{"id": "a", "role": "assistant", "parts": [
        {"type": "tool-x", "toolCallId": "c9", "state": "output-available", "input": {}, "output": "y"}]}]});
    let res = post(&srv, "/v1/agents/Triage/ai-sdk", Some(KEY), &body).await;
    assert!(
        res.status() == 400 || res.status() == 404,
        "{}",
        res.status()
    );
}

#[tokio::test]
async fn tenants_do_not_see_each_other_s_streams() {
    let srv = start(DEMO).await;
    // acme starts a run; globex asks to resume the same session id: nothing of acme's.
    let res = post(
        &srv,
        "/v1/agents/Triage/ai-sdk",
        Some(KEY),
        &chat_body("s-shared", "What is the weather in Oslo?"),
    )
    .await;
    let mut res = res;
    let first = res.chunk().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("\"start\""));
    let other = client()
        .get(srv.http("/v1/agents/Triage/ai-sdk/s-shared/stream"))
        .bearer_auth("key-globex")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 204);
    let mine = client()
        .get(srv.http("/v1/agents/Triage/ai-sdk/s-shared/stream"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    let ev = sse_data(&mine.text().await.unwrap());
    assert_eq!(types(&ev).last().unwrap(), "[DONE]");
    drop(res);
}

/// `tests/node` with its packages installed, or why the Node tests cannot run.
fn node_setup() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let version = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("`node` could not be run ({e}); install Node.js 20 or later"))?;
    let v = String::from_utf8_lossy(&version.stdout);
    let major: u32 = v
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!(
            "node {} is too old; Node.js 20 or later is needed",
            v.trim()
        ));
    }
    for pkg in ["ai", "@ag-ui/client", "@ag-ui/core"] {
        if !dir.join("node_modules").join(pkg).exists() {
            return Err(format!(
                "the npm package `{pkg}` is not installed; run `npm ci` in {}",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

/// Runs `node --test FILE` against a demo server and a client-tools server; panics with
/// its output when a test fails.
async fn node_test(file: &str) {
    let dir = match node_setup() {
        Ok(d) => d,
        Err(why) if std::env::var("CALLBOARD_REQUIRE_NODE").as_deref() == Ok("1") => {
            panic!("CALLBOARD_REQUIRE_NODE=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipping {file}: {why}");
            return;
        }
    };
    let demo = start(DEMO).await;
    let tools = start(&tools_config(wire_money_server().await)).await;
    let mut child = Command::new("node")
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(&dir)
        .env("CALLBOARD_URL", format!("http://{}", demo.addr))
        .env("CALLBOARD_TOOLS_URL", format!("http://{}", tools.addr))
        .env("CALLBOARD_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    // Read both pipes as they fill, so a chatty test never blocks on a full pipe.
    let read = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = child.try_wait().expect("wait for node") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node --test {file} ran over 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let text = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    assert!(status.success(), "node --test {file} failed:\n{text}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_sdk_reads_callboard_s_ui_message_stream() {
    node_test("ai_sdk.test.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ag_ui_s_http_agent_runs_against_callboard() {
    node_test("ag_ui.test.mjs").await;
}
