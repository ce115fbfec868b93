//! More than one node: three `callboard serve` processes (the real binary, loopback ports)
//! sharing NATS JetStream and PostgreSQL, each test with its own stream and bucket prefix
//! and PostgreSQL schema. Skipped with a message when NATS (127.0.0.1:4222, `nats-server
//! -js`) or PostgreSQL is not reachable, unless `CALLBOARD_REQUIRE_CLUSTER=1`.

mod cluster_support;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_support::*;
use common::{send, WAIT};
use serde_json::json;

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
    let node = rec["node_id"].as_str().unwrap_or("");
    assert!(
        ["a", "b", "c"].contains(&node),
        "executed by the node that took its baton: {rec}"
    );
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
    // Without mailboxes (each run executes where it was accepted): the PostgreSQL takeover.
    // With mailboxes, tests/mailbox.rs kills the executing node.
    let no_mailboxes = vec!["mailboxes = false".to_owned(); 3];
    let mut nodes = start_nodes_with(NATS, &no_mailboxes, &script(250));
    let mut on_b = follow(nodes.addr(1), "s2").await;
    let mut on_c = follow(nodes.addr(2), "s2").await;
    let mut on_a = ws(nodes.addr(0)).await;
    let run_id = start_run(&mut on_a, "s2").await;
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
    let run_id = start_run(&mut on_a, "s3").await;
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
    let node = rec["node_id"].as_str().unwrap_or("");
    assert!(
        node == "a" || node == "b",
        "executed by the node that took its baton: {rec}"
    );
}
