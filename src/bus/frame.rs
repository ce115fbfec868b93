//! The bus's frames: what a run says, numbered by its session (`Frame`, `FrameBody`), and
//! the small types they carry (`CancelMode`, `Nesting`).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::events::StreamEvent;

/// How a run was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CancelMode {
    /// Stop now (the SDK's default).
    #[default]
    Immediate,
    /// Finish the current turn (tools, session save), then stop.
    AfterTurn,
    /// Stopped by a new message on its session (double-texting `interrupt`): the items of
    /// its completed turns stay.
    Interrupted,
    /// Stopped by a new message on its session (double-texting `rollback`): its items are
    /// removed from the session.
    RolledBack,
}

impl CancelMode {
    /// `immediate` or `after_turn`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CancelMode::Immediate => "immediate",
            CancelMode::AfterTurn => "after_turn",
            CancelMode::Interrupted => "interrupted",
            CancelMode::RolledBack => "rolled_back",
        }
    }
}

/// What a frame says.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameBody {
    /// A stream event; `tool` names the tool of `tool_called` / `tool_output` events.
    Event {
        /// The event.
        event: StreamEvent,
        /// The tool's name, for tool events.
        tool: Option<Arc<str>>,
    },
    /// The run finished with a final output.
    RunCompleted {
        /// The final output (text as a JSON string, structured output as JSON).
        final_output: Value,
        /// The agent that produced it.
        last_agent: String,
        /// `{requests, input_tokens, output_tokens, total_tokens}`.
        usage: Value,
        /// The run's trace id (`null` when tracing is off).
        trace_id: Option<String>,
    },
    /// The run failed.
    RunFailed {
        /// The SDK exception name.
        error_type: String,
        /// The message.
        message: String,
    },
    /// The run was cancelled.
    RunCancelled {
        /// How.
        mode: CancelMode,
        /// The run whose arrival cancelled it (double-texting `interrupt` / `rollback`).
        by_run_id: Option<Arc<str>>,
    },
    /// The run paused: these tool calls wait for a person's decision (PROTOCOL.md 6.3).
    RunInterrupted {
        /// The pending calls (the SDK's `tool_approval_item`s).
        interruptions: Vec<crate::items::ToolApproval>,
    },
    /// The paused run goes on: every pending call was decided.
    RunResumed,
    /// The run waits its turn behind the session's earlier runs (double-texting `enqueue`,
    /// and `interrupt` / `rollback` while the run before it ends).
    RunQueued {
        /// Its place: 1 is next.
        position: usize,
    },
    /// The session was deleted and its numbering restarted under a new epoch: subscribers
    /// of the old numbering are told (never stored, never numbered).
    SessionReset {
        /// The new epoch.
        epoch: String,
    },
    /// A client-side tool call waiting for `tool.result`.
    ToolCall {
        /// The call id.
        call_id: String,
        /// The tool.
        name: String,
        /// Arguments JSON.
        arguments: String,
    },
    /// A running tool call reported progress (`tool.progress`).
    ToolProgress {
        /// The call.
        call_id: Arc<str>,
        /// The tool.
        tool: Arc<str>,
        /// How far along.
        progress: f64,
        /// Out of how much, when known.
        total: Option<f64>,
        /// A line for people.
        message: Option<String>,
    },
}

impl FrameBody {
    /// The frame's `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            FrameBody::Event { .. } => "event",
            FrameBody::RunCompleted { .. } => "run.completed",
            FrameBody::RunFailed { .. } => "run.failed",
            FrameBody::RunCancelled { .. } => "run.cancelled",
            FrameBody::ToolCall { .. } => "tool.call",
            FrameBody::ToolProgress { .. } => "tool.progress",
            FrameBody::SessionReset { .. } => "session.reset",
            FrameBody::RunQueued { .. } => "run.queued",
            FrameBody::RunInterrupted { .. } => "run.interrupted",
            FrameBody::RunResumed => "run.resumed",
        }
    }

    /// Whether the frame ends its run's stream (its end, or its pause for approval).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            FrameBody::RunCompleted { .. }
                | FrameBody::RunFailed { .. }
                | FrameBody::RunCancelled { .. }
                | FrameBody::RunInterrupted { .. }
        )
    }
}

/// Where the frame of a nested run (an agent called as a tool) sits under its top run.
/// Frames of a top run have none (depth 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Nesting {
    /// The agents from the top run's agent down to the agent whose frame this is.
    pub path: Arc<[Arc<str>]>,
    /// 1 for a run started by the top run's agent, 2 below that, ...
    pub depth: u32,
    /// The call (in the run one level up) that started this nested run; tells apart two
    /// calls of the same agent tool in one turn.
    pub parent_call_id: Arc<str>,
}

impl Nesting {
    /// The agent whose frame this is (the last of the path).
    pub fn agent(&self) -> &str {
        self.path.last().map_or("", |a| a)
    }
}

