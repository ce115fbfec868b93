//! Human approval over the wire (PROTOCOL.md 6.3), on both stores: `run.interrupted` with the
//! SDK's approval items, the paused run's record and state, decisions over WebSocket and HTTP
//! (and the errors for unknown calls, second decisions and other tenants), `run.resumed` and
//! the resumed events, rejections, approval timeouts, cancelling a paused run, and a
//! decision from another connection after a reconnect.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A tool server on loopback: `/wire` counts its calls and answers `sent <amount>`.
async fn tool_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/wire",
        post(move |body: String| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                format!("sent {}", v["amount"])
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, calls)
}

/// Two tenants, a `Banker` whose `wire_money` needs approval (`extra` adds to its tool
/// entry), scripted to call it once and then answer "all done".
fn config(tool_addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[auth.keys]]
key = "key-acme"
tenant = "acme"

[[auth.keys]]
key = "key-globex"
tenant = "globex"

[models.default]
provider = "scripted"
[[models.default.script]]
outputs = [{{ kind = "call", name = "wire_money", arguments = '{{"amount":5}}' }}]
[[models.default.script]]
outputs = [{{ kind = "message", text = "all done", deltas = 2 }}]

[[agents]]
name = "Banker"
tools = ["wire_money"]

[[tools]]
name = "wire_money"
description = "Sends money."
kind = "http"
url = "http://{tool_addr}/wire"
parameters = {{ type = "object", properties = {{ amount = {{ type = "number" }} }}, required = ["amount"] }}
needs_approval = true
{extra}
"#
    )
}

/// Event names (`event` frames) and other frame types, in order.
fn names(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str().unwrap_or("") {
            "event" => {
                let e = &f["event"];
                match e["type"].as_str().unwrap_or("") {
                    "raw_response_event" => "raw".to_owned(),
                    "agent_updated_stream_event" => "agent_updated".to_owned(),
                    _ => e["name"].as_str().unwrap_or("?").to_owned(),
                }
            }
            t => t.to_owned(),
        })
        .filter(|n| n != "raw")
        .collect()
}

