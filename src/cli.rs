//! The `callboard` command line (PROTOCOL.md section 4): `serve`, `run` and `check-config`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

use crate::bus::{BusLimits, FrameBody, Topic};
use crate::config::{Config, ConfigError};
use crate::events::StreamEvent;
use crate::items::RunItem;
use crate::model::{RawEvent, ResponseEvent};
use crate::run::{RunConfig, Runner};
use crate::service::cast::build_cast;
use crate::service::tools::ClientCalls;
use crate::trace::{Span, Trace, TraceProcessor};

/// `callboard`: agents as actors, served over WebSocket and HTTP.
#[derive(Debug, Parser)]
#[command(name = "callboard", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server (embedded defaults without --config).
    Serve {
        /// The TOML config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One run through the engine, in-process, printed to the terminal.
    Run {
        /// The TOML config (embedded defaults without it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The starting agent.
        #[arg(long)]
        agent: String,
        /// A session id: the run continues that conversation (kept for this process only).
        #[arg(long)]
        session: Option<String>,
        /// Turn limit.
        #[arg(long)]
        max_turns: Option<u64>,
        /// Print every stream event as one JSON line, then the end frame.
        #[arg(long)]
        json: bool,
        /// Write the trace and span exports to this file as JSON lines.
        #[arg(long)]
        trace_out: Option<PathBuf>,
        /// The user's message.
        #[arg(required = true, num_args = 1..)]
        input: Vec<String>,
    },
    /// Validates a config; exits non-zero listing every error.
    CheckConfig {
        /// The TOML config.
        file: PathBuf,
    },
}

/// Loads `path`, or the embedded defaults.
pub fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded()),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callboard: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => match build_cast(&c, Arc::new(ClientCalls::default())) {
                Ok(cast) => {
                    println!(
                        "{}: ok ({} agents, {} tools, {} models)",
                        file.display(),
                        cast.infos.len(),
                        c.tools.len(),
                        c.models.len()
                    );
                    0
                }
                Err(e) => {
                    eprint!("{e}");
                    1
                }
            },
            Err(e) => {
                eprint!("{e}");
                1
            }
        },
        Command::Serve { config } => rt.block_on(serve(config)),
        Command::Run {
            config,
            agent,
            session,
            max_turns,
            json,
            trace_out,
            input,
        } => rt.block_on(run_once(RunArgs {
            config,
            agent,
            session,
            max_turns,
            json,
            trace_out,
            input: input.join(" "),
        })),
    }
}

async fn serve(config: Option<PathBuf>) -> i32 {
    let cfg = match load_config(config.as_ref()) {
        Ok(c) => {
            c.logging.init();
            c
        }
        Err(e) => {
            eprint!("{e}");
            eprintln!("callboard: refusing to start with an invalid config");
            return 2;
        }
    };
    let addr = match cfg.bind_addr() {
        Ok(a) => a,
        Err(e) => {
            eprint!("{e}");
            return 2;
        }
    };
    let store = match crate::service::open_store(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("callboard: refusing to start");
            return 2;
        }
    };
    let core = match crate::server::Core::with_store(cfg, store) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            eprintln!("callboard: refusing to start");
            return 2;
        }
    };
    match core.config.tracing.install(crate::trace::global_tracer()) {
        Ok(setup) => core.set_tracing(setup),
        Err(e) => {
            eprintln!("{}: {e}", core.config.source);
            eprintln!("callboard: refusing to start");
            return 2;
        }
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("callboard: cannot listen on {addr}: {e}; is another server running there?");
            return 1;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    for line in crate::server::banner(&core, local) {
        eprintln!("{line}");
    }
    let served =
        crate::server::serve(listener, core.clone(), crate::server::shutdown_signal()).await;
    if let Some(t) = core.tracing() {
        if !t.shutdown().await {
            eprintln!("callboard: a trace sink did not finish in time; some spans may be lost");
        }
    }
    match served {
        Ok(()) => {
            eprintln!("callboard: stopped");
            0
        }
        Err(e) => {
            eprintln!("callboard: server error: {e}");
            1
        }
    }
}

struct RunArgs {
    config: Option<PathBuf>,
    agent: String,
    session: Option<String>,
    max_turns: Option<u64>,
    json: bool,
    trace_out: Option<PathBuf>,
    input: String,
}

/// Collects trace and span exports for `--trace-out`.
#[derive(Default)]
struct Collect(Mutex<Vec<serde_json::Value>>);

