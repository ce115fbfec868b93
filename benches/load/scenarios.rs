//! The scenarios, the processes they start, and the comparison with the Python SDK.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callboard::model::config::ProviderConfig;
use callboard::model::{RawEvent, ResponseEvent};
use callboard::tool::{FunctionTool, ToolContext};
use callboard::{Agent, RunConfig, RunItem, Runner, StreamEvent};
use futures::StreamExt;
use indicatif::ProgressBar;

use callboard::loadtest::check::{self as ws_check, histogram, Counters, Expect, RunCheck};
use callboard::loadtest::client::{self as ws, Queue, RunSpec, Target, Workload};
use callboard::loadtest::procfs;
use callboard::loadtest::progress::Sampler;
use callboard::loadtest::report::{fold, Report, Scenario};
use callboard::loadtest::scrape;

use crate::Opts;

/// A child process that is killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the fake model server in its own process; returns it and its address.
fn spawn_fake_model(tokens: usize) -> Result<(Proc, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["fake-model", "--port", "0", "--tokens", &tokens.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("fake model server: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the fake model server did not start in 30 s".to_owned())?;
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("fake model server said {line:?}"))?;
    Ok((proc, addr))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The server config the harness runs callboard with.
pub fn server_config(
    bind: SocketAddr,
    model: SocketAddr,
    api: &str,
    scripted: Option<usize>,
    mode: crate::ServerMode,
    dir: &Path,
) -> String {
    let stores = match mode {
        crate::ServerMode::Lean => {
            "[sessions]\nstore = \"memory\"\n\n# Tracing off, as on the Python SDK's side of the comparison.\n[tracing]\ndisabled = true\n".to_owned()
        }
        crate::ServerMode::Defaults => format!(
            "# The embedded defaults: SQLite sessions and the trace store.\n[sessions]\nstore = \"sqlite://{}\"\n\n[tracing]\nsinks = [\"store\"]\n[tracing.store]\npath = \"{}\"\n",
            dir.join("sessions.db").display(),
            dir.join("traces.db").display()
        ),
    };
    let provider = if api == "responses" {
        "openai_responses"
    } else {
        "openai_chat_completions"
    };
    let models = match scripted {
        None => format!(
            "provider = \"{provider}\"\nbase_url = \"http://{model}/v1\"\nmodel = \"fake\"\n"
        ),
        Some(k) => {
            let text: String = (0..k).map(|i| format!("w{i}@0 ")).collect();
            format!(
                "provider = \"scripted\"\n\n[[models.default.script]]\noutputs = [{{ kind = \"call\", name = \"get_weather\", arguments = '{{\"city\":\"Oslo\"}}' }}]\n\n\
                 [[models.default.script]]\noutputs = [{{ kind = \"call\", name = \"transfer_to_writer\", arguments = \"{{}}\" }}]\n\n\
                 [[models.default.script]]\noutputs = [{{ kind = \"message\", text = \"{text}\", deltas = {k} }}]\n"
            )
        }
    };
    format!(
        r#"# Written by the load harness (benches/load): agents on the fake model server.
[server]
bind = "{bind}"

[models.default]
{models}
[[agents]]
name = "Triage"
instructions = "Get the weather, then hand off to Writer."
model = "default"
handoffs = ["Writer"]
tools = ["get_weather"]

[[agents]]
name = "Writer"
instructions = "Write the answer."
handoff_description = "Writes the answer."
model = "default"

[[tools]]
name = "get_weather"
description = "Weather for a city."
kind = "http"
url = "http://{model}/tool/weather"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }} }}, required = ["city"] }}
timeout_ms = 10000

{stores}
[limits]
max_runs_per_tenant = 100000
max_connections = 20000
history = 32768
"#
    )
}

/// Deltas per answer: as asked, or the script's when the server plays its scripted model.
fn tokens_for(opts: &Opts, asked: usize) -> usize {
    if opts.scripted_server {
        opts.preset.tokens
    } else {
        asked
    }
}

