//! Agent mailboxes on JetStream (`[cluster] mailboxes`, the default): runs execute on
//! whichever node takes their baton. Real `callboard serve` processes on loopback ports
//! sharing NATS and PostgreSQL, each test with its own prefix and schema; node `a` is a
//! gateway (`take_batons = false`) where a test needs the run to execute elsewhere. Skipped
//! with a message when NATS or PostgreSQL is not reachable, unless
//! `CALLBOARD_REQUIRE_CLUSTER=1`.

mod cluster_support;
mod common;

use std::time::{Duration, Instant};

use cluster_support::*;
use common::{recv, send, WAIT};
use serde_json::{json, Value};

/// `[cluster]` keys of node `a` (a gateway) and of the two nodes that execute.
fn gateway_and_two(more: &str) -> Vec<String> {
    vec![
        format!("take_batons = false\n{more}"),
        more.to_owned(),
        more.to_owned(),
    ]
}

/// Waits until the run's first turn is stored; answers the node executing it.
async fn first_turn_stored(addr: &str, run_id: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = get(addr, &format!("/v1/runs/{run_id}/state")).await;
        if st["current_turn"].as_u64().unwrap_or(0) >= 1 {
            let rec = get(addr, &format!("/v1/runs/{run_id}")).await;
            return rec["node_id"].as_str().unwrap_or("").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the first turn was never stored: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SSE events of `GET /v1/sessions/{session}/events` on `addr` until a run's end.
async fn sse_until_end(addr: &str, session: &str) -> Vec<Value> {
    use futures::StreamExt;
    let url = format!("http://{addr}/v1/sessions/{session}/events?after_seq=0");
    let res = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("in time")
        .expect("request");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .expect("the run's end in time")
            .expect("the stream stays open")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = text.find("\n\n") {
            let event: String = text.drain(..i + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).expect("JSON data");
                    if v["type"] == "session.subscribed" {
                        continue;
                    }
                    let end = matches!(
                        v["type"].as_str(),
                        Some("run.completed" | "run.failed" | "run.cancelled")
                    );
                    out.push(v);
                    if end {
                        return out;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executes_on_the_node_that_takes_its_baton_and_its_client_sees_every_frame() {
    if !cluster_ready().await {
        return;
    }
    let nodes = start_nodes_with(NATS, &gateway_and_two(""), &script(20));
    let mut on_b = follow(nodes.addr(1), "m1").await;
    let sse_on_c = {
        let addr = nodes.addr(2).to_owned();
        tokio::spawn(async move { sse_until_end(&addr, "m1").await })
    };
    let mut on_a = ws(nodes.addr(0)).await;
    send(
        &mut on_a,
        json!({"type":"run.create","id":1,"session_id":"m1","agent":"A","input":"hi"}),
    )
    .await;
    let a = frames_until_end(&mut on_a).await;
    let b = frames_until_end(&mut on_b).await;
    let c = tokio::time::timeout(WAIT, sse_on_c)
        .await
        .expect("SSE in time")
        .expect("SSE task");
    let end = a.last().unwrap();
    assert_eq!(end["type"], "run.completed", "{a:?}");
    assert_eq!(end["final_output"], "The answer, from C, in eight parts.");
    let s = seqs(&a);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "the accepting node's client sees every frame, gapless from 1"
    );
    assert_eq!(a, b, "a WebSocket follower on B sees the same frames");
    assert_eq!(a, c, "an SSE follower on C sees the same frames");
    let run_id = a[0]["run_id"].as_str().unwrap().to_owned();
    let rec = get(nodes.addr(0), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    let node = rec["node_id"].as_str().unwrap_or("");
    assert!(
        node == "b" || node == "c",
        "executed by a node that took the baton, not the gateway that accepted it: {rec}"
    );
    // A second run on the session, through HTTP on the gateway, numbers on gaplessly.
    let res = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!("http://{}/v1/sessions/m1/runs", nodes.addr(0)))
            .json(&json!({"agent":"A","input":"again"}))
            .send(),
    )
    .await
    .expect("in time")
    .expect("request");
    let done: Value = res.json().await.expect("JSON");
    assert_eq!(done["type"], "run.completed", "{done}");
    let last = done["seq"].as_u64().unwrap_or(0);
    assert!(last > s.len() as u64, "{done}");
    // Both runs' frames, as any node reads them: gapless from 1 to the second run's end.
    let mut again = follow(nodes.addr(2), "m1").await;
    let mut all = Vec::new();
    while all.len() < last as usize {
        let f = recv(&mut again).await;
        if f["seq"].as_u64().is_some() {
            all.push(f["seq"].as_u64().unwrap_or(0));
        }
    }
    assert_eq!(
        all,
        (1..=last).collect::<Vec<_>>(),
        "gapless over both runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_executing_node_the_baton_is_delivered_again_and_the_run_completes() {
    if !cluster_ready().await {
        return;
    }
    let mut nodes = start_nodes_with(
        NATS,
        &gateway_and_two("mailbox_ack_wait_ms = 1500"),
        &script(250),
    );
    let mut on_a = ws(nodes.addr(0)).await;
    let run_id = start_run(&mut on_a, "m2").await;
    let executing = first_turn_stored(nodes.addr(0), &run_id).await;
    let (dead, alive) = match executing.as_str() {
        "b" => (1, "c"),
        "c" => (2, "b"),
        other => panic!("executed by {other:?}, not by b or c"),
    };
    let mut x = nodes.nodes[dead].take().expect("the executing node");
    x.child.kill().expect("SIGKILL");
    x.child.wait().expect("reaped");
    let a = frames_until_end(&mut on_a).await;
    let s = seqs(&a);
    for w in s.windows(2) {
        assert!(w[0] < w[1], "each seq once, in order: {s:?}");
    }
    let end = a.last().unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    assert_eq!(end["final_output"], "The answer, from C, in eight parts.");
    let rec = get(nodes.addr(0), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["node_id"], alive, "finished by the node left: {rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_one_session_start_exactly_one_run() {
    if !cluster_ready().await {
        return;
    }
    let nodes = start_nodes_with(NATS, &vec![String::new(); 3], &script(100));
    for round in 0..3 {
        let session = format!("race-{round}");
        let mut first = ws(nodes.addr(0)).await;
        let mut second = ws(nodes.addr(1)).await;
        let create =
            json!({"type":"run.create","id":1,"session_id":session,"agent":"A","input":"hi"});
        send(&mut first, create.clone()).await;
        send(&mut second, create).await;
        let mut outcomes = Vec::new();
        for w in [&mut first, &mut second] {
            loop {
                let f = recv(w).await;
                match f["type"].as_str().unwrap_or("") {
                    "error" => {
                        outcomes.push(f["error"]["code"].as_str().unwrap_or("").to_owned());
                        break;
                    }
                    "run.completed" | "run.failed" | "run.cancelled" => {
                        outcomes.push(f["type"].as_str().unwrap_or("").to_owned());
                        break;
                    }
                    _ => {}
                }
            }
        }
        outcomes.sort();
        assert_eq!(
            outcomes,
            ["run.completed", "session_busy"],
            "round {round}: exactly one of the two runs ran"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_a_node_that_is_not_executing_the_run_reaches_it() {
    if !cluster_ready().await {
        return;
    }
    let nodes = start_nodes_with(NATS, &gateway_and_two(""), &script(250));
    let mut on_a = ws(nodes.addr(0)).await;
    let run_id = start_run(&mut on_a, "m4").await;
    let executing = first_turn_stored(nodes.addr(0), &run_id).await;
    assert!(executing == "b" || executing == "c", "{executing}");
    // Sent to the gateway, which does not execute it.
    send(
        &mut on_a,
        json!({"type":"run.cancel","id":2,"run_id":run_id,"mode":"immediate"}),
    )
    .await;
    let a = frames_until_end(&mut on_a).await;
    let end = a.last().unwrap();
    assert_eq!(end["type"], "run.cancelled", "{end}");
    let rec = get(nodes.addr(1), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "cancelled", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_overloaded() {
    if !cluster_ready().await {
        return;
    }
    // One node that works one baton at a time, and room for one baton in the mailboxes.
    let nodes = start_nodes_with(
        NATS,
        &["mailbox_max_msgs = 1\nmailbox_node_runs = 1".to_owned()],
        &script(250),
    );
    let mut first = ws(nodes.addr(0)).await;
    send(
        &mut first,
        json!({"type":"run.create","id":1,"session_id":"f1","agent":"A","input":"hi"}),
    )
    .await;
    let accepted = recv(&mut first).await;
    assert_eq!(accepted["type"], "run.accepted", "{accepted}");
    // Its baton is in the mailbox (taken, not yet acknowledged) once its first frame comes.
    let mut a = vec![recv(&mut first).await];
    assert!(a[0]["seq"].as_u64().is_some(), "{:?}", a[0]);
    let mut second = ws(nodes.addr(0)).await;
    send(
        &mut second,
        json!({"type":"run.create","id":1,"session_id":"f2","agent":"A","input":"hi"}),
    )
    .await;
    let refused = loop {
        let f = recv(&mut second).await;
        if f["type"] == "error" {
            break f;
        }
        assert_ne!(f["type"], "run.completed", "the second run ran: {f}");
    };
    assert_eq!(refused["error"]["code"], "overloaded", "{refused}");
    a.extend(frames_until_end(&mut first).await);
    assert_eq!(a.last().unwrap()["type"], "run.completed", "{a:?}");
}

/// A tool server on loopback: `/wire` counts its calls.
async fn tool_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/wire",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                "sent"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_paused_for_approval_elsewhere_resumes_through_its_mailbox_when_decided() {
    if !cluster_ready().await {
        return;
    }
    let (tool, calls) = tool_server().await;
    let body = format!(
        r#"
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
url = "http://{tool}/wire"
parameters = {{ type = "object", properties = {{ amount = {{ type = "number" }} }}, required = ["amount"] }}
needs_approval = true
"#
    );
    let nodes = start_nodes_with(NATS, &gateway_and_two(""), &body);
    let mut on_a = ws(nodes.addr(0)).await;
    send(
        &mut on_a,
        json!({"type":"run.create","id":1,"session_id":"m6","agent":"Banker","input":"pay"}),
    )
    .await;
    let mut frames = Vec::new();
    let paused = loop {
        let f = recv(&mut on_a).await;
        match f["type"].as_str().unwrap_or("") {
            "run.accepted" => continue,
            "run.interrupted" => {
                frames.push(f.clone());
                break f;
            }
            "error" | "run.failed" | "run.completed" => panic!("not paused: {f}"),
            _ => frames.push(f),
        }
    };
    let run_id = paused["run_id"].as_str().expect("run id").to_owned();
    let call_id = paused["interruptions"][0]["call_id"]
        .as_str()
        .expect("a pending call")
        .to_owned();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing runs before approval"
    );
    // Decided on the gateway, which executes nothing.
    let res = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!(
                "http://{}/v1/runs/{run_id}/decisions",
                nodes.addr(0)
            ))
            .json(&json!({"call_id": call_id, "decision": "approve"}))
            .send(),
    )
    .await
    .expect("in time")
    .expect("request");
    assert!(res.status().is_success(), "{}", res.status());
    frames.extend(frames_until_end(&mut on_a).await);
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(types.contains(&"run.resumed"), "{types:?}");
    let end = frames.last().unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    assert_eq!(end["final_output"], "all done");
    let s = seqs(&frames);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "gapless over the pause"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let rec = get(nodes.addr(0), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    let node = rec["node_id"].as_str().unwrap_or("");
    assert!(node == "b" || node == "c", "{rec}");
}
