//! The baton as data: [`RunState`], a run's state between turns, versioned and serialisable
//! (JSON), as the SDK's `RunState` is. It is saved with each turn's items, so a run can wait
//! for a person (approvals), survive a restart (resume from its last completed turn) and move
//! to another node.
//!
//! The JSON carries `$schemaVersion`; [`RunState::from_json`] reads every version this build
//! knows, migrating older ones step by step ([`migrate`]), and refuses newer ones with a clear
//! error. Version history:
//!
//! - `1.0`: the first layout.
//! - `1.1`: `context.approvals` holds per-call decisions and sticky (`always`) decisions apart
//!   (1.0 had one `approvals` list of `{call_id, approved}`); `seq_safe` added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AgentsError;
use crate::items::{
    FunctionCallItem, FunctionCallOutputItem, Item, MessageItem, ReasoningItem, RunItem,
};
use crate::usage::Usage;

pub use crate::items::ToolApproval;

/// The schema version this build writes.
pub const CURRENT_SCHEMA_VERSION: &str = "1.1";
/// Every version this build reads.
pub const SUPPORTED_SCHEMA_VERSIONS: &[&str] = &["1.0", "1.1"];

/// The message a rejected tool call gives the model, as the SDK words it.
pub const DEFAULT_REJECTION_MESSAGE: &str = "Tool execution was not approved.";

/// A person's decision on a tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved (run it) or rejected (the model reads the rejection message).
    pub approved: bool,
    /// For a rejection: what the model reads instead of the SDK's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Decisions of a run: per call, and sticky per tool (`always`) for the rest of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvals {
    /// Decisions by call id.
    #[serde(default)]
    pub calls: BTreeMap<String, Decision>,
    /// Sticky decisions by tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, Decision>,
}

impl Approvals {
    /// The decision that applies to `call` of `tool`, if any.
    pub fn decision(&self, tool: &str, call_id: &str) -> Option<&Decision> {
        self.calls.get(call_id).or_else(|| self.tools.get(tool))
    }
}

/// What the run and its usage carry between turns (the SDK's `context`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateContext {
    /// Usage so far.
    #[serde(default)]
    pub usage: Usage,
    /// Approval decisions.
    #[serde(default)]
    pub approvals: Approvals,
}

/// A turn that stopped after its model call: its output resolved, its tools not (all) run.
/// Resuming it runs the decided or idempotent calls and finishes the turn, without another
/// model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTurn {
    /// The turn's items so far (messages, tool calls, outputs of tools already run).
    pub new_items: Vec<RunItem>,
    /// Function tool calls not run yet.
    pub tool_calls: Vec<FunctionCallItem>,
    /// Handoff calls of the turn.
    pub handoff_calls: Vec<FunctionCallItem>,
    /// Tool results already had this turn: `(tool, output)`.
    #[serde(default)]
    pub tool_results: Vec<(String, String)>,
    /// Why the turn stopped.
    pub reason: PendingReason,
}

/// Why a turn stopped between its model call and its tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// Some calls wait for a person's decision.
    Approval,
    /// The tools had started when this state was saved (a process that dies here leaves
    /// them unfinished; only idempotent tools are run again).
    ToolsStarted,
}

/// The trace a resumed run continues.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceState {
    /// Its id.
    pub trace_id: Option<String>,
    /// Workflow name.
    pub workflow_name: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// A run's state between turns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The schema version (`CURRENT_SCHEMA_VERSION` when written by this build).
    #[serde(rename = "$schemaVersion")]
    pub schema_version: String,
    /// The run's id.
    pub run_id: String,
    /// Turns completed (the next turn is `current_turn + 1`).
    pub current_turn: u64,
    /// The agent whose turn is next.
    pub current_agent: AgentRef,
    /// The agent the run started with.
    pub starting_agent: AgentRef,
    /// Turn limit.
    pub max_turns: u64,
    /// The input the run started from: the whole of it, or with a session only the run's own
    /// input (the session holds what came before: `session_items` of them).
    pub original_input: Vec<Item>,
    /// Session items before the run's own input, when the run has a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_items: Option<usize>,
    /// Items the run generated so far.
    pub generated_items: Vec<RunItem>,
    /// Usage and approvals.
    pub context: StateContext,
    /// Agents that have used tools (for `reset_tool_choice`).
    #[serde(default)]
    pub tool_use_tracker: Vec<String>,
    /// The agent that handed off to the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_from: Option<String>,
    /// A turn stopped between its model call and its tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_turn: Option<PendingTurn>,
    /// Calls waiting for a decision (the SDK's `interruptions`).
    #[serde(default)]
    pub interruptions: Vec<ToolApproval>,
    /// The trace the run reports to.
    #[serde(default)]
    pub trace: TraceState,
    /// The session's seq when the state was saved: frames after it belong to the turn the
    /// state does not hold (a resumed run publishes them again).
    #[serde(default)]
    pub seq_safe: u64,
}