/// Starts `callboard serve` on the fake model; `None` when this build has no server.
fn spawn_server(opts: &Opts, model: SocketAddr) -> Result<Option<(Proc, SocketAddr)>, String> {
    // A build without the server has no `serve --config`.
    let help = Command::new(&opts.callboard_bin)
        .args(["serve", "--help"])
        .output();
    let has_serve = help.is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--config")
    });
    if !has_serve {
        return Ok(None);
    }
    let port = free_port()?;
    let bind: SocketAddr = ([127, 0, 0, 1], port).into();
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    let cfg = opts.out.join("server.toml");
    let scripted = opts.scripted_server.then_some(opts.preset.tokens);
    // A fresh folder per server, so the defaults' database files start empty.
    let dir = opts.out.join(format!("server-{port}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        &cfg,
        server_config(bind, model, &opts.api, scripted, opts.server_mode, &dir)
            + &opts
                .history_bytes
                .map(|b| format!("history_bytes = {b}\n"))
                .unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(opts.out.join("server.log")).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&opts.callboard_bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("callboard serve: {e}"))?;
    let mut proc = Proc { child };
    let t0 = Instant::now();
    loop {
        if std::net::TcpStream::connect(bind).is_ok() {
            return Ok(Some((proc, bind)));
        }
        if let Ok(Some(st)) = proc.child.try_wait() {
            return Err(format!(
                "callboard serve exited ({st}); see {}",
                opts.out.join("server.log").display()
            ));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("callboard serve did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the WebSocket scenarios' latency is: per delta, unless the server's scripted model
/// plays the script (its deltas carry no send time).
fn latency_of(opts: &Opts) -> &'static str {
    if opts.scripted_server {
        "run"
    } else {
        "delta"
    }
}

/// What each run's content must be: the fake model's script, or the server's scripted one.
fn expect(opts: &Opts, tokens: usize) -> Expect {
    if opts.scripted_server {
        Expect::Scripted { tokens }
    } else {
        Expect::FakeModel { tokens }
    }
}

/// The run every WebSocket client sends: the harness's cast, its prompt asking for `tokens`
/// deltas `delay_ms` apart. Tracing is left to the server's config (off when lean).
fn run_spec(opts: &Opts, tokens: usize, delay_ms: u64) -> RunSpec {
    RunSpec {
        agent: "Triage".into(),
        input: format!("weather in Oslo please tokens={tokens} delay_ms={delay_ms}"),
        expect: expect(opts, tokens),
        trace_disabled: false,
        frame_wait: ws::FRAME_WAIT,
    }
}

// ------------------------------------------------------------------ engine (library)

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct City {
    city: String,
}

fn engine_cast(model_addr: SocketAddr, api: &str) -> Result<Agent, String> {
    let kind = if api == "responses" {
        "openai_responses"
    } else {
        "openai_chat_completions"
    };
    let cfg: ProviderConfig = toml::from_str(&format!(
        "provider = \"{kind}\"\nbase_url = \"http://{model_addr}/v1\"\nmodel = \"fake\"\nmax_retries = 0\n"
    ))
    .map_err(|e| e.to_string())?;
    let model = cfg.build().map_err(|e| e.to_string())?;
    let writer = Agent::new("Writer")
        .instructions("Write the answer.")
        .handoff_description("Writes the answer.")
        .model_instance(model.clone());
    Ok(Agent::new("Triage")
        .instructions("Get the weather, then hand off to Writer.")
        .model_instance(model)
        .tool(FunctionTool::new(
            "get_weather",
            "Weather for a city.",
            |_ctx: ToolContext<()>, a: City| async move {
                Ok::<_, String>(format!("sunny in {}, 12°C", a.city))
            },
        ))
        .handoff(&writer))
}

async fn engine_run(
    runner: &Runner,
    triage: &Agent,
    prompt: &str,
    expect: Expect,
    c: &Counters,
    lat: &mut hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    let mut h = runner
        .request(triage, prompt)
        .config(RunConfig::default().tracing_disabled(true))
        .start()
        .map_err(|e| e.to_string())?;
    let mut events = h.stream_events();
    let mut run = RunCheck::default();
    let mut last_agent = String::new();
    while let Some(ev) = tokio::time::timeout(ws::FRAME_WAIT, events.next())
        .await
        .map_err(|_| "no event for 60 s".to_owned())?
    {
        c.frames.fetch_add(1, Ordering::Relaxed);
        match &ev {
            StreamEvent::RawResponse(r) => {
                if let RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) = r.as_ref() {
                    run.delta(expect, delta, lat).map_err(|e| e.to_string())?;
                }
            }
            StreamEvent::RunItem(item) => match item.as_ref() {
                RunItem::ToolCallOutput { .. } => run.tool_output = true,
                RunItem::HandoffOutput { .. } => run.handoff = true,
                _ => {}
            },
            StreamEvent::AgentUpdated { new_agent } => last_agent = new_agent.to_string(),
        }
    }
    if let Some(e) = h.error() {
        return Err(e.to_string());
    }
    let out = h.final_output();
    let text = out.as_ref().and_then(|v| v.as_str()).unwrap_or("");
    run.finish(expect, text, &last_agent)
        .map_err(|e| e.to_string())
}

fn engine(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    model_addr: SocketAddr,
) -> Result<Scenario, String> {
    let p = &opts.preset;
    let triage = engine_cast(model_addr, &opts.api)?;
    let runner = Arc::new(rt.block_on(async { Runner::new() }));
    let tokens = p.tokens;
    let prompt = format!("weather in Oslo please tokens={tokens}");
    let expect = Expect::FakeModel { tokens };
    // Warm up: connection pool, actors.
    let warm = Arc::new(Counters::default());
    rt.block_on(async {
        let mut lat = histogram();
        for _ in 0..5 {
            if let Err(e) = engine_run(&runner, &triage, &prompt, expect, &warm, &mut lat).await {
                warm.error("engine", e);
            }
        }
    });
    if let Some(e) = warm.first_error.lock().ok().and_then(|g| g.clone()) {
        return Err(format!("engine warm-up: {e}"));
    }
    let c = Arc::new(Counters::default());
    let sam = Sampler::start("engine", p.engine_runs as u64, false, c.clone());
    let cpu0 = procfs::cpu_seconds(None);
    let t0 = Instant::now();
    let deadline = t0 + p.scenario_timeout;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..p.concurrency {
            let n = p.engine_runs / p.concurrency + usize::from(i < p.engine_runs % p.concurrency);
            let (runner, triage, prompt, c) =
                (runner.clone(), triage.clone(), prompt.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = histogram();
                for _ in 0..n {
                    if Instant::now() > deadline {
                        c.error("deadline", "engine: deadline reached");
                        break;
                    }
                    match engine_run(&runner, &triage, &prompt, expect, &c, &mut lat).await {
                        Ok(()) => {
                            c.runs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => c.error("engine", e),
                    }
                }
                c.merge_latency(&lat);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = procfs::cpu_seconds(None);
    let tl = sam.finish();
    let mut sc = Scenario {
        name: "engine".into(),
        description: format!(
            "In-process library: Runner::run_streamed, {} at once, 3 turns (tool call, handoff, {tokens}-delta answer), \
             {} API, consuming stream_events — the same program as the Python driver. CPU: the harness process \
             (the fake model runs in another process).",
            p.concurrency, opts.api
        ),
        concurrency: p.concurrency,
        latency_of: "delta".into(),
        ..Default::default()
    };
    sc.fill(&c, elapsed, tl);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        sc.cpu_s = Some(b - a);
        sc.cpu_ms_per_run = Some(1000.0 * (b - a) / sc.runs.max(1) as f64);
    }
    if let Some(hwm) = procfs::status_kib(None, "VmHWM") {
        sc.memory_kib.insert("peak_rss".into(), hwm as f64);
    }
    Ok(sc)
}

// ------------------------------------------------------------------ Python SDK

fn python_scenario(opts: &Opts, model_addr: SocketAddr) -> Result<Scenario, String> {
    let p = &opts.preset;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/python");
    let setup = Command::new("bash")
        .arg(dir.join("setup.sh"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("setup.sh: {e}"))?;
    if !setup.status.success() {
        return Err("benches/python/setup.sh failed".into());
    }
    let py = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_owned();
    let pb = ProgressBar::new_spinner();
    pb.set_prefix("python");
    pb.set_message(format!(
        "openai-agents: {} runs at {} at once",
        p.python_runs, p.concurrency
    ));
    pb.enable_steady_tick(Duration::from_millis(200));
    let mut child = Command::new(&py)
        .arg(dir.join("driver.py"))
        .args([
            "--base-url",
            &format!("http://{model_addr}/v1"),
            "--api",
            &opts.api,
            "--concurrency",
            &p.concurrency.to_string(),
            "--runs",
            &p.python_runs.to_string(),
            "--tokens",
            &p.tokens.to_string(),
            "--timeout",
            &p.scenario_timeout.as_secs().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{py}: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(out), &mut s);
        let _ = tx.send(s);
    });
    let text = rx.recv_timeout(p.scenario_timeout + Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    pb.finish_and_clear();
    let text = text.map_err(|_| "the Python driver timed out".to_owned())?;
    let line = text.lines().last().unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("driver said {line:?}: {e}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut sc = Scenario {
        name: "python-sdk".into(),
        description: format!(
            "{} (Python {}): Runner.run_streamed, {} at once, the same 3-turn workload on the same fake model server. \
             CPU from getrusage of the driver process.",
            v["impl"].as_str().unwrap_or("openai-agents"),
            v["python"].as_str().unwrap_or("?"),
            p.concurrency
        ),
        concurrency: p.concurrency,
        runs: f("runs") as u64 - f("errors") as u64,
        errors: f("errors") as u64,
        first_error: v["first_error"].as_str().map(str::to_owned),
        elapsed_s: f("elapsed_s"),
        runs_per_s: f("runs_per_s"),
        frames: f("events") as u64,
        frames_per_s: f("events") / f("elapsed_s").max(1e-9),
        cpu_s: Some(f("cpu_s")),
        cpu_ms_per_run: Some(f("cpu_ms_per_run")),
        ..Default::default()
    };
    sc.memory_kib.insert("peak_rss".into(), f("peak_rss_kib"));
    Ok(sc)
}

// ------------------------------------------------------------------ WebSocket scenarios

struct Server {
    proc: Proc,
    target: Target,
}

impl Server {
    fn cpu(&self) -> Option<f64> {
        procfs::cpu_seconds(Some(self.proc.pid()))
    }
    fn rss(&self) -> Option<u64> {
        procfs::rss_kib(Some(self.proc.pid()))
    }
}

/// Conversations over WebSocket: `sessions` clients, `runs_each` runs, deltas `delay_ms` apart.
#[allow(clippy::too_many_arguments)]
fn ws_conversations(
    name: &str,
    description: String,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    sessions: usize,
    runs_each: usize,
    tokens: usize,
    delay_ms: u64,
    rep: usize,
) -> Scenario {
    ws_conversations_full(
        name,
        description,
        opts,
        rt,
        srv,
        sessions,
        runs_each,
        3,
        tokens,
        delay_ms,
        None,
        rep,
    )
}

/// [`ws_conversations`] at full speed with `per_session` runs per session.
#[allow(clippy::too_many_arguments)]
fn ws_conversations_with(
    name: &str,
    description: String,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    clients: usize,
    runs_each: usize,
    per_session: usize,
    rep: usize,
) -> Scenario {
    let tokens = opts.preset.tokens;
    ws_conversations_full(
        name,
        description,
        opts,
        rt,
        srv,
        clients,
        runs_each,
        per_session,
        tokens,
        0,
        None,
        rep,
    )
}

#[allow(clippy::too_many_arguments)]
fn ws_conversations_full(
    name: &str,
    description: String,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    sessions: usize,
    runs_each: usize,
    per_session: usize,
    tokens: usize,
    delay_ms: u64,
    rate: Option<f64>,
    rep: usize,
) -> Scenario {
    let p = &opts.preset;
    let tokens = tokens_for(opts, tokens);
    let c = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    // `sessions` clients sharing the runs: `per_session` runs on each session.
    let clients = sessions;
    let per_session = per_session.min(runs_each).max(1);
    let total_sessions = (clients * runs_each).div_ceil(per_session);
    let total = (total_sessions * per_session) as u64;
    let sam = Sampler::start(name, total, false, c.clone());
    let rss0 = srv.rss();
    let cpu0 = srv.cpu();
    let delivery0 = rt.block_on(scrape::server(&srv.target)).ok();
    let t0 = Instant::now();
    let deadline = t0 + p.scenario_timeout;
    // Server RSS while the sessions are active.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (pk, pid, st) = (peak.clone(), srv.proc.pid(), stop.clone());
    let rss_thread = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Some(r) = procfs::rss_kib(Some(pid)) {
                pk.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let q = Queue::new(Workload {
        prefix: format!("{name}-{rep}-{}", callboard::loadtest::check::now_ns()),
        sessions: Some(total_sessions as u64),
        runs_per_session: per_session as u64,
        rate,
        until: Some(deadline),
    });
    let spec = run_spec(opts, tokens, delay_ms);
    rt.block_on(ws::run_workload(&srv.target, &spec, q, clients, c.clone()));
    if c.get(&c.runs) + c.get(&c.errors) < total {
        c.error(
            "deadline",
            format!("{name}: the scenario's deadline passed"),
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = srv.cpu();
    stop.store(true, Ordering::Relaxed);
    let _ = rss_thread.join();
    let tl = sam.finish();
    let mut sc = Scenario {
        name: name.into(),
        description,
        concurrency: clients,
        latency_of: latency_of(opts).into(),
        ..Default::default()
    };
    sc.fill(&c, elapsed, tl);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        sc.cpu_s = Some(b - a);
        sc.cpu_ms_per_run = Some(1000.0 * (b - a) / sc.runs.max(1) as f64);
    }
    if let (Some(a), Ok(b)) = (delivery0, rt.block_on(scrape::server(&srv.target))) {
        scrape::add_figures(&mut sc, &b.since(&a));
    }
    if let Some(r0) = rss0 {
        let pk = peak.load(Ordering::Relaxed);
        if pk > r0 {
            sc.memory_kib.insert(
                "server_rss_per_active_session".into(),
                (pk - r0) as f64 / clients.max(1) as f64,
            );
        }
        sc.memory_kib.insert("server_rss_peak".into(), pk as f64);
        sc.memory_kib.insert("server_rss_start".into(), r0 as f64);
    }
    sc
}

/// File descriptors kept free for everything but the idle connections.
const FD_HEADROOM: usize = 200;

/// `n` idle connections held; then each answers a ping.
fn idle(rt: &tokio::runtime::Runtime, srv: &Server, n: usize, name: &str) -> Scenario {
    let c = Arc::new(Counters::default());
    let sam = Sampler::start(name, n as u64, true, c.clone());
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = srv.rss();
    let t0 = Instant::now();
    let target = srv.target.clone();
    let conns = rt.block_on(async {
        // At most 64 handshakes in flight.
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (sem, target, c) = (sem.clone(), target.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                match ws::connect(&target).await {
                    Ok(w) => {
                        c.frames.fetch_add(1, Ordering::Relaxed);
                        Some(w)
                    }
                    Err(e) => {
                        c.fail(e);
                        None
                    }
                }
            }));
        }
        let mut conns = Vec::new();
        for t in tasks {
            if let Ok(Some(w)) = t.await {
                conns.push(w);
            }
        }
        conns
    });
    let setup = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = srv.rss();
    let tl = sam.finish();
    let open = conns.len();
    // Every held connection still answers: a ping each, 256 at a time.
    let (conns, answered) = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::new();
        for mut w in conns {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let sent = ws::send(&mut w, serde_json::json!({"type": "ping"})).await;
                let got = match sent {
                    Ok(()) => ws::next_text(&mut w, Duration::from_secs(30)).await.ok(),
                    Err(_) => None,
                };
                let ok = got.as_deref().and_then(ws_check::scan::frame_type) == Some("pong");
                (w, ok)
            }));
        }
        let mut kept = Vec::new();
        let mut answered = 0usize;
        for t in tasks {
            if let Ok((w, ok)) = t.await {
                answered += usize::from(ok);
                kept.push(w);
            }
        }
        (kept, answered)
    });
    if answered < open {
        c.error(
            "ping",
            format!(
                "{} of {open} idle connections did not answer a ping",
                open - answered
            ),
        );
    }
    let mut sc = Scenario {
        name: name.into(),
        description: format!(
            "{n} WebSocket connections opened (64 handshakes at a time) and held idle; server RSS before and after; \
             then every connection answers a ping."
        ),
        concurrency: n,
        ..Default::default()
    };
    sc.fill(&c, setup, tl);
    sc.frames = 0;
    sc.frames_per_s = 0.0;
    sc.figures.insert("connections_open".into(), open as f64);
    sc.figures.insert("pings_answered".into(), answered as f64);
    sc.figures
        .insert("connections_per_s".into(), open as f64 / setup.max(1e-9));
    if let (Some(a), Some(b)) = (rss0, rss1) {
        sc.memory_kib.insert(
            "server_rss_per_idle_connection".into(),
            (b.saturating_sub(a)) as f64 / open.max(1) as f64,
        );
    }
    rt.block_on(async move {
        for mut w in conns {
            let _ = tokio::time::timeout(Duration::from_millis(200), w.close(None)).await;
        }
    });
    sc
}

