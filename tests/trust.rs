//! Trustworthy on one node, on every store and transport: one owner per session (one run at
//! a time, settled before announced), DELETE during a run, subscribing before the first run,
//! memory that follows activity, SSE as a first-class subscriber, and the close code of an
//! oversized message. Each `on_both_stores!` test runs on the memory and the SQLite store.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// A cast whose model takes its time, so a run is still going when the next request comes.
const SLOW: &str = r#"
[models.default]
provider = "scripted"
delay_ms = 60
"#;

async fn http_run(
    http: &reqwest::Client,
    srv: &TestServer,
    session: &str,
    input: &str,
) -> (u16, Value) {
    let r = http
        .post(srv.http(&format!("/v1/sessions/{session}/runs")))
        .json(&json!({"agent": "Triage", "input": input}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metric(srv: &TestServer, name: &str) -> u64 {
    let text = reqwest::get(srv.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

on_both_stores! {
async fn one_run_per_session_on_every_transport() {
    let srv = start(SLOW).await;
    let http = reqwest::Client::new();
    let mut a = connect(&srv, None).await;
    let mut b = connect(&srv, None).await;
    send(&mut a, run_create("a", "one", "Triage", "weather in Oslo")).await;
    let acc = recv(&mut a).await;
    assert_eq!(acc["type"], "run.accepted", "{acc}");
    // While it goes: another connection, and HTTP, are refused.
    send(&mut b, run_create("b", "one", "Triage", "billing")).await;
    let e = recv(&mut b).await;
    assert_eq!(e["error"]["code"], "session_busy", "{e}");
    let (status, body) = http_run(&http, &srv, "one", "billing").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "session_busy");
    // Its frames are its own: no other run's items interleave.
    let frames = recv_run(&mut a).await;
    assert!(frames.iter().all(|f| f["run_id"] == acc["run_id"]));
    assert_eq!(frames.last().unwrap()["type"], "run.completed");
}

async fn the_end_frame_comes_after_the_session_is_free_and_the_record_written() {
    let srv = start("[models.default]\nprovider = \"scripted\"\n").await;
    let http = reqwest::Client::new();
    // HTTP: each answer is the end frame; the next request never finds the session busy,
    // and the run's record already says how it ended.
    for i in 0..150 {
        let (status, end) = http_run(&http, &srv, "seq", &format!("billing {i}")).await;
        assert_eq!(status, 200, "run {i}: {end}");
        assert_eq!(end["type"], "run.completed", "run {i}: {end}");
        let rec: Value = http
            .get(srv.http(&format!("/v1/runs/{}", end["run_id"].as_str().unwrap())))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rec["status"], "completed", "run {i}: {rec}");
        assert_eq!(rec["last_agent"], "Billing", "{rec}");
        assert!(rec["usage"]["requests"].as_u64().unwrap() >= 2, "{rec}");
    }
    // WebSocket: the next run.create right after the end frame is accepted.
    let mut ws = connect(&srv, None).await;
    for i in 0..100 {
        send(&mut ws, run_create(&format!("w{i}"), "seq-ws", "Triage", "billing")).await;
        let acc = recv(&mut ws).await;
        assert_eq!(acc["type"], "run.accepted", "run {i}: {acc}");
        assert_eq!(recv_run(&mut ws).await.last().unwrap()["type"], "run.completed");
    }
}

async fn delete_during_a_run_is_refused_and_afterwards_restarts_the_numbering() {
    let srv = start(SLOW).await;
    let http = reqwest::Client::new();
    let mut a = connect(&srv, None).await;
    let mut watcher = connect(&srv, None).await;
    send(&mut a, run_create("r1", "gone", "Triage", "weather in Oslo")).await;
    let acc = recv(&mut a).await;
    let epoch = acc["epoch"].as_str().unwrap().to_owned();
    send(&mut watcher, json!({"type":"session.subscribe","session_id":"gone"})).await;
    let ack = recv(&mut watcher).await;
    assert_eq!(ack["type"], "session.subscribed");
    assert_eq!(ack["epoch"], epoch.as_str());
    let r = http.delete(srv.http("/v1/sessions/gone")).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    if status != 409 {
        let next = recv(&mut a).await;
        panic!("DELETE during a run is refused: {v}; the run's connection got {next}");
    }
    assert_eq!(v["error"]["code"], "session_busy");
    let first = recv_run(&mut a).await;
    assert_eq!(first.last().unwrap()["type"], "run.completed");
    let before: Value = http.get(srv.http("/v1/sessions/gone/items")).send().await.unwrap().json().await.unwrap();
    let n_items = before["items"].as_array().unwrap().len();
    assert!(n_items >= 6, "{before}");
    // After the run: deleted, and the subscriber of the old numbering is told.
    let r = http.delete(srv.http("/v1/sessions/gone")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let told = recv_until(&mut watcher, &["error"]).await.pop().unwrap();
    assert_eq!(told["error"]["code"], "history_truncated", "{told}");
    let new_epoch = told["error"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch);
    assert_eq!(
        http.get(srv.http("/v1/sessions/gone/items")).send().await.unwrap().status(),
        404
    );
    // The run's own connection followed the session too: it is told as well.
    let told_a = recv(&mut a).await;
    assert_eq!(told_a["error"]["code"], "history_truncated", "{told_a}");
    // The session's next use numbers from 1 under the new epoch, with only its own items.
    send(&mut a, run_create("r2", "gone", "Triage", "billing")).await;
    let acc2 = recv(&mut a).await;
    assert_eq!(acc2["type"], "run.accepted", "{acc2}");
    assert_eq!(acc2["epoch"], new_epoch.as_str());
    let second = recv_run(&mut a).await;
    assert_eq!(second[0]["seq"], 1);
    let after: Value = http.get(srv.http("/v1/sessions/gone/items")).send().await.unwrap().json().await.unwrap();
    let items = after["items"].as_array().unwrap();
    assert_eq!(items[0]["content"], "billing", "the new conversation starts with its input: {after}");
    // An old-epoch resume is never served another numbering's frames.
    send(
        &mut watcher,
        json!({"type":"session.subscribe","session_id":"gone","after_seq":3,"epoch":epoch}),
    )
    .await;
    let e = recv(&mut watcher).await;
    assert_eq!(e["error"]["code"], "history_truncated", "{e}");
    assert_eq!(e["error"]["epoch"], acc2["epoch"]);
}

async fn subscribing_before_the_first_run_sees_the_run_from_seq_1() {
    let srv = start("[models.default]\nprovider = \"scripted\"\n").await;
    let mut tab = connect(&srv, None).await;
    send(&mut tab, json!({"type":"session.subscribe","session_id":"fresh","id":"s"})).await;
    let ack = recv(&mut tab).await;
    assert_eq!(ack["type"], "session.subscribed", "{ack}");
    assert_eq!(ack["id"], "s");
    assert_eq!(ack["last_seq"], 0);
    let mut other = connect(&srv, None).await;
    send(&mut other, run_create("r", "fresh", "Triage", "billing")).await;
    let acc = recv(&mut other).await;
    assert_eq!(acc["epoch"], ack["epoch"], "one numbering");
    let seen = recv_run(&mut tab).await;
    let own = recv_run(&mut other).await;
    assert_eq!(seen, own);
    assert_eq!(seen[0]["seq"], 1);
}

async fn run_records_outlive_the_run_on_every_store() {
    let srv = start("[models.default]\nprovider = \"scripted\"\n").await;
    let http = reqwest::Client::new();
    let (_, end) = http_run(&http, &srv, "rec", "weather in Oslo").await;
    let id = end["run_id"].as_str().unwrap();
    let rec: Value = http.get(srv.http(&format!("/v1/runs/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["session_id"], "rec");
    let list: Value = http
        .get(srv.http("/v1/runs?session_id=rec&status=completed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["runs"][0]["run_id"], id);
}

async fn idle_sessions_leave_memory_and_history_stays_in_its_budget() {
    let srv = start(
        "[models.default]\nprovider = \"scripted\"\n[limits]\nsession_idle_ms = 300\nhistory_bytes = 60000\n",
    )
    .await;
    let http = reqwest::Client::new();
    for i in 0..40 {
        let (status, _) = http_run(&http, &srv, &format!("chat-{i}"), "weather in Oslo").await;
        assert_eq!(status, 200);
    }
    // Over the budget the least recently used sessions lose their frames first.
    let budget = srv.core.sessions.budget().clone();
    wait_for("history within its budget", async || budget.used() <= budget.limit()).await;
    // Idle sessions are passivated: memory follows activity, not history.
    let core = srv.core.clone();
    wait_for("idle sessions passivated", async || core.sessions.active() == 0).await;
    assert_eq!(budget.used(), 0);
    // Their conversations and numbering are still there.
    let (status, end) = http_run(&http, &srv, "chat-0", "billing").await;
    assert_eq!(status, 200);
    assert!(end["seq"].as_u64().unwrap() > 20, "numbering continues: {end}");
}

async fn idle_sessions_leave_memory_while_history_stays_over_budget_under_load() {
    // Every run pushes retained history over its budget, so the budget wakes the janitor
    // constantly; its housekeeping must still run (a soak once grew without bound here).
    let srv = start(
        "[models.default]\nprovider = \"scripted\"\n[limits]\nsession_idle_ms = 300\nhistory_bytes = 20000\n",
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop2, done2, addr) = (stop.clone(), done.clone(), srv.addr);
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = http
                .post(format!("http://{addr}/v1/sessions/load-{i}/runs"))
                .json(&json!({"agent": "Triage", "input": "weather in Oslo"}))
                .timeout(WAIT)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            i += 1;
            done2.store(i, std::sync::atomic::Ordering::Relaxed);
        }
        i
    });
    wait_for("the load to start", async || done.load(std::sync::atomic::Ordering::Relaxed) >= 3).await;
    let core = srv.core.clone();
    wait_for("the first sessions passivated while the load goes on", async || {
        core.sessions.active_owner(callboard::session::DEFAULT_TENANT, "load-0").is_none()
            && core.sessions.active_owner(callboard::session::DEFAULT_TENANT, "load-1").is_none()
    })
    .await;
    assert!(!load.is_finished(), "the load was still going");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = load.await.unwrap();
    assert!(runs > 2, "{runs}");
}

async fn sse_streams_are_first_class_subscribers() {
    let srv = start("[models.default]\nprovider = \"scripted\"\n[limits]\nmax_connections = 3\n").await;
    let http = reqwest::Client::new();
    let mut streams = Vec::new();
    for i in 0..3 {
        let r = http
            .get(srv.http(&format!("/v1/sessions/sse-{i}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let core = srv.core.clone();
    wait_for("three subscriptions", async || {
        core.metrics.subscriptions.load(std::sync::atomic::Ordering::Acquire) == 3
    })
    .await;
    assert_eq!(metric(&srv, "callboard_connections").await, 3);
    // The fourth connection, SSE or WebSocket, is over the limit.
    let r = http.get(srv.http("/v1/sessions/sse-x/events")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(try_connect(&srv, None).await.is_err());
    drop(streams.pop());
    wait_for("a freed place", async || {
        core.metrics.connections.load(std::sync::atomic::Ordering::Acquire) == 2
    })
    .await;
    let r = http.get(srv.http("/v1/sessions/sse-y/events")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn a_stuck_sse_reader_is_closed_after_the_write_timeout() {
    let text = "0123456789".repeat(200_000);
    let cfg = format!(
        "[models.default]\nprovider = \"scripted\"\n[[models.default.script]]\noutputs = [{{ kind = \"message\", text = \"{text}\", deltas = 400 }}]\n[[agents]]\nname = \"Talker\"\n[limits]\nwrite_timeout_ms = 400\nsubscriber_queue = 100000\n"
    );
    let srv = start(&cfg).await;
    // A raw client that asks for the session's events and never reads them.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stuck = sock.connect(srv.addr).await.unwrap();
    stuck
        .write_all(b"GET /v1/sessions/big/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let core = srv.core.clone();
    wait_for("the SSE stream", async || {
        core.metrics.connections.load(std::sync::atomic::Ordering::Acquire) == 1
    })
    .await;
    let http = reqwest::Client::new();
    let r = http
        .post(srv.http("/v1/sessions/big/runs"))
        .json(&json!({"agent": "Talker", "input": "talk"}))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The stuck reader holds nothing for ever: its connection is closed and released.
    wait_for("the stuck stream closed", async || {
        core.metrics.connections.load(std::sync::atomic::Ordering::Acquire) == 0
    })
    .await;
    drop(stuck);
}

async fn a_message_far_over_the_limit_closes_with_1009() {
    let srv = start("[models.default]\nprovider = \"scripted\"\n[limits]\nmax_frame_bytes = 1000\n").await;
    let mut ws = connect(&srv, None).await;
    ws.send(Message::text("x".repeat(200_000))).await.unwrap();
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => return c,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1009));
}

async fn a_connection_running_many_sessions_holds_a_bounded_number_of_subscriptions() {
    let srv = start(
        "[models.default]\nprovider = \"scripted\"\n[limits]\nmax_subscriptions_per_connection = 4\nsession_idle_ms = 300\n",
    )
    .await;
    let mut ws = connect(&srv, None).await;
    let mut notices = 0;
    for i in 0..12 {
        send(&mut ws, run_create(&format!("r{i}"), &format!("chat-{i}"), "Triage", "billing")).await;
        for f in recv_until(&mut ws, &["run.completed"]).await {
            if f["type"] == "session.unsubscribed" {
                notices += 1;
            }
        }
    }
    // Past the limit, the least recently used idle subscription makes room, and says so.
    assert_eq!(notices, 8);
    let core = srv.core.clone();
    assert!(core.metrics.subscriptions.load(std::sync::atomic::Ordering::Acquire) <= 4);
    // Sessions nobody follows any more leave memory.
    wait_for("passivation", async || core.sessions.active() <= 4).await;
}
}