/// A published frame: numbered, serialised once, shared by everyone who receives it.
#[derive(Debug)]
pub struct Frame {
    /// The session (topic) it belongs to.
    pub session_id: Arc<str>,
    /// Gapless per-session number, from 1.
    pub seq: u64,
    /// The run it belongs to (a nested run's frames carry their top run's id).
    pub run_id: Arc<str>,
    /// What it says.
    pub body: FrameBody,
    /// Set on the frames of nested runs: their `path` and `depth`.
    pub nesting: Option<Arc<Nesting>>,
    /// When it was made (published): the start of `callboard_frame_delivery_seconds`, which a
    /// transport observes when the frame's write to a socket completes.
    pub published: Instant,
    /// Encodings made once and shared by every subscriber (slots are the wire formats',
    /// see `crate::wire`; the bus does not know what they hold).
    encoded: [OnceLock<Option<Bytes>>; ENCODING_SLOTS],
}

/// How many per-frame encodings a frame can keep (one per stateless wire format).
pub const ENCODING_SLOTS: usize = 2;

impl Frame {
    /// Builds a frame (encoded later, once per format, when first needed).
    pub fn new(session_id: Arc<str>, seq: u64, run_id: Arc<str>, body: FrameBody) -> Frame {
        Frame {
            session_id,
            seq,
            run_id,
            body,
            nesting: None,
            published: Instant::now(),
            encoded: Default::default(),
        }
    }

    /// The frame's nesting depth (0 for a top run's frames).
    pub fn depth(&self) -> u32 {
        self.nesting.as_ref().map_or(0, |n| n.depth)
    }

    /// The encoding kept in `slot`, made by `encode` on first use; `None` when the format
    /// skips this frame.
    pub fn encoded(
        &self,
        slot: usize,
        encode: impl FnOnce(&Frame) -> Option<Bytes>,
    ) -> Option<&Bytes> {
        self.encoded[slot % ENCODING_SLOTS]
            .get_or_init(|| encode(self))
            .as_ref()
    }

    /// Sets the encoding kept in `slot` ahead of first use (a frame relayed from another
    /// node arrives with its encodings); ignored when the slot is set already.
    pub fn preset(&self, slot: usize, bytes: Option<Bytes>) {
        let _ = self.encoded[slot % ENCODING_SLOTS].set(bytes);
    }

    /// The stream event, for `event` frames.
    pub fn event(&self) -> Option<&StreamEvent> {
        match &self.body {
            FrameBody::Event { event, .. } => Some(event),
            _ => None,
        }
    }

    /// About how many bytes the frame holds while retained (its encodings included): what
    /// the history budget counts.
    pub fn approx_bytes(&self) -> usize {
        // The frame, its Arc, the head fields, the typed event's own fields and allocations,
        // and an encoding's overhead (calibrated against the server's RSS with and without
        // retained history: the load harness's `sessions` scenario).
        const BASE: usize = 450;
        let payload = match &self.body {
            FrameBody::Event { event, .. } => event_bytes(event),
            FrameBody::RunCompleted { final_output, .. } => match final_output {
                Value::String(s) => s.len(),
                _ => 256,
            },
            FrameBody::RunFailed { message, .. } => message.len(),
            FrameBody::ToolCall { arguments, .. } => arguments.len(),
            FrameBody::RunInterrupted { interruptions } => {
                interruptions.iter().map(|i| 128 + i.arguments.len()).sum()
            }
            FrameBody::RunCancelled { .. }
            | FrameBody::SessionReset { .. }
            | FrameBody::RunQueued { .. }
            | FrameBody::RunResumed => 0,
            FrameBody::ToolProgress { message, .. } => 96 + message.as_ref().map_or(0, String::len),
        };
        let payload = payload + self.nesting.as_ref().map_or(0, |n| 64 + 16 * n.path.len());
        // The typed value, its JSON encoding (roughly the payload again) and allocator slack.
        BASE + 3 * payload
    }
}

fn event_bytes(event: &StreamEvent) -> usize {
    use crate::items::RunItem;
    use crate::model::{RawEvent, ResponseEvent};
    match event {
        StreamEvent::RawResponse(r) => match r.as_ref() {
            RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. })
            | RawEvent::Typed(ResponseEvent::FunctionCallArgumentsDelta { delta, .. }) => {
                delta.len() + 96
            }
            _ => 640,
        },
        StreamEvent::RunItem(item) => {
            256 + match item.as_ref() {
                RunItem::MessageOutput { raw_item, .. } => raw_item.text().len(),
                RunItem::ToolCall { raw_item, .. } | RunItem::HandoffCall { raw_item, .. } => {
                    raw_item.arguments.len()
                }
                RunItem::ToolCallOutput { output, .. } => 2 * output.len(),
                _ => 256,
            }
        }
        StreamEvent::AgentUpdated { .. } => 64,
    }
}
