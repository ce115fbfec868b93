//! The service's counters and their Prometheus text (`GET /metrics`): connections (WebSocket
//! and SSE alike), subscriptions, sessions active, retained history, runs, frames, lagged
//! subscribers, errors by code, and each agent's runs and mailbox depth.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::service::Core;

/// Counters behind `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Open connections: WebSockets and SSE streams (both count against
    /// `limits.max_connections`).
    pub connections: AtomicUsize,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Runs started.
    pub runs_started: AtomicU64,
    /// Runs that ended.
    pub runs_finished: AtomicU64,
    /// Frames written to WebSocket clients.
    pub frames_sent: AtomicU64,
    /// `lagged` notices sent.
    pub lagged: AtomicU64,
    /// Error frames and error answers sent.
    pub errors: AtomicU64,
    /// The same, by error code.
    pub errors_by_code: crate::service::telemetry::ErrorCounts,
    /// Live session subscriptions (WebSocket and SSE).
    pub subscriptions: AtomicUsize,
    /// SSE streams accepted since start.
    pub sse_streams_total: AtomicU64,
}

impl Core {
    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let mut s = String::with_capacity(1024);
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        line(
            "callboard_connections",
            "gauge",
            "Open connections (WebSocket and SSE).",
            m.connections.load(Ordering::Relaxed) as u64,
        );
        line(
            "callboard_ws_connections_total",
            "counter",
            "WebSocket connections accepted.",
            m.connections_total.load(Ordering::Relaxed),
        );
        line(
            "callboard_subscriptions",
            "gauge",
            "Live session subscriptions.",
            m.subscriptions.load(Ordering::Relaxed) as u64,
        );
        line(
            "callboard_sessions_active",
            "gauge",
            "Sessions active (with an owner in memory).",
            self.sessions.active() as u64,
        );
        line(
            "callboard_history_bytes",
            "gauge",
            "Bytes of retained frames over all sessions (approximate).",
            self.sessions.budget().used() as u64,
        );
        line(
            "callboard_sse_streams_total",
            "counter",
            "SSE streams accepted.",
            m.sse_streams_total.load(Ordering::Relaxed),
        );
        line(
            "callboard_runs_active",
            "gauge",
            "Runs in progress.",
            self.runs.len() as u64,
        );
        line(
            "callboard_runs_started_total",
            "counter",
            "Runs started.",
            m.runs_started.load(Ordering::Relaxed),
        );
        line(
            "callboard_runs_finished_total",
            "counter",
            "Runs ended.",
            m.runs_finished.load(Ordering::Relaxed),
        );
        line(
            "callboard_ws_frames_sent_total",
            "counter",
            "Frames written to WebSocket clients.",
            m.frames_sent.load(Ordering::Relaxed),
        );
        line(
            "callboard_lagged_total",
            "counter",
            "Lagged notices sent to slow clients.",
            m.lagged.load(Ordering::Relaxed),
        );
        line(
            "callboard_errors_total",
            "counter",
            "Error frames and error answers sent.",
            m.errors.load(Ordering::Relaxed),
        );
        line(
            "callboard_client_tool_calls_waiting",
            "gauge",
            "Client-side tool calls waiting for tool.result.",
            self.calls.waiting() as u64,
        );
        line(
            "callboard_draining",
            "gauge",
            "1 while shutting down.",
            self.is_draining() as u64,
        );
        s.push_str(
            "# HELP callboard_errors_by_code_total Error frames and answers by code.\n# TYPE callboard_errors_by_code_total counter\n",
        );
        for (code, n) in m.errors_by_code.snapshot() {
            let _ = writeln!(s, "callboard_errors_by_code_total{{code=\"{code}\"}} {n}");
        }
        s.push_str("# HELP callboard_agent_runs_running Runs running at each agent.\n# TYPE callboard_agent_runs_running gauge\n");
        let agents = self.runner.stage().stats();
        for (name, st) in &agents {
            let _ = writeln!(
                s,
                "callboard_agent_runs_running{{agent=\"{}\"}} {}",
                label(name),
                st.running()
            );
        }
        s.push_str("# HELP callboard_agent_mailbox_depth New runs waiting for a place at each agent.\n# TYPE callboard_agent_mailbox_depth gauge\n");
        for (name, st) in &agents {
            let _ = writeln!(
                s,
                "callboard_agent_mailbox_depth{{agent=\"{}\"}} {}",
                label(name),
                st.waiting()
            );
        }
        if let Some(p) = self.tracing().and_then(|t| t.processor.as_ref()) {
            s.push_str(&p.stats().snapshot().prometheus());
        }
        s
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
