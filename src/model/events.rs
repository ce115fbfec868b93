//! Responses-API stream events: the `data` of every `raw_response_event`, whichever API the
//! provider speaks (the Chat Completions adapter synthesises these).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::items::{ContentPart, Item};
use crate::usage::RequestUsage;

/// The response object carried by `response.created`, `response.completed` and friends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseObject {
    /// Provider response id.
    pub id: String,
    /// Always `"response"`.
    #[serde(default = "response_object_name")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: f64,
    /// `in_progress`, `completed`, `failed`, `incomplete`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// The model name.
    #[serde(default)]
    pub model: String,
    /// The output items (complete on `response.completed`).
    #[serde(default)]
    pub output: Vec<Item>,
    /// Token usage (on `response.completed`).
    #[serde(default)]
    pub usage: Option<RequestUsage>,
    /// The error, on `response.failed`.
    #[serde(default)]
    pub error: Option<Value>,
    /// Why the response is incomplete, on `response.incomplete`.
    #[serde(default)]
    pub incomplete_details: Option<Value>,
    /// Every other field, as the provider sent it.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn response_object_name() -> String {
    "response".into()
}

impl ResponseObject {
    /// A fresh in-progress response with no output.
    pub fn new(id: impl Into<String>, model: impl Into<String>, created_at: f64) -> Self {
        ResponseObject {
            id: id.into(),
            object: "response".into(),
            created_at,
            status: Some("in_progress".into()),
            model: model.into(),
            output: Vec::new(),
            usage: None,
            error: None,
            incomplete_details: None,
            rest: Map::new(),
        }
    }
}

