//! The service's metrics and their Prometheus text (`GET /metrics`), written by the
//! `prometheus-client` crate: counters and gauges (connections, WebSocket and SSE alike,
//! subscriptions, sessions, retained history, runs, frames, lagged subscribers, errors by
//! code, each agent's runs and mailbox depth), runs by outcome, histograms of model and tool
//! calls per agent, model and tool ([`CallMetrics`], fed by the engine as a
//! [`RunObserver`]), the trace pipeline's counters and the trace store's write latency.
//!
//! Names and units follow Prometheus' conventions: base units (`_seconds`), counters end in
//! `_total`. Label values come from the config (agents, models, tools), so their number is
//! bounded.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::run::{ModelCallStats, RunObserver, ToolCallStats};
use crate::service::Core;

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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
    /// Runs ended, by outcome, and failed runs by error type.
    pub run_ends: RunEnds,
    /// Model and tool calls (the runner's [`RunObserver`]).
    pub calls: std::sync::Arc<CallMetrics>,
    /// Ingest items refused, by code (`invalid_id`, `trace_not_yours`).
    pub ingest_refused: Family<CodeLabel, Counter>,
    /// Frames from publish to the completed socket write, by transport.
    pub delivery: crate::service::delivery::Delivery,
}

/// `agent` and `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentModel {
    /// The agent.
    pub agent: String,
    /// The model.
    pub model: String,
}

/// `agent`, `model` and `token_type` (`input` or `output`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentModelTokens {
    /// The agent.
    pub agent: String,
    /// The model.
    pub model: String,
    /// `input` or `output`.
    pub token_type: &'static str,
}

/// `agent` and `tool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentTool {
    /// The agent.
    pub agent: String,
    /// The tool.
    pub tool: String,
}

/// `agent`, `tool` and `outcome` (`ok` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentToolOutcome {
    /// The agent.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// One `code` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn model_seconds() -> Histogram {
    // 50 ms to about 100 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

fn first_token_seconds() -> Histogram {
    // 10 ms to about 20 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

fn tool_seconds() -> Histogram {
    // 1 ms to about 30 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Histograms and counters of model and tool calls, per agent, model and tool.
#[derive(Debug)]
pub struct CallMetrics {
    model_duration: Histograms<AgentModel>,
    model_first_token: Histograms<AgentModel>,
    model_errors: Family<AgentModel, Counter>,
    tokens: Family<AgentModelTokens, Counter>,
    tool_duration: Histograms<AgentTool>,
    tool_calls: Family<AgentToolOutcome, Counter>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            model_duration: Family::new_with_constructor(model_seconds),
            model_first_token: Family::new_with_constructor(first_token_seconds),
            model_errors: Family::default(),
            tokens: Family::default(),
            tool_duration: Family::new_with_constructor(tool_seconds),
            tool_calls: Family::default(),
        }
    }
}

impl RunObserver for CallMetrics {
    fn model_call(&self, c: &ModelCallStats<'_>) {
        let l = AgentModel {
            agent: c.agent.to_owned(),
            model: c.model.to_owned(),
        };
        self.model_duration
            .get_or_create(&l)
            .observe(c.duration.as_secs_f64());
        if let Some(t) = c.time_to_first_token {
            self.model_first_token
                .get_or_create(&l)
                .observe(t.as_secs_f64());
        }
        if c.error {
            self.model_errors.get_or_create(&l).inc();
        }
        for (token_type, n) in [("input", c.input_tokens), ("output", c.output_tokens)] {
            if let Some(n) = n {
                self.tokens
                    .get_or_create(&AgentModelTokens {
                        agent: l.agent.clone(),
                        model: l.model.clone(),
                        token_type,
                    })
                    .inc_by(n);
            }
        }
    }

