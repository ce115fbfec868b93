//! `RunConfig`: per-run settings (the SDK's `RunConfig`): turns, model override, tracing.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::model::{Model, ModelSettings};
use crate::trace::Tracer;

/// The SDK's default `max_turns`.
pub const DEFAULT_MAX_TURNS: u64 = 10;

/// Settings for one run.
#[derive(Clone)]
pub struct RunConfig {
    /// Turns before `MaxTurnsExceeded` (default 10).
    pub max_turns: u64,
    /// A model for every agent of the run, overriding theirs.
    pub model: Option<Arc<dyn Model>>,
    /// Settings laid over each agent's model settings.
    pub model_settings: Option<ModelSettings>,
    /// Workflow name of the run's trace ("Agent workflow").
    pub workflow_name: String,
    /// A given trace id.
    pub trace_id: Option<String>,
    /// Trace group (a conversation).
    pub group_id: Option<String>,
    /// Trace metadata.
    pub trace_metadata: Option<Map<String, Value>>,
    /// No trace for this run.
    pub tracing_disabled: bool,
    /// Keep model and tool inputs and outputs in spans (default: the tracer's setting).
    pub trace_include_sensitive_data: Option<bool>,
    /// The tracer (default: the global one).
    pub tracer: Option<Tracer>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            max_turns: DEFAULT_MAX_TURNS,
            model: None,
            model_settings: None,
            workflow_name: "Agent workflow".into(),
            trace_id: None,
            group_id: None,
            trace_metadata: None,
            tracing_disabled: false,
            trace_include_sensitive_data: None,
            tracer: None,
        }
    }
}

impl RunConfig {
    /// Sets `max_turns`.
    pub fn max_turns(mut self, n: u64) -> Self {
        self.max_turns = n;
        self
    }

    /// Turns tracing off for the run.
    pub fn tracing_disabled(mut self, off: bool) -> Self {
        self.tracing_disabled = off;
        self
    }

    /// Sets the workflow name.
    pub fn workflow_name(mut self, n: impl Into<String>) -> Self {
        self.workflow_name = n.into();
        self
    }

    /// Sets the trace group.
    pub fn group_id(mut self, g: impl Into<String>) -> Self {
        self.group_id = Some(g.into());
        self
    }

    /// Uses `model` for every agent.
    pub fn model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// Uses this tracer.
    pub fn tracer(mut self, t: Tracer) -> Self {
        self.tracer = Some(t);
        self
    }
}