/// An agent, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    /// Its name.
    pub name: String,
}

impl From<&str> for AgentRef {
    fn from(name: &str) -> Self {
        AgentRef {
            name: name.to_owned(),
        }
    }
}

/// A state that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON, or not a run state.
    #[error("the run state is not valid: {0}")]
    Invalid(String),
    /// Written by a newer build.
    #[error("the run state has schema version {found}, which this build does not know (it reads {supported}); upgrade callboard")]
    UnknownVersion {
        /// The version found.
        found: String,
        /// The versions known.
        supported: String,
    },
}

impl From<StateError> for AgentsError {
    fn from(e: StateError) -> Self {
        AgentsError::UserError(e.to_string())
    }
}

/// Brings a state of an older schema version to the current one, one step at a time.
pub fn migrate(mut v: Value) -> Result<Value, StateError> {
    loop {
        let version = v
            .get("$schemaVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| StateError::Invalid("no $schemaVersion".into()))?
            .to_owned();
        match version.as_str() {
            CURRENT_SCHEMA_VERSION => return Ok(v),
            "1.0" => {
                // 1.0 kept one approvals list: [{call_id, approved, message?}].
                let old = v
                    .pointer_mut("/context/approvals")
                    .map(Value::take)
                    .unwrap_or(Value::Null);
                let mut calls = serde_json::Map::new();
                if let Value::Array(list) = old {
                    for a in list {
                        let Some(id) = a.get("call_id").and_then(Value::as_str) else {
                            continue;
                        };
                        let mut d = serde_json::json!({
                            "approved": a.get("approved").and_then(Value::as_bool).unwrap_or(false)
                        });
                        if let Some(m) = a.get("message") {
                            d["message"] = m.clone();
                        }
                        calls.insert(id.to_owned(), d);
                    }
                }
                if let Some(ctx) = v.get_mut("context").and_then(Value::as_object_mut) {
                    ctx.insert(
                        "approvals".into(),
                        serde_json::json!({"calls": calls, "tools": {}}),
                    );
                }
                v["$schemaVersion"] = Value::from("1.1");
            }
            other => {
                return Err(StateError::UnknownVersion {
                    found: other.chars().take(20).collect(),
                    supported: SUPPORTED_SCHEMA_VERSIONS.join(", "),
                })
            }
        }
    }
}

impl RunState {
    /// The state as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The state as JSON text (the SDK's `to_string`).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a state of any supported schema version.
    pub fn from_json(v: Value) -> Result<RunState, StateError> {
        let v = migrate(v)?;
        serde_json::from_value(v).map_err(|e| StateError::Invalid(e.to_string()))
    }

    /// Reads a state from JSON text (the SDK's `from_string`).
    pub fn from_text(text: &str) -> Result<RunState, StateError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| StateError::Invalid(e.to_string()))?;
        Self::from_json(v)
    }

    /// Calls waiting for a decision.
    pub fn interruptions(&self) -> &[ToolApproval] {
        &self.interruptions
    }

    /// Approves a pending call (`always`: every later call of that tool in this run too).
    pub fn approve(&mut self, call_id: &str, always: bool) -> Result<(), AgentsError> {
        self.decide(
            call_id,
            Decision {
                approved: true,
                message: None,
            },
            always,
        )
    }

    /// Rejects a pending call; the model reads `message` (default: the SDK's rejection
    /// message).
    pub fn reject(&mut self, call_id: &str, message: Option<String>) -> Result<(), AgentsError> {
        self.decide(
            call_id,
            Decision {
                approved: false,
                message,
            },
            false,
        )
    }

    /// Records a decision on a pending call.
    pub fn decide(
        &mut self,
        call_id: &str,
        decision: Decision,
        always: bool,
    ) -> Result<(), AgentsError> {
        let Some(pending) = self.interruptions.iter().find(|i| i.call_id == call_id) else {
            return Err(AgentsError::UserError(format!(
                "no tool call `{}` is waiting for approval in this run",
                call_id.chars().take(100).collect::<String>()
            )));
        };
        if self.context.approvals.calls.contains_key(call_id) {
            return Err(AgentsError::UserError(format!(
                "tool call `{call_id}` was already decided"
            )));
        }
        if always {
            self.context
                .approvals
                .tools
                .insert(pending.tool.clone(), decision.clone());
        }
        self.context
            .approvals
            .calls
            .insert(call_id.to_owned(), decision);
        Ok(())
    }

    /// Whether every pending call has a decision (the run can go on).
    pub fn is_decided(&self) -> bool {
        self.interruptions.iter().all(|i| {
            self.context
                .approvals
                .decision(&i.tool, &i.call_id)
                .is_some()
        })
    }
}

