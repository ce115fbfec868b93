//! Streams one answer from an OpenAI-compatible server (llama-cpp-python, vLLM, Ollama, ...)
//! through the `openai_chat_completions` provider, printing tokens as they arrive.
//!
//! ```sh
//! scripts/local-model.sh serve &     # SmolLM2-135M-Instruct on http://127.0.0.1:8080/v1
//! cargo run --example local_chat -- "What is the capital of France?"
//! ```
//!
//! `CALLBOARD_MODEL_URL` (default `http://127.0.0.1:8080/v1`), `CALLBOARD_MODEL` (default
//! `smollm2`) and `CALLBOARD_API_KEY_ENV` (the variable holding a key, if the server wants one)
//! choose the server.

use std::io::Write;

use callboard::model::config::{ProviderConfig, ProviderKind};
use callboard::model::{RawEvent, ResponseEvent};
use callboard::{Agent, Runner, StreamEvent};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let question = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let question = if question.is_empty() {
        "What is the capital of France?".to_owned()
    } else {
        question
    };
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    let config = ProviderConfig {
        provider: Some(ProviderKind::OpenaiChatCompletions),
        base_url: Some(env("CALLBOARD_MODEL_URL", "http://127.0.0.1:8080/v1")),
        model: Some(env("CALLBOARD_MODEL", "smollm2")),
        api_key_env: std::env::var("CALLBOARD_API_KEY_ENV").ok(),
        max_tokens: Some(128),
        ..Default::default()
    };
    let model = match config.build() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bad model config: {e}");
            std::process::exit(2);
        }
    };
    let agent: Agent = Agent::new("Assistant")
        .instructions("You are a helpful assistant. Answer briefly.")
        .model_instance(model);
    println!("> {question}");
    let runner: Runner = Runner::new();
    let mut run = match runner.run_streamed(&agent, question) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not start the run: {e}");
            std::process::exit(1);
        }
    };
    let mut events = run.stream_events();
    let mut out = std::io::stdout();
    while let Some(ev) = events.next().await {
        if let StreamEvent::RawResponse(raw) = &ev {
            if let RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) = raw.as_ref() {
                let _ = write!(out, "{delta}");
                let _ = out.flush();
            }
        }
    }
    println!();
    if let Some(e) = run.error() {
        eprintln!("run failed: {} ({})", e, e.sdk_name());
        std::process::exit(1);
    }
    let u = run.usage();
    println!(
        "[{} request(s), {} input + {} output tokens]",
        u.requests, u.input_tokens, u.output_tokens
    );
}
