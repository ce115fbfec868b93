//! Traces kept by the server: the `store` sink behind `GET /v1/traces`,
//! `GET /v1/traces/{id}` and `POST /v1/traces/ingest`, scoped by tenant, and flushed by a
//! graceful shutdown (SIGTERM mid-run loses no span).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

mod common;

use common::{spawn_binary, Binary as Server};

fn spawn(config_path: &std::path::Path) -> Server {
    spawn_binary(
        config_path,
        &[
            ("CALLBOARD_KEY_ACME", "acme-key"),
            ("CALLBOARD_KEY_GLOBEX", "globex-key"),
        ],
    )
}

fn config(dir: &std::path::Path) -> String {
    config_with(dir, "")
}

fn config_with(dir: &std::path::Path, tracing_extra: &str) -> String {
    format!(
        r#"
[server]
bind = "127.0.0.1:0"

[[auth.keys]]
key_env = "CALLBOARD_KEY_ACME"
tenant = "acme"

[[auth.keys]]
key_env = "CALLBOARD_KEY_GLOBEX"
tenant = "globex"

[[auth.keys]]
key = "ops-key"
tenant = "ops"
admin = true

[models.default]
provider = "scripted"
delay_ms = 40

[tracing]
sinks = ["store"]
{}

[tracing.store]
path = "{}"

[sessions]
store = "memory"
"#,
        tracing_extra,
        dir.join("traces.db").display()
    )
}

