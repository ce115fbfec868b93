//! The Vercel AI SDK endpoint (PROTOCOL.md section 6.5): `useChat` with
//! `new DefaultChatTransport({api: ".../v1/agents/{agent}/ai-sdk"})` talks to an agent here.
//!
//! - `POST /v1/agents/{agent}/ai-sdk` takes `useChat`'s body (`{id, messages, trigger,
//!   messageId, ...}`, extra fields allowed). `id` is the session. When the last message is
//!   the user's, its text parts are the input of a new run (the earlier messages are already
//!   in the session). When it is the assistant's, its tool parts in state `output-available`
//!   (or `output-error`) answer the client-side tool calls the session's run waits for
//!   (`addToolOutput` with `sendAutomaticallyWhen`), and the stream goes on with that run.
//!   Its tool parts in state `approval-responded` (`addToolApprovalResponse`) decide the calls
//!   the session's paused run waits on (PROTOCOL.md 6.3: a run paused for approval ends its
//!   stream with a `tool-approval-request` part per call), and the stream follows the resumed
//!   run.
//! - `GET /v1/agents/{agent}/ai-sdk/{id}/stream` is the SDK's resume request
//!   (`resumeStream()`, `useChat({resume: true})`): the session's run in progress replayed
//!   from its start, or 204 when none is.
//!
//! Both answer with the UI message stream (`crate::wire::ai_sdk`). A request refused before
//! a run streams (bad body, unknown agent, busy session, limits) gets PROTOCOL.md's JSON
//! error with its status: the AI SDK shows the body as the error's message. A run that fails
//! streams an `error` part.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::server::auth::Tenant;
use crate::server::error::ApiError;
use crate::server::ui_stream::{self, Follow};
use crate::server::AppState;
use crate::wire::ai_sdk::{AiSdkStream, HEADER};

/// `useChat`'s request body (the fields read here; others are allowed and ignored).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    /// The chat id: the session.
    id: String,
    /// The whole conversation as the client holds it.
    messages: Vec<UiMessage>,
}

/// A `UIMessage` (the fields read here).
#[derive(Debug, Deserialize)]
struct UiMessage {
    role: String,
    #[serde(default)]
    parts: Vec<Value>,
}

/// What the last message asks for.
#[derive(Debug, PartialEq)]
enum Ask {
    /// A new run on this text.
    Run(String),
    /// Outputs of client-side tool calls: `(toolCallId, output)`.
    ToolOutputs(Vec<(String, String)>),
    /// The user's decisions on calls waiting for approval (`addToolApprovalResponse`).
    Approvals(Vec<ui_stream::Approval>),
}

