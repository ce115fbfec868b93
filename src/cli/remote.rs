//! `callboard run --url`: one run through a running server (`POST
//! /v1/sessions/{id}/runs` as SSE), printed as the in-process `run` prints it. This is how a
//! terminal uses a session store that a server holds (one process per store file).

use std::io::Write;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::model::http::sse::{FeedError, SseFramer};

/// What `run --url` was asked.
pub struct RemoteRun {
    /// The server's base URL.
    pub url: String,
    /// Its API key.
    pub key: Option<String>,
    /// The starting agent.
    pub agent: String,
    /// The session (a new one when `None`).
    pub session: Option<String>,
    /// Turn limit.
    pub max_turns: Option<u64>,
    /// JSON lines instead of text.
    pub json: bool,
    /// The user's message.
    pub input: String,
    /// Whether `--config` was given too (it is the server's config that counts).
    pub config_given: bool,
}

/// Runs it; returns the exit code.
pub async fn run_remote(a: RemoteRun) -> i32 {
    if a.config_given {
        eprintln!("callboard: --config is ignored with --url: the server's config counts");
    }
    let session = a
        .session
        .clone()
        .unwrap_or_else(|| format!("cli-{}", &crate::run::gen_run_id()[4..16]));
    let base = a.url.trim_end_matches('/');
    let mut body = json!({"agent": a.agent, "input": a.input});
    if let Some(n) = a.max_turns {
        body["max_turns"] = json!(n);
    }
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{base}/v1/sessions/{session}/runs"))
        .header("accept", "text/event-stream")
        .json(&body);
    if let Some(k) = &a.key {
        req = req.bearer_auth(k);
    }
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("callboard: cannot reach the server at {base}: {e}");
            return 1;
        }
    };
    if !res.status().is_success() {
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        eprintln!("callboard: the server answered {status}: {msg}");
        return 1;
    }
    let mut body = res.bytes_stream();
    let mut framer = SseFramer::new();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                eprintln!("callboard: the stream broke: {e}");
                return 1;
            }
        };
        let mut ended = None;
        let fed = framer.feed(&chunk, |_event, data| {
            ended = show(&mut out, data, a.json);
            let _ = out.flush();
            Ok::<bool, std::convert::Infallible>(ended.is_some())
        });
        match fed {
            Ok(_) => {}
            Err(FeedError::Utf8(e)) => {
                eprintln!("callboard: the stream broke: {e}");
                return 1;
            }
            Err(FeedError::Event(never)) => match never {},
        }
        if let Some(code) = ended {
            return code;
        }
    }
    eprintln!("callboard: the stream ended before the run did");
    1
}

/// Prints one SSE event's frame; answers the exit code once the run's end frame came.
fn show(out: &mut impl Write, data: &str, json: bool) -> Option<i32> {
    let Ok(frame) = serde_json::from_str::<Value>(data) else {
        return None;
    };
    let ty = frame["type"].as_str().unwrap_or_default();
    match ty {
        "event" if json => {
            let _ = writeln!(out, "{}", frame["event"]);
        }
        "event" => print_event(out, &frame["event"]),
        "run.completed" | "run.failed" | "run.cancelled" => {
            if json {
                let _ = writeln!(out, "{frame}");
            } else {
                match ty {
                    "run.completed" => {
                        let _ = writeln!(
                            out,
                            "\n[done by {}]",
                            frame["last_agent"].as_str().unwrap_or("")
                        );
                    }
                    "run.failed" => {
                        let _ = writeln!(out);
                        eprintln!(
                            "run failed: {}: {}",
                            frame["error"]["type"].as_str().unwrap_or(""),
                            frame["error"]["message"].as_str().unwrap_or("")
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            "\n[cancelled: {}]",
                            frame["mode"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            return Some(i32::from(ty == "run.failed"));
        }
        _ => {}
    }
    None
}

fn print_event(out: &mut impl Write, ev: &Value) {
    match ev["type"].as_str() {
        Some("raw_response_event") if ev["data"]["type"] == "response.output_text.delta" => {
            let _ = write!(out, "{}", ev["data"]["delta"].as_str().unwrap_or(""));
        }
        Some("run_item_stream_event") => match ev["name"].as_str() {
            Some("tool_called") => {
                let _ = writeln!(
                    out,
                    "[tool: {}]",
                    ev["item"]["raw_item"]["name"].as_str().unwrap_or("")
                );
            }
            Some("handoff_occured") => {
                let _ = writeln!(
                    out,
                    "[handoff -> {}]",
                    ev["item"]["target_agent"].as_str().unwrap_or("")
                );
            }
            _ => {}
        },
        _ => {}
    }
}
