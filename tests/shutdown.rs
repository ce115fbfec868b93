//! Graceful shutdown of the real binary: SIGTERM mid-run lets the turn finish (or cancels
//! after the turn once the grace period is over), closes sockets with 1001 and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &str) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "callboard-shutdown-{}-{}",
        std::process::id(),
        rand_name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", rand_name()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server start banner");
    Server { child, addr }
}

fn rand_name() -> String {
    format!("{:?}", std::time::SystemTime::now()).replace(|c: char| !c.is_alphanumeric(), "")
}

fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Result<Value, Option<u16>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no frame in time");
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            _ => return Err(None),
        }
    }
}

const CFG: &str = r#"
[server]
bind = "127.0.0.1:0"
shutdown_grace_ms = GRACE

[models.default]
provider = "scripted"
delay_ms = 25
"#;

/// An agent that talks and hands off to itself every turn, until max_turns.
const LOOPER: &str = r#"
[[models.default.script]]
outputs = [
  { kind = "message", text = "still thinking about it", deltas = 8 },
  { kind = "call", name = "transfer_to_looper", arguments = "{}", chunks = 1 },
]
[[agents]]
name = "Looper"
handoffs = ["Looper"]
"#;

async fn sigterm_mid_run(grace_ms: u64) -> (Vec<Value>, Option<u16>, std::process::ExitStatus) {
    let mut cfg = CFG.replace("GRACE", &grace_ms.to_string());
    let (agent, max_turns) = if grace_ms < 1000 {
        cfg = cfg.replace("delay_ms = 25", "delay_ms = 25\nrepeat_last = true");
        cfg.push_str(LOOPER);
        ("Looper", 50)
    } else {
        ("Triage", 10)
    };
    let mut srv = spawn(&cfg);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", srv.addr))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"type":"run.create","id":"r","session_id":"s","agent":agent,"input":"weather in Oslo","max_turns":max_turns}).to_string(),
    ))
    .await
    .unwrap();
    let mut frames = Vec::new();
    while frames.len() < 6 {
        frames.push(next_json(&mut ws).await.unwrap());
    }
    sigterm(srv.child.id());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused while draining.
    let again = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", srv.addr)).await;
    assert!(again.is_err(), "no new connections after SIGTERM");
    let close = loop {
        match next_json(&mut ws).await {
            Ok(f) => frames.push(f),
            Err(code) => break code,
        }
    };
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..300 {
            if let Ok(Some(st)) = srv.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit");
    })
    .await
    .unwrap();
    (frames, close, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_lets_the_run_finish_then_closes_with_1001() {
    let (frames, close, status) = sigterm_mid_run(20_000).await;
    let end = frames.iter().find(|f| f["type"] == "run.completed");
    assert!(end.is_some(), "the run finished within the grace period");
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no frame lost"
    );
    assert_eq!(close, Some(1001));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_cancels_after_the_turn() {
    let (frames, close, status) = sigterm_mid_run(100).await;
    let end = frames
        .iter()
        .find(|f| {
            f["type"].as_str().is_some_and(|t| t.starts_with("run.")) && f["type"] != "run.accepted"
        })
        .expect("an end frame");
    assert_eq!(end["type"], "run.cancelled", "{end}");
    assert_eq!(end["mode"], "after_turn");
    // The turn in progress at SIGTERM finished: its response completed and its handoff
    // was carried out before the cancel, so no completed turn is lost.
    let before_end: Vec<&Value> = frames
        .iter()
        .take_while(|f| f["type"] != "run.cancelled")
        .collect();
    let last_event = before_end.last().unwrap();
    assert!(
        last_event["event"]["type"] == "agent_updated_stream_event"
            || last_event["event"]["name"] == "handoff_occured",
        "the run stopped at a turn boundary: {last_event}"
    );
    assert!(before_end
        .iter()
        .any(|f| f["event"]["data"]["type"] == "response.completed"));
    assert_eq!(close, Some(1001));
    assert!(status.success(), "{status:?}");
}
