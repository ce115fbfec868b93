//! More than one node: three `callboard serve` processes (the real binary, loopback ports)
//! sharing NATS JetStream and PostgreSQL, each test with its own stream and bucket prefix
//! and PostgreSQL schema. Skipped with a message when NATS (127.0.0.1:4222, `nats-server
//! -js`) or PostgreSQL is not reachable, unless `CALLBOARD_REQUIRE_CLUSTER=1`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{recv, send, spawn_binary, Binary, PgSchema, Ws, WAIT};
use serde_json::{json, Value};

const NATS: &str = "nats://127.0.0.1:4222";

/// Whether NATS and PostgreSQL answer; else skip (or fail under CALLBOARD_REQUIRE_CLUSTER=1).
async fn cluster_ready() -> bool {
    let nats = matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect("127.0.0.1:4222")
        )
        .await,
        Ok(Ok(_))
    );
    let required = std::env::var("CALLBOARD_REQUIRE_CLUSTER").as_deref() == Ok("1");
    if !nats {
        let msg = "NATS with JetStream is not reachable at 127.0.0.1:4222: install and start it (Debian: apt-get install nats-server; nats-server -js)";
        if required {
            panic!("{msg} (CALLBOARD_REQUIRE_CLUSTER=1)");
        }
        eprintln!("skipped: {msg}");
        return false;
    }
    if required {
        std::env::set_var("CALLBOARD_REQUIRE_POSTGRES", "1");
    }
    common::postgres_ready().await
}

/// The test's streams and bucket, deleted when dropped.
struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        Prefix(format!(
            "cbt{}_{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let p = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(NATS)).await
                else {
                    return;
                };
                let js = async_nats::jetstream::new(c);
                let _ = js.delete_stream(format!("{p}_bus")).await;
                let _ = js.delete_key_value(format!("{p}_nodes")).await;
            });
        })
        .join();
    }
}

/// Three turns (two handoffs, then an answer of 8 deltas), each model event `delay` ms apart.
fn script(delay: u64) -> String {
    format!(
        r#"
[models.default]
provider = "scripted"
delay_ms = {delay}
script = [
  {{ outputs = [ {{ kind = "call", name = "transfer_to_b", arguments = "{{}}", chunks = 1 }} ] }},
  {{ outputs = [ {{ kind = "call", name = "transfer_to_c", arguments = "{{}}", chunks = 1 }} ] }},
  {{ outputs = [ {{ kind = "message", text = "The answer, from C, in eight parts.", deltas = 8 }} ] }},
]

[[agents]]
name = "A"
handoffs = ["B"]

[[agents]]
name = "B"
handoffs = ["C"]

[[agents]]
name = "C"
"#
    )
}

struct Nodes {
    nodes: Vec<Option<Binary>>,
    _dirs: Vec<tempfile::TempDir>,
    _schema: PgSchema,
    _prefix: Prefix,
}

impl Nodes {
    fn addr(&self, i: usize) -> &str {
        &self.nodes[i].as_ref().expect("node running").addr
    }
}

/// Starts nodes `a`, `b`, `c`, ... on one schema and prefix, each in a folder of its own.
fn start_nodes(n: usize, delay: u64) -> Nodes {
    start_nodes_on(NATS, n, delay)
}

/// [`start_nodes`] on the NATS at `nats`.
fn start_nodes_on(nats: &str, n: usize, delay: u64) -> Nodes {
    let schema = PgSchema::new();
    let prefix = Prefix::new();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("callboard.toml");
        let cfg = format!(
            "[server]\nbind = \"127.0.0.1:0\"\n\n[sessions]\nstore = \"{}\"\n\n[cluster]\nnats_url = \"{nats}\"\nnode_id = \"{}\"\nprefix = \"{}\"\nheartbeat_ms = 250\nnode_timeout_ms = 1500\n{}",
            schema.url(),
            (b'a' + i as u8) as char,
            prefix.0,
            script(delay)
        );
        std::fs::write(&path, cfg).expect("write config");
        nodes.push(Some(spawn_binary(&path, &[])));
        dirs.push(dir);
    }
    Nodes {
        nodes,
        _dirs: dirs,
        _schema: schema,
        _prefix: prefix,
    }
}

