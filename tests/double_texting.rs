//! A second message while a run is going (PROTOCOL.md 6.2), on both stores: `enqueue`
//! (durable, in order, never interleaved), `interrupt` (the run ends keeping its completed
//! turns, the new one starts with the whole history) and `rollback` (its items go).

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

const SLOW: &str = r#"
[models.default]
provider = "scripted"
delay_ms = 30
"#;

fn create(id: &str, session: &str, input: &str, on_busy: &str) -> Value {
    json!({"type":"run.create","id":id,"session_id":session,"agent":"Triage","input":input,"on_busy":on_busy})
}

async fn items(srv: &TestServer, session: &str) -> Vec<Value> {
    let v: Value = reqwest::get(srv.http(&format!("/v1/sessions/{session}/items")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn texts(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i["role"] == "user")
        .map(|i| i["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

on_both_stores! {
async fn enqueued_runs_run_one_at_a_time_in_the_order_accepted() {
    let srv = start(SLOW).await;
    let mut watcher = connect(&srv, None).await;
    send(&mut watcher, json!({"type":"session.subscribe","session_id":"q"})).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(connect(&srv, None).await);
    }
    // 20 messages from 5 connections at once.
    let mut sends = Vec::new();
    for (c, ws) in conns.iter_mut().enumerate() {
        sends.push(async move {
            for i in 0..4 {
                send(ws, create(&format!("c{c}-{i}"), "q", &format!("billing {c}-{i}"), "enqueue")).await;
            }
            let mut accepted = Vec::new();
            while accepted.len() < 4 {
                let f = recv(ws).await;
                assert_ne!(f["type"], "error", "{f}");
                if f["type"] == "run.accepted" {
                    accepted.push(f["run_id"].as_str().unwrap().to_owned());
                }
            }
            accepted
        });
    }
    let accepted: Vec<String> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    assert_eq!(accepted.len(), 20);
    // The watcher sees every run's frames, each run's contiguous, in queue order.
    let mut queued_order = Vec::new();
    let mut started_order: Vec<String> = Vec::new();
    let mut ended = 0;
    let mut last_seq = 0;
    let mut current: Option<String> = None;
    while ended < 20 {
        let f = recv(&mut watcher).await;
        if f["type"] == "session.subscribed" {
            continue;
        }
        let seq = f["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "gapless: {f}");
        last_seq = seq;
        let run = f["run_id"].as_str().unwrap().to_owned();
        match f["type"].as_str().unwrap() {
            "run.queued" => queued_order.push(run),
            "run.completed" => {
                assert_eq!(current.as_deref(), Some(run.as_str()), "the running run ends");
                current = None;
                ended += 1;
            }
            "run.failed" | "run.cancelled" => panic!("{f}"),
            _ => {
                match &current {
                    None => {
                        current = Some(run.clone());
                        started_order.push(run);
                    }
                    Some(c) => assert_eq!(c, &run, "no interleaved frames"),
                }
            }
        }
    }
    // The first message found the session free; the 19 others were queued and ran in order.
    assert_eq!(queued_order.len(), 19);
    assert_eq!(started_order[1..], queued_order[..]);
    let mut all = accepted.clone();
    all.sort();
    let mut seen = started_order.clone();
    seen.sort();
    assert_eq!(all, seen);
    // No interleaved items: each run's input is followed by its own turns.
    let its = items(&srv, "q").await;
    assert_eq!(texts(&its).len(), 20);
}

async fn interrupt_keeps_the_completed_turns_and_starts_the_new_run() {
    let srv = start(SLOW).await;
    let mut a = connect(&srv, None).await;
    send(&mut a, create("a", "int", "weather in Oslo", "reject")).await;
    let first = recv(&mut a).await["run_id"].as_str().unwrap().to_owned();
    // Wait until its first turn (the handoff to Weather) is done.
    recv_until(&mut a, &["event"]).await;
    loop {
        let f = recv(&mut a).await;
        if f["event"]["name"] == "handoff_occured" {
            break;
        }
    }
    let mut b = connect(&srv, None).await;
    send(&mut b, create("b", "int", "actually, billing", "interrupt")).await;
    let acc = recv(&mut b).await;
    assert_eq!(acc["type"], "run.accepted", "{acc}");
    let second = acc["run_id"].as_str().unwrap().to_owned();
    let end = recv_until(&mut a, &["run.cancelled", "run.completed"]).await.pop().unwrap();
    assert_eq!(end["type"], "run.cancelled", "{end}");
    assert_eq!(end["mode"], "interrupted");
    assert_eq!(end["by_run_id"], second.as_str());
    assert_eq!(end["run_id"], first.as_str());
    let done = recv_until(&mut a, &["run.completed"]).await.pop().unwrap();
    assert_eq!(done["run_id"], second.as_str());
    // The interrupted run's completed turn stays; the new run came after it.
    let its = items(&srv, "int").await;
    assert_eq!(texts(&its), ["weather in Oslo", "actually, billing"], "{its:?}");
    assert!(its.iter().any(|i| i["name"] == "transfer_to_weather"), "{its:?}");
    let rec: Value = reqwest::get(srv.http(&format!("/v1/runs/{first}"))).await.unwrap().json().await.unwrap();
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["cancel_mode"], "interrupted");
    assert_eq!(rec["by_run_id"], second.as_str());
}

async fn rollback_removes_the_runs_items() {
    let srv = start(SLOW).await;
    let http = reqwest::Client::new();
    let r = http
        .post(srv.http("/v1/sessions/rb/runs"))
        .json(&json!({"agent":"Triage","input":"billing first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut a = connect(&srv, None).await;
    send(&mut a, create("a", "rb", "weather in Oslo", "reject")).await;
    let first = recv(&mut a).await["run_id"].as_str().unwrap().to_owned();
    loop {
        let f = recv(&mut a).await;
        if f["event"]["name"] == "handoff_occured" {
            break;
        }
    }
    let r = http
        .post(srv.http("/v1/sessions/rb/runs"))
        .json(&json!({"agent":"Triage","input":"no, billing again","on_busy":"rollback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let end: Value = r.json().await.unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    let cancelled = recv_until(&mut a, &["run.cancelled"]).await.pop().unwrap();
    assert_eq!(cancelled["mode"], "rolled_back");
    assert_eq!(cancelled["run_id"], first.as_str());
    // The rolled-back run left nothing in the conversation.
    let its = items(&srv, "rb").await;
    assert_eq!(texts(&its), ["billing first", "no, billing again"], "{its:?}");
    assert!(!its.iter().any(|i| i["name"] == "transfer_to_weather"), "{its:?}");
    let mut per_status: HashMap<String, usize> = HashMap::new();
    let list: Value = http.get(srv.http("/v1/runs?session_id=rb")).send().await.unwrap().json().await.unwrap();
    for r in list["runs"].as_array().unwrap() {
        *per_status.entry(r["status"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_status.get("completed"), Some(&2), "{list}");
    assert_eq!(per_status.get("cancelled"), Some(&1), "{list}");
}

async fn reject_is_the_default_and_the_queue_is_bounded() {
    let srv = start("[models.default]\nprovider = \"scripted\"\ndelay_ms = 30\n[sessions]\nmax_queued_runs = 2\n").await;
    let mut a = connect(&srv, None).await;
    send(&mut a, create("a", "b", "weather in Oslo", "reject")).await;
    assert_eq!(recv(&mut a).await["type"], "run.accepted");
    let mut b = connect(&srv, None).await;
    send(&mut b, json!({"type":"run.create","id":"x","session_id":"b","agent":"Triage","input":"hi"})).await;
    assert_eq!(recv(&mut b).await["error"]["code"], "session_busy");
    for i in 0..2 {
        send(&mut b, create(&format!("q{i}"), "b", "hi", "enqueue")).await;
        assert_eq!(recv_until(&mut b, &["run.accepted", "error"]).await.pop().unwrap()["type"], "run.accepted");
    }
    send(&mut b, create("q3", "b", "hi", "enqueue")).await;
    let e = recv_until(&mut b, &["run.accepted", "error"]).await.pop().unwrap();
    assert_eq!(e["error"]["code"], "overloaded", "{e}");
}
}
