//! The demo cast on the scripted provider, printing a streamed run as a chat UI would:
//! tokens as they arrive, with tool and handoff markers.
//!
//! `cargo run --example chat -- "What is the weather in Oslo?"`

use std::io::Write;
use std::sync::Arc;

use callboard::model::{RawEvent, ResponseEvent};
use callboard::{demo, RunItem, Runner, StreamEvent};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let input = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let input = if input.is_empty() {
        "What is the weather in Oslo?".to_owned()
    } else {
        input
    };
    println!("callboard demo cast on the scripted provider (a deterministic stand-in, not a language model)");
    println!("> {input}");
    let triage = demo::cast(Arc::new(demo::demo_model()));
    let runner: Runner = Runner::new();
    let mut run = match runner.run_streamed(&triage, input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not start the run: {e}");
            std::process::exit(1);
        }
    };
    let mut events = run.stream_events();
    let mut out = std::io::stdout();
    while let Some(ev) = events.next().await {
        match ev {
            StreamEvent::RawResponse(raw) => {
                if let RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) = raw.as_ref()
                {
                    let _ = write!(out, "{delta}");
                    let _ = out.flush();
                }
            }
            StreamEvent::RunItem(item) => match item.as_ref() {
                RunItem::ToolCall { raw_item, .. } => println!("[tool: {}]", raw_item.name),
                RunItem::HandoffOutput { target_agent, .. } => {
                    println!("[handoff -> {target_agent}]")
                }
                _ => {}
            },
            StreamEvent::AgentUpdated { .. } => {}
        }
    }
    println!();
    match run.error() {
        Some(e) => {
            eprintln!("run failed: {} ({})", e, e.sdk_name());
            std::process::exit(1);
        }
        None => {
            let u = run.usage();
            println!(
                "[done by {}] requests={} input_tokens={} output_tokens={}",
                run.last_agent(),
                u.requests,
                u.input_tokens,
                u.output_tokens
            );
        }
    }
}