/// One-run sessions at full speed from `concurrency` clients; the server's RSS before and
/// after (what each session ever seen costs while the process lives).
fn sessions(opts: &Opts, rt: &tokio::runtime::Runtime, srv: &Server, rep: usize) -> Scenario {
    let p = &opts.preset;
    let conc = p.concurrency.min(p.sessions).max(1);
    let each = p.sessions.div_ceil(conc);
    let mut sc = ws_conversations_with(
        "sessions",
        format!(
            "{} one-run sessions (3-turn runs, {}-delta answers) from {conc} clients at full speed; server RSS before and after ({} server).",
            conc * each,
            p.tokens,
            server_mode_name(opts)
        ),
        opts,
        rt,
        srv,
        conc,
        each,
        1,
        rep,
    );
    std::thread::sleep(Duration::from_millis(500));
    if let (Some(r1), Some(r0)) = (srv.rss(), sc.memory_kib.get("server_rss_start").copied()) {
        sc.memory_kib.insert("server_rss_after".into(), r1 as f64);
        sc.memory_kib.insert(
            "server_rss_growth_per_session".into(),
            (r1 as f64 - r0).max(0.0) / sc.runs.max(1) as f64,
        );
    }
    sc
}

fn server_mode_name(opts: &Opts) -> &'static str {
    match opts.server_mode {
        crate::ServerMode::Lean => "lean: memory store, tracing off",
        crate::ServerMode::Defaults => "defaults: SQLite sessions, trace store",
    }
}

