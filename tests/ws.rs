//! The WebSocket hub against a real server: runs, two subscribers, resume, chat format,
//! cancel, client tools, errors, auth and tenants, slow clients, hostile frames.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
}

on_both_stores! {
async fn tool_call_handoff_message_run_is_seen_identically_by_two_subscribers() {
    let srv = start(TWO_TENANTS).await;
    let mut a = connect(&srv, Some("key-acme")).await;
    let mut b = connect(&srv, Some("key-acme")).await;
    send(
        &mut a,
        run_create("r1", "s1", "Triage", "What is the weather in Oslo?"),
    )
    .await;
    let acc = recv(&mut a).await;
    assert_eq!(acc["type"], "run.accepted", "{acc}");
    assert_eq!(acc["id"], "r1");
    assert_eq!(acc["session_id"], "s1");
    assert!(acc.get("seq").is_none());
    let run_id = acc["run_id"].as_str().unwrap().to_owned();
    send(
        &mut b,
        json!({"type":"session.subscribe","session_id":"s1","after_seq":0}),
    )
    .await;
    let fa = recv_run(&mut a).await;
    let fb = recv_run(&mut b).await;
    assert_eq!(fa, fb, "both subscribers see the same frames");
    let s = seqs(&fa);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    assert!(fa
        .iter()
        .all(|f| f["run_id"] == run_id && f["session_id"] == "s1"));
    let names: Vec<&str> = fa
        .iter()
        .filter_map(|f| f["event"]["name"].as_str())
        .collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing in {names:?}"))
    };
    assert!(pos("handoff_occured") < pos("tool_called"));
    assert!(pos("tool_called") < pos("tool_output"));
    assert!(pos("tool_output") < pos("message_output_created"));
    let end = fa.last().unwrap();
    assert_eq!(end["type"], "run.completed");
    assert_eq!(end["last_agent"], "Weather");
    assert!(end["final_output"].as_str().unwrap().contains("Oslo"));
    assert!(end["usage"]["requests"].as_u64().unwrap() >= 3);
}
}

on_both_stores! {
async fn chat_format_relays_tokens_agents_and_tools() {
    let srv = start(TWO_TENANTS).await;
    let mut a = connect(&srv, Some("key-acme")).await;
    let mut req = run_create("r1", "chat1", "Triage", "weather in Paris?");
    req["format"] = json!("chat");
    send(&mut a, req).await;
    assert_eq!(recv(&mut a).await["type"], "run.accepted");
    let frames = recv_run(&mut a).await;
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"agent_change"), "{types:?}");
    assert!(
        types.contains(&"tool_start") && types.contains(&"tool_end"),
        "{types:?}"
    );
    let text: String = frames
        .iter()
        .filter(|f| f["type"] == "token")
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(text.contains("Paris"), "{text}");
    assert!(frames
        .iter()
        .any(|f| f["type"] == "agent_change" && f["agent"] == "Weather"));
    assert!(frames
        .iter()
        .any(|f| f["type"] == "tool_start" && f["tool"] == "get_weather"));
    assert_eq!(*types.last().unwrap(), "run.completed");
    // seq numbers are the session's: increasing, with gaps where chat skips frames.
    let s = seqs(&frames);
    assert!(s.windows(2).all(|w| w[0] < w[1]));
}
}

const SLOW: &str = r#"
[models.default]
provider = "scripted"
delay_ms = 15
"#;

