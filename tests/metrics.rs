//! `GET /metrics` read with a real Prometheus text parser (the `prometheus-parse` crate):
//! after a completed run, a run whose tool fails on alternate calls until `max_turns`, and an
//! ingest with a malformed id, the histograms and counters say so, per agent, model and tool,
//! with Prometheus' names and units; every family has its HELP and TYPE.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::post;
use prometheus_parse::{Scrape, Value as PValue};
use serde_json::{json, Value};

/// The samples named `name` whose labels include every `(key, value)` of `labels`.
fn find<'a>(
    s: &'a Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

fn number(v: &PValue) -> f64 {
    match v {
        PValue::Counter(n) | PValue::Gauge(n) | PValue::Untyped(n) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

fn one(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = find(s, name, labels);
    assert_eq!(f.len(), 1, "{name} {labels:?}: {f:?}");
    number(&f[0].value)
}

/// A histogram's observation count (its `+Inf` bucket).
fn observations(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = find(s, name, labels);
    assert_eq!(f.len(), 1, "{name} {labels:?}: {f:?}");
    match &f[0].value {
        PValue::Histogram(b) => b
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map(|b| b.count)
            .expect("+Inf bucket"),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_models_tools_runs_and_the_store() {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tool = listener.local_addr().unwrap();
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/lookup",
        post(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n % 2 == 1 {
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (StatusCode::OK, "shipped")
                }
            }
        }),
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

[[auth.keys]]
key = "key-ops"
tenant = "ops"
admin = true

[models.hello]
provider = "scripted"
model = "hello-model"
[[models.hello.script]]
outputs = [{{ kind = "message", text = "Hello there", deltas = 3 }}]

[models.flaky]
provider = "scripted"
model = "support-model"
repeat_last = true
[[models.flaky.script]]
outputs = [{{ kind = "call", name = "lookup_order", arguments = "{{}}" }}]

[[agents]]
name = "Greeter"
instructions = "Greet."
model = "hello"

[[agents]]
name = "Support"
instructions = "Look orders up."
model = "flaky"
tools = ["lookup_order"]

[[tools]]
name = "lookup_order"
description = "An order's state."
kind = "http"
url = "http://{tool}/lookup"

[tracing]
sinks = ["store"]

[tracing.store]
path = "{}"

[sessions]
store = "memory"
"#,
            dir.path().join("traces.db").display()
        ),
    )
    .unwrap();
    let server = common::spawn_binary(&cfg, &[]);
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    for (session, body) in [
        ("s1", json!({"agent": "Greeter", "input": "hi"})),
        (
            "s2",
            json!({"agent": "Support", "input": "order?", "max_turns": 3}),
        ),
    ] {
        let end: Value = client
            .post(format!("{base}/v1/sessions/{session}/runs"))
            .bearer_auth("key-acme")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(end["type"].as_str().unwrap().starts_with("run."), "{end}");
    }
    let r = client
        .post(format!("{base}/v1/traces/ingest"))
        .bearer_auth("key-acme")
        .json(&json!({"data": [{"object": "trace", "id": "nope"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The trace store has written the runs once their spans have arrived.
    let deadline = std::time::Instant::now() + common::WAIT;
    let (text, scrape) = loop {
        let r = client
            .get(format!("{base}/metrics"))
            .bearer_auth("key-ops")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.unwrap();
        let scrape =
            Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
        // The ingest wrote once; the runs' spans are written when exported.
        let exported = find(
            &scrape,
            "callboard_trace_items_exported_total",
            &[("sink", "store")],
        );
        if exported.first().is_some_and(|e| number(&e.value) > 0.0) {
            break (text, scrape);
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // Every family has HELP and TYPE, and the names follow the conventions.
    let mut types: HashMap<&str, &str> = HashMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            types.insert(it.next().unwrap(), it.next().unwrap());
        }
    }
    for (name, ty) in &types {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        match *ty {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
            _ => assert!(!name.ends_with("_total"), "{name}"),
        }
    }
    assert!(scrape.samples.len() > 30, "{}", scrape.samples.len());

    // Model calls: 1 for the greeting, 3 for the support run (max_turns), per agent and model.
    let greeter = [("agent", "Greeter"), ("model", "hello-model")];
    let support = [("agent", "Support"), ("model", "support-model")];
    assert_eq!(
        observations(
            &scrape,
            "callboard_model_request_duration_seconds",
            &greeter
        ),
        1.0
    );
    assert_eq!(
        observations(
            &scrape,
            "callboard_model_request_duration_seconds",
            &support
        ),
        3.0
    );
    assert_eq!(
        observations(
            &scrape,
            "callboard_model_time_to_first_token_seconds",
            &support
        ),
        3.0
    );
    assert!(
        one(
            &scrape,
            "callboard_model_tokens_total",
            &[("agent", "Support"), ("token_type", "input")]
        ) > 0.0
    );
    assert!(
        one(
            &scrape,
            "callboard_model_tokens_total",
            &[("agent", "Greeter"), ("token_type", "output")]
        ) > 0.0
    );
    // Tool calls: 3, the first and third failed.
    let tool = [("agent", "Support"), ("tool", "lookup_order")];
    assert_eq!(
        observations(&scrape, "callboard_tool_duration_seconds", &tool),
        3.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_tool_calls_total",
            &[("tool", "lookup_order"), ("outcome", "error")]
        ),
        2.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_tool_calls_total",
            &[("tool", "lookup_order"), ("outcome", "ok")]
        ),
        1.0
    );
    // Runs by outcome.
    assert_eq!(
        one(
            &scrape,
            "callboard_runs_ended_total",
            &[("outcome", "completed")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_runs_ended_total",
            &[("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_runs_failed_total",
            &[("error_type", "MaxTurnsExceeded")]
        ),
        1.0
    );
    assert_eq!(one(&scrape, "callboard_runs_started_total", &[]), 2.0);
    // Mailbox depth per agent, spans dropped, ingest refusals.
    assert_eq!(
        one(
            &scrape,
            "callboard_agent_mailbox_depth",
            &[("agent", "Support")]
        ),
        0.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_trace_items_dropped_total",
            &[("sink", "store")]
        ),
        0.0
    );
    assert!(
        one(
            &scrape,
            "callboard_trace_items_exported_total",
            &[("sink", "store")]
        ) > 0.0
    );
    assert_eq!(
        one(
            &scrape,
            "callboard_trace_ingest_refused_total",
            &[("code", "invalid_id")]
        ),
        1.0
    );
    assert!(observations(&scrape, "callboard_trace_store_write_duration_seconds", &[]) >= 2.0);
    // Every run above saved at least its input and its last turn.
    assert!(
        observations(
            &scrape,
            "callboard_session_store_write_duration_seconds",
            &[]
        ) >= 2.0
    );
    assert_eq!(types.get("callboard_agent_mailbox_depth"), Some(&"gauge"));
}

/// `callboard_frame_delivery_seconds{transport}` counts every live frame written to a
/// client's socket, once per subscriber: a run followed by two WebSockets counts twice, a
/// resume from history not at all, an SSE run once. (Counts, not timings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_delivery_histogram_counts_live_frames_per_transport() {
    let srv = common::start(common::TWO_TENANTS).await;
    let delivered = |transport: &str| {
        let text = srv.core.metrics_text();
        let scrape =
            Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
        observations(
            &scrape,
            "callboard_frame_delivery_seconds",
            &[("transport", transport)],
        )
    };
    // The writer observes a batch once its flush returned, which may be just after the
    // client read it: the count is read once it reached `want` or the wait ran out.
    let delivered_ws = |want: f64| async move {
        let deadline = std::time::Instant::now() + common::WAIT;
        while delivered("ws") < want && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        delivered("ws")
    };
    assert_eq!(delivered("ws"), 0.0);
    let mut a = common::connect(&srv, Some("key-acme")).await;
    let mut b = common::connect(&srv, Some("key-acme")).await;
    // After a first run, `b` follows the session live before the second starts.
    common::send(
        &mut a,
        common::run_create("r0", "d1", "Triage", "What is the weather in Oslo?"),
    )
    .await;
    let first = common::recv_run(&mut a).await;
    let last = first.last().and_then(|f| f["seq"].as_u64()).unwrap();
    // The first run's frames are counted before `before` is taken.
    let first_frames = first.iter().filter(|f| f.get("seq").is_some()).count() as f64;
    assert_eq!(delivered_ws(first_frames).await, first_frames);
    common::send(
        &mut b,
        json!({"type":"session.subscribe","session_id":"d1","after_seq":last}),
    )
    .await;
    let sub = common::recv(&mut b).await;
    assert_eq!(sub["type"], "session.subscribed", "{sub}");
    let before = delivered("ws");
    common::send(
        &mut a,
        common::run_create("r1", "d1", "Triage", "What is the weather in Oslo?"),
    )
    .await;
    let fa = common::recv_run(&mut a).await;
    let fb = common::recv_run(&mut b).await;
    let frames = |v: &[Value]| v.iter().filter(|f| f.get("seq").is_some()).count() as f64;
    assert!(frames(&fa) > 5.0);
    assert_eq!(frames(&fa), frames(&fb));
    let want = before + frames(&fa) + frames(&fb);
    assert_eq!(delivered_ws(want).await, want);
    // A resume from history is not a delivery latency.
    let mut c = common::connect(&srv, Some("key-acme")).await;
    common::send(
        &mut c,
        json!({"type":"session.subscribe","session_id":"d1","after_seq":0}),
    )
    .await;
    let replayed = common::recv_run(&mut c).await;
    assert!(frames(&replayed) > 0.0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(delivered("ws"), want);

    // SSE: a run's frames, each counted once.
    let body = reqwest::Client::new()
        .post(srv.http("/v1/sessions/d2/runs"))
        .bearer_auth("key-acme")
        .header("accept", "text/event-stream")
        .json(&json!({"agent": "Triage", "input": "What is the weather in Oslo?"}))
        .timeout(common::WAIT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sse_frames = body.lines().filter(|l| l.starts_with("id:")).count() as f64;
    assert!(sse_frames > 5.0, "{body}");
    assert_eq!(delivered("sse"), sse_frames);
}