/// The soak: new one-run sessions at a fixed rate for a while; the server's RSS sampled every
/// second. Memory must follow activity (the history budget, idle sessions passivated), not
/// the number of sessions ever seen.
fn soak(opts: &Opts, rt: &tokio::runtime::Runtime, srv: &Server, rep: usize) -> Scenario {
    let p = &opts.preset;
    let clients = (p.soak_rate / 5.0).ceil().clamp(1.0, 200.0) as usize;
    let c = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let total = (p.soak_rate * p.soak_secs as f64) as u64;
    let sam = Sampler::start("soak", total, false, c.clone());
    let rss0 = srv.rss();
    let cpu0 = srv.cpu();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(p.soak_secs);
    let (pid, st) = (srv.proc.pid(), stop.clone());
    let rss_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        while !st.load(Ordering::Relaxed) {
            let t = t0.elapsed().as_secs_f64();
            if let Some(r) = procfs::rss_kib(Some(pid)) {
                v.push((t, r));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        v
    });
    let tokens = tokens_for(opts, p.tokens);
    // One-run sessions started at the rate over all clients, the pace kept from the start (a
    // slow run makes the next ones start sooner, not the rate drift).
    let q = Queue::new(Workload {
        prefix: format!("soak-{rep}-{}", callboard::loadtest::check::now_ns()),
        sessions: None,
        runs_per_session: 1,
        rate: Some(p.soak_rate),
        until: Some(until),
    });
    let spec = run_spec(opts, tokens, 0);
    rt.block_on(ws::run_workload(&srv.target, &spec, q, clients, c.clone()));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = srv.cpu();
    stop.store(true, Ordering::Relaxed);
    let rss = rss_thread.join().unwrap_or_default();
    let mut tl = sam.finish();
    for s in tl.iter_mut() {
        s.rss_kib = rss
            .iter()
            .min_by(|a, b| (a.0 - s.t_s).abs().total_cmp(&(b.0 - s.t_s).abs()))
            .map(|r| r.1);
    }
    let mut sc = Scenario {
        name: "soak".into(),
        description: format!(
            "New one-run sessions at {} a second for {} s ({clients} clients), server RSS sampled every second ({} server).",
            p.soak_rate,
            p.soak_secs,
            server_mode_name(opts)
        ),
        concurrency: clients,
        latency_of: latency_of(opts).into(),
        ..Default::default()
    };
    sc.fill(&c, elapsed, tl);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        sc.cpu_s = Some(b - a);
        sc.cpu_ms_per_run = Some(1000.0 * (b - a) / sc.runs.max(1) as f64);
    }
    if let Some(r0) = rss0 {
        sc.memory_kib.insert("server_rss_start".into(), r0 as f64);
    }
    let at = |frac: f64| {
        let t = elapsed * frac;
        rss.iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|r| r.1 as f64)
    };
    for (k, f) in [
        ("server_rss_at_25pct", 0.25),
        ("server_rss_at_50pct", 0.5),
        ("server_rss_at_75pct", 0.75),
        ("server_rss_end", 1.0),
    ] {
        if let Some(v) = at(f) {
            sc.memory_kib.insert(k.into(), v);
        }
    }
    if let Some(m) = rss.iter().map(|r| r.1).max() {
        sc.memory_kib.insert("server_rss_peak".into(), m as f64);
    }
    sc
}