/// The wire shape of a run item, for reading states back.
#[derive(Deserialize)]
struct RunItemWire {
    #[serde(rename = "type")]
    ty: String,
    agent: String,
    raw_item: Value,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    source_agent: Option<String>,
    #[serde(default)]
    target_agent: Option<String>,
}

impl<'de> Deserialize<'de> for RunItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = RunItemWire::deserialize(d)?;
        let raw = w.raw_item;
        Ok(match w.ty.as_str() {
            "message_output_item" => RunItem::MessageOutput {
                agent: w.agent,
                raw_item: serde_json::from_value::<MessageItem>(raw).map_err(D::Error::custom)?,
            },
            "tool_call_item" => RunItem::ToolCall {
                agent: w.agent,
                raw_item: serde_json::from_value::<FunctionCallItem>(raw)
                    .map_err(D::Error::custom)?,
            },
            "handoff_call_item" => RunItem::HandoffCall {
                agent: w.agent,
                raw_item: serde_json::from_value::<FunctionCallItem>(raw)
                    .map_err(D::Error::custom)?,
            },
            "tool_call_output_item" => {
                let raw_item = serde_json::from_value::<FunctionCallOutputItem>(raw)
                    .map_err(D::Error::custom)?;
                RunItem::ToolCallOutput {
                    agent: w.agent,
                    output: match w.output {
                        Some(Value::String(s)) => s,
                        _ => raw_item.output.clone(),
                    },
                    raw_item,
                }
            }
            "handoff_output_item" => RunItem::HandoffOutput {
                agent: w.agent,
                source_agent: w.source_agent.unwrap_or_default(),
                target_agent: w.target_agent.unwrap_or_default(),
                raw_item: serde_json::from_value::<FunctionCallOutputItem>(raw)
                    .map_err(D::Error::custom)?,
            },
            "reasoning_item" => RunItem::Reasoning {
                agent: w.agent,
                raw_item: serde_json::from_value::<ReasoningItem>(raw).map_err(D::Error::custom)?,
            },
            other => return Err(D::Error::custom(format!("unknown run item type `{other}`"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, name: &str) -> FunctionCallItem {
        FunctionCallItem {
            id: None,
            call_id: id.into(),
            name: name.into(),
            arguments: "{\"city\":\"Oslo\"}".into(),
            status: None,
        }
    }

    fn sample() -> RunState {
        RunState {
            schema_version: CURRENT_SCHEMA_VERSION.into(),
            run_id: "run_1".into(),
            current_turn: 1,
            current_agent: "Weather".into(),
            starting_agent: "Triage".into(),
            max_turns: 10,
            original_input: vec![Item::Message(MessageItem::user("hi"))],
            session_items: None,
            generated_items: vec![
                RunItem::ToolCall {
                    agent: "Weather".into(),
                    raw_item: call("c1", "get_weather"),
                },
                RunItem::HandoffOutput {
                    agent: "Triage".into(),
                    source_agent: "Triage".into(),
                    target_agent: "Weather".into(),
                    raw_item: FunctionCallOutputItem {
                        call_id: "h1".into(),
                        output: "{\"assistant\": \"Weather\"}".into(),
                    },
                },
            ],
            context: StateContext::default(),
            tool_use_tracker: vec![],
            handoff_from: Some("Triage".into()),
            pending_turn: None,
            interruptions: vec![ToolApproval::new("Weather", &call("c1", "get_weather"))],
            trace: TraceState::default(),
            seq_safe: 12,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let s = sample();
        let back = RunState::from_text(&s.to_text()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.to_json()["$schemaVersion"], CURRENT_SCHEMA_VERSION);
        assert_eq!(
            s.to_json()["interruptions"][0]["type"],
            "tool_approval_item"
        );
    }

    #[test]
    fn decisions_apply_once_and_always_sticks() {
        let mut s = sample();
        assert!(!s.is_decided());
        assert!(s.approve("nope", false).is_err());
        s.approve("c1", true).unwrap();
        assert!(s.is_decided());
        assert!(s.reject("c1", None).is_err(), "decided twice");
        assert!(s.context.approvals.decision("get_weather", "c9").is_some());
    }

    #[test]
    fn a_newer_version_is_refused() {
        let mut v = sample().to_json();
        v["$schemaVersion"] = "9.9".into();
        let e = RunState::from_json(v).unwrap_err().to_string();
        assert!(e.contains("9.9") && e.contains("1.1"), "{e}");
    }
}
