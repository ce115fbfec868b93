//! The `openai_responses` provider: `POST {base_url}/responses` with `stream: true`; every
//! SSE event becomes a raw event the moment it is parsed (nothing is buffered).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::http::{quote, Endpoint, Translate};
use super::{
    EventStream, Model, ModelApi, ModelError, ModelRequest, ModelSettings, RawEvent, ResponseEvent,
};
use crate::items::Item;

/// The id the SDK gives items it synthesises (Chat Completions output); it must not be sent
/// back to the Responses API as an item id.
pub const FAKE_ID: &str = "__fake_id__";

/// A model served over the OpenAI Responses API.
pub struct OpenAiResponsesModel {
    endpoint: Arc<Endpoint>,
    model: String,
    defaults: ModelSettings,
}

impl OpenAiResponsesModel {
    /// `model` on `endpoint`; `defaults` are the provider's settings, which an agent's own
    /// settings override field by field.
    pub fn new(endpoint: Arc<Endpoint>, model: impl Into<String>, defaults: ModelSettings) -> Self {
        OpenAiResponsesModel {
            endpoint,
            model: model.into(),
            defaults,
        }
    }
}

impl Model for OpenAiResponsesModel {
    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> EventStream {
        let settings = self.defaults.resolve(&request.settings);
        let body = match request_body(&self.model, &request, &settings) {
            Ok(b) => b,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed_stream(),
        };
        let who = format!(
            "{} at {}",
            self.endpoint.provider(),
            self.endpoint.base_url()
        );
        self.endpoint.stream_sse(
            "/responses",
            body,
            settings.extra_headers.clone(),
            cancel,
            ResponsesTranslator::new(who),
        )
    }

    fn name(&self) -> &str {
        &self.model
    }

    fn api(&self) -> ModelApi {
        ModelApi::Responses
    }
}

/// A boxed-stream helper so early errors share the stream type.
pub(crate) trait BoxedStream {
    fn boxed_stream(self) -> EventStream;
}

impl<S> BoxedStream for S
where
    S: futures::Stream<Item = Result<RawEvent, ModelError>> + Send + 'static,
{
    fn boxed_stream(self) -> EventStream {
        Box::pin(self)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    input: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instructions: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Value>,
    stream: bool,
}

/// The JSON body of a Responses API request for `request` (exposed for tests and tools).
pub fn request_body(
    model: &str,
    request: &ModelRequest,
    settings: &ModelSettings,
) -> Result<Bytes, ModelError> {
    let input = request.input.iter().map(input_item).collect();
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": t.strict,
            })
        })
        .collect();
    let tool_choice = settings.tool_choice.as_deref().map(|c| match c {
        "auto" | "required" | "none" => Value::String(c.to_owned()),
        name => json!({"type": "function", "name": name}),
    });
    let text = request.output_schema.as_ref().map(|o| {
        json!({"format": {
            "type": "json_schema",
            "name": o.name,
            "schema": o.schema,
            "strict": o.strict,
        }})
    });
    let body = Body {
        model,
        input,
        instructions: request.system_instructions.as_deref(),
        parallel_tool_calls: settings.parallel_tool_calls.filter(|_| !tools.is_empty()),
        tools,
        tool_choice,
        temperature: settings.temperature,
        top_p: settings.top_p,
        max_output_tokens: settings.max_tokens,
        reasoning: settings
            .reasoning_effort
            .as_ref()
            .map(|e| json!({ "effort": e })),
        text,
        stream: true,
    };
    finish_body(&body, settings.extra_body.as_ref())
}

/// Serialises `body`, merging `extra_body`'s top-level fields over it.
pub(crate) fn finish_body<B: Serialize>(
    body: &B,
    extra: Option<&Value>,
) -> Result<Bytes, ModelError> {
    let bad = |e: serde_json::Error| {
        ModelError::new(
            super::ModelErrorKind::BadRequest,
            format!("could not encode the request: {e}"),
        )
    };
    match extra {
        None => serde_json::to_vec(body).map(Bytes::from).map_err(bad),
        Some(Value::Object(extra)) => {
            let mut v = serde_json::to_value(body).map_err(bad)?;
            if let Value::Object(m) = &mut v {
                for (k, x) in extra {
                    m.insert(k.clone(), x.clone());
                }
            }
            serde_json::to_vec(&v).map(Bytes::from).map_err(bad)
        }
        Some(_) => Err(ModelError::new(
            super::ModelErrorKind::BadRequest,
            "extra_body must be a table (JSON object) of top-level request fields",
        )),
    }
}

