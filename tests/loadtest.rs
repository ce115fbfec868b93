//! `callboard loadtest` against a real `callboard serve` on loopback: the JSON report counts
//! the runs, finds no gap or duplicate, and sorts errors by code (unknown agent, refused key).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Longest a loadtest invocation may take here.
const LIMIT: Duration = Duration::from_secs(120);

fn server(dir: &Path, extra: &str) -> common::Binary {
    let cfg = dir.join("callboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[models.default]\nprovider = \"scripted\"\n\
             [sessions]\nstore = \"memory\"\n{extra}"
        ),
    )
    .unwrap();
    common::spawn_binary(&cfg, &[])
}

/// Runs `callboard loadtest` with `args` (report into `out`); returns its exit code and report.
fn loadtest(args: &[&str], out: &Path) -> (Option<i32>, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .arg("loadtest")
        .args(args)
        .arg("--out")
        .arg(out)
        .env_remove("CALLBOARD_KEY")
        .spawn()
        .expect("start callboard loadtest");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("callboard loadtest did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    assert!(out.join("report.html").exists(), "report.html written");
    (status.code(), serde_json::from_str(&text).unwrap())
}

fn scenario(report: &Value) -> &Value {
    let s = &report["scenarios"][0];
    assert_eq!(s["name"], "loadtest", "{report}");
    s
}

#[test]
fn loadtest_counts_runs_and_finds_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "");
    let url = format!("http://{}", srv.addr);
    let pid = srv.child.id().to_string();
    // A fixed workload: 6 sessions of 2 runs each from 3 connections.
    let (code, report) = loadtest(
        &[
            "--url",
            &url,
            "--agent",
            "Triage",
            "--input",
            "weather in Oslo",
            "--sessions",
            "6",
            "--runs",
            "2",
            "--concurrency",
            "3",
            "--server-pid",
            &pid,
        ],
        &dir.path().join("fixed"),
    );
    let s = scenario(&report);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(s["runs"], 12, "{report}");
    assert_eq!(s["errors"], 0, "{report}");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["duplicated"], 0);
    assert_eq!(s["reordered"], 0);
    assert!(s["frames"].as_u64().unwrap() > 12 * 3, "{report}");
    assert_eq!(
        s["latency"]["count"], 12,
        "one run latency per run: {report}"
    );
    assert!(s["cpu_ms_per_run"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["nproc"].as_u64().unwrap() >= 1);
    assert!(s["errors_by_code"].as_object().unwrap().is_empty());

    // For a few seconds, paced: about 20 run starts a second.
    let (code, report) = loadtest(
        &[
            "--url",
            &url,
            "--agent",
            "Triage",
            "--input",
            "weather in Oslo",
            "--duration",
            "3",
            "--rate",
            "20",
            "--concurrency",
            "4",
        ],
        &dir.path().join("timed"),
    );
    let s = scenario(&report);
    assert_eq!(code, Some(0), "{report}");
    let runs = s["runs"].as_u64().unwrap();
    assert!(
        (30..=70).contains(&runs),
        "about 60 runs in 3 s at 20/s: {report}"
    );
    assert_eq!(s["errors"], 0, "{report}");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["duplicated"], 0);
    assert!(s["timeline"].as_array().unwrap().len() >= 8, "{report}");
}

#[test]
fn loadtest_sorts_errors_by_code() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), "");
    let url = format!("http://{}", srv.addr);
    let (code, report) = loadtest(
        &[
            "--url",
            &url,
            "--agent",
            "Nobody",
            "--input",
            "hi",
            "--sessions",
            "5",
            "--concurrency",
            "2",
        ],
        &dir.path().join("unknown"),
    );
    let s = scenario(&report);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(s["runs"], 0);
    assert_eq!(s["errors"], 5, "{report}");
    assert_eq!(s["errors_by_code"]["unknown_agent"], 5, "{report}");
    drop(srv);

    let srv = server(
        dir.path(),
        "[[auth.keys]]\nkey = \"right-key\"\ntenant = \"acme\"\n",
    );
    let url = format!("http://{}", srv.addr);
    let (code, report) = loadtest(
        &[
            "--url",
            &url,
            "--key",
            "wrong-key",
            "--agent",
            "Triage",
            "--input",
            "hi",
            "--sessions",
            "4",
            "--concurrency",
            "2",
        ],
        &dir.path().join("refused"),
    );
    let s = scenario(&report);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(
        s["errors_by_code"]["http_401"], 2,
        "each connection refused once: {report}"
    );
    let (code, report) = loadtest(
        &[
            "--url",
            &url,
            "--key",
            "right-key",
            "--agent",
            "Triage",
            "--input",
            "hi",
            "--sessions",
            "4",
            "--concurrency",
            "2",
        ],
        &dir.path().join("accepted"),
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(scenario(&report)["runs"], 4, "{report}");
}

#[test]
fn loadtest_refuses_a_workload_without_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .args([
            "loadtest",
            "--url",
            "ws://127.0.0.1:9/v1/ws",
            "--agent",
            "A",
            "--input",
            "x",
        ])
        .args(["--sessions", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sessions must be at least 1"));
}
