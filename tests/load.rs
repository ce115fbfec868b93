//! Measurements for the report (ignored by default; run with
//! `cargo test --release --test load -- --ignored --nocapture --test-threads=1`):
//! connections and active sessions held, publish-to-client frame latency, memory per idle
//! connection. Every loop is bounded in count and time and talks to 127.0.0.1 only.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callboard::bus::FrameBody;
use callboard::StreamEvent;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn pct(v: &mut [u128], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn frame_latency_publish_to_client() {
    let subscribers: usize = std::env::var("SUBSCRIBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let frames: usize = 2000;
    let srv = start("[limits]\nsubscriber_queue = 4096\nhistory = 4096\n").await;
    let owner = srv
        .core
        .sessions
        .owner(&std::sync::Arc::from("default"), "lat")
        .await
        .unwrap();
    let topic = owner.topic().unwrap();
    let run: Arc<str> = "run_latency".into();
    let mut clients = Vec::new();
    for _ in 0..subscribers {
        let mut ws = connect(&srv, None).await;
        send(
            &mut ws,
            json!({"type":"session.subscribe","session_id":"lat"}),
        )
        .await;
        clients.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for mut ws in clients {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(frames);
            while lat.len() < frames {
                let m = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("frame in time");
                if let Some(Ok(Message::Text(t))) = m {
                    let got = now_ns();
                    // Cheap parse on the client side: the timestamp is the agent name.
                    let s = t.as_str();
                    if let Some(i) = s.find("\"name\":\"") {
                        let rest = &s[i + 8..];
                        let sent: u128 = rest[..rest.find('"').unwrap()].parse().unwrap();
                        lat.push(got.saturating_sub(sent));
                    }
                }
            }
            lat
        }));
    }
    let t0 = Instant::now();
    for i in 0..frames {
        topic.publish(
            &run,
            FrameBody::Event {
                event: StreamEvent::AgentUpdated {
                    new_agent: now_ns().to_string().into(),
                },
                tool: None,
            },
        );
        // About 1,000 frames per second per session, a fast token stream.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let took = t0.elapsed();
    let n = all.len();
    eprintln!(
        "latency publish->client: {subscribers} subscribers x {frames} frames = {n} deliveries in {took:?}: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        pct(&mut all, 0.5),
        pct(&mut all, 0.99),
        pct(&mut all, 1.0)
    );
}

struct Bin(Child);
impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(config: &str) -> (Bin, String) {
    let path = std::env::temp_dir().join(format!("callboard-load-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(std::env::temp_dir())
        .env("CALLBOARD_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (Bin(child), addr)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn small_client(addr: &str) -> Ws {
    let mut cfg = WebSocketConfig::default();
    cfg.read_buffer_size = 4096;
    cfg.write_buffer_size = 4096;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/v1/ws"),
            Some(cfg),
            false,
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn connections_sessions_and_memory_per_idle_connection() {
    let n: usize = std::env::var("CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let active: usize = std::env::var("ACTIVE_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (bin, addr) = spawn_server(
        "[server]\nbind = \"127.0.0.1:0\"\n[models.default]\nprovider = \"scripted\"\ndelay_ms = 200\n[limits]\nmax_connections = 20000\nmax_runs_per_tenant = 20000\n",
    );
    let pid = bin.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = small_client(&addr).await;
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
        let _ = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);
    let per_conn = (idle.saturating_sub(base)) as f64 / n as f64;
    eprintln!("idle: {n} connections, server RSS {base} KiB -> {idle} KiB: {per_conn:.1} KiB per idle connection");
    // Active sessions: `active` of them run a slow demo conversation in their own session.
    let t0 = Instant::now();
    for (i, ws) in conns.iter_mut().take(active).enumerate() {
        let f = json!({"type":"run.create","id":i,"session_id":format!("s{i}"),"agent":"Triage","input":"What is the weather in Oslo?","format":"chat"});
        ws.send(Message::text(f.to_string())).await.unwrap();
    }
    let mut done = 0;
    let mut frames = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    for ws in conns.iter_mut().take(active) {
        loop {
            assert!(Instant::now() < deadline, "runs did not finish in time");
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("frame in time");
            if let Some(Ok(Message::Text(t))) = m {
                frames += 1;
                if t.as_str().contains("\"run.completed\"") {
                    done += 1;
                    break;
                }
            }
            if frames.is_multiple_of(5000) {
                peak = peak.max(rss_kib(pid));
            }
        }
    }
    let took = t0.elapsed();
    peak = peak.max(rss_kib(pid));
    eprintln!(
        "active: {done}/{active} concurrent sessions with a streamed 3-turn run each, {frames} chat frames in {took:?}, server peak RSS {peak} KiB, all {n} connections held"
    );
    assert_eq!(done, active);
}