/// A typed Responses-API stream event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ResponseEvent {
    /// The response was created.
    #[serde(rename = "response.created")]
    Created {
        /// The response so far.
        response: ResponseObject,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// The response is in progress.
    #[serde(rename = "response.in_progress")]
    InProgress {
        /// The response so far.
        response: ResponseObject,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// An output item started.
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        /// The item as far as known.
        item: Item,
        /// Its index in the output.
        output_index: u32,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A content part of a message started.
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The (empty) part.
        part: ContentPart,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A piece of text.
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The text piece.
        delta: String,
        /// Log probabilities (empty unless asked for).
        #[serde(default)]
        logprobs: Vec<Value>,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A text part is complete.
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The whole text.
        text: String,
        /// Log probabilities.
        #[serde(default)]
        logprobs: Vec<Value>,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A refusal piece.
    #[serde(rename = "response.refusal.delta")]
    RefusalDelta {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The refusal piece.
        delta: String,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A refusal is complete.
    #[serde(rename = "response.refusal.done")]
    RefusalDone {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The whole refusal.
        refusal: String,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A content part is complete.
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        /// The message item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// Index of the part.
        content_index: u32,
        /// The complete part.
        part: ContentPart,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A piece of function-call arguments.
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        /// The function call item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// The arguments piece.
        delta: String,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// The function-call arguments are complete.
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        /// The function call item id.
        item_id: String,
        /// Index of the item.
        output_index: u32,
        /// The tool's name (newer servers send it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The whole arguments string.
        arguments: String,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// An output item is complete.
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        /// The complete item.
        item: Item,
        /// Its index in the output.
        output_index: u32,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// The response completed: the terminal event of a good turn.
    #[serde(rename = "response.completed")]
    Completed {
        /// The whole response.
        response: ResponseObject,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// The response failed.
    #[serde(rename = "response.failed")]
    Failed {
        /// The response with its error.
        response: ResponseObject,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// The response stopped early (length, content filter).
    #[serde(rename = "response.incomplete")]
    Incomplete {
        /// The response with its incomplete details.
        response: ResponseObject,
        /// Position in the stream.
        sequence_number: u64,
    },
    /// A stream-level error.
    #[serde(rename = "error")]
    Error {
        /// Error code.
        #[serde(default)]
        code: Option<String>,
        /// Error message.
        #[serde(default)]
        message: String,
        /// Offending parameter.
        #[serde(default)]
        param: Option<String>,
        /// Position in the stream.
        #[serde(default)]
        sequence_number: u64,
    },
}

/// A raw event: typed when callboard knows its type, kept verbatim otherwise (reasoning
/// summaries, hosted-tool progress, future event types), so nothing a provider sends is lost.
// The typed variant is large, but every event is moved into an `Arc` once, right after
// parsing, so boxing it would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawEvent {
    /// A known event.
    Typed(ResponseEvent),
    /// Any other event, as sent.
    Other(Value),
}

impl RawEvent {
    /// Parses one event's JSON; an event of unknown type is kept as JSON.
    pub fn from_json(s: &str) -> Result<RawEvent, serde_json::Error> {
        match serde_json::from_str::<ResponseEvent>(s) {
            Ok(e) => Ok(RawEvent::Typed(e)),
            Err(typed_err) => {
                let v: Value = serde_json::from_str(s)?;
                match v.get("type").and_then(Value::as_str) {
                    Some(t) if !is_known_type(t) => Ok(RawEvent::Other(v)),
                    // A known type that does not parse is a malformed event.
                    _ => Err(typed_err),
                }
            }
        }
    }

    /// The event's `type` string.
    pub fn type_name(&self) -> &str {
        match self {
            RawEvent::Typed(e) => e.type_name(),
            RawEvent::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

fn is_known_type(t: &str) -> bool {
    matches!(
        t,
        "response.created"
            | "response.in_progress"
            | "response.output_item.added"
            | "response.content_part.added"
            | "response.output_text.delta"
            | "response.output_text.done"
            | "response.refusal.delta"
            | "response.refusal.done"
            | "response.content_part.done"
            | "response.function_call_arguments.delta"
            | "response.function_call_arguments.done"
            | "response.output_item.done"
            | "response.completed"
            | "response.failed"
            | "response.incomplete"
            | "error"
    )
}

impl ResponseEvent {
    /// The event's `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            ResponseEvent::Created { .. } => "response.created",
            ResponseEvent::InProgress { .. } => "response.in_progress",
            ResponseEvent::OutputItemAdded { .. } => "response.output_item.added",
            ResponseEvent::ContentPartAdded { .. } => "response.content_part.added",
            ResponseEvent::OutputTextDelta { .. } => "response.output_text.delta",
            ResponseEvent::OutputTextDone { .. } => "response.output_text.done",
            ResponseEvent::RefusalDelta { .. } => "response.refusal.delta",
            ResponseEvent::RefusalDone { .. } => "response.refusal.done",
            ResponseEvent::ContentPartDone { .. } => "response.content_part.done",
            ResponseEvent::FunctionCallArgumentsDelta { .. } => {
                "response.function_call_arguments.delta"
            }
            ResponseEvent::FunctionCallArgumentsDone { .. } => {
                "response.function_call_arguments.done"
            }
            ResponseEvent::OutputItemDone { .. } => "response.output_item.done",
            ResponseEvent::Completed { .. } => "response.completed",
            ResponseEvent::Failed { .. } => "response.failed",
            ResponseEvent::Incomplete { .. } => "response.incomplete",
            ResponseEvent::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_serialises_as_the_responses_api_does() {
        let e = RawEvent::Typed(ResponseEvent::OutputTextDelta {
            item_id: "msg_1".into(),
            output_index: 0,
            content_index: 0,
            delta: "Hel".into(),
            logprobs: vec![],
            sequence_number: 7,
        });
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hel","logprobs":[],"sequence_number":7}"#
        );
    }

    #[test]
    fn unknown_events_pass_through_and_bad_known_ones_fail() {
        let s =
            r#"{"type":"response.reasoning_summary_text.delta","delta":"x","sequence_number":3}"#;
        let e = RawEvent::from_json(s).unwrap();
        assert_eq!(e.type_name(), "response.reasoning_summary_text.delta");
        assert!(matches!(e, RawEvent::Other(_)));
        assert!(RawEvent::from_json(r#"{"type":"response.output_text.delta"}"#).is_err());
        assert!(RawEvent::from_json("{not json").is_err());
    }

    #[test]
    fn completed_keeps_unknown_response_fields() {
        let s = r#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response","created_at":1.0,"status":"completed","model":"m","output":[],"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3},"temperature":0.5}}"#;
        let e = RawEvent::from_json(s).unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["response"]["temperature"], 0.5);
        assert_eq!(v["response"]["usage"]["total_tokens"], 3);
    }
}