/// Starts a run that pauses for approval; answers (run id, call id, the frames up to
/// `run.interrupted`).
async fn paused_run(ws: &mut Ws, session: &str) -> (String, String, Vec<Value>) {
    send(ws, run_create("r1", session, "Banker", "pay the bill")).await;
    let acc = recv_until(ws, &["run.accepted"]).await;
    let run_id = acc.last().unwrap()["run_id"].as_str().unwrap().to_owned();
    let frames = recv_until(ws, &["run.interrupted", "run.completed", "run.failed"]).await;
    let int = frames.last().unwrap();
    assert_eq!(int["type"], "run.interrupted", "{frames:?}");
    let call_id = int["interruptions"][0]["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (run_id, call_id, frames)
}

async fn get(srv: &TestServer, path: &str, key: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(srv.http(path))
        .bearer_auth(key)
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn decide(srv: &TestServer, run_id: &str, key: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(srv.http(&format!("/v1/runs/{run_id}/decisions")))
        .bearer_auth(key)
        .json(&body)
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The next `error` frame's code (other frames skipped).
async fn error_code(ws: &mut Ws) -> String {
    let f = recv_until(ws, &["error"]).await;
    f.last().unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

on_both_stores! {
async fn approval_over_websocket_pauses_and_resumes_with_the_sdk_events() {
    let (tool_addr, calls) = tool_server().await;
    let srv = start(&config(tool_addr, "")).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    let (run_id, call_id, frames) = paused_run(&mut ws, "pay").await;
    // The SDK's stream up to the pause: it stops after the call's tool_called.
    assert_eq!(
        names(&frames),
        ["agent_updated", "tool_called", "run.interrupted"],
        "{frames:?}"
    );
    let int = frames.last().unwrap();
    assert_eq!(int["run_id"], run_id.as_str());
    assert_eq!(int["session_id"], "pay");
    assert!(int["seq"].as_u64().unwrap() > 0);
    assert_eq!(
        int["interruptions"],
        json!([{"type": "tool_approval_item", "call_id": call_id, "tool": "wire_money",
                "arguments": "{\"amount\":5}", "agent": "Banker"}])
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing runs before approval");

    // The record says so and lists the pending call; the state is there.
    let (s, rec) = get(&srv, &format!("/v1/runs/{run_id}"), "key-acme").await;
    assert_eq!(s, 200);
    assert_eq!(rec["status"], "awaiting_approval", "{rec}");
    assert_eq!(rec["interruptions"][0]["call_id"], call_id.as_str());
    let (s, list) = get(&srv, "/v1/runs?session_id=pay&status=awaiting_approval", "key-acme").await;
    assert_eq!(s, 200);
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
    let (s, state) = get(&srv, &format!("/v1/runs/{run_id}/state"), "key-acme").await;
    assert_eq!(s, 200);
    assert_eq!(state["$schemaVersion"], "1.1");
    assert_eq!(state["interruptions"][0]["call_id"], call_id.as_str());
    // Another tenant sees none of it.
    let (s, _) = get(&srv, &format!("/v1/runs/{run_id}"), "key-globex").await;
    assert_eq!(s, 404);
    let (s, _) = get(&srv, &format!("/v1/runs/{run_id}/state"), "key-globex").await;
    assert_eq!(s, 404);

    // The paused run holds its session: a new message is refused (on_busy = reject).
    send(&mut ws, run_create("r2", "pay", "Banker", "hello?")).await;
    assert_eq!(error_code(&mut ws).await, "session_busy");

    // Bad decisions: clear errors, nothing changed.
    let mut other = connect(&srv, Some("key-globex")).await;
    send(&mut other, json!({"type":"run.approve","id":"x","run_id":run_id,"call_id":call_id})).await;
    assert_eq!(error_code(&mut other).await, "not_found");
    send(&mut ws, json!({"type":"run.approve","id":"u","run_id":run_id,"call_id":"call_nope"})).await;
    assert_eq!(error_code(&mut ws).await, "not_found");
    send(&mut ws, json!({"type":"run.approve","id":"m","run_id":run_id})).await;
    assert_eq!(error_code(&mut ws).await, "bad_request");
    let (_, rec) = get(&srv, &format!("/v1/runs/{run_id}"), "key-acme").await;
    assert_eq!(rec["status"], "awaiting_approval");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Approve: run.resumed, then the SDK's resumed stream, then the end.
    send(&mut ws, json!({"type":"run.approve","id":"a","run_id":run_id,"call_id":call_id})).await;
    let rest = recv_run(&mut ws).await;
    assert_eq!(
        names(&rest),
        ["run.resumed", "agent_updated", "tool_output", "message_output_created", "run.completed"],
        "{rest:?}"
    );
    let mut last = int["seq"].as_u64().unwrap();
    for f in &rest {
        let s = f["seq"].as_u64().unwrap();
        assert_eq!(s, last + 1, "one gapless numbering across the pause: {rest:?}");
        last = s;
    }
    let out = rest.iter().find(|f| f["event"]["name"] == "tool_output").unwrap();
    assert_eq!(out["event"]["item"]["output"], "sent 5");
    assert_eq!(rest.last().unwrap()["final_output"], "all done");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A second decision is a conflict; the run is completed.
    send(&mut ws, json!({"type":"run.approve","id":"b","run_id":run_id,"call_id":call_id})).await;
    assert_eq!(error_code(&mut ws).await, "conflict");
    let (_, rec) = get(&srv, &format!("/v1/runs/{run_id}"), "key-acme").await;
    assert_eq!(rec["status"], "completed");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The conversation holds each item once.
    let (_, items) = get(&srv, "/v1/sessions/pay/items", "key-acme").await;
    let kinds: Vec<String> = items["items"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|i| i["type"].as_str().or(i["role"].as_str()).unwrap_or("?").to_owned())
        .collect();
    assert_eq!(kinds, ["user", "function_call", "function_call_output", "message"], "{items}");
}

async fn rejection_over_http_gives_the_model_the_message_and_never_runs_the_tool() {
    let (tool_addr, calls) = tool_server().await;
    let srv = start(&config(tool_addr, "")).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    let (run_id, call_id, _) = paused_run(&mut ws, "rej").await;
    // Malformed bodies and other tenants: clear errors.
    let (s, v) = decide(&srv, &run_id, "key-acme", json!({"call_id": call_id, "decision": "maybe"})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let (s, _) = decide(&srv, &run_id, "key-globex", json!({"call_id": call_id, "decision": "reject"})).await;
    assert_eq!(s, 404);
    let (s, _) = decide(&srv, "run_nope", "key-acme", json!({"call_id": call_id, "decision": "reject"})).await;
    assert_eq!(s, 404);
    let (s, v) = decide(
        &srv,
        &run_id,
        "key-acme",
        json!({"call_id": call_id, "decision": "reject", "message": "Over the daily limit."}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let rest = recv_run(&mut ws).await;
    assert_eq!(
        names(&rest),
        ["run.resumed", "agent_updated", "tool_output", "message_output_created", "run.completed"]
    );
    let out = rest.iter().find(|f| f["event"]["name"] == "tool_output").unwrap();
    assert_eq!(out["event"]["item"]["output"], "Over the daily limit.");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let (s, _) = decide(&srv, &run_id, "key-acme", json!({"call_id": call_id, "decision": "approve"})).await;
    assert_eq!(s, 409, "a decided run is not waiting any more");
}

async fn an_undecided_call_is_rejected_when_its_approval_timeout_passes() {
    let (tool_addr, calls) = tool_server().await;
    let srv = start(&config(tool_addr, "approval_timeout_ms = 200")).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    let (_run_id, _call_id, frames) = paused_run(&mut ws, "late").await;
    let int = frames.last().unwrap();
    assert!(int["interruptions"][0]["deadline_ms"].as_i64().is_some(), "{int}");
    let rest = recv_run(&mut ws).await;
    let out = rest.iter().find(|f| f["event"]["name"] == "tool_output").unwrap();
    let text = out["event"]["item"]["output"].as_str().unwrap();
    assert!(text.starts_with("Tool execution was not approved."), "{text}");
    assert_eq!(rest.last().unwrap()["type"], "run.completed");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

async fn a_paused_run_is_cancelled_and_frees_its_session() {
    let (tool_addr, calls) = tool_server().await;
    let srv = start(&config(tool_addr, "")).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    let (run_id, _call_id, _) = paused_run(&mut ws, "stop").await;
    let mut other = connect(&srv, Some("key-globex")).await;
    send(&mut other, json!({"type":"run.cancel","id":"c","run_id":run_id})).await;
    assert_eq!(error_code(&mut other).await, "not_found");
    send(&mut ws, json!({"type":"run.cancel","id":"c","run_id":run_id})).await;
    let end = recv_run(&mut ws).await;
    assert_eq!(end.last().unwrap()["type"], "run.cancelled", "{end:?}");
    let (_, rec) = get(&srv, &format!("/v1/runs/{run_id}"), "key-acme").await;
    assert_eq!(rec["status"], "cancelled");
    // The session takes a new run; it pauses in turn (the conversation stays well formed).
    let (_, _, frames) = paused_run(&mut ws, "stop").await;
    assert_eq!(frames.last().unwrap()["type"], "run.interrupted");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

async fn a_decision_from_a_new_connection_after_the_first_went_away() {
    let (tool_addr, calls) = tool_server().await;
    let srv = start(&config(tool_addr, "")).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    let (run_id, call_id, frames) = paused_run(&mut ws, "away").await;
    let seen = frames.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = connect(&srv, Some("key-acme")).await;
    send(&mut ws, json!({"type":"session.subscribe","session_id":"away","after_seq":seen})).await;
    recv_until(&mut ws, &["session.subscribed"]).await;
    send(&mut ws, json!({"type":"run.approve","run_id":run_id,"call_id":call_id,"always":true})).await;
    let rest = recv_run(&mut ws).await;
    assert_eq!(rest[0]["type"], "run.resumed", "{rest:?}");
    assert_eq!(rest[0]["seq"].as_u64().unwrap(), seen + 1);
    assert_eq!(rest.last().unwrap()["type"], "run.completed");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
}
