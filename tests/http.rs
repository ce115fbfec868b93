//! The HTTP API against a real server: runs as JSON and SSE, SSE resume, sessions, agents,
//! health, metrics, error shapes, and `http` tools against a local tool server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Reads an SSE body into (id, event, data) triples.
fn parse_sse(body: &str) -> Vec<(Option<u64>, String, Value)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut id = None;
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if !data.is_empty() {
            out.push((
                id,
                event,
                serde_json::from_str(&data).expect("SSE data is JSON"),
            ));
        }
    }
    out
}

on_both_stores! {
async fn runs_as_json_and_as_sse_then_resume_with_last_event_id() {
    let srv = start(TWO_TENANTS).await;
    let http = reqwest::Client::new();
    let r = http
        .post(srv.http("/v1/sessions/h1/runs"))
        .bearer_auth("key-acme")
        .json(&json!({"agent":"Triage","input":"What is the weather in Oslo?"}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let end: Value = r.json().await.unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    assert_eq!(end["session_id"], "h1");
    assert_eq!(end["last_agent"], "Weather");
    let first_run_last_seq = end["seq"].as_u64().unwrap();
    // Input as a list of items works too (here into another session).
    let r = http
        .post(srv.http("/v1/sessions/h-items/runs"))
        .bearer_auth("key-acme")
        .json(&json!({"type":"run.create","agent":"Triage","input":[{"role":"user","content":"a billing question"}]}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["last_agent"], "Billing", "{v}");

    let r = http
        .post(srv.http("/v1/sessions/h1/runs"))
        .bearer_auth("key-acme")
        .header("accept", "text/event-stream")
        .json(&json!({"id":"req-7","agent":"Triage","input":"a billing question"}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events[0].1, "run.accepted");
    assert_eq!(events[0].2["id"], "req-7");
    let (id, ev, data) = events.last().unwrap();
    assert_eq!(ev, "run.completed");
    assert_eq!(*id, data["seq"].as_u64());
    let ids: Vec<u64> = events.iter().filter_map(|e| e.0).collect();
    assert_eq!(ids.first().copied(), Some(first_run_last_seq + 1));
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "gapless ids");
    for (id, ev, data) in &events[1..] {
        assert_eq!(ev, data["type"].as_str().unwrap());
        assert_eq!(*id, data["seq"].as_u64());
    }

    // Resume: Last-Event-ID wins over nothing, after_seq works alike.
    let resume_from = ids[ids.len() - 5];
    let mut r = http
        .get(srv.http("/v1/sessions/h1/events"))
        .bearer_auth("key-acme")
        .header("last-event-id", resume_from.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = String::new();
    // The answer opens with `session.subscribed` (the epoch), then the frames.
    while parse_sse(&buf).len() < 5 {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let parsed = parse_sse(&buf);
    assert_eq!(parsed[0].1, "session.subscribed");
    assert_eq!(parsed[0].2["epoch"], events[0].2["epoch"]);
    let got: Vec<u64> = parsed.iter().filter_map(|e| e.0).collect();
    assert_eq!(got, ids[ids.len() - 4..].to_vec());

    let mut r = http
        .get(srv.http(&format!(
            "/v1/sessions/h1/events?after_seq={}&format=chat",
            first_run_last_seq
        )))
        .bearer_auth("key-acme")
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    while !buf.contains("event: run.completed") {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let chat = parse_sse(&buf);
    assert!(chat
        .iter()
        .any(|e| e.1 == "token" && e.2["type"] == "token"));
    assert!(chat
        .iter()
        .any(|e| e.1 == "agent_change" && e.2["agent"] == "Billing"));

    // Items of the conversation: two runs' worth.
    let items: Value = http
        .get(srv.http("/v1/sessions/h1/items"))
        .bearer_auth("key-acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = items["items"].as_array().unwrap().len();
    assert!(n >= 6, "{items}");
    let r = http
        .delete(srv.http("/v1/sessions/h1"))
        .bearer_auth("key-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(srv.http("/v1/sessions/h1/items"))
        .bearer_auth("key-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
}

on_both_stores! {
async fn agents_health_metrics_and_error_shapes() {
    let srv = start(TWO_TENANTS).await;
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(srv.http(p)).bearer_auth("key-acme").send();
    let agents: Value = get("/v1/agents").await.unwrap().json().await.unwrap();
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Triage") && names.contains(&"Weather") && names.contains(&"Billing"));
    let triage = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Triage")
        .unwrap();
    assert_eq!(triage["handoffs"], json!(["Weather", "Billing"]));
    assert_eq!(
        reqwest::get(srv.http("/healthz")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(srv.http("/readyz")).await.unwrap().status(),
        200
    );
    // /metrics shows every tenant's counts: a tenant's key is refused, an admin key reads it.
    let r = get("/metrics").await.unwrap();
    assert_eq!(r.status(), 403);
    let m = http
        .get(srv.http("/metrics"))
        .bearer_auth("key-ops")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("callboard_connections 0"), "{m}");
    assert!(m.contains("# TYPE callboard_runs_started_total counter"));
    for (method, path, body, status, code) in [
        (
            "POST",
            "/v1/sessions/x/runs",
            "{not json",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/sessions/x/runs",
            r#"{"agent":"Nobody","input":"hi"}"#,
            404,
            "unknown_agent",
        ),
        (
            "POST",
            "/v1/sessions/x/runs",
            r#"{"input":"hi"}"#,
            400,
            "bad_request",
        ),
        ("GET", "/v1/sessions/nope/items", "", 404, "not_found"),
        ("GET", "/v1/traces", "", 501, "not_implemented"),
        ("GET", "/no/such/path", "", 404, "not_found"),
    ] {
        let req = match method {
            "POST" => http
                .post(srv.http(path))
                .header("content-type", "application/json")
                .body(body.to_owned()),
            _ => http.get(srv.http(path)),
        };
        let r = req.bearer_auth("key-acme").send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
    }
    // A session with no run yet is subscribable (PROTOCOL.md section 2).
    let mut r = get("/v1/sessions/nope/events").await.unwrap();
    assert_eq!(r.status(), 200);
    let chunk = tokio::time::timeout(WAIT, r.chunk()).await.unwrap().unwrap().unwrap();
    let first = parse_sse(std::str::from_utf8(&chunk).unwrap());
    assert_eq!(first[0].1, "session.subscribed");
    assert_eq!(first[0].2["last_seq"], 0);
    drop(r);
    let m = http
        .get(srv.http("/metrics"))
        .bearer_auth("key-ops")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("callboard_errors_by_code_total{code=\"unknown_agent\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("callboard_errors_by_code_total{code=\"bad_request\"} 2"),
        "{m}"
    );
    let huge = json!({"agent":"Triage","input":"x".repeat(300_000)});
    let r = http
        .post(srv.http("/v1/sessions/x/runs"))
        .bearer_auth("key-acme")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "input_too_large");
    let body = format!(
        r#"{{"agent":"Triage","input":"{}"}}"#,
        "x".repeat(3_000_000)
    );
    let r = http
        .post(srv.http("/v1/sessions/x/runs"))
        .bearer_auth("key-acme")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "frame_too_large");
}
}

on_both_stores! {
async fn http_tools_post_arguments_and_report_failures_to_the_model() {
    use axum::routing::post;
    let tool_app = axum::Router::new()
        .route(
            "/weather",
            post(|body: String| async move {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                format!("sunny in {}", v["city"].as_str().unwrap_or("?"))
            }),
        )
        .route(
            "/broken",
            post(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "tool exploded",
                )
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
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
outputs = [
  {{ kind = "call", name = "get_weather", arguments = '{{"city":"Oslo"}}' }},
  {{ kind = "call", name = "broken", arguments = '{{}}' }},
  {{ kind = "call", name = "slow", arguments = '{{}}' }},
]
[[models.default.script]]
outputs = [{{ kind = "message", text = "done", deltas = 1 }}]

[[agents]]
name = "Tooler"
tools = ["get_weather", "broken", "slow"]

[[tools]]
name = "get_weather"
description = "Weather."
kind = "http"
url = "http://{tool_addr}/weather"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }} }}, required = ["city"] }}
timeout_ms = 5000

[[tools]]
name = "broken"
kind = "http"
url = "http://{tool_addr}/broken"

[[tools]]
name = "slow"
kind = "http"
url = "http://{tool_addr}/slow"
timeout_ms = 200
"#
    );
    let srv = start(&cfg).await;
    let mut ws = connect(&srv, None).await;
    send(&mut ws, run_create("r", "tools", "Tooler", "go")).await;
    recv(&mut ws).await;
    let frames = recv_run(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "run.completed");
    let outputs: Vec<&str> = frames
        .iter()
        .filter(|f| f["event"]["name"] == "tool_output")
        .map(|f| f["event"]["item"]["output"].as_str().unwrap())
        .collect();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert!(outputs.contains(&"sunny in Oslo"), "{outputs:?}");
    // As the SDK does, the model reads exactly this for a failing tool (an HTTP 500, a
    // timeout), never the details.
    let sdk = "An error occurred while running the tool. Please try again.";
    assert_eq!(outputs.iter().filter(|o| **o == sdk).count(), 2, "{outputs:?}");
}
}
