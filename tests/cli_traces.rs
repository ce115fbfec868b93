//! `callboard traces list` and `callboard traces show` against a running server (`--url`,
//! `--key`) and against its store file (`--store`), with the filters.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn traces(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callboard"))
        .arg("traces")
        .args(args)
        .env_remove("CALLBOARD_KEY")
        .output()
        .expect("run callboard traces");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_from_a_server_and_from_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("traces.db");
    let cfg = dir.path().join("callboard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
bind = "127.0.0.1:0"

[[auth.keys]]
key = "key-acme"
tenant = "acme"

[models.default]
provider = "scripted"

[models.looping]
provider = "scripted"
repeat_last = true
[[models.looping.script]]
outputs = [{{ kind = "call", name = "unreachable", arguments = "{{}}" }}]

[[agents]]
name = "Greeter"
instructions = "Greet."
model = "default"

[[agents]]
name = "Looper"
instructions = "Loop."
model = "looping"
tools = ["unreachable"]

[[tools]]
name = "unreachable"
description = "A service that is down."
kind = "http"
url = "http://127.0.0.1:9/down"
timeout_ms = 2000

[tracing]
sinks = ["store"]

[tracing.store]
path = "{}"

[sessions]
store = "memory"
"#,
            store.display()
        ),
    )
    .unwrap();
    let server = common::spawn_binary(&cfg, &[]);
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    for (session, agent) in [("s-ok", "Greeter"), ("s-bad", "Looper")] {
        let end: Value = client
            .post(format!("{base}/v1/sessions/{session}/runs"))
            .bearer_auth("key-acme")
            .json(&json!({"agent": agent, "input": "hello", "max_turns": 2}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(end["type"].as_str().unwrap().starts_with("run."), "{end}");
    }
    // Wait until both traces have ended in the store.
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (code, out, err) = traces(&["list", "--url", &base, "--key", "key-acme", "--json"]);
        assert_eq!(code, 0, "{err}");
        let l: Value = serde_json::from_str(&out).unwrap();
        let ended = l
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["ended_at"].is_string())
            .count();
        if ended == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, out, _) = traces(&["list", "--url", &base, "--key", "key-acme"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "a header and two traces:\n{out}");
    assert!(out.lines().next().unwrap().starts_with("started"), "{out}");
    let (_, errs, _) = traces(&["list", "--url", &base, "--key", "key-acme", "--errors"]);
    assert_eq!(errs.lines().count(), 2, "{errs}");
    assert!(
        errs.contains("Looper") && !errs.contains("Greeter"),
        "{errs}"
    );
    let id = errs
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("trace_")))
        .unwrap()
        .to_owned();
    let (_, by_session, _) = traces(&[
        "list",
        "--url",
        &base,
        "--key",
        "key-acme",
        "--session",
        "s-ok",
    ]);
    assert_eq!(by_session.lines().count(), 2, "{by_session}");
    assert!(by_session.contains("Greeter"), "{by_session}");

    // The span tree: nesting by indentation, durations, the errors and their details.
    let (code, tree, err) = traces(&["show", &id, "--url", &base, "--key", "key-acme"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("{tree}");
    assert!(tree.starts_with(&format!("trace {id}")), "{tree}");
    let line = |needle: &str| {
        tree.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{tree}"))
            .to_owned()
    };
    let indent = |l: &str| l.chars().take_while(|c| !c.is_alphanumeric()).count();
    let agent = line("agent Looper");
    assert!(
        agent.contains("ERROR: Max turns exceeded {\"max_turns\":2}"),
        "{agent}"
    );
    assert!(indent(&line("turn 1")) > indent(&agent), "{tree}");
    let call = line("function unreachable");
    assert!(indent(&call) > indent(&line("turn 1")), "{tree}");
    assert!(
        call.contains("ERROR: Error running tool (non-fatal)"),
        "{call}"
    );
    assert!(call.contains("ms"), "durations: {call}");

    // The same from the store file, while the server has it open.
    let path = store.display().to_string();
    let (code, from_file, err) = traces(&["list", "--store", &path, "--errors"]);
    assert_eq!(code, 0, "{err}");
    assert!(from_file.contains(&id), "{from_file}");
    let (code, file_tree, _) = traces(&["show", &id, "--store", &path]);
    assert_eq!(code, 0);
    assert_eq!(file_tree, tree);

    // Clear errors.
    let (code, _, err) = traces(&[
        "show",
        "trace_00000000000000000000000000000000",
        "--url",
        &base,
        "--key",
        "key-acme",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no trace"), "{err}");
    let (code, _, err) = traces(&["list", "--url", &base, "--key", "wrong"]);
    assert_eq!(code, 1);
    assert!(err.contains("API key"), "{err}");
    let (code, _, err) = traces(&["list", "--store", "/nonexistent/traces.db"]);
    assert_eq!(code, 1);
    assert!(err.contains("no such file"), "{err}");
}
