//! What clients ask the service for, as typed requests: a run (`run.create`, the HTTP run
//! body) with its trace options. Every transport parses into these.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::items::RunInput;
use crate::wire::{Depth, Format};

pub use crate::session::OnBusy;

/// Trace options of `run.create` (PROTOCOL.md section 2).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Workflow name of the run's trace.
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// A given trace id (`trace_<32 hex>`).
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Trace group; default: the session id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Trace metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// No trace for this run.
    #[serde(default)]
    pub disabled: bool,
}

/// The body of a run request: `run.create` minus its `type`, or the HTTP POST body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    /// `run.create` when an HTTP body carries the frame's `type` (ignored otherwise).
    #[serde(default, rename = "type")]
    pub frame_type: Option<String>,
    /// The client's request id (echoed in `run.accepted`).
    #[serde(default)]
    pub id: Option<Value>,
    /// The session (in the HTTP path for HTTP requests).
    #[serde(default)]
    pub session_id: Option<String>,
    /// The starting agent.
    pub agent: String,
    /// A string or a list of input items.
    pub input: RunInput,
    /// Turn limit (default 10).
    #[serde(default)]
    pub max_turns: Option<u64>,
    /// Free metadata kept with the run (added to the trace metadata).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Trace options.
    #[serde(default)]
    pub trace: Option<TraceRequest>,
    /// Format of the frames this request subscribes to.
    #[serde(default)]
    pub format: Option<Format>,
    /// What to do when the session already has a run (default: `[sessions] on_busy`).
    #[serde(default)]
    pub on_busy: Option<OnBusy>,
    /// How deep into nested runs the subscription reads: 0 (default), a number, or "all".
    #[serde(default)]
    pub depth: Option<Depth>,
}
