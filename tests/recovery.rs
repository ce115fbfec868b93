//! Runs outlive their process (`[runs] on_restart = "resume"`, the default): the real binary
//! is killed with SIGKILL between two turns of a run, while a run awaits approval, and with
//! runs queued on a session; after a restart on the same SQLite file every run finishes, and
//! a client that resubscribes with its last seq sees the rest of the stream once, in order.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{recv, send, spawn_binary, Binary, Ws, WAIT};
use serde_json::{json, Value};

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let db = dir.join("cb.db");
    let path = dir.join("callboard.toml");
    let cfg = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n\n[sessions]\nstore = \"sqlite://{}\"\n{body}",
        db.display()
    );
    std::fs::write(&path, cfg).expect("write config");
    path
}

async fn ws_connect(addr: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

/// Frames until one of `types` (included); subscription acks skipped.
async fn until(ws: &mut Ws, types: &[&str]) -> Vec<Value> {
    let mut v = Vec::new();
    loop {
        let f = recv(ws).await;
        if f["type"] == "session.subscribed" {
            continue;
        }
        let done = types.contains(&f["type"].as_str().unwrap_or(""));
        v.push(f);
        if done {
            return v;
        }
    }
}

async fn get(addr: &str, path: &str) -> Value {
    let r = tokio::time::timeout(WAIT, reqwest::get(format!("http://{addr}{path}")))
        .await
        .expect("in time")
        .expect("request");
    r.json().await.unwrap_or(Value::Null)
}

/// Event names (`event` frames, raw model events left out) and other frame types.
fn names(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["event"]["type"] != "raw_response_event")
        .map(|f| match f["type"].as_str().unwrap_or("") {
            "event" => match f["event"]["type"].as_str().unwrap_or("") {
                "agent_updated_stream_event" => format!(
                    "agent:{}",
                    f["event"]["new_agent"]["name"].as_str().unwrap_or("?")
                ),
                _ => f["event"]["name"].as_str().unwrap_or("?").to_owned(),
            },
            t => t.to_owned(),
        })
        .collect()
}

fn kill(mut b: Binary) {
    b.child.kill().expect("SIGKILL");
    b.child.wait().expect("reaped");
}

/// Three turns (two handoffs, then an answer), each model event 300 ms apart.
const THREE_TURNS: &str = r#"
[models.default]
provider = "scripted"
delay_ms = 300
script = [
  { outputs = [ { kind = "call", name = "transfer_to_b", arguments = "{}", chunks = 1 } ] },
  { outputs = [ { kind = "call", name = "transfer_to_c", arguments = "{}", chunks = 1 } ] },
  { outputs = [ { kind = "message", text = "The answer, from C.", deltas = 3 } ] },
]

[[agents]]
name = "A"
handoffs = ["B"]

[[agents]]
name = "B"
handoffs = ["C"]