async fn ws(addr: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

async fn get(addr: &str, path: &str) -> Value {
    let r = tokio::time::timeout(WAIT, reqwest::get(format!("http://{addr}{path}")))
        .await
        .expect("in time")
        .expect("request");
    r.json().await.unwrap_or(Value::Null)
}

/// Follows `session` from the start; waits for the answer.
async fn follow(addr: &str, session: &str) -> Ws {
    let mut w = ws(addr).await;
    send(
        &mut w,
        json!({"type":"session.subscribe","session_id":session,"after_seq":0}),
    )
    .await;
    let ack = recv(&mut w).await;
    assert_eq!(ack["type"], "session.subscribed", "{ack}");
    w
}

/// A run's frames (numbered ones) until its end frame.
async fn frames_until_end(w: &mut Ws) -> Vec<Value> {
    let mut v = Vec::new();
    loop {
        let f = recv(w).await;
        match f["type"].as_str().unwrap_or("") {
            "session.subscribed" | "run.accepted" => continue,
            "error" => panic!("error frame: {f}"),
            t => {
                let end = matches!(t, "run.completed" | "run.failed" | "run.cancelled");
                v.push(f);
                if end {
                    return v;
                }
            }
        }
    }
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["seq"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_on_a_reaches_b_and_c_identically_and_gapless() {
    if !cluster_ready().await {
        return;
    }
    let nodes = start_nodes(3, 20);
    let mut on_b = follow(nodes.addr(1), "s1").await;
    let mut on_c = follow(nodes.addr(2), "s1").await;
    let mut on_a = ws(nodes.addr(0)).await;
    send(
        &mut on_a,
        json!({"type":"run.create","id":1,"session_id":"s1","agent":"A","input":"hi"}),
    )
    .await;
    let a = frames_until_end(&mut on_a).await;
    let b = frames_until_end(&mut on_b).await;
    let c = frames_until_end(&mut on_c).await;
    assert_eq!(a.last().unwrap()["type"], "run.completed", "{a:?}");
    assert_eq!(a, b, "B sees exactly what A's own client sees");
    assert_eq!(a, c, "so does C");
    let s = seqs(&a);
    assert_eq!(
        s,
        (1..=s.len() as u64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    let run_id = a[0]["run_id"].as_str().unwrap().to_owned();
    let rec = get(nodes.addr(2), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["node_id"], "a", "{rec}");
    let cluster = get(nodes.addr(1), "/v1/cluster").await;
    let ids: BTreeSet<&str> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from(["a", "b", "c"]), "{cluster}");
    assert_eq!(cluster["node_id"], "b");
    let ready = get(nodes.addr(0), "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_running_node_mid_run_the_run_completes_on_another() {
    if !cluster_ready().await {
        return;
    }
    let mut nodes = start_nodes(3, 250);
    let mut on_b = follow(nodes.addr(1), "s2").await;
    let mut on_c = follow(nodes.addr(2), "s2").await;
    let mut on_a = ws(nodes.addr(0)).await;
    send(
        &mut on_a,
        json!({"type":"run.create","id":1,"session_id":"s2","agent":"A","input":"hi"}),
    )
    .await;
    let accepted = recv(&mut on_a).await;
    let run_id = accepted["run_id"]
        .as_str()
        .expect("run.accepted")
        .to_owned();
    // Kill A once its first turn is stored (the second turn's events are 250 ms apart).
    let deadline = Instant::now() + WAIT;
    loop {
        let st = get(nodes.addr(1), &format!("/v1/runs/{run_id}/state")).await;
        if st["current_turn"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first turn was never stored: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut a = nodes.nodes[0].take().expect("node a");
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    drop(on_a);
    let b = frames_until_end(&mut on_b).await;
    let c = frames_until_end(&mut on_c).await;
    assert_eq!(b, c, "B and C see the same frames");
    let s = seqs(&b);
    for w in s.windows(2) {
        assert!(w[0] < w[1], "each seq once, in order: {s:?}");
    }
    let end = b.last().unwrap();
    assert_eq!(end["type"], "run.completed", "{end}");
    assert_eq!(end["final_output"], "The answer, from C, in eight parts.");
    let rec = get(nodes.addr(1), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    let node = rec["node_id"].as_str().unwrap_or("");
    assert!(
        node == "b" || node == "c",
        "taken over by a live node: {rec}"
    );
    // A is gone from the live nodes.
    let deadline = Instant::now() + WAIT;
    loop {
        let cluster = get(nodes.addr(2), "/v1/cluster").await;
        let ids: Vec<&str> = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["node_id"].as_str())
            .collect();
        if ids == ["b", "c"] {
            break;
        }
        assert!(Instant::now() < deadline, "{cluster}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_stay_in_order_under_200_sessions_over_three_nodes() {
    if !cluster_ready().await {
        return;
    }
    let nodes = start_nodes(3, 0);
    let addrs: Vec<String> = (0..3).map(|i| nodes.addr(i).to_owned()).collect();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let run_on = addrs[i % 3].clone();
        let follow_on = addrs[(i + 1) % 3].clone();
        tasks.push(tokio::spawn(async move {
            let session = format!("load-{i}");
            let mut follower = follow(&follow_on, &session).await;
            let mut runner = ws(&run_on).await;
            send(
                &mut runner,
                json!({"type":"run.create","id":1,"session_id":session,"agent":"A","input":"hi"}),
            )
            .await;
            let here = frames_until_end(&mut runner).await;
            let there = frames_until_end(&mut follower).await;
            assert_eq!(
                here, there,
                "session {session}: the other node sees the same frames"
            );
            let s = seqs(&there);
            assert_eq!(
                s,
                (1..=s.len() as u64).collect::<Vec<_>>(),
                "session {session}"
            );
            assert_eq!(there.last().unwrap()["type"], "run.completed");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every session in time")
            .expect("session checks");
    }
}

/// A nats-server of the test's own (its port and store folder), restartable; killed when
/// dropped. The machine's NATS is never touched.
struct PrivateNats {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut n = PrivateNats {
            child: None,
            port,
            dir: tempfile::tempdir().ok()?,
        };
        n.up()?;
        Some(n)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) -> Option<()> {
        let child = std::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(())
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_during_a_run_the_run_completes_and_nothing_is_lost() {
    if !cluster_ready().await {
        return;
    }
    let Some(mut nats) = PrivateNats::start() else {
        let msg = "cannot start a private nats-server (Debian: apt-get install nats-server)";
        if std::env::var("CALLBOARD_REQUIRE_CLUSTER").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    };
    let nodes = start_nodes_on(&nats.url(), 2, 150);
    let mut on_b = follow(nodes.addr(1), "s3").await;
    let mut on_a = ws(nodes.addr(0)).await;
    send(
        &mut on_a,
        json!({"type":"run.create","id":1,"session_id":"s3","agent":"A","input":"hi"}),
    )
    .await;
    let accepted = recv(&mut on_a).await;
    let run_id = accepted["run_id"]
        .as_str()
        .expect("run.accepted")
        .to_owned();
    // NATS goes away for a second while the run is between its turns.
    let deadline = Instant::now() + WAIT;
    loop {
        let st = get(nodes.addr(1), &format!("/v1/runs/{run_id}/state")).await;
        if st["current_turn"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first turn was never stored: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get(nodes.addr(0), "/readyz").await;
    assert_eq!(
        ready["status"], "not_ready",
        "readyz says NATS is away: {ready}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.up().expect("nats-server starts again");
    let a = frames_until_end(&mut on_a).await;
    let b = frames_until_end(&mut on_b).await;
    assert_eq!(a.last().unwrap()["type"], "run.completed", "{a:?}");
    assert_eq!(a, b, "the follower on B lost nothing");
    let s = seqs(&a);
    assert_eq!(
        s,
        (s[0]..s[0] + s.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let rec = get(nodes.addr(1), &format!("/v1/runs/{run_id}")).await;
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(
        rec["node_id"], "a",
        "not taken over: A was alive all along: {rec}"
    );
}