/// One session, many subscribers: `runs` runs at full speed, then one paced run for latency.
fn fanout(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    paced: bool,
    rep: usize,
) -> Result<Scenario, String> {
    let p = &opts.preset;
    let (name, runs, tokens, delay) = if paced {
        ("fanout-paced", 1, p.fan_paced_tokens, p.fan_paced_delay_ms)
    } else {
        ("fanout", p.fan_runs, p.fan_tokens, 0)
    };
    let tokens = tokens_for(opts, tokens);
    let session = format!("{name}-{rep}-{}", callboard::loadtest::check::now_ns());
    let c = Arc::new(Counters::default());
    let deadline = Instant::now() + p.scenario_timeout;
    let target = srv.target.clone();
    let spec = run_spec(opts, tokens, delay);
    // The session exists once a run was created on it: one run first, then everyone
    // subscribes after its last seq.
    let (mut driver, after) = rt
        .block_on(async {
            let mut driver = ws::connect(&target).await?;
            ws::start_run(&mut driver, &spec, &session, 0).await?;
            let after = ws::wait_end(&mut driver, spec.frame_wait).await?;
            Ok::<_, ws_check::Failure>((driver, after))
        })
        .map_err(|e| e.to_string())?;
    let subs = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for _ in 0..p.fan_subs {
            let (sem, target, session) = (sem.clone(), target.clone(), session.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut w = ws::connect(&target).await.map_err(|e| e.to_string())?;
                ws::subscribe(&mut w, &session, Some(after))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(w)
            }));
        }
        let mut subs = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(w)) => subs.push(w),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(subs)
    })?;
    let expected = (p.fan_subs * runs * (tokens + 40)) as u64;
    let sam = Sampler::start(name, expected, true, c.clone());
    let delivery0 = rt.block_on(scrape::server(&srv.target)).ok();
    let cpu0 = srv.cpu();
    let t0 = Instant::now();
    let res = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in subs {
            tasks.push(tokio::spawn(ws::fan_subscriber(
                w,
                session.clone(),
                after,
                runs,
                spec.expect,
                c.clone(),
                deadline,
            )));
        }
        for r in 1..=runs {
            ws::start_run(&mut driver, &spec, &session, r as u64).await?;
            ws::wait_end(&mut driver, spec.frame_wait).await?;
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = driver.close(None).await;
        Ok::<(), ws_check::Failure>(())
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = srv.cpu();
    let tl = sam.finish();
    if let Err(e) = res {
        c.fail(e);
    }
    let mut sc = Scenario {
        name: name.into(),
        description: format!(
            "One session, {} WebSocket subscribers; {runs} run(s) of {tokens} deltas{}; every subscriber checks every frame.",
            p.fan_subs,
            if delay > 0 {
                format!(", {delay} ms apart")
            } else {
                " at full speed".into()
            }
        ),
        concurrency: p.fan_subs,
        latency_of: latency_of(opts).into(),
        ..Default::default()
    };
    sc.fill(&c, elapsed, tl);
    // Runs are counted per subscriber; report the session's runs.
    sc.runs = 0;
    sc.runs_per_s = 0.0;
    sc.figures.insert("session_runs".into(), runs as f64);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        sc.cpu_s = Some(b - a);
        sc.figures.insert(
            "server_cpu_us_per_delivery".into(),
            1e6 * (b - a) / sc.frames.max(1) as f64,
        );
    }
    if let (Some(a), Ok(b)) = (delivery0, rt.block_on(scrape::server(&srv.target))) {
        scrape::add_figures(&mut sc, &b.since(&a));
    }
    Ok(sc)
}