async fn get(client: &reqwest::Client, url: String, key: &str) -> (u16, Value) {
    let r = tokio::time::timeout(WAIT, client.get(url).bearer_auth(key).send())
        .await
        .expect("in time")
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sigterm_mid_run_loses_no_span_and_traces_are_queryable_per_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(dir.path())).expect("write config");
    let client = reqwest::Client::new();

    let first = spawn(&cfg_path);
    let base = format!("http://{}", first.addr);
    let mut resp = client
        .post(format!("{base}/v1/sessions/conv-1/runs"))
        .bearer_auth("acme-key")
        .header("accept", "text/event-stream")
        .json(&json!({"agent": "Triage", "input": "What is the weather in Oslo?"}))
        .send()
        .await
        .expect("sse run");
    let mut seen = String::new();
    while seen.matches("response.output_text.delta").count() < 2 {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("in time")
            .expect("chunk")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // SIGTERM mid-run: the turn finishes within the grace period and every span is flushed.
    let st = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let mut rest = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(WAIT, resp.chunk()).await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("run.completed"),
        "the run finished during the grace period: {rest}"
    );
    let mut first = first;
    let status = first.child.wait().expect("exit");
    assert!(status.success(), "{status:?}");

    let second = spawn(&cfg_path);
    let base = format!("http://{}", second.addr);
    let (st, list) = get(
        &client,
        format!("{base}/v1/traces?group_id=conv-1"),
        "acme-key",
    )
    .await;
    assert_eq!(st, 200, "{list}");
    let traces = list["traces"].as_array().expect("traces").clone();
    assert_eq!(traces.len(), 1, "{list}");
    let trace_id = traces[0]["trace_id"]
        .as_str()
        .or_else(|| traces[0]["id"].as_str())
        .expect("trace id")
        .to_owned();
    let (st, full) = get(&client, format!("{base}/v1/traces/{trace_id}"), "acme-key").await;
    assert_eq!(st, 200, "{full}");
    assert_eq!(full["trace"]["group_id"], "conv-1");
    let spans = full["spans"].as_array().expect("spans");
    let types: Vec<&str> = spans
        .iter()
        .map(|s| s["span_data"]["type"].as_str().unwrap_or(""))
        .collect();
    for t in ["custom", "agent", "response", "function", "handoff"] {
        assert!(types.contains(&t), "no {t} span in {types:?}");
    }
    assert!(
        spans.iter().all(|s| s["ended_at"].is_string()),
        "every span ended: {spans:?}"
    );
    assert_eq!(types.iter().filter(|t| **t == "response").count(), 3);

    // Another tenant sees none of it.
    let (_, other) = get(&client, format!("{base}/v1/traces"), "globex-key").await;
    assert_eq!(other["traces"].as_array().map(Vec::len), Some(0), "{other}");
    let (st, _) = get(
        &client,
        format!("{base}/v1/traces/{trace_id}"),
        "globex-key",
    )
    .await;
    assert_eq!(st, 404);

    // SDK apps can send their traces here.
    let body = json!({"data": [
        {"object": "trace", "id": "trace_0123456789abcdef0123456789abcdef", "workflow_name": "sdk app", "group_id": null, "metadata": null},
        {"object": "trace.span", "id": "span_0123456789abcdef01234567", "trace_id": "trace_0123456789abcdef0123456789abcdef",
         "parent_id": null, "started_at": "2026-11-25T10:00:00.000000+00:00", "ended_at": "2026-11-25T10:00:01.000000+00:00",
         "span_data": {"type": "agent", "name": "Assistant", "handoffs": [], "tools": [], "output_type": "str"}, "error": null}
    ]});
    let r = client
        .post(format!("{base}/v1/traces/ingest"))
        .bearer_auth("globex-key")
        .json(&body)
        .send()
        .await
        .expect("ingest");
    assert_eq!(r.status().as_u16(), 200);
    let (st, got) = get(
        &client,
        format!("{base}/v1/traces/trace_0123456789abcdef0123456789abcdef"),
        "globex-key",
    )
    .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["trace"]["workflow_name"], "sdk app");
    assert_eq!(got["spans"].as_array().map(Vec::len), Some(1));
    let (_, bad) = {
        let r = client
            .post(format!("{base}/v1/traces/ingest"))
            .bearer_auth("globex-key")
            .body("not json")
            .send()
            .await
            .expect("ingest");
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(bad["error"]["code"], "bad_request");
    let (_, metrics) = {
        let r = client
            .get(format!("{base}/metrics"))
            .bearer_auth("ops-key")
            .send()
            .await
            .expect("metrics");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    assert!(metrics.contains("callboard_trace"), "{metrics}");
}

async fn ingest(client: &reqwest::Client, base: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = tokio::time::timeout(
        WAIT,
        client
            .post(format!("{base}/v1/traces/ingest"))
            .bearer_auth(key)
            .json(body)
            .send(),
    )
    .await
    .expect("in time")
    .expect("ingest");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn span(id: &str, trace: &str, parent: Option<&str>, name: &str) -> Value {
    json!({"object": "trace.span", "id": id, "trace_id": trace, "parent_id": parent,
        "started_at": "2026-11-25T10:00:00.000000+00:00", "ended_at": "2026-11-25T10:00:01.000000+00:00",
        "span_data": {"type": "custom", "name": name, "data": {}}, "error": null})
}

#[tokio::test]
async fn a_hostile_tenant_can_neither_take_over_nor_add_to_a_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(&cfg_path, config(dir.path())).expect("write config");
    let client = reqwest::Client::new();
    let server = spawn(&cfg_path);
    let base = format!("http://{}", server.addr);
    let end: Value = client
        .post(format!("{base}/v1/sessions/conv-a/runs"))
        .bearer_auth("acme-key")
        .json(&json!({"agent": "Triage", "input": "What is the weather in Oslo?"}))
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("end frame");
    let tid = end["trace_id"].as_str().expect("trace id").to_owned();
    // The run's trace reaches the store soon after its end.
    let deadline = std::time::Instant::now() + WAIT;
    let original = loop {
        let (st, t) = get(&client, format!("{base}/v1/traces/{tid}"), "acme-key").await;
        if st == 200 && t["ended_at"].is_string() {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "{st} {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spans = original["spans"].as_array().expect("spans").clone();
    let first_span = spans[0]["id"].as_str().unwrap().to_owned();

    // globex: a trace object with acme's id, a new span in it, and one reusing acme's span id.
    let (st, answer) = ingest(
        &client,
        &base,
        "globex-key",
        &json!({"data": [
            {"object": "trace", "id": tid, "workflow_name": "stolen", "group_id": "conv-a", "metadata": null},
            span("span_aaaaaaaaaaaaaaaaaaaaaaaa", &tid, Some(&first_span), "injected"),
            span(&first_span, &tid, None, "overwritten"),
        ]}),
    )
    .await;
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["refused"], 3, "{answer}");
    assert_eq!(answer["refused_by_code"]["trace_not_yours"], 3, "{answer}");
    assert_eq!(
        (answer["traces"].as_u64(), answer["spans"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(answer["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("another tenant"));
    // acme still owns it, unchanged; globex still cannot read it.
    let (st, now) = get(&client, format!("{base}/v1/traces/{tid}"), "acme-key").await;
    assert_eq!(st, 200);
    assert_eq!(now["trace"], original["trace"]);
    assert_eq!(now["spans"], original["spans"]);
    let (st, _) = get(&client, format!("{base}/v1/traces/{tid}"), "globex-key").await;
    assert_eq!(st, 404);
    let (_, list) = get(&client, format!("{base}/v1/traces"), "globex-key").await;
    assert_eq!(list["traces"].as_array().map(Vec::len), Some(0), "{list}");
    // Nor can globex run into acme's trace: run.create with its id is refused.
    let r = client
        .post(format!("{base}/v1/sessions/conv-g/runs"))
        .bearer_auth("globex-key")
        .json(&json!({"agent": "Triage", "input": "hi", "trace": {"trace_id": tid}}))
        .send()
        .await
        .expect("run");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another tenant"),
        "{v}"
    );
    // acme may continue its own trace.
    let r = client
        .post(format!("{base}/v1/sessions/conv-a/runs"))
        .bearer_auth("acme-key")
        .json(&json!({"agent": "Triage", "input": "And now billing", "trace": {"trace_id": tid}}))
        .send()
        .await
        .expect("run");
    assert_eq!(r.status(), 200);

    // Malformed ids are refused and counted; the rest of the body is kept.
    let mine = "trace_0000000000000000000000000000beef";
    let (st, answer) = ingest(
        &client,
        &base,
        "globex-key",
        &json!({"data": [
            {"object": "trace", "id": "x"},
            {"object": "trace", "id": "y".repeat(5000)},
            span("span_1", mine, None, "bad span id"),
            {"object": "trace", "id": mine, "workflow_name": "globex app"},
            span("span_bbbbbbbbbbbbbbbbbbbbbbbb", mine, None, "fine"),
        ]}),
    )
    .await;
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["refused"], 3, "{answer}");
    assert_eq!(answer["refused_by_code"]["invalid_id"], 3, "{answer}");
    assert_eq!(
        (answer["traces"].as_u64(), answer["spans"].as_u64()),
        (Some(1), Some(1))
    );
    let idx: Vec<u64> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [0, 1, 2]);
    assert!(
        answer.to_string().len() < 2000,
        "ids are not echoed in full: {answer}"
    );
    let (st, got) = get(&client, format!("{base}/v1/traces/{mine}"), "globex-key").await;
    assert_eq!(st, 200);
    assert_eq!(got["trace"]["metadata"]["tenant"], "globex");
}

#[tokio::test]
async fn ingest_bodies_have_their_own_limit_and_a_json_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("callboard.toml");
    std::fs::write(
        &cfg_path,
        config_with(dir.path(), "max_ingest_bytes = 3000000"),
    )
    .expect("config");
    let client = reqwest::Client::new();
    let server = spawn(&cfg_path);
    let base = format!("http://{}", server.addr);
    // 2 MB: over the 1 MiB frame limit, under the ingest limit (an SDK batch with large
    // inputs and outputs).
    let tid = "trace_00000000000000000000000000000abc";
    let big = "z".repeat(100_000);
    let data: Vec<Value> = (0..20)
        .map(|i| {
            let mut s = span(&format!("span_{i:024x}"), tid, None, "big");
            s["span_data"]["data"] = json!({"input": big});
            s
        })
        .collect();
    let (st, answer) = ingest(&client, &base, "acme-key", &json!({"data": data})).await;
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["spans"], 20);
    // 4 MB: over the ingest limit, answered in the JSON error shape.
    let data: Vec<Value> = (0..40)
        .map(|i| {
            let mut s = span(&format!("span_{i:024x}"), tid, None, "big");
            s["span_data"]["data"] = json!({"input": big});
            s
        })
        .collect();
    let (st, answer) = ingest(&client, &base, "acme-key", &json!({"data": data})).await;
    assert_eq!(st, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_ingest_bytes"),
        "{answer}"
    );
}
