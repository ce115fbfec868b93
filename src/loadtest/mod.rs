//! `callboard loadtest`: load against any running callboard over WebSocket (PROTOCOL.md
//! section 2): clients running the user's agent and input on many sessions, paced or at full
//! speed, every frame checked (seq gapless, nothing duplicated), with a live progress bar and
//! an HTML and JSON report. The load harness (`benches/load`) drives the same clients.
//!
//! - [`check`]: frame and content checks, counters, errors by code, latency histograms.
//! - [`client`]: the WebSocket clients and the shared workload.
//! - [`report`]: scenario figures, medians over repetitions, the JSON and HTML report.
//! - [`progress`]: the live progress bar and the timeline.
//! - [`procfs`]: CPU and memory of a local process (the server's, when its pid is given).
//! - [`scrape`]: the server's own publish-to-socket-write latency, from its `/metrics`.

pub mod check;
pub mod client;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod scrape;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use check::Counters;
use client::{Queue, RunSpec, Target, Workload};
use progress::Sampler;
use report::{Report, Scenario};

/// What `callboard loadtest` could not do.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// The options do not describe a workload.
    #[error("loadtest: {0}")]
    Invalid(String),
    /// The report could not be written.
    #[error(
        "loadtest: cannot write the report into {dir}: {source}; pass --out with a writable folder"
    )]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One load test.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub spec: RunSpec,
    /// Sessions in all (until `duration` when `None`).
    pub sessions: Option<u64>,
    /// Runs one after the other on each session.
    pub runs_per_session: u64,
    /// Connections running at once.
    pub concurrency: usize,
    /// Run starts per second over all connections (as fast as they go when `None`).
    pub rate: Option<f64>,
    /// No run starts after this long.
    pub duration: Option<Duration>,
    /// Where report.json and report.html go.
    pub out: PathBuf,
    /// The server's pid, when it runs on this machine: its CPU per run and memory.
    pub server_pid: Option<u32>,
    /// The command line, for the report.
    pub command: String,
}

impl Plan {
    /// Checks that the plan ends and can run.
    pub fn validate(&self) -> Result<(), LoadtestError> {
        if self.sessions.is_none() && self.duration.is_none() {
            return Err(LoadtestError::Invalid(
                "neither --sessions nor --duration is given: the load would never end".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(LoadtestError::Invalid(
                "--concurrency must be at least 1".into(),
            ));
        }
        if self.runs_per_session == 0 {
            return Err(LoadtestError::Invalid("--runs must be at least 1".into()));
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(LoadtestError::Invalid(
                "--rate must be a positive number of runs per second".into(),
            ));
        }
        if self.sessions == Some(0) {
            return Err(LoadtestError::Invalid(
                "--sessions must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The run count the progress bar aims at (0 when only a duration bounds it).
    fn expected_runs(&self) -> u64 {
        match (self.sessions, self.duration) {
            (Some(n), None) => n * self.runs_per_session,
            _ => 0,
        }
    }
}

/// Session ids of one invocation start with this, so that they are new on the server.
fn session_prefix() -> String {
    let mut n = check::now_ns();
    let mut s = String::new();
    while n > 0 {
        let d = (n % 36) as u32;
        s.insert(0, char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    format!("loadtest-{s}")
}

/// Runs the plan; returns its report (also written to `plan.out`).
pub async fn run(plan: &Plan) -> Result<Report, LoadtestError> {
    plan.validate()?;
    let c = Arc::new(Counters::default());
    let sampler = Sampler::start("loadtest", plan.expected_runs(), false, c.clone());
    let cpu0 = plan.server_pid.and_then(|p| procfs::cpu_seconds(Some(p)));
    let rss0 = plan.server_pid.and_then(|p| procfs::rss_kib(Some(p)));
    let delivery0 = scrape::server(&plan.target).await.ok();
    let t0 = Instant::now();
    let q = Queue::new(Workload {
        prefix: session_prefix(),
        sessions: plan.sessions,
        runs_per_session: plan.runs_per_session,
        rate: plan.rate,
        until: plan.duration.map(|d| t0 + d),
    });
    client::run_workload(&plan.target, &plan.spec, q, plan.concurrency, c.clone()).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = plan.server_pid.and_then(|p| procfs::cpu_seconds(Some(p)));
    let timeline = sampler.finish();
    let mut sc = Scenario {
        name: "loadtest".into(),
        description: format!(
            "{} connection(s) running agent {:?} on {} session(s), {} run(s) each{}{}, against {}.",
            plan.concurrency,
            plan.spec.agent,
            plan.sessions.map_or("new".to_owned(), |n| n.to_string()),
            plan.runs_per_session,
            plan.rate.map_or(" at full speed".to_owned(), |r| format!(
                ", {r} run starts a second"
            )),
            plan.duration
                .map_or(String::new(), |d| format!(", for {} s", d.as_secs_f64())),
            plan.target.url
        ),
        command_note: plan.command.clone(),
        reps: 1,
        concurrency: plan.concurrency,
        latency_of: match plan.spec.expect {
            check::Expect::FakeModel { .. } => "delta".into(),
            _ => "run".into(),
        },
        ..Default::default()
    };
    sc.fill(&c, elapsed, timeline);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        sc.cpu_s = Some(b - a);
        sc.cpu_ms_per_run = Some(1000.0 * (b - a) / sc.runs.max(1) as f64);
    }
    if let (Some(a), Ok(b)) = (delivery0, scrape::server(&plan.target).await) {
        scrape::add_figures(&mut sc, &b.since(&a));
    }
    if let Some(pid) = plan.server_pid {
        if let Some(r) = rss0 {
            sc.memory_kib.insert("server_rss_start".into(), r as f64);
        }
        if let Some(r) = procfs::rss_kib(Some(pid)) {
            sc.memory_kib.insert("server_rss_end".into(), r as f64);
        }
    }
    let report = Report {
        preset: "loadtest".into(),
        nproc: procfs::nproc(),
        reps: 1,
        command: plan.command.clone(),
        scenarios: vec![sc],
        ..Default::default()
    };
    report
        .write(&plan.out)
        .map_err(|source| LoadtestError::Write {
            dir: plan.out.clone(),
            source,
        })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            target: Target::new("http://127.0.0.1:1", None).unwrap(),
            spec: RunSpec {
                agent: "A".into(),
                input: "hi".into(),
                expect: check::Expect::Any,
                trace_disabled: false,
                frame_wait: Duration::from_secs(1),
            },
            sessions: Some(1),
            runs_per_session: 1,
            concurrency: 1,
            rate: None,
            duration: None,
            out: PathBuf::from("."),
            server_pid: None,
            command: String::new(),
        }
    }

    #[test]
    fn plans_that_never_end_or_cannot_run_are_refused() {
        assert!(plan().validate().is_ok());
        let mut p = plan();
        p.sessions = None;
        assert!(p.validate().unwrap_err().to_string().contains("never end"));
        p.duration = Some(Duration::from_secs(1));
        assert!(p.validate().is_ok());
        let mut p = plan();
        p.rate = Some(0.0);
        assert!(p.validate().is_err());
        let mut p = plan();
        p.concurrency = 0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn session_prefixes_differ_between_invocations() {
        let a = session_prefix();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, session_prefix());
        assert!(a.starts_with("loadtest-"));
    }
}
