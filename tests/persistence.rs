//! Sessions and run records survive the server: the real binary is killed with SIGKILL in
//! the middle of a run and restarted on the same SQLite file; every completed turn is there,
//! the interrupted run is marked `interrupted`, and new runs work.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

mod common;

use common::{spawn_binary, Binary as Server};

fn spawn(config_path: &std::path::Path) -> Server {
    spawn_binary(config_path, &[])
}

fn config(db: &std::path::Path) -> String {
    format!(
        r#"
[server]
bind = "127.0.0.1:0"

[models.default]
provider = "scripted"
delay_ms = 100
script = [
  {{ outputs = [ {{ kind = "call", name = "transfer_to_billing", arguments = "{{}}", chunks = 1 }} ] }},
  {{ outputs = [ {{ kind = "message", text = "Your invoice is paid in full; thank you for asking us today.", deltas = 20 }} ] }},
]

[[agents]]
name = "Triage"
instructions = "Route the user."
handoffs = ["Billing"]

[[agents]]
name = "Billing"
instructions = "Answer billing questions."
handoff_description = "Billing questions."

[sessions]
store = "sqlite://{}"

# These tests are about runs a dead process leaves: they end `interrupted` here (the default,
# `resume`, is tested in tests/recovery.rs).
[runs]
on_restart = "mark_interrupted"
"#,
        db.display()
    )
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = tokio::time::timeout(WAIT, client.get(url).send())
        .await
        .expect("in time")
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sigkill_mid_run_keeps_completed_turns_and_marks_the_run_interrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cb.db");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(&db)).expect("write config");
    let client = reqwest::Client::new();

    // A whole run on s1, and a run on s2 killed while its second turn streams.
    let mut first = spawn(&cfg_path);
    let base = format!("http://{}", first.addr);
    let done: Value = tokio::time::timeout(
        WAIT,
        client
            .post(format!("{base}/v1/sessions/s1/runs"))
            .json(&json!({"agent": "Triage", "input": "Is my invoice paid?"}))
            .send(),
    )
    .await
    .expect("in time")
    .expect("run")
    .json()
    .await
    .expect("json");
    assert_eq!(done["type"], "run.completed", "{done}");
    let run1 = done["run_id"].as_str().expect("run id").to_owned();

    let mut resp = client
        .post(format!("{base}/v1/sessions/s2/runs"))
        .header("accept", "text/event-stream")
        .json(&json!({"agent": "Triage", "input": "And the next one?"}))
        .send()
        .await
        .expect("sse run");
    let mut seen = String::new();
    let run2 = loop {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("in time")
            .expect("chunk")
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.matches("response.output_text.delta").count() >= 2 {
            let at = seen.find("\"run_id\":\"").expect("run id in frames") + 10;
            break seen[at..at + 36].to_owned();
        }
    };
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    drop(resp);

    let second = spawn(&cfg_path);
    let base = format!("http://{}", second.addr);
    let (st, items) = get(&client, format!("{base}/v1/sessions/s1/items")).await;
    assert_eq!(st, 200, "{items}");
    assert_eq!(items["items"].as_array().map(Vec::len), Some(4), "{items}");
    let (_, items2) = get(&client, format!("{base}/v1/sessions/s2/items")).await;
    let kinds: Vec<&str> = items2["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["type"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(
        kinds,
        ["message", "function_call", "function_call_output"],
        "{items2}"
    );

    let (st, rec1) = get(&client, format!("{base}/v1/runs/{run1}")).await;
    assert_eq!(st, 200);
    assert_eq!(rec1["status"], "completed", "{rec1}");
    assert_eq!(rec1["last_agent"], "Billing", "{rec1}");
    let (_, rec2) = get(&client, format!("{base}/v1/runs/{run2}")).await;
    assert_eq!(rec2["status"], "interrupted", "{rec2}");
    // It names the agent it was on (after the handoff) and its usage so far.
    assert_eq!(rec2["last_agent"], "Billing", "{rec2}");
    assert_eq!(rec2["turn"], 1, "{rec2}");
    assert_eq!(rec2["usage"]["requests"], 1, "{rec2}");

    let (_, list) = get(&client, format!("{base}/v1/sessions")).await;
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(2), "{list}");

    // New runs work, and continue the stored conversation.
    let again: Value = client
        .post(format!("{base}/v1/sessions/s2/runs"))
        .json(&json!({"agent": "Triage", "input": "Try again"}))
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("json");
    assert_eq!(again["type"], "run.completed", "{again}");
    let (_, items2) = get(&client, format!("{base}/v1/sessions/s2/items")).await;
    assert_eq!(
        items2["items"].as_array().map(Vec::len),
        Some(7),
        "{items2}"
    );
}