// ------------------------------------------------------------------ all of it

fn repeat(
    opts: &Opts,
    mut f: impl FnMut(usize) -> Result<Scenario, String>,
    out: &mut Vec<Scenario>,
    notes: &mut Vec<String>,
) {
    let mut reps = Vec::new();
    for r in 0..opts.reps {
        match f(r) {
            Ok(s) => reps.push(s),
            Err(e) => notes.push(e),
        }
    }
    if let Some(s) = fold(reps) {
        out.push(s);
    }
}

/// Runs every scenario the options ask for; returns whether all were clean.
pub fn run_all(opts: &Opts) -> Result<bool, String> {
    let p = opts.preset.clone();
    let mut scenarios = Vec::new();
    let mut notes = Vec::new();
    let (_model, model_addr) = spawn_fake_model(p.tokens)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    eprintln!(
        "load: preset {}, nproc {}, fake model server on {model_addr} ({} API), reports in {}",
        p.name,
        procfs::nproc(),
        opts.api,
        opts.out.display()
    );

    if opts.wants("engine") {
        repeat(
            opts,
            |_| engine(opts, &rt, model_addr),
            &mut scenarios,
            &mut notes,
        );
    }
    if opts.python && opts.wants("python") {
        repeat(
            opts,
            |_| python_scenario(opts, model_addr),
            &mut scenarios,
            &mut notes,
        );
    }
    let want_ws = [
        "ws-runs",
        "ws-latency",
        "ws-latency-paced",
        "idle",
        "idle-max",
        "fanout",
        "fanout-paced",
        "sessions",
        "soak",
    ]
    .iter()
    .any(|s| opts.wants(s));
    // The server's modes: each WebSocket scenario on one, or (the compare preset) the
    // sessions scenario on both, lean first.
    let modes = if p.both_modes {
        vec![crate::ServerMode::Lean, crate::ServerMode::Defaults]
    } else {
        vec![opts.server_mode]
    };
    let all_opts = opts;
    for (mi, mode) in modes.iter().enumerate() {
        let mut mode_opts = all_opts.clone();
        mode_opts.server_mode = *mode;
        if mi > 0 {
            mode_opts.only = Some(vec!["sessions".into()]);
        }
        let opts = &mode_opts;
        let before = scenarios.len();
        let want_ws = want_ws
            && [
                "ws-runs",
                "ws-latency",
                "ws-latency-paced",
                "idle",
                "idle-max",
                "fanout",
                "fanout-paced",
                "sessions",
                "soak",
            ]
            .iter()
            .any(|s| opts.wants(s));
        if want_ws {
            match spawn_server(opts, model_addr)? {
                None => notes.push(format!(
                    "{} has no `serve` command in this build: WebSocket scenarios skipped",
                    opts.callboard_bin.display()
                )),
                Some(first) => {
                    // Every repetition of every scenario gets a fresh server, so memory figures
                    // start from the same baseline.
                    drop(first);
                    let fresh = || -> Result<Server, String> {
                        let (proc, addr) =
                            spawn_server(opts, model_addr)?.ok_or("the server went away")?;
                        Ok(Server {
                            proc,
                            target: Target {
                                url: format!("ws://{addr}/v1/ws"),
                                key: None,
                            },
                        })
                    };
                    if opts.wants("idle") {
                        repeat(
                            opts,
                            |_| Ok(idle(&rt, &fresh()?, opts.preset.idle_conns, "idle")),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("idle-max") {
                        // As many as the per-process file limit allows, on both sides.
                        let n = crate::fd_limit().saturating_sub(FD_HEADROOM);
                        repeat(
                            opts,
                            |_| Ok(idle(&rt, &fresh()?, n, "idle-max")),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("ws-runs") {
                        repeat(
                            opts,
                            |r| {
                                let srv = fresh()?;
                                Ok(ws_conversations(
                                    "ws-runs",
                                    format!(
                                        "{} WebSocket clients, each running {} 3-turn conversations (3 per session), {}-delta answers, \
                                         no delay: the server's throughput. CPU: the server process.",
                                        p.concurrency, p.ws_runs_per_client, p.tokens
                                    ),
                                    opts,
                                    &rt,
                                    &srv,
                                    p.concurrency,
                                    p.ws_runs_per_client,
                                    p.tokens,
                                    0,
                                    r,
                                ))
                            },
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    // `ws-latency`: every stream starts in the same millisecond;
                    // `ws-latency-paced`: the same streams, their starts spread out at the rate
                    // that keeps `lat_sessions` of them streaming at once.
                    let stream_s = p.lat_tokens as f64 * p.lat_delay_ms as f64 / 1000.0;
                    let paced = p.lat_sessions as f64 / stream_s.max(0.001);
                    for (name, rate, how) in [
                        ("ws-latency", None, "all starting at once".to_owned()),
                        (
                            "ws-latency-paced",
                            Some(paced),
                            format!("runs starting at {paced:.0}/s"),
                        ),
                    ] {
                        if !opts.wants(name) {
                            continue;
                        }
                        repeat(
                            opts,
                            |r| {
                                let srv = fresh()?;
                                Ok(ws_conversations_full(
                                    name,
                                    format!(
                                        "{} sessions streaming at once ({how}), {}-delta answers {} ms apart: latency \
                                         from the model server emitting a delta to the client receiving it.",
                                        p.lat_sessions, p.lat_tokens, p.lat_delay_ms
                                    ),
                                    opts,
                                    &rt,
                                    &srv,
                                    p.lat_sessions,
                                    p.lat_runs,
                                    3,
                                    p.lat_tokens,
                                    p.lat_delay_ms,
                                    rate,
                                    r,
                                ))
                            },
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("sessions") {
                        repeat(
                            opts,
                            |r| Ok(sessions(opts, &rt, &fresh()?, r)),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("soak") {
                        repeat(
                            opts,
                            |r| Ok(soak(opts, &rt, &fresh()?, r)),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("fanout") {
                        repeat(
                            opts,
                            |r| fanout(opts, &rt, &fresh()?, false, r),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                    if opts.wants("fanout-paced") && !opts.scripted_server {
                        repeat(
                            opts,
                            |r| fanout(opts, &rt, &fresh()?, true, r),
                            &mut scenarios,
                            &mut notes,
                        );
                    }
                }
            }
        }
        if modes.len() > 1 {
            for sc in scenarios[before..].iter_mut() {
                if sc.name == "sessions" {
                    sc.name = format!("sessions-{}", mode.short());
                }
            }
        }
    }

    let mut report = Report {
        preset: p.name.into(),
        nproc: procfs::nproc(),
        reps: opts.reps,
        command: format!(
            "cargo bench --bench load -- {}",
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        ),
        scenarios,
        notes,
        ..Default::default()
    };
    let get = |n: &str| report.scenarios.iter().find(|s| s.name == n).cloned();
    if let Some(py) = get("python-sdk") {
        for cb in [
            "engine",
            "ws-runs",
            "sessions",
            "sessions-lean",
            "sessions-defaults",
        ] {
            if let Some(s) = get(cb) {
                if let (Some(a), Some(b)) = (py.cpu_ms_per_run, s.cpu_ms_per_run) {
                    if b > 0.0 {
                        report
                            .ratios
                            .insert(format!("CPU per run, python-sdk / {cb}"), a / b);
                    }
                }
                if py.runs_per_s > 0.0 {
                    report.ratios.insert(
                        format!("runs/s, {cb} / python-sdk"),
                        s.runs_per_s / py.runs_per_s,
                    );
                }
            }
        }
        if let (Some(a), Some(b)) = (
            py.memory_kib.get("peak_rss"),
            get("engine").and_then(|e| e.memory_kib.get("peak_rss").copied()),
        ) {
            if b > 0.0 {
                report
                    .ratios
                    .insert("peak RSS, python-sdk / engine".into(), a / b);
            }
        }
    }
    if let (Some(lean), Some(def)) = (get("sessions-lean"), get("sessions-defaults")) {
        if let (Some(a), Some(b)) = (def.cpu_ms_per_run, lean.cpu_ms_per_run) {
            if b > 0.0 {
                report.ratios.insert(
                    "CPU per run, sessions-defaults / sessions-lean".into(),
                    a / b,
                );
            }
        }
    }
    eprintln!("{}", report.table());
    let dir: &Path = &opts.out;
    match report.write(dir) {
        Ok(()) => eprintln!(
            "load: report in {} (report.html, report.json)",
            dir.display()
        ),
        Err(e) => eprintln!("load: could not write the report: {e}"),
    }
    let clean = report.scenarios.iter().all(|s| s.clean());
    if opts.test_mode && !report.notes.is_empty() {
        for n in &report.notes {
            eprintln!("load: {n}");
        }
    }
    Ok(clean && (!opts.test_mode || report.notes.iter().all(|n| n.contains("skipped"))))
}
