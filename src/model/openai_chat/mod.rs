//! The `openai_chat_completions` provider: `POST {base_url}/chat/completions` with
//! `stream: true` and usage included, and an adapter that synthesises the Responses-API
//! event sequence from the chunks, as the SDK's Chat Completions model does.
//!
//! Like the SDK (0.24), the adapter emits no `response.in_progress`, no
//! `function_call_arguments.done` and no `output_text.done`. For a text answer the sequence is
//! `response.created`, `output_item.added`, `content_part.added`, `output_text.delta`+,
//! `content_part.done`, `output_item.done`, `response.completed`; a tool call opens its item
//! as soon as its id and name are known and streams its arguments as deltas. Chunks are
//! parsed into typed structs (no JSON trees per delta).
//!
//! - [`request`]: the request body.
//! - [`stream`]: the chunks and their translation.

mod request;
mod stream;

pub use request::request_body;
pub use stream::ChatTranslator;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::model::http::Endpoint;
use crate::model::openai_responses::BoxedStream;
use crate::model::{EventStream, Model, ModelApi, ModelRequest, ModelSettings};

/// A model served over the Chat Completions API (vLLM, llama.cpp, Ollama, LiteLLM, OpenAI).
pub struct OpenAiChatModel {
    endpoint: Arc<Endpoint>,
    model: String,
    defaults: ModelSettings,
}

impl OpenAiChatModel {
    /// `model` on `endpoint`; `defaults` are the provider's settings, which an agent's own
    /// settings override field by field.
    pub fn new(endpoint: Arc<Endpoint>, model: impl Into<String>, defaults: ModelSettings) -> Self {
        OpenAiChatModel {
            endpoint,
            model: model.into(),
            defaults,
        }
    }
}

impl Model for OpenAiChatModel {
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
            "/chat/completions",
            body,
            settings.extra_headers.clone(),
            cancel,
            ChatTranslator::new(&self.model, who),
        )
    }

    fn name(&self) -> &str {
        &self.model
    }

    fn api(&self) -> ModelApi {
        ModelApi::ChatCompletions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::Item;
    use crate::model::http::Translate;
    use crate::model::openai_responses::FAKE_ID;
    use crate::model::{RawEvent, ResponseEvent};
    use serde_json::json;
    use serde_json::Value;
    use std::collections::VecDeque;

    fn names(out: &VecDeque<RawEvent>) -> Vec<&str> {
        out.iter().map(RawEvent::type_name).collect()
    }

    fn feed(t: &mut ChatTranslator, chunks: &[&str]) -> VecDeque<RawEvent> {
        let mut out = VecDeque::new();
        for c in chunks {
            t.on_event("", c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn text_answer_has_the_sdk_sequence_and_usage() {
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
                r#"{"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
                r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                r#"{"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":3}}}"#,
                "[DONE]",
            ],
        );
        assert_eq!(
            names(&out),
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let Some(RawEvent::Typed(ResponseEvent::Completed { response, .. })) = out.back() else {
            panic!("no completed");
        };
        let u = response.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (7, 2, 9));
        assert_eq!(u.input_tokens_details.cached_tokens, 3);
        match &response.output[0] {
            Item::Message(m) => assert_eq!(m.text(), "Hello"),
            other => panic!("{other:?}"),
        }
        for (i, e) in out.iter().enumerate() {
            assert_eq!(
                serde_json::to_value(e).unwrap()["sequence_number"],
                i as u64
            );
        }
    }

    #[test]
    fn two_tool_calls_stream_their_arguments() {
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
                "[DONE]",
            ],
        );
        assert_eq!(
            names(&out),
            [
                "response.created",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.output_item.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let Some(RawEvent::Typed(ResponseEvent::Completed { response, .. })) = out.back() else {
            panic!("no completed");
        };
        assert!(response.usage.is_none());
        match (&response.output[0], &response.output[1]) {
            (Item::FunctionCall(a), Item::FunctionCall(b)) => {
                assert_eq!(
                    (a.call_id.as_str(), a.arguments.as_str()),
                    ("call_a", "{\"x\":1}")
                );
                assert_eq!((b.name.as_str(), b.arguments.as_str()), ("g", "{}"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reasoning_content_becomes_a_reasoning_item_before_the_message() {
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Think"}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"reasoning_content":"ing."}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"Hi","reasoning":{"x":1}}}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                "[DONE]",
            ],
        );
        assert_eq!(
            names(&out),
            [
                "response.created",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_part.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_item.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, e) in out.iter().enumerate() {
            assert_eq!(
                serde_json::to_value(e).unwrap()["sequence_number"],
                i as u64
            );
        }
        let Some(RawEvent::Typed(ResponseEvent::Completed { response, .. })) = out.back() else {
            panic!("no completed");
        };
        match (&response.output[0], &response.output[1]) {
            (Item::Reasoning(r), Item::Message(m)) => {
                assert_eq!(r.summary[0]["text"], "Thinking.");
                assert_eq!(m.text(), "Hi");
            }
            other => panic!("{other:?}"),
        }
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"choices":[{"index":0,"delta":{"reasoning":"Hmm"}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"Yes"},"finish_reason":"stop"}]}"#,
                "[DONE]",
            ],
        );
        assert!(names(&out).contains(&"response.reasoning_text.delta"));
        assert!(names(&out).contains(&"response.reasoning_text.done"));
    }

    #[test]
    fn refusal_content_filter_length_and_errors() {
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"choices":[{"index":0,"delta":{"refusal":"No."}}]}"#,
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                "[DONE]",
            ],
        );
        assert!(names(&out).contains(&"response.refusal.delta"));
        let mut t = ChatTranslator::new("m", "test");
        let out = feed(
            &mut t,
            &[
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
                "[DONE]",
            ],
        );
        assert!(names(&out).contains(&"response.refusal.delta"));
        let mut t = ChatTranslator::new("m", "test");
        let mut out = VecDeque::new();
        t.on_event(
            "",
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            &mut out,
        )
        .unwrap();
        assert!(t.on_event("", "[DONE]", &mut out).is_err());
        let mut t = ChatTranslator::new("m", "test");
        let mut out = VecDeque::new();
        assert!(t
            .on_event(
                "",
                r#"{"error":{"message":"overloaded","code":503}}"#,
                &mut out
            )
            .unwrap());
        assert_eq!(names(&out), ["response.created", "error"]);
        assert!(t
            .on_event("", r#"{"choices":[{"index":"#, &mut out)
            .is_err());
        let mut t = ChatTranslator::new("m", "test");
        assert!(t.on_end(&mut VecDeque::new()).is_err());
    }

    #[test]
    fn body_has_the_chat_shape() {
        let req = crate::model::sample_request("let me check", FAKE_ID);
        let settings = ModelSettings {
            tool_choice: Some("required".into()),
            max_tokens: Some(50),
            parallel_tool_calls: Some(true),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_slice(&request_body("m", &req, &settings).unwrap()).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(v["messages"][1], json!({"role": "user", "content": "hi"}));
        assert_eq!(v["messages"][2]["role"], "assistant");
        assert_eq!(v["messages"][2]["content"], "let me check");
        assert_eq!(v["messages"][2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            v["messages"][2]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(
            v["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(v["tools"][0]["function"]["strict"], true);
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], true);
        assert_eq!(v["max_tokens"], 50);
        assert_eq!(v["response_format"]["type"], "json_schema");
        assert_eq!(v["response_format"]["json_schema"]["name"], "final_output");
    }
}
