//! Helpers of the cluster tests (`tests/cluster.rs`, `tests/mailbox.rs`): real `callboard
//! serve` processes sharing NATS JetStream and PostgreSQL, each test with its own stream
//! prefix and PostgreSQL schema; skipped with a message when NATS or PostgreSQL is not
//! reachable, unless `CALLBOARD_REQUIRE_CLUSTER=1`. Every wait has a timeout.
#![allow(dead_code)]

use std::time::Duration;

use crate::common::{self, recv, send, spawn_binary, Binary, PgSchema, Ws, WAIT};
use serde_json::{json, Value};

pub const NATS: &str = "nats://127.0.0.1:4222";

/// Whether NATS and PostgreSQL answer; else skip (or fail under CALLBOARD_REQUIRE_CLUSTER=1).
pub async fn cluster_ready() -> bool {
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
pub struct Prefix(pub String);

impl Prefix {
    pub fn new() -> Prefix {
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
                let _ = js.delete_stream(format!("{p}_mbox")).await;
            });
        })
        .join();
    }
}

/// Three turns (two handoffs, then an answer of 8 deltas), each model event `delay` ms apart.
pub fn script(delay: u64) -> String {
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

pub struct Nodes {
    pub nodes: Vec<Option<Binary>>,
    _dirs: Vec<tempfile::TempDir>,
    _schema: PgSchema,
    _prefix: Prefix,
}

impl Nodes {
    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].as_ref().expect("node running").addr
    }
}

/// Starts nodes `a`, `b`, `c`, ... on one schema and prefix, each in a folder of its own.
pub fn start_nodes(n: usize, delay: u64) -> Nodes {
    start_nodes_on(NATS, n, delay)
}

/// [`start_nodes`] on the NATS at `nats`.
pub fn start_nodes_on(nats: &str, n: usize, delay: u64) -> Nodes {
    start_nodes_with(nats, &vec![String::new(); n], &script(delay))
}

/// Starts one node per entry of `extra` (`a`, `b`, `c`, ...) on one schema and prefix, each
/// in a folder of its own, with `body` (models, agents, other sections) after the cluster
/// section and its entry of `extra` (more `[cluster]` keys) inside it.
pub fn start_nodes_with(nats: &str, extra: &[String], body: &str) -> Nodes {
    let schema = PgSchema::new();
    let prefix = Prefix::new();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (i, more) in extra.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("callboard.toml");
        let cfg = format!(
            "[server]\nbind = \"127.0.0.1:0\"\n\n[sessions]\nstore = \"{}\"\n\n[cluster]\nnats_url = \"{nats}\"\nnode_id = \"{}\"\nprefix = \"{}\"\nheartbeat_ms = 250\nnode_timeout_ms = 1500\n{more}\n{body}",
            schema.url(),
            (b'a' + i as u8) as char,
            prefix.0,
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

pub async fn ws(addr: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    ws
}

/// Asks for a run of agent `A` on `session` over `w`; answers its id (from `run.accepted`).
pub async fn start_run(w: &mut Ws, session: &str) -> String {
    send(
        w,
        json!({"type":"run.create","id":1,"session_id":session,"agent":"A","input":"hi"}),
    )
    .await;
    let accepted = recv(w).await;
    accepted["run_id"]
        .as_str()
        .expect("run.accepted")
        .to_owned()
}

pub async fn get(addr: &str, path: &str) -> Value {
    let r = tokio::time::timeout(WAIT, reqwest::get(format!("http://{addr}{path}")))
        .await
        .expect("in time")
        .expect("request");
    r.json().await.unwrap_or(Value::Null)
}

/// Follows `session` from the start; waits for the answer.
pub async fn follow(addr: &str, session: &str) -> Ws {
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
pub async fn frames_until_end(w: &mut Ws) -> Vec<Value> {
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

pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["seq"].as_u64().unwrap_or(0))
        .collect()
}
