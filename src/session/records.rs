//! The records a store keeps beside a conversation's items: run records (status, agents,
//! output, usage, error), the session's numbering (epoch and reserved seq), the list entry of a
//! session, and what a turn end saves. Every store ([`super::Store`]) speaks these types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AgentsError;
use crate::usage::Usage;

/// A run's status in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not yet finished.
    Running,
    /// Finished with a final output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// Was running when the server stopped and could not be resumed.
    Interrupted,
    /// Waiting for the session's earlier runs to end (double-texting `enqueue`).
    Queued,
    /// Paused until a person decides on its pending tool calls.
    AwaitingApproval,
}

impl RunStatus {
    /// The name stored and shown (`running`, `completed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Queued => "queued",
            RunStatus::AwaitingApproval => "awaiting_approval",
        }
    }

    /// Whether the run is over (its record will not change again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Failed
                | RunStatus::Cancelled
                | RunStatus::Interrupted
        )
    }

    /// The status named `s` (as stored and shown).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
            "queued" => RunStatus::Queued,
            "awaiting_approval" => RunStatus::AwaitingApproval,
            _ => return None,
        })
    }
}

/// A run's error in its record: the SDK's exception name and the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunErrorInfo {
    /// The SDK's exception name (`MaxTurnsExceeded`, `ModelBehaviorError`, ...).
    #[serde(rename = "type")]
    pub error_type: String,
    /// What went wrong.
    pub message: String,
}

/// What is recorded when a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart {
    /// The run's id.
    pub run_id: String,
    /// The tenant that started it.
    pub tenant: String,
    /// The session it runs in, if any.
    pub session_id: Option<String>,
    /// The agent it starts with.
    pub starting_agent: String,
    /// Its trace id, if traced.
    pub trace_id: Option<String>,
    /// A new seq reservation of its session `(epoch, seq_reserved)`, saved with the start.
    pub seq_reserved: Option<(String, u64)>,
    /// `Running`, or `Queued` for a run waiting its turn on a busy session.
    pub status: RunStatus,
    /// For a queued run: the request to start it with, as JSON.
    pub request: Option<String>,
    /// The node executing it.
    pub node_id: Option<String>,
}

/// What is recorded when a run ends.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEnd {
    /// How it ended (not `Running`).
    pub status: RunStatus,
    /// The agent it ended with.
    pub last_agent: Option<String>,
    /// The final output (text as a JSON string, structured output as JSON).
    pub final_output: Option<Value>,
    /// Usage over the run.
    pub usage: Option<Usage>,
    /// The error, when it failed.
    pub error: Option<RunErrorInfo>,
    /// How it was cancelled (`immediate`, `after_turn`, `interrupted`, `rolled_back`).
    pub cancel_mode: Option<String>,
    /// The run whose arrival cancelled it (double-texting).
    pub by_run_id: Option<String>,
    /// The session's numbering at the end `(epoch, seq_safe)`, saved with the record.
    pub seq_safe: Option<(String, u64)>,
}

impl RunEnd {
    /// A run that produced `final_output`.
    pub fn completed(final_output: Value, last_agent: impl Into<String>, usage: Usage) -> Self {
        RunEnd {
            status: RunStatus::Completed,
            last_agent: Some(last_agent.into()),
            final_output: Some(final_output),
            usage: Some(usage),
            error: None,
            cancel_mode: None,
            by_run_id: None,
            seq_safe: None,
        }
    }

    /// A run that failed with `error`.
    pub fn failed(error: &AgentsError, last_agent: Option<String>, usage: Option<Usage>) -> Self {
        RunEnd {
            status: RunStatus::Failed,
            last_agent,
            final_output: None,
            usage,
            error: Some(RunErrorInfo {
                error_type: error.sdk_name().to_owned(),
                message: error.to_string(),
            }),
            cancel_mode: None,
            by_run_id: None,
            seq_safe: None,
        }
    }

    /// A run a client cancelled.
    pub fn cancelled(last_agent: Option<String>, usage: Option<Usage>) -> Self {
        RunEnd {
            status: RunStatus::Cancelled,
            last_agent,
            final_output: None,
            usage,
            error: None,
            cancel_mode: None,
            by_run_id: None,
            seq_safe: None,
        }
    }

