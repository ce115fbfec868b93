//! The `callboard` command line (PROTOCOL.md section 4): `serve`, `run`, `check-config`, and
//! `traces list` / `traces show` (stored traces in the terminal, [`crate::trace::browse`]).
//! `run --url` drives a run through a running server instead ([`remote`]). `loadtest` puts
//! load on a running server ([`crate::loadtest`]).

pub mod remote;

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
use crate::service::cast::{build_cast, build_cast_with};
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
        /// A session id: the run continues that conversation (kept in the configured store;
        /// with --url, in the server's).
        #[arg(long)]
        session: Option<String>,
        /// Run through a running server at this base URL (such as http://127.0.0.1:7700)
        /// instead of in-process: the only way to use a store file a server holds.
        #[arg(long)]
        url: Option<String>,
        /// The API key for --url (default: $CALLBOARD_KEY).
        #[arg(long, env = "CALLBOARD_KEY")]
        key: Option<String>,
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
    /// Load on a running server over WebSocket: many sessions running an agent, every frame
    /// checked; writes report.html and report.json.
    Loadtest(LoadtestArgs),
    /// Stored traces: list them, or show one as a span tree.
    Traces {
        /// `list` or `show`.
        #[command(subcommand)]
        command: TracesCommand,
    },
}

/// `callboard traces ...`.
#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// Lists traces, newest first.
    List {
        /// Where to read them.
        #[command(flatten)]
        source: TraceSourceArgs,
        /// Only this session's traces.
        #[arg(long)]
        session: Option<String>,
        /// Only traces with errors.
        #[arg(long)]
        errors: bool,
        /// Only traces in which this agent ran.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the listing as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows a trace as an indented span tree with durations and errors.
    Show {
        /// Where to read it.
        #[command(flatten)]
        source: TraceSourceArgs,
        /// The trace id.
        id: String,
        /// Print the trace and its spans as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `callboard loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// The server: its base URL (http://127.0.0.1:7700) or WebSocket URL (ws://.../v1/ws).
    #[arg(long)]
    pub url: String,
    /// The API key (default: $CALLBOARD_KEY).
    #[arg(long, env = "CALLBOARD_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The agent each run starts with.
    #[arg(long)]
    pub agent: String,
    /// The user's message of every run.
    #[arg(long)]
    pub input: String,
    /// Sessions in all (default 100 without --duration; unbounded with it).
    #[arg(long)]
    pub sessions: Option<u64>,
    /// Runs one after the other on each session (its conversation grows).
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// Connections running at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Run starts per second over all connections (default: as fast as they go).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Start no run after this many seconds (runs under way finish).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Longest wait for any one frame, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub frame_timeout: f64,
    /// Ask the server not to trace these runs (`trace.disabled`).
    #[arg(long)]
    pub no_trace: bool,
    /// Check each run's content against the load harness's fake model script (tool call,
    /// handoff to Writer, K timed deltas) and time every delta.
    #[arg(long, value_name = "K")]
    pub expect_fake_model: Option<usize>,
    /// The server's process id, when it runs on this machine: its CPU per run and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Where report.json and report.html go.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
}

/// Where `callboard traces` reads: a running server (`--url`), or a store file.
#[derive(Debug, clap::Args)]
pub struct TraceSourceArgs {
    /// A running server, e.g. http://127.0.0.1:7700 (its API; your key's tenant's traces).
    #[arg(long)]
    pub url: Option<String>,
    /// The API key for --url.
    #[arg(long, env = "CALLBOARD_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The trace store file (default: the config's [tracing.store] path).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// The config whose [tracing.store] path to read (embedded defaults without it).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
            Ok(c) => match build_cast_with(&c, Arc::new(ClientCalls::default()), false) {
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
        Command::Traces { command } => rt.block_on(traces(command)),
        Command::Loadtest(args) => rt.block_on(loadtest(args)),
        Command::Run {
            config,
            agent,
            session,
            url: Some(url),
            key,
            max_turns,
            json,
            trace_out: _,
            input,
        } => rt.block_on(remote::run_remote(remote::RemoteRun {
            url,
            key,
            agent,
            session,
            max_turns,
            json,
            input: input.join(" "),
            config_given: config.is_some(),
        })),
        Command::Run {
            config,
            agent,
            session,
            url: None,
            key: _,
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

/// `callboard loadtest`: 0 when every run completed with every frame once and in order.
async fn loadtest(a: LoadtestArgs) -> i32 {
    use crate::loadtest::{check::Expect, client, Plan};
    let target = match client::Target::new(&a.url, a.key) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("callboard loadtest: {e}");
            return 2;
        }
    };
    let secs = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(std::time::Duration::from_secs_f64(s))
        } else {
            Err(format!("{what} must be a positive number of seconds"))
        }
    };
    let (frame_wait, duration) = match (
        secs(a.frame_timeout, "--frame-timeout"),
        a.duration.map(|d| secs(d, "--duration")).transpose(),
    ) {
        (Ok(f), Ok(d)) => (f, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("callboard loadtest: {e}");
            return 2;
        }
    };
    let plan = Plan {
        target,
        spec: client::RunSpec {
            agent: a.agent,
            input: a.input,
            expect: a
                .expect_fake_model
                .map_or(Expect::Any, |tokens| Expect::FakeModel { tokens }),
            trace_disabled: a.no_trace,
            frame_wait,
        },
        sessions: a
            .sessions
            .or(if duration.is_none() { Some(100) } else { None }),
        runs_per_session: a.runs,
        concurrency: a.concurrency,
        rate: a.rate,
        duration,
        out: a.out,
        server_pid: a.server_pid,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    if let Err(e) = plan.validate() {
        eprintln!("callboard {e}");
        return 2;
    }
    match crate::loadtest::run(&plan).await {
        Ok(report) => {
            eprintln!("{}", report.table());
            eprintln!(
                "callboard loadtest: report in {} (report.html, report.json)",
                plan.out.display()
            );
            if report.scenarios.iter().all(|s| s.clean()) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("callboard {e}");
            1
        }
    }
}

/// This node's membership, left at a clean stop.
struct Membership {
    stop: tokio_util::sync::CancellationToken,
    #[cfg(feature = "nats")]
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

impl Membership {
    async fn leave(self) {
        self.stop.cancel();
        #[cfg(feature = "nats")]
        if let Some(c) = self.cluster {
            c.leave().await;
        }
    }
}

/// Joins `[cluster]` when the config has one: connects to NATS, beats, takes over the runs of
/// nodes that are gone.
async fn join_cluster(
    core: &std::sync::Arc<crate::server::Core>,
    local: std::net::SocketAddr,
) -> Result<Membership, String> {
    let stop = tokio_util::sync::CancellationToken::new();
    let Some(cfg) = core.config.cluster.clone() else {
        return Ok(Membership {
            stop,
            #[cfg(feature = "nats")]
            cluster: None,
        });
    };
    #[cfg(not(feature = "nats"))]
    {
        let _ = (cfg, local);
        Err("this callboard was built without the `nats` feature (on by default); rebuild it with it to run [cluster]".into())
    }
    #[cfg(feature = "nats")]
    {
        let node_id = cfg.node_id(local.port());
        let cluster = crate::cluster::Cluster::connect(&cfg, node_id, local.to_string())
            .await
            .map_err(|e| e.to_string())?;
        core.set_cluster(cluster.clone());
        cluster.beat(0).await.map_err(|e| e.to_string())?;
        let counted = core.clone();
        cluster.spawn_heartbeats(move || counted.active_runs(), stop.clone());
        if cfg.mailboxes && cfg.take_batons {
            // A run's baton is delivered again when its node dies: no takeover needed.
            core.take_batons(stop.clone());
        } else if !cfg.mailboxes {
            tokio::spawn(core.clone().take_over_runs(stop.clone()));
        }
        eprintln!(
            "callboard: node {} of a cluster on {} (streams {}_bus, {}_nodes{})",
            cluster.node_id,
            cfg.nats_url,
            cfg.prefix,
            cfg.prefix,
            if cfg.mailboxes {
                format!(", mailboxes {}_mbox", cfg.prefix)
            } else {
                String::new()
            }
        );
        Ok(Membership {
            stop,
            cluster: Some(cluster),
        })
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
    let store = match crate::service::open_store(&cfg).await {
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
    let cluster = match join_cluster(&core, local).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: cluster: {e}", core.config.source);
            eprintln!("callboard: refusing to start");
            return 2;
        }
    };
    for line in crate::server::banner(&core, local) {
        eprintln!("{line}");
    }
    let served =
        crate::server::serve(listener, core.clone(), crate::server::shutdown_signal()).await;
    cluster.leave().await;
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

/// `callboard traces list|show`.
async fn traces(cmd: TracesCommand) -> i32 {
    use crate::trace::browse::{self, ListFilter, Source};
    let source_of = |a: &TraceSourceArgs| -> Result<Source, String> {
        if let Some(url) = &a.url {
            return Ok(Source::Server {
                url: url.clone(),
                key: a.key.clone(),
            });
        }
        if let Some(p) = &a.store {
            return Ok(Source::File(p.clone()));
        }
        let cfg = load_config(a.config.as_ref()).map_err(|e| e.to_string())?;
        Ok(Source::File(cfg.tracing.store.path.clone()))
    };
    let result = match &cmd {
        TracesCommand::List {
            source,
            session,
            errors,
            agent,
            limit,
            json,
        } => match source_of(source) {
            Err(e) => Err(e),
            Ok(src) => {
                let f = ListFilter {
                    session: session.clone(),
                    errors: *errors,
                    agent: agent.clone(),
                    limit: *limit,
                };
                browse::list(&src, &f)
                    .await
                    .map(|l| {
                        if *json {
                            serde_json::Value::Array(l).to_string() + "\n"
                        } else {
                            browse::render_list(&l)
                        }
                    })
                    .map_err(|e| e.to_string())
            }
        },
        TracesCommand::Show { source, id, json } => match source_of(source) {
            Err(e) => Err(e),
            Ok(src) => browse::show(&src, id)
                .await
                .map(|(t, spans)| {
                    if *json {
                        serde_json::json!({"trace": t, "spans": spans}).to_string() + "\n"
                    } else {
                        browse::render_trace(&t, &spans)
                    }
                })
                .map_err(|e| e.to_string()),
        },
    };
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("callboard traces: {e}");
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
            budget: None,
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
    // under the tenant an auth-less server uses. A server holding the file refuses this
    // process (one writer per file): then run through it with --url.
    let mut store = None;
    if let Some(s) = &a.session {
        match crate::service::open_store(&cfg).await {
            Ok(st) => {
                req = req.session(st.session(crate::server::auth::OPEN_TENANT, s));
                store = Some(st);
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
                        FrameBody::RunCancelled { mode, .. } => {
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
    if let Some(st) = store {
        let _ = st.close().await;
    }
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

/// Prints a stream event as `callboard run` does without `--json`.
pub(crate) fn print_plain(out: &mut impl Write, ev: &StreamEvent) {
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
