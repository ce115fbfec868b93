//! An orchestrator fanning out to two agents called as tools, a Rust tool that reports
//! progress, and (when `npm ci --prefix tests/mcp-servers` has installed it) an MCP server.
//! Offline: every agent runs on a scripted model. Run with `cargo run --example fan_out`.
//!
//! It follows the run's session topic and prints each frame with its depth: the nested
//! agents' events are indented under the orchestrator's.

use std::sync::Arc;
use std::time::Duration;

use callboard::bus::{Delivery, FrameBody};
use callboard::mcp::{McpServer, McpServerConfig};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::{Agent, FunctionTool, Runner, StreamEvent, ToolContext};
use serde_json::json;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Pages {
    /// How many pages to read.
    pages: u32,
}

fn scripted(turns: Vec<ScriptedTurn>) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(turns).with_delay(Duration::from_millis(15)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reader = FunctionTool::new(
        "read_pages",
        "Reads pages, reporting progress.",
        |ctx: ToolContext<()>, a: Pages| async move {
            for i in 1..=a.pages {
                tokio::time::sleep(Duration::from_millis(40)).await;
                ctx.progress(i as f64, Some(a.pages as f64), Some(format!("page {i}")));
            }
            Ok::<_, String>(format!("read {} pages", a.pages))
        },
    );
    let researcher = Agent::new("Researcher")
        .instructions("Research.")
        .tool(reader)
        .model_instance(scripted(vec![
            ScriptedTurn::call("read_pages", json!({"pages": 3})),
            ScriptedTurn::message("Tides follow the moon.", 5),
        ]));
    let writer = Agent::new("Writer")
        .instructions("Write.")
        .model_instance(scripted(vec![ScriptedTurn::message(
            "Moon pulls the sea.",
            5,
        )]));
    let mut orchestrator = Agent::new("Orchestrator")
        .instructions("Ask both at once, then sum up.")
        .tool(researcher.as_tool("research", "Researches a topic."))
        .tool(writer.as_tool("write", "Writes a text.").max_turns(3))
        .model_instance(scripted(vec![
            ScriptedTurn::new()
                .with_call("research", json!({"input": "tides"}))
                .with_call("write", json!({"input": "a haiku about tides"})),
            ScriptedTurn::message("Both are back: facts and a haiku.", 6),
        ]));

    let everything = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    let mcp = if everything.exists() {
        let s = McpServer::start(McpServerConfig::stdio(
            "everything",
            "node",
            &[everything.to_str().unwrap_or_default(), "stdio"],
        ))?;
        s.wait_ready(Duration::from_secs(30)).await?;
        println!("MCP server ready with {} tools", s.status().tools.len());
        orchestrator = orchestrator.mcp_server(&s);
        Some(s)
    } else {
        println!("(no MCP server: `npm ci --prefix tests/mcp-servers` installs one)");
        None
    };

    let runner: Runner = Runner::new();
    let mut sub = runner.bus().topic("fan-out").subscribe(None)?;
    let run = runner
        .request(&orchestrator, "Tell me about tides.")
        .session_id("fan-out")
        .start()?;
    while let Some(Delivery::Frame(f)) = sub.recv().await {
        let indent = "    ".repeat(f.depth() as usize);
        let who = f
            .nesting
            .as_ref()
            .map(|n| n.agent())
            .unwrap_or("Orchestrator");
        match &f.body {
            FrameBody::Event { event, .. } => match event {
                StreamEvent::RunItem(item) => println!("{indent}{who}: {}", item.event_name()),
                StreamEvent::AgentUpdated { new_agent } => {
                    println!("{indent}{who}: agent {new_agent}")
                }
                StreamEvent::RawResponse(_) => {}
            },
            FrameBody::ToolProgress {
                tool,
                progress,
                total,
                message,
                ..
            } => println!(
                "{indent}{who}: {tool} {progress}/{} {}",
                total.unwrap_or(0.0),
                message.as_deref().unwrap_or("")
            ),
            other if other.is_terminal() => {
                println!("{} ({})", other.type_name(), f.seq);
                break;
            }
            _ => {}
        }
    }
    let result = run.wait().await?;
    println!("final output: {}", result.final_output);
    println!("requests over all nested runs: {}", result.usage.requests);
    if let Some(s) = mcp {
        s.shutdown();
    }
    Ok(())
}