    /// A run the server could not go on with (a restart, a node gone), and why.
    pub fn interrupted(reason: impl Into<String>) -> Self {
        RunEnd {
            status: RunStatus::Interrupted,
            last_agent: None,
            final_output: None,
            usage: None,
            error: Some(RunErrorInfo {
                error_type: INTERRUPTED_ERROR_TYPE.into(),
                message: reason.into(),
            }),
            cancel_mode: None,
            by_run_id: None,
            seq_safe: None,
        }
    }
}

/// A run's record, as `GET /v1/runs/{id}` shows it. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The tenant that started it.
    pub tenant: String,
    /// The session it ran in.
    pub session_id: Option<String>,
    /// Where it is.
    pub status: RunStatus,
    /// The agent it started with.
    pub starting_agent: String,
    /// The agent it ended with (the starting agent while running).
    pub last_agent: Option<String>,
    /// The final output, when completed.
    pub final_output: Option<Value>,
    /// Usage over the run, when finished.
    pub usage: Option<Usage>,
    /// The error, when failed or interrupted.
    pub error: Option<RunErrorInfo>,
    /// Its trace id.
    pub trace_id: Option<String>,
    /// When it started.
    pub created_at: i64,
    /// When the record last changed.
    pub updated_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Its last completed turn (0 before the first ends).
    #[serde(default)]
    pub turn: u64,
    /// How it was cancelled, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_mode: Option<String>,
    /// The run whose arrival cancelled it (double-texting `interrupt` / `rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_run_id: Option<String>,
    /// The node executing it (or that last did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// A run's record with what the service keeps beside it: its state (from its last turn end)
/// and, for a queued run, its request.
#[derive(Clone, Debug, PartialEq)]
pub struct RunDetail {
    /// The record.
    pub record: RunRecord,
    /// The run's state JSON, when one was saved.
    pub state: Option<String>,
    /// A queued run's request JSON.
    pub request: Option<String>,
}

/// A change to a run that is not its end: its status and state (a decision recorded, a
/// queued run starting, a paused run resuming).
#[derive(Clone, Debug, PartialEq)]
pub struct RunUpdate {
    /// The new status.
    pub status: RunStatus,
    /// The new state, if it changed.
    pub state: Option<String>,
    /// The node now executing it.
    pub node_id: Option<String>,
}

/// A session in a tenant's list. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id.
    pub session_id: String,
    /// How many items it holds.
    pub item_count: u64,
    /// When its first item was added.
    pub created_at: i64,
    /// When it last changed.
    pub updated_at: i64,
}

/// The error type recorded for runs found `running` at start-up.
pub const INTERRUPTED_ERROR_TYPE: &str = "Interrupted";

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A session's numbering as stored: the epoch (changes only when numbering restarts) and the
/// highest seq reserved so far. A process that died mid-run may have published up to the
/// reservation, so the next process numbers from `seq_reserved + 1`: never a reused seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// The session's epoch (an opaque string).
    pub epoch: String,
    /// The highest seq that may have been published.
    pub seq_reserved: u64,
    /// Frames after this seq (up to `seq_reserved`) belong to turns that were not saved and
    /// are published again when their run resumes: a client that saw up to here misses
    /// nothing by continuing after `seq_reserved`.
    #[serde(default)]
    pub seq_safe: u64,
}

/// What the end of a turn saves beside its items (in the same transaction where the store
/// can): the run's progress, so a run found interrupted names its agent and usage, and a
/// top-up of the session's seq reservation.
#[derive(Clone, Debug, Default)]
pub struct TurnRecord {
    /// The run.
    pub run_id: Arc<str>,
    /// The turn that ended (from 1).
    pub turn: u64,
    /// The agent whose turn it was (or the handoff's target).
    pub agent: String,
    /// Usage over the run so far.
    pub usage: Usage,
    /// A new seq reservation for the session, when it runs low.
    pub seq_reserved: Option<(String, u64)>,
    /// The run's state after the turn (JSON), saved with its items.
    pub state: Option<Arc<str>>,
    /// The session's seq at the save: frames after it belong to a turn the state lacks.
    pub seq_safe: Option<u64>,
    /// The run pauses here for approval (its status becomes `awaiting_approval`), to be
    /// rejected at this deadline (Unix ms) if given.
    pub pause: Option<Option<i64>>,
}

/// Filters of a run listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Runs of this session.
    pub session_id: Option<String>,
    /// Runs with this status.
    pub status: Option<RunStatus>,
    /// At most this many, newest first.
    pub limit: usize,
}
