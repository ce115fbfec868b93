//! Tool benchmark: the CPU callboard adds per call of an MCP tool (over stdio and over
//! streamable HTTP) and of an agent tool.
//!
//! `cargo bench --bench tools` measures, with criterion and this process's CPU clock
//! (`CLOCK_PROCESS_CPUTIME_ID`: every thread of callboard, none of the MCP server's process),
//! one run of an agent whose scripted model calls one tool and then answers, with the tool:
//! - `function`: a Rust function tool answering `Echo: <message>` (the baseline);
//! - `mcp_stdio`: `echo` of `@modelcontextprotocol/server-everything` started over stdio,
//!   offering only `echo` (`allow`);
//! - `mcp_stdio_all_tools`: the same, offering all 13 of its tools (each turn lists them and
//!   sends their schemas to the model);
//! - `mcp_http`: the same server over streamable HTTP on a loopback port, offering `echo`;
//! - `agent`: an agent called as a tool, whose own scripted model answers in one delta.
//!
//! The added CPU per call is a variant's median minus the `function` median. The MCP variants
//! need the npm package (`npm ci --prefix tests/mcp-servers`) and Node; without them they are
//! skipped with a note.

#[path = "../tests/mcp_support/mod.rs"]
mod mcp_support;

use std::sync::Arc;
use std::time::Duration;

use callboard::mcp::{McpServer, McpServerConfig};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::{Agent, FunctionTool, RunConfig, Runner, ToolContext};
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use serde_json::json;

/// This process's CPU time (all threads), in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion measurement: CPU time of this process over the iterations.
struct ProcessCpu;

struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e3, "µs cpu")
        } else {
            (1e6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _t: f64, _th: &Throughput, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = 1e9 / v.max(1.0));
        "runs/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

impl Measurement for ProcessCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        process_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

/// The agent under test: its model calls `tool` with `{"message": "hi"}` (or `{"input":
/// "hi"}` for the agent tool), then answers.
fn caller(tool_name: &str, args: serde_json::Value) -> Agent {
    Agent::new("Caller").model_instance(Arc::new(
        ScriptedModel::new(vec![
            ScriptedTurn::call(tool_name, args),
            ScriptedTurn::message("ok", 1),
        ])
        .with_name("scripted"),
    ))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Msg {
    message: String,
}

fn function_caller() -> Agent {
    caller("echo", json!({"message": "hi"})).tool(FunctionTool::new(
        "echo",
        "Echoes.",
        |_c: ToolContext<()>, m: Msg| async move { Ok::<_, String>(format!("Echo: {}", m.message)) },
    ))
}

fn agent_caller() -> Agent {
    let echo = Agent::new("Echo").model_instance(Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::message("Echo: hi", 1),
    ])));
    caller("echo", json!({"input": "hi"})).tool(echo.as_tool("echo", "Echoes."))
}

fn mcp_caller(server: &McpServer) -> Agent {
    caller("echo", json!({"message": "hi"})).mcp_server(server)
}

async fn one_run(runner: &Runner, agent: &Agent) {
    let r = runner
        .request(agent, "go")
        .config(RunConfig::default().tracing_disabled(true))
        .run()
        .await;
    assert_eq!(
        r.map(|r| r.final_output_text() == Some("ok")).ok(),
        Some(true)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut c = Criterion::default()
        .with_measurement(ProcessCpu)
        .sample_size(30)
        .measurement_time(Duration::from_secs(6))
        .configure_from_args();
    let runner: Runner = Runner::new();
    let mut g = c.benchmark_group("tool_call_run");
    for (name, agent) in [("function", function_caller()), ("agent", agent_caller())] {
        g.bench_function(name, |b| b.to_async(&rt).iter(|| one_run(&runner, &agent)));
    }
    match mcp_support::everything() {
        None => eprintln!("tools bench: MCP variants skipped (see above)"),
        Some(bin) => {
            let bin = bin.to_string_lossy().into_owned();
            for (name, allow) in [("mcp_stdio", true), ("mcp_stdio_all_tools", false)] {
                let mut cfg =
                    McpServerConfig::stdio("everything", "node", &[bin.as_str(), "stdio"]);
                if allow {
                    cfg.allow = Some(vec!["echo".into()]);
                }
                let stdio = rt.block_on(async {
                    let s = McpServer::start(cfg).expect("config");
                    s.wait_ready(Duration::from_secs(60)).await.expect("ready");
                    s
                });
                let agent = mcp_caller(&stdio);
                g.bench_function(name, |b| b.to_async(&rt).iter(|| one_run(&runner, &agent)));
                stdio.shutdown();
            }
            let http = mcp_support::HttpEverything::start(&std::path::PathBuf::from(&bin));
            let server = rt.block_on(async {
                let mut cfg = McpServerConfig::streamable_http("everything", &http.url);
                cfg.allow = Some(vec!["echo".into()]);
                let s = McpServer::start(cfg).expect("config");
                s.wait_ready(Duration::from_secs(60)).await.expect("ready");
                s
            });
            let agent = mcp_caller(&server);
            g.bench_function("mcp_http", |b| {
                b.to_async(&rt).iter(|| one_run(&runner, &agent))
            });
            server.shutdown();
            drop(http);
        }
    }
    g.finish();
    c.final_summary();
}
