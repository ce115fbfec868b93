//! Internal telemetry as named events: each `emit()` logs and counts, so the logs and
//! `GET /metrics` never drift apart.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::service::metrics::Metrics;

/// Every error code the server answers with, in the order `errors_by_code` counts them.
pub const ERROR_CODES: [&str; 13] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "session_busy",
    "unknown_agent",
    "not_found",
    "frame_too_large",
    "input_too_large",
    "overloaded",
    "history_truncated",
    "shutting_down",
    "not_implemented",
    "internal",
];

/// Error counters, one per code.
#[derive(Default)]
pub struct ErrorCounts([AtomicU64; ERROR_CODES.len()]);

impl ErrorCounts {
    /// Adds one for `code`.
    pub fn add(&self, code: &str) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(code, count)` for every code.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_CODES
            .iter()
            .zip(self.0.iter())
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
    }
}

/// An error answered to a client (an `error` frame or an HTTP error answer).
pub struct ErrorSent<'a> {
    /// The error code.
    pub code: &'static str,
    /// `ws` or `http`.
    pub surface: &'static str,
    /// What was wrong (for the log).
    pub message: &'a str,
}

impl ErrorSent<'_> {
    /// Logs the error at debug level and counts it.
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            code = self.code,
            surface = self.surface,
            message = self.message,
            "error answered"
        );
        m.errors.fetch_add(1, Ordering::Relaxed);
        m.errors_by_code.add(self.code);
    }
}

/// A subscriber fell behind the bus and was told `lagged`.
pub struct Lagged<'a> {
    /// The session.
    pub session_id: &'a str,
    /// Where it should resume.
    pub resume_after_seq: u64,
    /// `ws` or `sse`.
    pub surface: &'static str,
}

impl Lagged<'_> {
    /// Logs the lag and counts it.
    pub fn emit(&self, m: &Metrics) {
        tracing::info!(
            session_id = self.session_id,
            resume_after_seq = self.resume_after_seq,
            surface = self.surface,
            "slow subscriber skipped ahead (lagged)"
        );
        m.lagged.fetch_add(1, Ordering::Relaxed);
    }
}