/// An input item as the Responses API takes it; synthetic ids are dropped.
fn input_item(item: &Item) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        if m.get("id").and_then(Value::as_str) == Some(FAKE_ID) {
            m.remove("id");
        }
    }
    v
}

/// Translates Responses-API SSE events: each `data` parses into one raw event.
pub struct ResponsesTranslator {
    who: String,
}

impl ResponsesTranslator {
    /// A translator; `who` names the provider in error messages.
    pub fn new(who: impl Into<String>) -> Self {
        ResponsesTranslator { who: who.into() }
    }
}

impl Translate for ResponsesTranslator {
    fn on_event(
        &mut self,
        _event: &str,
        data: &str,
        out: &mut VecDeque<RawEvent>,
    ) -> Result<bool, ModelError> {
        let data = data.trim_end();
        if data.is_empty() {
            return Ok(false);
        }
        if data == "[DONE]" {
            return Ok(true);
        }
        let ev = RawEvent::from_json(data).map_err(|e| {
            ModelError::behavior(format!(
                "{}: malformed event in the Responses stream ({e}): {}",
                self.who,
                quote(data, 300)
            ))
        })?;
        let terminal = matches!(
            &ev,
            RawEvent::Typed(
                ResponseEvent::Completed { .. }
                    | ResponseEvent::Failed { .. }
                    | ResponseEvent::Incomplete { .. }
                    | ResponseEvent::Error { .. }
            )
        );
        out.push_back(ev);
        Ok(terminal)
    }

    fn on_end(&mut self, _out: &mut VecDeque<RawEvent>) -> Result<(), ModelError> {
        // The engine reports a stream without `response.completed` as the SDK does.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ModelRequest {
        crate::model::sample_request("hello", FAKE_ID)
    }

    #[test]
    fn body_has_the_responses_shape() {
        let settings = ModelSettings {
            temperature: Some(0.2),
            max_tokens: Some(100),
            tool_choice: Some("get_weather".into()),
            parallel_tool_calls: Some(false),
            reasoning_effort: Some("low".into()),
            extra_body: Some(json!({"store": false})),
            ..Default::default()
        };
        let b = request_body("gpt-x", &req(), &settings).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "gpt-x");
        assert_eq!(v["stream"], true);
        assert_eq!(v["instructions"], "Be brief.");
        assert_eq!(v["input"][0], json!({"role": "user", "content": "hi"}));
        assert!(v["input"][1].get("id").is_none());
        assert_eq!(v["input"][2]["type"], "function_call");
        assert_eq!(v["input"][3]["type"], "function_call_output");
        assert_eq!(v["tools"][0]["type"], "function");
        assert_eq!(v["tools"][0]["strict"], true);
        assert_eq!(
            v["tool_choice"],
            json!({"type": "function", "name": "get_weather"})
        );
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["max_output_tokens"], 100);
        assert_eq!(v["reasoning"], json!({"effort": "low"}));
        assert_eq!(v["text"]["format"]["type"], "json_schema");
        assert_eq!(v["text"]["format"]["name"], "final_output");
        assert_eq!(v["store"], false);
        assert!(v.get("top_p").is_none());
    }

    #[test]
    fn translator_passes_events_and_stops_at_terminal() {
        let mut t = ResponsesTranslator::new("test");
        let mut out = VecDeque::new();
        assert!(!t
            .on_event(
                "",
                r#"{"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"x","sequence_number":1}"#,
                &mut out
            )
            .unwrap());
        assert!(t
            .on_event(
                "",
                r#"{"type":"error","message":"boom","sequence_number":2}"#,
                &mut out
            )
            .unwrap());
        assert_eq!(out.len(), 2);
        let e = t.on_event("", "{oops", &mut out).unwrap_err();
        assert!(e.message.contains("malformed"), "{}", e.message);
    }
}