#[tokio::test]
async fn a_second_run_on_a_busy_session_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(&dir.path().join("cb.db"))).expect("write config");
    let srv = spawn(&cfg_path);
    let base = format!("http://{}", srv.addr);
    let client = reqwest::Client::new();
    let slow = client
        .post(format!("{base}/v1/sessions/busy/runs"))
        .header("accept", "text/event-stream")
        .json(&json!({"agent": "Triage", "input": "one"}))
        .send()
        .await
        .expect("first run");
    let r = client
        .post(format!("{base}/v1/sessions/busy/runs"))
        .json(&json!({"agent": "Triage", "input": "two"}))
        .send()
        .await
        .expect("second run");
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "session_busy", "{body}");
    drop(slow);
}

#[tokio::test]
async fn an_unopenable_store_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("garbage.db");
    std::fs::write(&db, vec![0x5au8; 8192]).expect("garbage");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(&db)).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sessions.store"), "{err}");
}

/// Sends a WebSocket frame and reads frames until one of `types` (skipping others).
async fn ws_until(ws: &mut common::Ws, types: &[&str]) -> Vec<Value> {
    let mut v = Vec::new();
    loop {
        let f = common::recv(ws).await;
        let done = types.contains(&f["type"].as_str().unwrap_or(""));
        v.push(f);
        if done {
            return v;
        }
    }
}

async fn ws_connect(addr: &str) -> common::Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

#[tokio::test]
async fn seq_continues_across_restarts_and_never_reuses_a_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cb.db");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(&db)).expect("write config");

    // A whole run, then a clean stop (SIGTERM).
    let mut first = spawn(&cfg_path);
    let mut ws = ws_connect(&first.addr).await;
    common::send(&mut ws, json!({"type":"run.create","id":1,"session_id":"s","agent":"Triage","input":"Is my invoice paid?"})).await;
    let frames = ws_until(&mut ws, &["run.completed"]).await;
    let epoch = frames[0]["epoch"].as_str().expect("epoch").to_owned();
    let last = frames.last().unwrap()["seq"].as_u64().unwrap();
    drop(ws);
    // SAFETY of the signal: the child is ours and alive.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGTERM) };
    first.child.wait().expect("stopped");

    // After the restart the numbering goes on: same epoch, the next run at last + 1.
    let second = spawn(&cfg_path);
    let mut ws = ws_connect(&second.addr).await;
    common::send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"s","after_seq":last,"epoch":epoch}),
    )
    .await;
    let ack = common::recv(&mut ws).await;
    assert_eq!(ack["type"], "session.subscribed", "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str());
    assert_eq!(ack["last_seq"], last);
    // A resume from before the restart cannot be served exactly: history_truncated.
    common::send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"s","after_seq":2,"epoch":epoch}),
    )
    .await;
    let e = common::recv(&mut ws).await;
    assert_eq!(e["error"]["code"], "history_truncated", "{e}");
    assert_eq!(e["error"]["oldest_seq"], last + 1, "{e}");
    common::send(
        &mut ws,
        json!({"type":"run.create","id":2,"session_id":"s","agent":"Triage","input":"And now?"}),
    )
    .await;
    let frames = ws_until(&mut ws, &["run.completed"]).await;
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs[0], last + 1, "{frames:?}");

    // A run killed mid-stream (SIGKILL): the frames it published are never numbered again.
    common::send(
        &mut ws,
        json!({"type":"run.create","id":3,"session_id":"s","agent":"Triage","input":"Once more"}),
    )
    .await;
    let mut seen = 0;
    loop {
        let f = common::recv(&mut ws).await;
        if let Some(n) = f["seq"].as_u64() {
            seen = n;
        }
        if f["event"]["data"]["type"] == "response.output_text.delta" {
            break;
        }
    }
    drop(ws);
    drop(second); // SIGKILL
    let third = spawn(&cfg_path);
    let mut ws = ws_connect(&third.addr).await;
    common::send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"s","after_seq":seen,"epoch":epoch}),
    )
    .await;
    // Everything up to the killed run's last saved turn was seen, and what came after it
    // belongs to that unsaved turn: the client is up to date, and hears how the run ended,
    // under a number the killed process never used.
    let ack = common::recv(&mut ws).await;
    assert_eq!(ack["type"], "session.subscribed", "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str(), "same numbering, with a gap");
    let told = common::recv(&mut ws).await;
    assert_eq!(told["type"], "run.failed", "{told}");
    assert_eq!(told["error"]["type"], "Interrupted", "{told}");
    assert!(
        told["seq"].as_u64().unwrap() > seen,
        "never a reused number: {told}"
    );
    // A client that missed frames of the saved turns cannot be served exactly.
    common::send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"s","after_seq":2,"epoch":epoch}),
    )
    .await;
    let e = common::recv(&mut ws).await;
    assert_eq!(e["error"]["code"], "history_truncated", "{e}");
    common::send(&mut ws, json!({"type":"run.create","id":4,"session_id":"s","agent":"Triage","input":"Still there?"})).await;
    let frames = ws_until(&mut ws, &["run.completed", "run.failed"]).await;
    let first_seq = frames.iter().find_map(|f| f["seq"].as_u64()).unwrap();
    assert!(first_seq > seen, "{first_seq} > {seen}");
}