    fn tool_call(&self, c: &ToolCallStats<'_>) {
        let l = AgentTool {
            agent: c.agent.to_owned(),
            tool: c.tool.to_owned(),
        };
        self.tool_duration
            .get_or_create(&l)
            .observe(c.duration.as_secs_f64());
        self.tool_calls
            .get_or_create(&AgentToolOutcome {
                agent: l.agent,
                tool: l.tool,
                outcome: if c.error { "error" } else { "ok" },
            })
            .inc();
    }
}

impl CallMetrics {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "callboard_model_request_duration",
            "Model calls: from the request to the end of the stream",
            Unit::Seconds,
            self.model_duration.clone(),
        );
        r.register_with_unit(
            "callboard_model_time_to_first_token",
            "Model calls: from the request to the first output delta",
            Unit::Seconds,
            self.model_first_token.clone(),
        );
        r.register(
            "callboard_model_errors",
            "Model calls that failed",
            self.model_errors.clone(),
        );
        r.register(
            "callboard_model_tokens",
            "Tokens used by model calls, by token_type (input, output)",
            self.tokens.clone(),
        );
        r.register_with_unit(
            "callboard_tool_duration",
            "Tool calls: how long the tool ran",
            Unit::Seconds,
            self.tool_duration.clone(),
        );
        r.register(
            "callboard_tool_calls",
            "Tool calls by outcome (ok, error)",
            self.tool_calls.clone(),
        );
    }
}

/// One `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `completed`, `failed` or `cancelled`.
    pub outcome: &'static str,
}

/// One `error_type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorTypeLabel {
    /// The SDK's exception name.
    pub error_type: &'static str,
}

/// Runs ended, by outcome (`completed`, `failed`, `cancelled`), and failed runs by the
/// SDK's error type (`MaxTurnsExceeded`, ...).
#[derive(Debug, Default)]
pub struct RunEnds {
    by_outcome: Family<OutcomeLabel, Counter>,
    failed_by_type: Family<ErrorTypeLabel, Counter>,
}

impl RunEnds {
    /// Counts a run's end.
    pub fn count(&self, outcome: &crate::run::RunOutcome) {
        use crate::run::RunOutcome;
        let outcome = match outcome {
            RunOutcome::Completed { .. } => "completed",
            RunOutcome::Failed(e) => {
                self.failed_by_type
                    .get_or_create(&ErrorTypeLabel {
                        error_type: e.sdk_name(),
                    })
                    .inc();
                "failed"
            }
            RunOutcome::Cancelled(_) => "cancelled",
            RunOutcome::Interrupted(_) => "awaiting_approval",
        };
        self.by_outcome
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstGauge::new(v as i64));
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

impl Core {
    /// The Prometheus text of `GET /metrics` (format 0.0.4).
    pub fn metrics_text(&self) -> String {
        let mut r = Registry::default();
        self.register_metrics(&mut r);
        let mut s = String::with_capacity(8192);
        if prometheus_client::encoding::prometheus_text::encode(&mut s, &r).is_err() {
            tracing::error!("could not encode the metrics");
        }
        s
    }

