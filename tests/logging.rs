//! The service's logs: with `[logging] format = "json"` every line is a JSON object, and
//! each line logged inside a run carries the run's `tenant`, `session_id`, `run_id`,
//! `trace_id` and `agent` (the real binary, a tool that fails so the engine logs inside the
//! run, and a run that then fails).

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_inside_a_run_carry_its_ids() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/broken",
        post(|| async { (StatusCode::BAD_GATEWAY, "backend down") }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("callboard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
bind = "127.0.0.1:0"

[[auth.keys]]
key = "key-acme"
tenant = "acme"

[logging]
format = "json"

[models.m]
provider = "scripted"
repeat_last = true
[[models.m.script]]
outputs = [{{ kind = "call", name = "broken", arguments = "{{}}" }}]

[[agents]]
name = "Support"
instructions = "Help."
model = "m"
tools = ["broken"]

[[tools]]
name = "broken"
description = "Always fails."
kind = "http"
url = "http://{tool}/broken"

[tracing]
sinks = []

[sessions]
store = "memory"
"#
        ),
    )
    .unwrap();
    let (server, lines) = common::spawn_binary_logged(&cfg, &[]);
    let end: Value = tokio::time::timeout(
        common::WAIT,
        reqwest::Client::new()
            .post(format!("http://{}/v1/sessions/sess-logs/runs", server.addr))
            .bearer_auth("key-acme")
            .json(&json!({"agent": "Support", "input": "help", "max_turns": 2}))
            .send(),
    )
    .await
    .expect("in time")
    .expect("run")
    .json()
    .await
    .expect("JSON");
    assert_eq!(end["type"], "run.failed", "{end}");
    let run_id = end["run_id"].as_str().expect("run id").to_owned();

    // The engine's "tool failed" lines (one per turn) and the service's "run failed" line.
    let deadline = Instant::now() + common::WAIT;
    let logged = loop {
        let json_lines: Vec<Value> = lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let in_run: Vec<Value> = json_lines
            .into_iter()
            .filter(|v| v["span"]["run_id"] == run_id.as_str())
            .collect();
        let has = |m: &str| in_run.iter().any(|v| v["fields"]["message"] == m);
        if has("tool failed; the model is told") && has("run failed") {
            break in_run;
        }
        assert!(
            Instant::now() < deadline,
            "no run lines with ids; the server wrote: {:#?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for v in &logged {
        let span = &v["span"];
        assert_eq!(span["name"], "run", "{v}");
        assert_eq!(span["tenant"], "acme", "{v}");
        assert_eq!(span["session_id"], "sess-logs", "{v}");
        assert_eq!(span["agent"], "Support", "{v}");
        // Tracing is off here ([tracing] sinks = []) but the run still has its trace id.
        assert!(
            span["trace_id"]
                .as_str()
                .is_some_and(|t| t.starts_with("trace_")),
            "{v}"
        );
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
    }
    // Every log line is JSON (the start banner is printed, not logged).
    let all = lines.lock().unwrap().clone();
    for l in all.iter().filter(|l| !l.starts_with("callboard: ")) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}
