//! The command line: `run` in plain and JSON modes, `check-config` listing every error,
//! and `serve` refusing an invalid config or an open non-loopback bind.

use std::process::{Command, Output};

fn callboard(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callboard"));
    // Run where a default `callboard.db` may be created without touching the repository.
    c.args(args)
        .env_remove("OPENAI_API_KEY")
        .current_dir(std::env::temp_dir());
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the command finished in time")
        .expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_file(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("callboard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn run_prints_tokens_and_markers() {
    let out = callboard(&["run", "--agent", "Triage", "What is the weather in Oslo?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("[handoff -> Weather]"), "{s}");
    assert!(s.contains("[tool: get_weather]"), "{s}");
    assert!(s.contains("Here is the forecast you asked for"), "{s}");
    assert!(s.trim_end().ends_with("[done by Weather]"), "{s}");
}

#[test]
fn run_json_prints_sdk_events_then_the_end_frame() {
    let trace =
        std::env::temp_dir().join(format!("callboard-cli-trace-{}.jsonl", std::process::id()));
    let out = callboard(&[
        "run",
        "--json",
        "--agent",
        "Triage",
        "--max-turns",
        "5",
        "--trace-out",
        trace.to_str().unwrap(),
        "billing please",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines[0]["type"], "agent_updated_stream_event");
    assert!(lines.iter().any(|l| l["type"] == "raw_response_event"));
    assert!(lines.iter().any(|l| l["name"] == "handoff_occured"));
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "run.completed");
    assert_eq!(last["last_agent"], "Billing");
    let spans = std::fs::read_to_string(&trace).unwrap();
    let objects: Vec<serde_json::Value> = spans
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(objects.iter().any(|o| o["object"] == "trace"), "{spans}");
    assert!(
        objects.iter().any(|o| o["object"] == "trace.span"),
        "{spans}"
    );
}

#[test]
fn run_with_an_unknown_agent_says_which_exist() {
    let out = callboard(&["run", "--agent", "Nobody", "hi"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("Nobody") && e.contains("Triage"), "{e}");
}

#[test]
fn check_config_reports_every_error_at_once() {
    let bad = temp_file(
        "bad.toml",
        r#"
[server]
bind = "nowhere"

[models.default]
provider = "openai_responses"

[[agents]]
name = "A"
handoffs = ["Ghost"]
tools = ["missing"]

[[tools]]
name = "t"
kind = "http"
colour = "red"
"#,
    );
    let out = callboard(&["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    for needle in [
        "bad.toml: server.bind",
        "bad.toml: models.default.model",
        "bad.toml: agents[0].handoffs",
        "bad.toml: agents[0].tools",
        "bad.toml: tools[0]",
        "colour",
    ] {
        assert!(e.contains(needle), "missing {needle} in:\n{e}");
    }
    let good = temp_file(
        "good.toml",
        "[models.default]\nprovider = \"scripted\"\n[[agents]]\nname = \"Solo\"\n",
    );
    let out = callboard(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"));
}

#[test]
fn serve_refuses_an_invalid_config_and_an_open_public_bind() {
    let open = temp_file("open.toml", "[server]\nbind = \"0.0.0.0:0\"\n");
    let out = callboard(&["serve", "--config", open.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("server.bind") && e.contains("auth.keys"), "{e}");
    let openai = temp_file(
        "openai.toml",
        "[server]\nbind = \"127.0.0.1:0\"\n[models.default]\nprovider = \"openai_chat_completions\"\nmodel = \"gpt-4.1-mini\"\nidle_timeout_ms = 0\n",
    );
    let out = callboard(&["serve", "--config", openai.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("models.default") && e.contains("idle_timeout_ms"),
        "{e}"
    );
}

#[test]
fn the_example_config_validates() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callboard"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = c
        .args(["check-config", path])
        .env("CALLBOARD_KEY_ACME", "example-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

mod common;

/// One writer per store file: `run --session` on a file a server holds is refused with the
/// holder named (and touches none of the server's runs); `run --url` goes through the server.
#[tokio::test]
async fn run_on_a_store_a_server_holds_is_refused_and_run_url_goes_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let cfg = dir.path().join("callboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[models.default]\nprovider = \"scripted\"\ndelay_ms = 60\n[sessions]\nstore = \"sqlite://{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let server = common::spawn_binary(&cfg, &[]);
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    // A run in progress on the server.
    let mut going = client
        .post(format!("{base}/v1/sessions/busy/runs"))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"agent": "Triage", "input": "weather in Oslo"}))
        .send()
        .await
        .unwrap();
    let first = going.chunk().await.unwrap().unwrap();
    let accepted = String::from_utf8_lossy(&first).to_string();
    let at = accepted.find("\"run_id\":\"").unwrap() + 10;
    let run_id = accepted[at..at + 36].to_owned();

    let cfg_s = cfg.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        callboard(&[
            "run",
            "--config",
            &cfg_s,
            "--session",
            "s",
            "--agent",
            "Triage",
            "hi",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("is in use by pid"), "{err}");
    assert!(err.contains("--url"), "{err}");

    // The server's run was not touched: it completes and its record says so.
    let mut rest = String::new();
    while !rest.contains("run.completed") {
        let c = tokio::time::timeout(common::WAIT, going.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    let rec: serde_json::Value = client
        .get(format!("{base}/v1/runs/{run_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rec["status"], "completed", "{rec}");

    // Through the server instead: the same conversation, printed as `run` prints.
    let url = base.clone();
    let out = tokio::task::spawn_blocking(move || {
        callboard(&[
            "run",
            "--url",
            &url,
            "--session",
            "busy",
            "--agent",
            "Triage",
            "billing please",
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("[handoff -> Billing]"), "{s}");
    assert!(s.trim_end().ends_with("[done by Billing]"), "{s}");
    let items: serde_json::Value = client
        .get(format!("{base}/v1/sessions/busy/items"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(items["items"].as_array().unwrap().len() >= 8, "{items}");
}
