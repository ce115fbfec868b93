//! The load harness: a fake OpenAI-compatible model server, the callboard server, many
//! WebSocket clients, and the same workload through the Python OpenAI Agents SDK.
//!
//! ```text
//! cargo bench --bench load -- [--preset quick|full|compare] [--reps N] [--out DIR] [--only a,b] [--no-python]
//! ```
//!
//! The clients, checks and report are the library's (`callboard::loadtest`, also behind
//! `callboard loadtest`); this harness adds the processes and scenarios. See
//! docs/performance.md. Under `cargo test --all-targets` (unoptimised) it runs the quick preset
//! without the Python SDK and fails on any lost, duplicated or reordered frame or error.

mod model;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use crate::model::ModelOpts;

/// What one invocation runs.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    /// Runs at once (engine, WebSocket conversations and the Python SDK alike).
    pub concurrency: usize,
    /// Runs of the engine (in-process library) scenario.
    pub engine_runs: usize,
    /// Conversations per WebSocket client in the throughput scenario.
    pub ws_runs_per_client: usize,
    /// Deltas in each answer.
    pub tokens: usize,
    /// Latency scenario: active sessions, deltas per answer, ms between deltas, runs each.
    pub lat_sessions: usize,
    pub lat_tokens: usize,
    pub lat_delay_ms: u64,
    pub lat_runs: usize,
    /// Idle connections held open.
    pub idle_conns: usize,
    /// Fan-out: subscribers, runs at full speed (deltas each), paced run (deltas, ms apart).
    pub fan_subs: usize,
    pub fan_runs: usize,
    pub fan_tokens: usize,
    pub fan_paced_tokens: usize,
    pub fan_paced_delay_ms: u64,
    /// Runs through the Python SDK.
    pub python_runs: usize,
    /// Sessions scenario: one-run sessions (then the server's RSS).
    pub sessions: usize,
    /// Soak scenario: new one-run sessions per second, for this many seconds.
    pub soak_rate: f64,
    pub soak_secs: u64,
    /// Longest any scenario may take.
    pub scenario_timeout: Duration,
    /// The sessions scenario on the server's defaults as well as lean (the compare preset).
    pub both_modes: bool,
    /// The scenarios run when `--only` is not given (all when `None`).
    pub scenarios: Option<&'static [&'static str]>,
}

impl Preset {
    fn quick() -> Preset {
        Preset {
            name: "quick",
            concurrency: 20,
            engine_runs: 400,
            ws_runs_per_client: 10,
            tokens: 20,
            lat_sessions: 50,
            lat_tokens: 20,
            lat_delay_ms: 20,
            lat_runs: 1,
            idle_conns: 500,
            fan_subs: 100,
            fan_runs: 2,
            fan_tokens: 500,
            fan_paced_tokens: 50,
            fan_paced_delay_ms: 10,
            python_runs: 60,
            sessions: 300,
            soak_rate: 50.0,
            soak_secs: 10,
            scenario_timeout: Duration::from_secs(60),
            both_modes: false,
            scenarios: None,
        }
    }

    fn full() -> Preset {
        Preset {
            name: "full",
            concurrency: 100,
            engine_runs: 5000,
            ws_runs_per_client: 30,
            tokens: 20,
            lat_sessions: 500,
            lat_tokens: 50,
            lat_delay_ms: 20,
            lat_runs: 2,
            idle_conns: 10_000,
            fan_subs: 1000,
            fan_runs: 3,
            fan_tokens: 2000,
            fan_paced_tokens: 300,
            fan_paced_delay_ms: 10,
            python_runs: 400,
            sessions: 2000,
            soak_rate: 100.0,
            soak_secs: 600,
            scenario_timeout: Duration::from_secs(900),
            both_modes: false,
            scenarios: None,
        }
    }

    /// Issue 17's comparison: 200 sessions at once, one run each, the server on its defaults
    /// and lean, the Python SDK at the same concurrency; idle connections (10,000, then up to
    /// the file limit); fan-out of one session to 1,000 subscribers; 500 sessions streaming a
    /// delta every 20 ms (`ws-latency`: the server's publish-to-write p99 from `/metrics`),
    /// all starting at once and (`ws-latency-paced`) started at the rate that keeps 500 streaming.
    fn compare() -> Preset {
        Preset {
            name: "compare",
            concurrency: 200,
            python_runs: 1000,
            sessions: 2000,
            idle_conns: 10_000,
            fan_subs: 1000,
            fan_runs: 3,
            fan_tokens: 500,
            scenario_timeout: Duration::from_secs(600),
            both_modes: true,
            scenarios: Some(&[
                "python",
                "sessions",
                "idle",
                "idle-max",
                "fanout",
                "ws-latency",
                "ws-latency-paced",
            ]),
            ..Preset::full()
        }
    }
}

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Opts {
    pub preset: Preset,
    pub reps: usize,
    pub out: PathBuf,
    pub only: Option<Vec<String>>,
    pub python: bool,
    pub api: String,
    pub test_mode: bool,
    pub callboard_bin: PathBuf,
    /// Run the server on its scripted provider (for builds without the OpenAI providers).
    pub scripted_server: bool,
    /// The server's sessions and tracing: `lean` (memory store, tracing off, as the SDK side
    /// of the comparison) or `defaults` (its embedded defaults: SQLite sessions, trace store).
    pub server_mode: ServerMode,
    /// `[limits] history_bytes` of the server under test (its default when `None`).
    pub history_bytes: Option<u64>,
}