on_both_stores! {
async fn resume_after_a_dropped_connection_loses_and_duplicates_nothing() {
    let srv = start(SLOW).await;
    let mut a = connect(&srv, None).await;
    send(&mut a, run_create("r", "s", "Triage", "weather in Rome")).await;
    assert_eq!(recv(&mut a).await["type"], "run.accepted");
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(recv(&mut a).await);
    }
    drop(a); // the connection drops mid-run
    tokio::time::sleep(Duration::from_millis(150)).await; // the run goes on meanwhile
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    let mut b = connect(&srv, None).await;
    send(
        &mut b,
        json!({"type":"session.subscribe","session_id":"s","after_seq":last}),
    )
    .await;
    seen.extend(recv_run(&mut b).await);
    let s = seqs(&seen);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
    assert_eq!(seen.last().unwrap()["type"], "run.completed");
    // A third client replays the whole run from history.
    let mut c = connect(&srv, None).await;
    send(
        &mut c,
        json!({"type":"session.subscribe","session_id":"s","after_seq":0}),
    )
    .await;
    let all = recv_run(&mut c).await;
    assert_eq!(all, seen);
}
}

on_both_stores! {
async fn cancel_ping_and_errors_keep_the_connection_open() {
    let srv = start(SLOW).await;
    let mut a = connect(&srv, None).await;
    send(&mut a, json!({"type":"ping","id":1})).await;
    let p = recv(&mut a).await;
    assert_eq!(p["type"], "pong");
    assert_eq!(p["id"], 1);
    for (frame, code) in [
        ("{nope".to_owned(), "bad_request"),
        (r#"{"type":"warp.drive"}"#.to_owned(), "bad_request"),
        (
            r#"{"type":"run.create","id":"x"}"#.to_owned(),
            "bad_request",
        ),
        (
            run_create("x", "s", "Nobody", "hi").to_string(),
            "unknown_agent",
        ),
        (
            r#"{"type":"session.subscribe","session_id":""}"#.to_owned(),
            "bad_request",
        ),
        (
            r#"{"type":"run.cancel","run_id":"run_nope"}"#.to_owned(),
            "not_found",
        ),
        (
            r#"{"type":"tool.result","run_id":"run_nope","call_id":"c","output":"x"}"#.to_owned(),
            "not_found",
        ),
        (
            run_create("x", "s", "Triage", &"y".repeat(300_000)).to_string(),
            "input_too_large",
        ),
        ("z".repeat(1_100_000), "frame_too_large"),
    ] {
        send_raw(&mut a, frame).await;
        let e = recv(&mut a).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["code"], code, "{e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    send(&mut a, run_create("c1", "s", "Triage", "weather in Lima")).await;
    let acc = recv(&mut a).await;
    let run_id = acc["run_id"].as_str().unwrap().to_owned();
    recv(&mut a).await;
    send(
        &mut a,
        json!({"type":"run.cancel","run_id":run_id,"mode":"immediate"}),
    )
    .await;
    let frames = recv_run(&mut a).await;
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.cancelled", "{end}");
    assert_eq!(end["mode"], "immediate");
    send(&mut a, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut a).await["type"], "pong");
}
}

on_both_stores! {
async fn unauthenticated_and_cross_tenant_attempts_are_refused() {
    let srv = start(TWO_TENANTS).await;
    for key in [None, Some("wrong")] {
        match try_connect(&srv, key).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 401)
            }
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let http = reqwest::Client::new();
    let r = http.get(srv.http("/v1/agents")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = http
        .get(srv.http("/v1/agents?access_token=key-acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut acme = connect(&srv, Some("key-acme")).await;
    send(
        &mut acme,
        run_create("r", "secret", "Triage", "billing please"),
    )
    .await;
    let run_id = recv(&mut acme).await["run_id"].as_str().unwrap().to_owned();
    recv_run(&mut acme).await;
    let mut globex = connect(&srv, Some("key-globex")).await;
    send(
        &mut globex,
        json!({"type":"session.subscribe","session_id":"secret","after_seq":0}),
    )
    .await;
    // Globex's "secret" is another session (its own, empty): nothing of acme's shows.
    let e = recv(&mut globex).await;
    assert_eq!(e["type"], "session.subscribed", "{e}");
    assert_eq!(e["last_seq"], 0, "{e}");
    send(&mut globex, json!({"type":"run.cancel","run_id":run_id})).await;
    assert_eq!(recv(&mut globex).await["error"]["code"], "not_found");
    let r = http
        .get(srv.http("/v1/sessions/secret/items"))
        .bearer_auth("key-globex")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut r = http
        .get(srv.http("/v1/sessions/secret/events?after_seq=0"))
        .bearer_auth("key-globex")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunk = tokio::time::timeout(WAIT, r.chunk()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk).to_string();
    assert!(text.contains("session.subscribed") && text.contains("\"last_seq\":0"), "{text}");
    drop(r);
    let r = http
        .delete(srv.http("/v1/sessions/secret"))
        .bearer_auth("key-globex")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The same session id in another tenant is a different session.
    send(
        &mut globex,
        run_create("r", "secret", "Triage", "billing please"),
    )
    .await;
    let acc = recv(&mut globex).await;
    assert_eq!(acc["type"], "run.accepted");
    let frames = recv_run(&mut globex).await;
    assert_eq!(frames[0]["seq"], 1, "globex's session starts at seq 1");
    let r = http
        .get(srv.http("/v1/sessions/secret/items"))
        .bearer_auth("key-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
}

on_both_stores! {
async fn client_tools_round_trip_through_tool_call_and_tool_result() {
    let cfg = r#"
[models.default]
provider = "scripted"
[[models.default.script]]
outputs = [{ kind = "call", name = "confirm_with_user", arguments = '{"question":"Sure?"}' }]
[[models.default.script]]
outputs = [{ kind = "message", text = "Confirmed.", deltas = 2 }]

[[agents]]
name = "Assistant"
instructions = "Confirm first."
tools = ["confirm_with_user"]

[[tools]]
name = "confirm_with_user"
description = "Ask the user to confirm."
kind = "client"
timeout_ms = 10000
"#;
    let srv = start(cfg).await;
    let mut a = connect(&srv, None).await;
    let mut b = connect(&srv, None).await;
    send(&mut a, run_create("r", "t", "Assistant", "do it")).await;
    let run_id = recv(&mut a).await["run_id"].as_str().unwrap().to_owned();
    send(
        &mut b,
        json!({"type":"session.subscribe","session_id":"t","after_seq":0}),
    )
    .await;
    let frames = recv_until(&mut b, &["tool.call"]).await;
    let call = frames.last().unwrap();
    assert_eq!(call["name"], "confirm_with_user");
    assert_eq!(call["run_id"], run_id.as_str());
    assert_eq!(call["arguments"], r#"{"question":"Sure?"}"#);
    // The other connection of the session answers.
    send(
        &mut b,
        json!({"type":"tool.result","run_id":run_id,"call_id":call["call_id"],"output":"yes"}),
    )
    .await;
    let frames = recv_run(&mut a).await;
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    assert_eq!(end["final_output"], "Confirmed.");
    let out = frames
        .iter()
        .find(|f| f["event"]["name"] == "tool_output")
        .expect("tool_output event");
    assert_eq!(out["event"]["item"]["output"], "yes");
}
}

on_both_stores! {
async fn per_tenant_run_limit_answers_overloaded() {
    let cfg = format!("{SLOW}\n[limits]\nmax_runs_per_tenant = 1\n");
    let srv = start(&cfg).await;
    let mut a = connect(&srv, None).await;
    send(&mut a, run_create("r1", "s1", "Triage", "weather in Oslo")).await;
    assert_eq!(recv(&mut a).await["type"], "run.accepted");
    send(&mut a, run_create("r2", "s2", "Triage", "weather in Oslo")).await;
    let e = recv_until(&mut a, &["error"]).await;
    let e = e.last().unwrap();
    assert_eq!(e["error"]["code"], "overloaded");
    assert_eq!(e["id"], "r2");
}
}

on_both_stores! {
async fn a_client_that_never_reads_does_not_delay_fifty_others() {
    // One long answer: 4000 token frames of ~100 characters.
    let text = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et ".repeat(4000);
    let cfg = format!(
        "[models.default]\nprovider = \"scripted\"\n[[models.default.script]]\noutputs = [{{ kind = \"message\", text = \"{text}\", deltas = 4000 }}]\n[[agents]]\nname = \"Talker\"\n[limits]\noutbound_queue = 64\nsubscriber_queue = 8192\nhistory = 8192\n"
    );
    let srv = start(&cfg).await;
    // The sleeper: a tiny receive buffer, and it never reads.
    let mut sleeper = connect_small_buffer(&srv, 4096).await;
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(connect(&srv, None).await);
    }
    // Create the session, then everyone subscribes before the long run.
    send(&mut sleeper, json!({"type":"ping"})).await;
    let mut starter = connect(&srv, None).await;
    send(&mut starter, run_create("warm", "big", "Talker", "x")).await;
    let frames = recv_run(&mut starter).await; // the first run warms the session up
    let after = frames.last().unwrap()["seq"].as_u64().unwrap();
    send(
        &mut sleeper,
        json!({"type":"session.subscribe","session_id":"big","after_seq":after}),
    )
    .await;
    for r in readers.iter_mut() {
        send(
            r,
            json!({"type":"session.subscribe","session_id":"big","after_seq":after}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    send(&mut starter, run_create("big", "big", "Talker", "again")).await;
    let mut tasks = Vec::new();
    for mut r in readers {
        tasks.push(tokio::spawn(async move {
            let frames = recv_run(&mut r).await;
            (
                frames.len(),
                t0.elapsed(),
                frames.last().unwrap()["type"].clone(),
            )
        }));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        let (n, took, end) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, "run.completed");
        assert!(n > 4000, "every frame arrived ({n})");
        worst = worst.max(took);
    }
    eprintln!("50 readers got all frames; the slowest finished in {worst:?}");
    assert!(worst < Duration::from_secs(45));
    // The server is healthy and the sleeper's connection is held (or was closed), not
    // blocking anything.
    let r = reqwest::get(srv.http("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(sleeper);
}
}

on_both_stores! {
async fn a_slow_subscriber_gets_lagged_and_resumes_from_history() {
    let text = "abcdefghij".repeat(3000);
    let cfg = format!(
        "[models.default]\nprovider = \"scripted\"\n[[models.default.script]]\noutputs = [{{ kind = \"message\", text = \"{text}\", deltas = 3000 }}]\n[[agents]]\nname = \"Talker\"\n[limits]\noutbound_queue = 16\nsubscriber_queue = 32\nhistory = 10000\n"
    );
    let srv = start(&cfg).await;
    let mut slow = connect_small_buffer(&srv, 2048).await;
    send(&mut slow, run_create("r", "lag", "Talker", "go")).await;
    // Do not read until the run is over.
    let mut watcher = connect(&srv, None).await;
    send(
        &mut watcher,
        json!({"type":"session.subscribe","session_id":"lag","after_seq":0}),
    )
    .await;
    recv_run_resuming(&mut watcher, "lag").await;
    let mut got: Vec<Value> = Vec::new();
    let mut lag = None;
    loop {
        let f = recv(&mut slow).await;
        match f["type"].as_str().unwrap() {
            "run.accepted" => continue,
            "lagged" => {
                lag = Some(f["resume_after_seq"].as_u64().unwrap());
                break;
            }
            "run.completed" => {
                got.push(f);
                break;
            }
            _ => got.push(f),
        }
    }
    let resume = lag.expect("the slow client was told it lagged");
    assert_eq!(got.last().map_or(0, |f| f["seq"].as_u64().unwrap()), resume);
    send(
        &mut slow,
        json!({"type":"session.subscribe","session_id":"lag","after_seq":resume}),
    )
    .await;
    got.extend(recv_run(&mut slow).await);
    let s = seqs(&got);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "resumed without gaps"
    );
}
}

on_both_stores! {
async fn a_thousand_hostile_frames_leave_the_server_and_healthy_clients_unharmed() {
    let srv = start(TWO_TENANTS).await;
    let mut healthy = connect(&srv, Some("key-acme")).await;
    send(
        &mut healthy,
        run_create("r", "mine", "Triage", "weather in Oslo"),
    )
    .await;
    recv(&mut healthy).await;
    let mine = recv_run(&mut healthy).await;
    let mut evil = connect(&srv, Some("key-globex")).await;
    let big = "x".repeat(1_200_000);
    let hostile: Vec<String> = vec![
        "{".into(),
        "null".into(),
        "[]".into(),
        "42".into(),
        r#"{"type":7}"#.into(),
        r#"{"type":"run.create","session_id":"mine","agent":"Triage","input":{"deep":[1,2]}}"#
            .into(),
        r#"{"type":"session.subscribe","session_id":"mine","after_seq":0,"epoch":"e_forged"}"#
            .into(),
        r#"{"type":"session.subscribe","session_id":"mine","after_seq":-1}"#.into(),
        r#"{"type":"run.cancel","run_id":"run_00000000000000000000000000000000"}"#.into(),
        r#"{"type":"tool.result","run_id":"x","call_id":"y","output":null}"#.into(),
        r#"{"type":"session.unsubscribe","session_id":"nope"}"#.into(),
        r#"{"type":"run.create","session_id":"","agent":"Triage","input":"x"}"#.into(),
        r#"{"type":"ping","extra":true}"#.into(),
        "\u{0000}\u{ffff}".into(),
        format!(r#"{{"type":"{}"}}"#, "a".repeat(10_000)),
        big.clone(),
    ];
    let mut errors = 0;
    for i in 0..1000 {
        send_raw(&mut evil, hostile[i % hostile.len()].clone()).await;
        let f = recv(&mut evil).await;
        assert_eq!(f["type"], "error", "frame {i}: {f}");
        errors += 1;
    }
    assert_eq!(errors, 1000);
    // The attacker's connection still works, and so does everyone else's.
    send(&mut evil, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut evil).await["type"], "pong");
    send(
        &mut healthy,
        json!({"type":"session.subscribe","session_id":"mine","after_seq":0}),
    )
    .await;
    let replay = recv_run(&mut healthy).await;
    assert_eq!(replay, mine);
    send(&mut healthy, run_create("r2", "mine", "Triage", "billing")).await;
    assert_eq!(recv(&mut healthy).await["type"], "run.accepted");
    assert_eq!(
        recv_run(&mut healthy).await.last().unwrap()["type"],
        "run.completed"
    );
    let r = reqwest::get(srv.http("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}
}

on_both_stores! {
async fn the_connection_limit_refuses_with_429_and_frees_on_close() {
    let srv = start("[limits]\nmax_connections = 2\n").await;
    let a = connect(&srv, None).await;
    let mut b = connect(&srv, None).await;
    send(&mut b, json!({"type":"ping"})).await;
    recv(&mut b).await;
    match try_connect(&srv, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(&srv, None).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the closed connection's place was not freed: {e}"),
        }
    }
}
}

/// Collects trace exports of the global tracer (shared by the tests of this binary; the test
/// looks only at its own trace id).
#[derive(Default)]
struct Traces(std::sync::Mutex<Vec<Value>>);

impl callboard::trace::TraceProcessor for Traces {
    fn on_trace_start(&self, trace: &callboard::trace::Trace) {
        if let Some(v) = trace.export() {
            self.0.lock().unwrap().push(v);
        }
    }
    fn on_trace_end(&self, _trace: &callboard::trace::Trace) {}
    fn on_span_start(&self, _span: &callboard::trace::Span) {}
    fn on_span_end(&self, _span: &callboard::trace::Span) {}
}

on_both_stores! {
async fn trace_options_and_the_session_as_default_group() {
    let traces = std::sync::Arc::new(Traces::default());
    callboard::trace::add_trace_processor(traces.clone());
    let srv = start(TWO_TENANTS).await;
    let mut a = connect(&srv, Some("key-acme")).await;
    let tid = "trace_0123456789abcdef0123456789abcdef";
    let mut req = run_create("r", "conv-9", "Triage", "billing");
    req["trace"] =
        json!({"trace_id": tid, "workflow_name": "Support chat", "metadata": {"user": "u1"}});
    send(&mut a, req).await;
    let acc = recv(&mut a).await;
    assert_eq!(acc["trace_id"], tid);
    let end = recv_run(&mut a).await.pop().unwrap();
    assert_eq!(end["trace_id"], tid);
    let t = traces
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tid)
        .cloned()
        .expect("the trace was started");
    assert_eq!(t["workflow_name"], "Support chat");
    assert_eq!(
        t["group_id"], "conv-9",
        "the session id is the default group"
    );
    assert_eq!(t["metadata"]["user"], "u1");
    let mut req = run_create("r2", "conv-9", "Triage", "billing");
    req["trace"] = json!({"disabled": true});
    send(&mut a, req).await;
    assert_eq!(recv(&mut a).await["trace_id"], Value::Null);
    assert_eq!(
        recv_run(&mut a).await.pop().unwrap()["trace_id"],
        Value::Null
    );
}
}

on_both_stores! {
async fn idle_sessions_are_retired_and_keep_their_numbering() {
    let srv = start("[limits]\nsession_idle_ms = 200\n").await;
    let mut a = connect(&srv, None).await;
    send(&mut a, run_create("r", "old", "Triage", "billing")).await;
    recv(&mut a).await;
    let first = recv_run(&mut a).await;
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    send(
        &mut a,
        json!({"type":"session.unsubscribe","session_id":"old"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.core.sessions.active() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle session was not retired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its history is gone, its numbering is not.
    send(
        &mut a,
        json!({"type":"session.subscribe","session_id":"old","after_seq":0}),
    )
    .await;
    let e = recv(&mut a).await;
    assert_eq!(e["error"]["code"], "history_truncated", "{e}");
    assert_eq!(e["error"]["oldest_seq"], last + 1);
    send(&mut a, run_create("r2", "old", "Triage", "billing again")).await;
    recv(&mut a).await;
    let second = recv_run(&mut a).await;
    assert_eq!(second[0]["seq"], last + 1);
    // The conversation's items survived.
    let items: Value = reqwest::get(srv.http("/v1/sessions/old/items"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(items["items"].as_array().unwrap().len() >= 6, "{items}");
}
}

on_both_stores! {
async fn large_frames_reach_the_client_whole() {
    let text = "0123456789".repeat(200_000); // a 2 MB answer
    let cfg = format!(
        "[models.default]\nprovider = \"scripted\"\n[[models.default.script]]\noutputs = [{{ kind = \"message\", text = \"{text}\", deltas = 10 }}]\n[[agents]]\nname = \"Talker\"\n"
    );
    let srv = start(&cfg).await;
    let mut a = connect(&srv, None).await;
    send(&mut a, run_create("r", "big", "Talker", "go")).await;
    recv(&mut a).await;
    let frames = recv_run(&mut a).await;
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.completed");
    assert_eq!(end["final_output"].as_str().unwrap().len(), 2_000_000);
}
}

on_both_stores! {
async fn run_accepted_precedes_the_runs_frames_on_a_followed_session() {
    let srv = start(TWO_TENANTS).await;
    let mut a = connect(&srv, Some("key-acme")).await;
    for i in 0..20 {
        send(
            &mut a,
            run_create(&format!("r{i}"), "same", "Triage", "billing"),
        )
        .await;
        let first = recv(&mut a).await;
        assert_eq!(first["type"], "run.accepted", "run {i}: {first}");
        let frames = recv_run(&mut a).await;
        assert!(frames.iter().all(|f| f["run_id"] == first["run_id"]));
    }
}
}
