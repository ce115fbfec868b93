//! [`RunObserver`]: what the engine reports about model and tool calls as they end
//! (durations, time to first token, token usage, errors), for metrics. The server's
//! Prometheus histograms are one; a `Runner` without one pays nothing.

use std::time::Duration;

/// One model call, when it ends.
#[derive(Clone, Debug)]
pub struct ModelCallStats<'a> {
    /// The agent that called.
    pub agent: &'a str,
    /// The model's name.
    pub model: &'a str,
    /// From the request to the end of the stream.
    pub duration: Duration,
    /// From the request to the first output delta (text, refusal or tool arguments), when
    /// one came.
    pub time_to_first_token: Option<Duration>,
    /// Input tokens, when the model reported usage.
    pub input_tokens: Option<u64>,
    /// Output tokens, when the model reported usage.
    pub output_tokens: Option<u64>,
    /// Whether the call failed.
    pub error: bool,
}

/// One tool call, when it ends.
#[derive(Clone, Debug)]
pub struct ToolCallStats<'a> {
    /// The agent whose tool it is.
    pub agent: &'a str,
    /// The tool's name.
    pub tool: &'a str,
    /// How long the tool ran.
    pub duration: Duration,
    /// Whether it failed (the model was told the error).
    pub error: bool,
}

/// Receives the engine's reports; called on the run's task, so keep it quick (a few atomic
/// updates). Set with [`Runner::with_observer`](crate::Runner::with_observer).
pub trait RunObserver: Send + Sync + 'static {
    /// A model call ended.
    fn model_call(&self, call: &ModelCallStats<'_>);
    /// A tool call ended.
    fn tool_call(&self, call: &ToolCallStats<'_>);
}