impl TraceProcessor for Collect {
    fn on_trace_start(&self, trace: &Trace) {
        if let Some(v) = trace.export() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
        }
    }
    fn on_trace_end(&self, _trace: &Trace) {}
    fn on_span_start(&self, _span: &Span) {}
    fn on_span_end(&self, span: &Span) {
        if let Some(v) = span.export() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
        }
    }
}

async fn run_once(a: RunArgs) -> i32 {
    let cfg = match load_config(a.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return 2;
        }
    };
    let cast = match build_cast(&cfg, Arc::new(ClientCalls::default())) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return 2;
        }
    };
    let Some(agent) = cast.agents.get(&a.agent).cloned() else {
        let names: Vec<&str> = cast.agents.keys().map(String::as_str).collect();
        eprintln!(
            "callboard: no agent named `{}`; the config has: {}",
            a.agent,
            names.join(", ")
        );
        return 2;
    };
    if cfg.embedded && !a.json {
        eprintln!(
            "callboard: embedded defaults (demo cast, models: {})",
            cast.models_banner
        );
    }
    let collector = Arc::new(Collect::default());
    if a.trace_out.is_some() {
        crate::trace::add_trace_processor(collector.clone());
    }
    let runner: Runner = Runner::new();
    for ag in cast.agents.values() {
        runner.register(ag);
    }
    let session_id = a.session.clone().unwrap_or_else(|| "cli".into());
    let topic = Topic::new(
        session_id.as_str(),
        BusLimits {
            history: 0,
            subscriber_queue: 16,
        },
    );
    let mut rc = RunConfig::default();
    if let Some(n) = a.max_turns {
        rc.max_turns = n;
    }
    rc.group_id = a.session.clone();
    let mut req = runner
        .request_with(&agent, a.input.clone(), ())
        .config(rc)
        .topic(topic);
    // With --session, the conversation lives in the configured store (SQLite by default),
    // under the tenant an auth-less server uses, so the CLI and the server share it.
    let _store;
    if let Some(s) = &a.session {
        match crate::service::open_store(&cfg) {
            Ok(store) => {
                req = req.session(store.open(crate::server::auth::OPEN_TENANT, s));
                _store = store;
            }
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        }
    }
    let mut run = match req.start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("callboard: the run could not start: {e}");
            return 1;
        }
    };
    let Some(mut frames) = run.frames() else {
        return 1;
    };
    let mut out = std::io::stdout().lock();
    let mut code = 0;
    while let Some(f) = frames.recv().await {
        match &f.body {
            FrameBody::Event { event, .. } => {
                if a.json {
                    let _ = writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
                } else {
                    print_plain(&mut out, event);
                }
            }
            FrameBody::ToolCall { .. } => {}
            body => {
                if a.json {
                    let _ = out.write_all(crate::wire::sdk::bytes(&f));
                    let _ = writeln!(out);
                } else {
                    match body {
                        FrameBody::RunCompleted { last_agent, .. } => {
                            let _ = writeln!(out, "\n[done by {last_agent}]");
                        }
                        FrameBody::RunFailed {
                            error_type,
                            message,
                        } => {
                            let _ = writeln!(out);
                            eprintln!("run failed: {error_type}: {message}");
                        }
                        FrameBody::RunCancelled { mode } => {
                            let _ = writeln!(out, "\n[cancelled: {}]", mode.as_str());
                        }
                        _ => {}
                    }
                }
                if matches!(body, FrameBody::RunFailed { .. }) {
                    code = 1;
                }
                break;
            }
        }
        let _ = out.flush();
    }
    drop(out);
    let _ = run.wait().await;
    if let Some(path) = &a.trace_out {
        crate::trace::flush_traces();
        let lines = collector
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("callboard: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    code
}

fn print_plain(out: &mut impl Write, ev: &StreamEvent) {
    match ev {
        StreamEvent::RawResponse(raw) => {
            if let RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) = raw.as_ref() {
                let _ = write!(out, "{delta}");
            }
        }
        StreamEvent::RunItem(item) => match item.as_ref() {
            RunItem::ToolCall { raw_item, .. } => {
                let _ = writeln!(out, "[tool: {}]", raw_item.name);
            }
            RunItem::HandoffOutput { target_agent, .. } => {
                let _ = writeln!(out, "[handoff -> {target_agent}]");
            }
            _ => {}
        },
        StreamEvent::AgentUpdated { .. } => {}
    }
}