fn read_request(body: &[u8]) -> Result<(String, Ask), ApiError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a useChat request ({{id, messages}}): {e}"
        ))
    })?;
    let last = req.messages.last().ok_or_else(|| {
        ApiError::BadRequest("`messages` is empty; send the user's message".into())
    })?;
    let ask = match last.role.as_str() {
        "user" => {
            let text: Vec<&str> = last
                .parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect();
            if text.is_empty() {
                return Err(ApiError::BadRequest(
                    "the last user message has no text part".into(),
                ));
            }
            Ask::Run(text.join("\n"))
        }
        "assistant" => {
            let tools = || {
                last.parts.iter().filter(|p| {
                    p["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("tool-") || t == "dynamic-tool")
                })
            };
            let approvals: Vec<ui_stream::Approval> = tools()
                .filter(|p| p["state"] == "approval-responded")
                .filter_map(|p| {
                    let a = &p["approval"];
                    Some(ui_stream::Approval {
                        call_id: p["toolCallId"].as_str()?.to_owned(),
                        approved: a["approved"].as_bool()?,
                        reason: a["reason"].as_str().map(str::to_owned),
                    })
                })
                .collect();
            if !approvals.is_empty() {
                return Ok((req.id, Ask::Approvals(approvals)));
            }
            let outputs = tools()
                .filter_map(|p| {
                    let id = p["toolCallId"].as_str()?.to_owned();
                    match p["state"].as_str()? {
                        "output-available" => Some((id, ui_stream::output_text(&p["output"]))),
                        "output-error" => Some((
                            id,
                            format!("Error: {}", p["errorText"].as_str().unwrap_or("")),
                        )),
                        _ => None,
                    }
                })
                .collect();
            Ask::ToolOutputs(outputs)
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "the last message is the {}'s; send a user message (or the assistant's with tool outputs)",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    Ok((req.id, ask))
}

/// `POST /v1/agents/{agent}/ai-sdk`.
pub async fn chat(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(agent): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let core = st.core.clone();
    let body = ui_stream::read_body(&core, body)?;
    let (session_id, ask) = read_request(&body)?;
    let (follow, enc) = match ask {
        Ask::Run(text) => {
            let meta = serde_json::json!({"frontend": "ai-sdk"});
            let f = ui_stream::start_run(&core, &tenant, &session_id, &agent, text, meta).await?;
            let enc = AiSdkStream::new(session_id, f.run_id.clone());
            (f, enc)
        }
        Ask::ToolOutputs(outputs) => {
            let (f, answered) =
                ui_stream::answer_tool_calls(&core, &tenant, &session_id, outputs).await?;
            let enc = AiSdkStream::continuing(session_id, f.run_id.clone(), answered);
            (f, enc)
        }
        Ask::Approvals(decisions) => {
            let f = ui_stream::decide_approvals(&core, &tenant, &session_id, decisions).await?;
            let enc = AiSdkStream::continuing(session_id, f.run_id.clone(), Vec::new());
            (f, enc)
        }
    };
    Ok(respond(&core, follow, enc))
}

/// `GET /v1/agents/{agent}/ai-sdk/{id}/stream`: the run in progress, replayed, or 204.
pub async fn resume(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path((_agent, session_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let core = st.core.clone();
    Ok(
        match ui_stream::run_in_progress(&core, &tenant, &session_id)? {
            Some(f) => {
                let enc = AiSdkStream::new(session_id, f.run_id.clone());
                respond(&core, f, enc)
            }
            None => StatusCode::NO_CONTENT.into_response(),
        },
    )
}

fn respond(core: &Arc<crate::server::Core>, follow: Follow, enc: AiSdkStream) -> Response {
    ui_stream::sse_response(core, follow, enc, "ai-sdk", &[HEADER])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_message_says_what_to_do() {
        let body = serde_json::json!({
            "id": "chat-1",
            "trigger": "submit-message",
            "messages": [
                {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "earlier"}]},
                {"id": "m2", "role": "user", "parts": [
                    {"type": "text", "text": "Weather"},
                    {"type": "file", "url": "data:,x", "mediaType": "text/plain"},
                    {"type": "text", "text": "in Oslo?"}
                ]}
            ],
            "custom": true
        });
        let (id, ask) = read_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(id, "chat-1");
        assert_eq!(ask, Ask::Run("Weather\nin Oslo?".into()));

        let body = serde_json::json!({
            "id": "chat-1",
            "messages": [{"id": "a", "role": "assistant", "parts": [
                {"type": "step-start"},
                {"type": "tool-confirm", "toolCallId": "c1", "state": "output-available", "input": {}, "output": "yes"},
                {"type": "dynamic-tool", "toolName": "x", "toolCallId": "c2", "state": "output-available", "input": {}, "output": {"ok": true}},
                {"type": "tool-other", "toolCallId": "c3", "state": "output-error", "input": {}, "errorText": "nope"},
                {"type": "tool-done", "toolCallId": "c4", "state": "input-available", "input": {}}
            ]}]
        });
        let (_, ask) = read_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            ask,
            Ask::ToolOutputs(vec![
                ("c1".into(), "yes".into()),
                ("c2".into(), r#"{"ok":true}"#.into()),
                ("c3".into(), "Error: nope".into()),
            ])
        );
    }

    #[test]
    fn approval_responses_are_decisions() {
        let body = serde_json::json!({
            "id": "chat-1",
            "messages": [{"id": "a", "role": "assistant", "parts": [
                {"type": "tool-get_weather", "toolCallId": "c0", "state": "output-available", "input": {}, "output": "sunny",
                 "approval": {"id": "c0", "approved": true}},
                {"type": "tool-refund", "toolCallId": "c1", "state": "approval-responded", "input": {},
                 "approval": {"id": "c1", "approved": true}},
                {"type": "tool-refund", "toolCallId": "c2", "state": "approval-responded", "input": {},
                 "approval": {"id": "c2", "approved": false, "reason": "too much"}},
                {"type": "tool-refund", "toolCallId": "c3", "state": "approval-requested", "input": {},
                 "approval": {"id": "c3"}}
            ]}]
        });
        let (_, ask) = read_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            ask,
            Ask::Approvals(vec![
                ui_stream::Approval {
                    call_id: "c1".into(),
                    approved: true,
                    reason: None
                },
                ui_stream::Approval {
                    call_id: "c2".into(),
                    approved: false,
                    reason: Some("too much".into())
                },
            ])
        );
    }

    #[test]
    fn bad_bodies_say_why() {
        let err = |b: &str| read_request(b.as_bytes()).unwrap_err().to_string();
        assert!(err("{").contains("useChat request"));
        assert!(err(r#"{"id":"x","messages":[]}"#).contains("empty"));
        assert!(err(r#"{"id":"x","messages":[{"role":"user","parts":[]}]}"#).contains("no text"));
        assert!(err(r#"{"id":"x","messages":[{"role":"system","parts":[]}]}"#).contains("system"));
    }
}
