//! The records a store keeps beside a conversation's items: run records (status, agents,
//! output, usage, error), the session's numbering (epoch and reserved seq), the list entry of a
//! session, and what a turn end saves. Every store ([`super::Store`]) speaks these types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AgentsError;
use crate::run::RunOutcome;
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
    /// Was running when the server stopped (found at the next start).
    Interrupted,
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
        }
    }

    /// The status named `s` (as stored and shown).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
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
        }
    }

    /// The record of a finished run from its outcome (what the server has at `run.completed`,
    /// `run.failed` or `run.cancelled`), the agent it was on and its usage.
    pub fn from_outcome(outcome: &RunOutcome, current_agent: &str, usage: Usage) -> Self {
        match outcome {
            RunOutcome::Completed {
                final_output,
                last_agent,
            } => RunEnd::completed(final_output.clone(), last_agent.clone(), usage),
            RunOutcome::Failed(e) => RunEnd::failed(e, Some(current_agent.to_owned()), Some(usage)),
            RunOutcome::Cancelled(_) => {
                RunEnd::cancelled(Some(current_agent.to_owned()), Some(usage))
            }
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