[[agents]]
name = "C"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_turns_the_run_resumes_and_a_resubscriber_sees_the_rest_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), THREE_TURNS);
    let first = spawn_binary(&cfg, &[]);
    let mut ws = ws_connect(&first.addr).await;
    send(
        &mut ws,
        json!({"type":"run.create","id":1,"session_id":"s","agent":"A","input":"question"}),
    )
    .await;
    let acc = until(&mut ws, &["run.accepted"]).await;
    let acc = acc.last().unwrap();
    let run_id = acc["run_id"].as_str().unwrap().to_owned();
    let epoch = acc["epoch"].as_str().unwrap_or("").to_owned();
    // The first turn ends with the handoff to B.
    let before = until(&mut ws, &["event"]).await;
    let mut before = before;
    while before.last().unwrap()["event"]["name"] != "handoff_occured" {
        before.extend(until(&mut ws, &["event"]).await);
    }
    let seen = before.last().unwrap()["seq"].as_u64().unwrap();
    // Kill once the turn end is saved (the next turn's first event is 300 ms away).
    let deadline = Instant::now() + WAIT;
    loop {
        let st = get(&first.addr, &format!("/v1/runs/{run_id}/state")).await;
        if st["current_turn"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first turn's state was never saved: {st}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(ws);
    kill(first);

    let second = spawn_binary(&cfg, &[]);
    let mut ws = ws_connect(&second.addr).await;
    send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"s","after_seq":seen,"epoch":epoch}),
    )
    .await;
    let rest = until(&mut ws, &["run.completed", "run.failed", "run.cancelled"]).await;
    assert_eq!(
        names(&before),
        ["agent:A", "handoff_requested", "handoff_occured"],
        "{before:?}"
    );
    // The rest of the run, each frame once, in order: the resumed stream opens with the
    // current agent, as the SDK's does.
    assert_eq!(
        names(&rest),
        [
            "agent:B",
            "handoff_requested",
            "handoff_occured",
            "agent:C",
            "message_output_created",
            "run.completed"
        ],
        "{rest:?}"
    );
    let mut last = seen;
    for f in &rest {
        let s = f["seq"].as_u64().unwrap();
        assert!(s > last, "seq increases: {rest:?}");
        last = s;
    }
    let end = rest.last().unwrap();
    assert_eq!(end["run_id"], run_id.as_str());
    assert_eq!(end["final_output"], "The answer, from C.");
    assert_eq!(end["last_agent"], "C");
    assert_eq!(
        end["usage"]["requests"], 3,
        "the saved turn's model call is not made again"
    );
    let rec = get(&second.addr, &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    let items = get(&second.addr, "/v1/sessions/s/items").await;
    let kinds: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(
        kinds,
        [
            "message",
            "function_call",
            "function_call_output",
            "function_call",
            "function_call_output",
            "message"
        ],
        "every item once: {items}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_awaiting_approval_then_approve_over_http_completes() {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/wire",
        post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                "sent"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[models.default]
provider = "scripted"
script = [
  {{ outputs = [ {{ kind = "call", name = "wire_money", arguments = '{{"amount":5}}' }} ] }},
  {{ outputs = [ {{ kind = "message", text = "paid", deltas = 1 }} ] }},
]

[[agents]]
name = "Banker"
tools = ["wire_money"]

[[tools]]
name = "wire_money"
kind = "http"
url = "http://{tool_addr}/wire"
needs_approval = true
"#
        ),
    );
    let first = spawn_binary(&cfg, &[]);
    let mut ws = ws_connect(&first.addr).await;
    send(
        &mut ws,
        json!({"type":"run.create","id":1,"session_id":"pay","agent":"Banker","input":"pay"}),
    )
    .await;
    let frames = until(&mut ws, &["run.interrupted", "run.completed", "run.failed"]).await;
    let int = frames.last().unwrap().clone();
    assert_eq!(int["type"], "run.interrupted", "{frames:?}");
    let run_id = int["run_id"].as_str().unwrap().to_owned();
    let call_id = int["interruptions"][0]["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(ws);
    kill(first);

    let second = spawn_binary(&cfg, &[]);
    let rec = get(&second.addr, &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "awaiting_approval", "{rec}");
    assert_eq!(rec["interruptions"][0]["call_id"], call_id.as_str());
    let mut ws = ws_connect(&second.addr).await;
    send(
        &mut ws,
        json!({"type":"session.subscribe","session_id":"pay","after_seq":int["seq"]}),
    )
    .await;
    // The paused run still holds its session.
    send(
        &mut ws,
        json!({"type":"run.create","id":2,"session_id":"pay","agent":"Banker","input":"again"}),
    )
    .await;
    let e = until(&mut ws, &["error"]).await;
    assert_eq!(e.last().unwrap()["error"]["code"], "session_busy");
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/runs/{run_id}/decisions", second.addr))
        .json(&json!({"call_id": call_id, "decision": "approve"}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let rest = until(&mut ws, &["run.completed", "run.failed"]).await;
    assert_eq!(
        names(&rest),
        [
            "run.resumed",
            "agent:Banker",
            "tool_output",
            "message_output_created",
            "run.completed"
        ],
        "{rest:?}"
    );
    assert!(rest[0]["seq"].as_u64().unwrap() > int["seq"].as_u64().unwrap());
    assert_eq!(rest.last().unwrap()["final_output"], "paid");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_survive_a_sigkill_and_all_run_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        r#"
[models.default]
provider = "scripted"
delay_ms = 15
"#,
    );
    let first = spawn_binary(&cfg, &[]);
    let mut watcher = ws_connect(&first.addr).await;
    send(
        &mut watcher,
        json!({"type":"session.subscribe","session_id":"q"}),
    )
    .await;
    let ack = recv(&mut watcher).await;
    assert_eq!(ack["type"], "session.subscribed", "{ack}");
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(ws_connect(&first.addr).await);
    }
    let mut sends = Vec::new();
    for (c, ws) in conns.iter_mut().enumerate() {
        sends.push(async move {
            for i in 0..4 {
                send(ws, json!({"type":"run.create","id":format!("{c}-{i}"),"session_id":"q","agent":"Triage","input":format!("billing {c}-{i}"),"on_busy":"enqueue"})).await;
            }
            let mut accepted = Vec::new();
            while accepted.len() < 4 {
                let f = recv(ws).await;
                assert_ne!(f["type"], "error", "{f}");
                if f["type"] == "run.accepted" {
                    let input = format!("billing {}", f["id"].as_str().unwrap());
                    accepted.push((f["run_id"].as_str().unwrap().to_owned(), input));
                }
            }
            accepted
        });
    }
    let input_of: std::collections::HashMap<String, String> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(input_of.len(), 20);
    // The queue order, as the session announced it; kill after five runs ended.
    let mut queue: Vec<String> = Vec::new();
    let mut first_run: Option<String> = None;
    let mut ended = 0;
    while ended < 5 {
        let f = recv(&mut watcher).await;
        match f["type"].as_str().unwrap_or("") {
            "run.queued" => queue.push(f["run_id"].as_str().unwrap().to_owned()),
            "run.completed" => ended += 1,
            "run.failed" | "run.cancelled" => panic!("{f}"),
            "event" if first_run.is_none() => first_run = f["run_id"].as_str().map(str::to_owned),
            _ => {}
        }
    }
    drop(conns);
    drop(watcher);
    kill(first);

    let second = spawn_binary(&cfg, &[]);
    let deadline = Instant::now() + WAIT;
    // The run going at the kill resumes from its saved state; if the kill came before it saved
    // any (before its first turn ended, so before any tool ran), restart recovery marks it
    // `interrupted` instead. Every other run completes.
    let unsaved = |r: &Value| {
        r["status"] == "interrupted"
            && r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("saved any state"))
    };
    let runs = loop {
        let list = get(&second.addr, "/v1/runs?session_id=q&limit=100").await;
        let runs = list["runs"].as_array().cloned().unwrap_or_default();
        if runs.len() == 20
            && runs
                .iter()
                .all(|r| r["status"] == "completed" || unsaved(r))
        {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "not every queued run finished: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(runs.len(), 20);
    let cut: Vec<String> = runs
        .iter()
        .filter(|r| unsaved(r))
        .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        cut.len() <= 1,
        "only the run going at the kill may be cut: {runs:?}"
    );
    // They ran one at a time, in the order accepted: the session holds each run's items
    // together (its input first, a completed run's answer last), the inputs in queue order.
    let items = get(&second.addr, "/v1/sessions/q/items").await;
    let items = items["items"].as_array().unwrap();
    let mut groups: Vec<Vec<&Value>> = Vec::new();
    for i in items {
        if i["role"] == "user" {
            groups.push(vec![i]);
        } else {
            groups
                .last_mut()
                .expect("the session starts with a user message")
                .push(i);
        }
    }
    let answered = groups
        .iter()
        .filter(|g| g.last().is_some_and(|i| i["role"] == "assistant"))
        .count();
    assert_eq!(answered, 20 - cut.len(), "no interleaved items: {items:?}");
    // Every completed run said the same number of items (tool call, handoff, answer).
    let mut sizes: Vec<usize> = groups
        .iter()
        .filter(|g| g.last().is_some_and(|i| i["role"] == "assistant"))
        .map(Vec::len)
        .collect();
    sizes.dedup();
    assert_eq!(sizes.len(), 1, "no interleaved items: {items:?}");
    let inputs: Vec<String> = groups
        .iter()
        .map(|g| g[0]["content"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(queue.len(), 19);
    let first_run = first_run.expect("a run started");
    let order: Vec<String> = std::iter::once(&first_run)
        .chain(queue.iter())
        .filter(|id| inputs.len() == 20 || !cut.contains(id))
        .map(|id| input_of[id].clone())
        .collect();
    assert_eq!(inputs, order);
}
