//! Client frames (PROTOCOL.md section 2): one serde-tagged enum, parsed straight from the
//! text of a WebSocket message; and the small server frames the hub writes itself.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::CancelMode;
use crate::service::error::ApiError;
use crate::service::{Format, RunCreate};

/// The frame types a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "run.create",
    "run.cancel",
    "session.subscribe",
    "session.unsubscribe",
    "tool.result",
    "ping",
];

/// `session.subscribe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Request id, echoed in errors.
    #[serde(default)]
    pub id: Option<Value>,
    /// The session.
    pub session_id: String,
    /// Replay retained frames after this seq first.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// `sdk` (default) or `chat`.
    #[serde(default)]
    pub format: Option<Format>,
    /// The epoch the client's `after_seq` belongs to (from `run.accepted` or
    /// `session.subscribed`); another epoch gets `history_truncated`.
    #[serde(default)]
    pub epoch: Option<String>,
}

/// `session.unsubscribe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    /// Request id.
    #[serde(default)]
    pub id: Option<Value>,
    /// The session.
    pub session_id: String,
}

/// `run.cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Request id.
    #[serde(default)]
    pub id: Option<Value>,
    /// The run.
    pub run_id: String,
    /// `immediate` (default) or `after_turn`.
    #[serde(default)]
    pub mode: CancelMode,
}

/// `tool.result`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolResult {
    /// Request id.
    #[serde(default)]
    pub id: Option<Value>,
    /// The run.
    pub run_id: String,
    /// The call answered.
    pub call_id: String,
    /// The tool's output (a string; other JSON is passed as its text).
    pub output: Value,
}

/// `ping`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    /// Request id, echoed in `pong`.
    #[serde(default)]
    pub id: Option<Value>,
}

/// A frame from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ClientFrame {
    /// Start a run.
    #[serde(rename = "run.create")]
    RunCreate(RunCreate),
    /// Cancel a run.
    #[serde(rename = "run.cancel")]
    RunCancel(Cancel),
    /// Follow a session.
    #[serde(rename = "session.subscribe")]
    Subscribe(Subscribe),
    /// Stop following a session.
    #[serde(rename = "session.unsubscribe")]
    Unsubscribe(Unsubscribe),
    /// Answer a client-side tool call.
    #[serde(rename = "tool.result")]
    ToolResult(ToolResult),
    /// Liveness.
    #[serde(rename = "ping")]
    Ping(Ping),
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default)]
    ty: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

/// Parses a client frame; on failure the error says what was wrong, with the request id
/// when one could be read.
pub fn parse(text: &str) -> Result<ClientFrame, (Option<Value>, ApiError)> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => Ok(f),
        Err(e) => {
            let head = serde_json::from_str::<Head>(text).ok();
            let Some(head) = head else {
                return Err((
                    None,
                    ApiError::BadRequest(format!(
                        "the frame is not a JSON object: {e}; send one JSON object per message"
                    )),
                ));
            };
            let id = head.id.filter(|v| v.is_string() || v.is_number());
            let msg = match head.ty {
                None => "the frame has no `type`".to_owned(),
                Some(Value::String(t)) if !CLIENT_TYPES.contains(&t.as_str()) => format!(
                    "unknown frame type `{}`; expected one of {}",
                    t.chars().take(60).collect::<String>(),
                    CLIENT_TYPES.join(", ")
                ),
                Some(Value::String(t)) => format!("bad `{t}` frame: {e}"),
                Some(_) => "`type` must be a string".to_owned(),
            };
            Err((id, ApiError::BadRequest(msg)))
        }
    }
}

/// `run.accepted`.
#[derive(Serialize)]
pub struct Accepted<'a> {
    /// `run.accepted`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The request id.
    pub id: Option<&'a Value>,
    /// The new run.
    pub run_id: &'a str,
    /// Its session.
    pub session_id: &'a str,
    /// Its trace.
    pub trace_id: Option<&'a str>,
    /// The session's epoch.
    pub epoch: &'a str,
}

/// `session.subscribed`: a subscription's answer, with the session's epoch and last seq.
#[derive(Serialize)]
pub struct Subscribed<'a> {
    /// `session.subscribed`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Value>,
    /// The session.
    pub session_id: &'a str,
    /// Its epoch.
    pub epoch: &'a str,
    /// The last seq published in it.
    pub last_seq: u64,
}

/// `pong` (echoing the ping's id when it had one).
pub fn pong(id: Option<&Value>) -> String {
    match id {
        Some(id) => serde_json::json!({"type": "pong", "id": id}).to_string(),
        None => r#"{"type":"pong"}"#.to_owned(),
    }
}

/// `lagged`.
pub fn lagged(session_id: &str, resume_after_seq: u64) -> String {
    serde_json::json!({"type": "lagged", "session_id": session_id, "resume_after_seq": resume_after_seq})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_errors_say_why() {
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping(_))
        ));
        assert!(matches!(
            parse(
                r#"{"type":"run.create","id":"r1","session_id":"s","agent":"Triage","input":"hi"}"#
            ),
            Ok(ClientFrame::RunCreate(_))
        ));
        let (id, e) = parse(r#"{"type":"nope","id":7}"#).unwrap_err();
        assert_eq!(id, Some(Value::from(7)));
        assert!(e.to_string().contains("unknown frame type"));
        let (_, e) = parse(r#"{"type":"run.create","id":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
        let (_, e) = parse("{nope").unwrap_err();
        assert_eq!(e.code(), "bad_request");
    }
}