/// How the server under test keeps sessions and traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// Memory store, tracing off.
    Lean,
    /// SQLite sessions and the trace store (the embedded defaults).
    Defaults,
}

impl Opts {
    pub fn wants(&self, scenario: &str) -> bool {
        match (&self.only, self.preset.scenarios) {
            (Some(o), _) => o.iter().any(|s| s == scenario),
            (None, Some(d)) => d.contains(&scenario),
            (None, None) => true,
        }
    }
}

impl ServerMode {
    /// `lean` or `defaults`.
    pub fn short(self) -> &'static str {
        match self {
            ServerMode::Lean => "lean",
            ServerMode::Defaults => "defaults",
        }
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns
/// the limit in force.
pub fn fd_limit() -> usize {
    // SAFETY: getrlimit/setrlimit on a valid, initialised struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur as usize
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench load -- [--preset quick|full|compare] [--reps N] [--out DIR] \
         [--only engine,python,idle,idle-max,ws-runs,ws-latency,ws-latency-paced,fanout,fanout-paced,sessions,soak] [--no-python] [--api chat|responses] \
         [--tokens K] [--fan-tokens K] [--callboard-bin PATH] [--scripted-server] [--server lean|defaults] \
         [--sessions N] [--soak-rate R] [--soak-secs S] [--history-bytes B]\n       load fake-model [--port P] [--tokens K] [--delay-ms D]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("fake-model") {
        let mut port = 0u16;
        let mut opts = ModelOpts {
            tokens: 20,
            delay_ms: 0,
        };
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let v = it.next().map(String::as_str).unwrap_or("");
            match a.as_str() {
                "--port" => port = v.parse().unwrap_or_else(|_| usage()),
                "--tokens" => opts.tokens = v.parse().unwrap_or_else(|_| usage()),
                "--delay-ms" => opts.delay_ms = v.parse().unwrap_or_else(|_| usage()),
                _ => usage(),
            }
        }
        if let Err(e) = model::serve_blocking(port, opts) {
            eprintln!("fake model server: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test --all-targets` runs this target unoptimised (the test profile) and without
    // arguments: that is the smoke test (quick preset, no Python, no timing). `--test` asks
    // for it explicitly; `cargo bench` builds it optimised.
    let test_mode = args.iter().any(|a| a == "--test") || cfg!(debug_assertions);
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let mut opts = Opts {
        preset: Preset::quick(),
        reps: 1,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/load"),
        only: None,
        python: !test_mode,
        api: "chat".into(),
        test_mode,
        callboard_bin: PathBuf::from(env!("CARGO_BIN_EXE_callboard")),
        scripted_server: false,
        server_mode: ServerMode::Lean,
        history_bytes: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" | "--test" | "--nocapture" => {}
            "--preset" => match it.next().map(String::as_str) {
                Some("quick") => opts.preset = Preset::quick(),
                Some("full") => opts.preset = Preset::full(),
                Some("compare") => opts.preset = Preset::compare(),
                _ => usage(),
            },
            "--reps" => {
                opts.reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| usage())
            }
            "--out" => opts.out = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--only" => opts.only = it.next().map(|v| v.split(',').map(str::to_owned).collect()),
            "--tokens" => {
                opts.preset.tokens = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--fan-tokens" => {
                opts.preset.fan_tokens = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--no-python" => opts.python = false,
            "--server" => match it.next().map(String::as_str) {
                Some("lean") => opts.server_mode = ServerMode::Lean,
                Some("defaults") => opts.server_mode = ServerMode::Defaults,
                _ => usage(),
            },
            "--history-bytes" => {
                opts.history_bytes = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--sessions" => {
                opts.preset.sessions = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--soak-rate" => {
                opts.preset.soak_rate = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--soak-secs" => {
                opts.preset.soak_secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--scripted-server" => opts.scripted_server = true,
            "--api" => match it.next().map(String::as_str) {
                Some(a @ ("chat" | "responses")) => opts.api = a.to_owned(),
                _ => usage(),
            },
            "--callboard-bin" => {
                opts.callboard_bin = it.next().map(PathBuf::from).unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            // Filters cargo passes on (`cargo bench load`) are ignored.
            _ => {}
        }
    }
    if opts.preset.name == "compare" {
        // Medians of at least three repetitions.
        opts.reps = opts.reps.max(3);
    }
    fd_limit();
    let code = match scenarios::run_all(&opts) {
        Ok(clean) => {
            if clean {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("load: {e}");
            1
        }
    };
    std::process::exit(code);
}