    /// Registers every metric, as it is now, in `r`.
    fn register_metrics(&self, r: &mut Registry) {
        let m = &self.metrics;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let now = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        gauge(
            r,
            "callboard_connections",
            "Open connections (WebSocket and SSE)",
            now(&m.connections),
        );
        counter(
            r,
            "callboard_ws_connections",
            "WebSocket connections accepted",
            load(&m.connections_total),
        );
        gauge(
            r,
            "callboard_subscriptions",
            "Live session subscriptions",
            now(&m.subscriptions),
        );
        gauge(
            r,
            "callboard_sessions_active",
            "Sessions active (with an owner in memory)",
            self.sessions.active() as u64,
        );
        gauge(
            r,
            "callboard_history_bytes",
            "Bytes of retained frames over all sessions (approximate)",
            self.sessions.budget().used() as u64,
        );
        counter(
            r,
            "callboard_sse_streams",
            "SSE streams accepted",
            load(&m.sse_streams_total),
        );
        gauge(
            r,
            "callboard_runs_active",
            "Runs in progress",
            self.runs.len() as u64,
        );
        counter(
            r,
            "callboard_runs_started",
            "Runs started",
            load(&m.runs_started),
        );
        counter(
            r,
            "callboard_runs_finished",
            "Runs ended",
            load(&m.runs_finished),
        );
        r.register(
            "callboard_runs_ended",
            "Runs ended, by outcome (completed, failed, cancelled)",
            m.run_ends.by_outcome.clone(),
        );
        r.register(
            "callboard_runs_failed",
            "Failed runs, by the SDK's error type (MaxTurnsExceeded, ModelBehaviorError, ...)",
            m.run_ends.failed_by_type.clone(),
        );
        counter(
            r,
            "callboard_ws_frames_sent",
            "Frames written to WebSocket clients",
            load(&m.frames_sent),
        );
        counter(
            r,
            "callboard_lagged",
            "Lagged notices sent to slow clients",
            load(&m.lagged),
        );
        counter(
            r,
            "callboard_errors",
            "Error frames and error answers sent",
            load(&m.errors),
        );
        gauge(
            r,
            "callboard_client_tool_calls_waiting",
            "Client-side tool calls waiting for tool.result",
            self.calls.waiting() as u64,
        );
        gauge(
            r,
            "callboard_draining",
            "1 while shutting down",
            self.is_draining() as u64,
        );
        let by_code = Family::<CodeLabel, Counter>::default();
        for (code, n) in m.errors_by_code.snapshot() {
            by_code
                .get_or_create(&CodeLabel {
                    code: code.to_owned(),
                })
                .inc_by(n);
        }
        r.register(
            "callboard_errors_by_code",
            "Error frames and answers by code",
            by_code,
        );
        let (running, waiting) = (
            Family::<AgentLabel, Gauge>::default(),
            Family::<AgentLabel, Gauge>::default(),
        );
        for (name, st) in &self.runner.stage().stats() {
            let l = AgentLabel {
                agent: name.clone(),
            };
            running.get_or_create(&l).set(st.running() as i64);
            waiting.get_or_create(&l).set(st.waiting() as i64);
        }
        r.register(
            "callboard_agent_runs_running",
            "Runs running at each agent",
            running,
        );
        r.register(
            "callboard_agent_mailbox_depth",
            "New runs waiting for a place at each agent",
            waiting,
        );
        m.calls.register(r);
        r.register_with_unit(
            "callboard_frame_delivery",
            "Session frames from their publishing to the completed write to a client's socket, by transport (ws, sse); live frames only, not resumes from history",
            Unit::Seconds,
            m.delivery.snapshot(),
        );
        r.register(
            "callboard_trace_ingest_refused",
            "Items of trace ingest bodies refused, by code (invalid_id, trace_not_yours)",
            m.ingest_refused.clone(),
        );
        if let Some(w) = self.sessions.store().writer_stats() {
            counter(
                r,
                "callboard_session_store_commits",
                "Session store write transactions (SQLite: each carries every write queued when it starts)",
                w.batches,
            );
            counter(
                r,
                "callboard_session_store_writes",
                "Session store writes (turn saves, run records, items) committed or refused",
                w.writes,
            );
            counter(
                r,
                "callboard_session_store_failed_writes",
                "Session store writes answered with an error",
                w.failed_writes,
            );
        }
        r.register_with_unit(
            "callboard_session_store_write_duration",
            "Session store turn saves: a turn's items, run record and run state in one write",
            Unit::Seconds,
            self.sessions.save_latency().clone(),
        );
        if let Some(t) = self.tracing() {
            if let Some(p) = &t.processor {
                p.stats().snapshot().register(r);
            }
            if let Some(store) = &t.store {
                r.register_with_unit(
                    "callboard_trace_store_write_duration",
                    "Trace store write transactions (lock wait included)",
                    Unit::Seconds,
                    store.write_latency().clone(),
                );
            }
        }
    }
}

/// One `agent` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    /// The agent.
    pub agent: String,
}
