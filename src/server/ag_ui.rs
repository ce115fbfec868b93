//! The AG-UI endpoint (PROTOCOL.md section 6.5): an AG-UI client (`HttpAgent` of
//! `@ag-ui/client`, CopilotKit) runs an agent here.
//!
//! `POST /v1/agents/{agent}/ag-ui` takes a `RunAgentInput` (`threadId` is the session,
//! `runId` the client's id of this run). When its last message is the user's, that text is
//! the input of a new run (earlier messages are already in the session); when it ends with
//! `tool` messages, they answer the client-side tool calls the session's run waits for, and
//! the events go on with that run. `tools`, `context`, `state` and `forwardedProps` are
//! accepted and not used: an agent's tools are the server's (`kind = "client"` tools are the
//! ones a front end answers).
//!
//! The answer is AG-UI events over SSE (`crate::wire::ag_ui`). A request refused before a
//! run streams gets PROTOCOL.md's JSON error with its status (`HttpAgent` reports it as
//! `HTTP <status>: <body>`); a run that fails ends with `RUN_ERROR`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use crate::server::auth::Tenant;
use crate::server::error::ApiError;
use crate::server::ui_stream;
use crate::server::AppState;
use crate::wire::ag_ui::AgUiStream;

/// `RunAgentInput` (the fields read here; the others are allowed).
#[derive(Debug, Deserialize)]
struct RunAgentInput {
    #[serde(rename = "threadId")]
    thread_id: String,
    #[serde(rename = "runId")]
    run_id: String,
    messages: Vec<Message>,
}

/// An AG-UI message (the fields read here).
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default, rename = "toolCallId")]
    tool_call_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What the input asks for.
#[derive(Debug, PartialEq)]
enum Ask {
    /// A new run on this text.
    Run(String),
    /// Outputs of client-side tool calls: `(toolCallId, output)`.
    ToolOutputs(Vec<(String, String)>),
}

/// A message's text: a string, or the text parts of a list.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn read_input(body: &[u8]) -> Result<(RunAgentInput, Ask), ApiError> {
    let input: RunAgentInput = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not an AG-UI RunAgentInput ({{threadId, runId, messages}}): {e}"
        ))
    })?;
    let last = input.messages.last().ok_or_else(|| {
        ApiError::BadRequest("`messages` is empty; send the user's message".into())
    })?;
    let ask = match last.role.as_str() {
        "user" => {
            let text = text_of(&last.content);
            if text.is_empty() {
                return Err(ApiError::BadRequest(
                    "the last user message has no text".into(),
                ));
            }
            Ask::Run(text)
        }
        "tool" => Ask::ToolOutputs(
            input
                .messages
                .iter()
                .rev()
                .take_while(|m| m.role == "tool")
                .filter_map(|m| {
                    let id = m.tool_call_id.clone()?;
                    let text = text_of(&m.content);
                    Some(match &m.error {
                        Some(e) if text.is_empty() => (id, format!("Error: {e}")),
                        _ => (id, text),
                    })
                })
                .collect(),
        ),
        other => {
            return Err(ApiError::BadRequest(format!(
                "the last message is the {}'s; send a user message (or tool messages answering the run's tool calls)",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    Ok((input, ask))
}

/// `POST /v1/agents/{agent}/ag-ui`.
pub async fn run(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(agent): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let core = st.core.clone();
    let body = ui_stream::read_body(&core, body)?;
    let (input, ask) = read_input(&body)?;
    let thread = input.thread_id;
    let (follow, enc) = match ask {
        Ask::Run(text) => {
            let meta = serde_json::json!({"frontend": "ag-ui", "ag_ui_run_id": input.run_id});
            let f = ui_stream::start_run(&core, &tenant, &thread, &agent, text, meta).await?;
            let enc = AgUiStream::new(thread, input.run_id, f.run_id.clone());
            (f, enc)
        }
        Ask::ToolOutputs(outputs) => {
            let (f, answered) =
                ui_stream::answer_tool_calls(&core, &tenant, &thread, outputs).await?;
            let agent = f.agent.clone();
            let enc =
                AgUiStream::continuing(thread, input.run_id, f.run_id.clone(), answered, agent);
            (f, enc)
        }
    };
    Ok(ui_stream::sse_response(&core, follow, enc, "ag-ui", &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_messages_say_what_to_do() {
        let body = serde_json::json!({
            "threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [],
            "forwardedProps": {},
            "messages": [
                {"id": "1", "role": "user", "content": "earlier"},
                {"id": "2", "role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]}
            ]
        });
        let (input, ask) = read_input(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            (input.thread_id.as_str(), input.run_id.as_str()),
            ("t1", "r1")
        );
        assert_eq!(ask, Ask::Run("Weather in Oslo?".into()));

        let body = serde_json::json!({
            "threadId": "t1", "runId": "r2",
            "messages": [
                {"id": "1", "role": "user", "content": "hi"},
                {"id": "2", "role": "assistant", "toolCalls": [{"id": "c1", "type": "function", "function": {"name": "confirm", "arguments": "{}"}}]},
                {"id": "3", "role": "tool", "toolCallId": "c1", "content": "yes"},
                {"id": "4", "role": "tool", "toolCallId": "c2", "content": "", "error": "denied"}
            ]
        });
        let (_, ask) = read_input(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            ask,
            Ask::ToolOutputs(vec![
                ("c2".into(), "Error: denied".into()),
                ("c1".into(), "yes".into())
            ])
        );
    }

    #[test]
    fn bad_inputs_say_why() {
        let err = |b: &str| read_input(b.as_bytes()).unwrap_err().to_string();
        assert!(err(r#"{"threadId":"t"}"#).contains("RunAgentInput"));
        assert!(err(r#"{"threadId":"t","runId":"r","messages":[]}"#).contains("empty"));
        assert!(
            err(r#"{"threadId":"t","runId":"r","messages":[{"id":"1","role":"assistant","content":"x"}]}"#)
                .contains("assistant")
        );
    }
}
