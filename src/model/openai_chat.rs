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

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::http::{quote, Endpoint, Translate};
use super::openai_responses::{finish_body, BoxedStream, FAKE_ID};
use super::{
    EventStream, Model, ModelApi, ModelError, ModelErrorKind, ModelRequest, ModelSettings,
    RawEvent, ResponseEvent, ResponseObject,
};
use crate::items::{ContentPart, FunctionCallItem, Item, MessageContent, MessageItem, Role};
use crate::usage::{InputTokensDetails, OutputTokensDetails, RequestUsage};

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

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Value>,
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
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    stream: bool,
    stream_options: Value,
}

/// The JSON body of a Chat Completions request for `request` (exposed for tests and tools).
pub fn request_body(
    model: &str,
    request: &ModelRequest,
    settings: &ModelSettings,
) -> Result<Bytes, ModelError> {
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": t.strict,
                }
            })
        })
        .collect();
    let tool_choice = settings.tool_choice.as_deref().map(|c| match c {
        "auto" | "required" | "none" => Value::String(c.to_owned()),
        name => json!({"type": "function", "function": {"name": name}}),
    });
    let response_format = request.output_schema.as_ref().map(|o| {
        json!({
            "type": "json_schema",
            "json_schema": {"name": o.name, "strict": o.strict, "schema": o.schema},
        })
    });
    let body = Body {
        model,
        messages: messages(request)?,
        // Chat Completions refuses parallel_tool_calls without tools.
        parallel_tool_calls: settings.parallel_tool_calls.filter(|_| !tools.is_empty()),
        tools,
        tool_choice,
        temperature: settings.temperature,
        top_p: settings.top_p,
        max_tokens: settings.max_tokens,
        reasoning_effort: settings.reasoning_effort.as_deref(),
        response_format,
        stream: true,
        stream_options: json!({"include_usage": true}),
    };
    finish_body(&body, settings.extra_body.as_ref())
}

fn unsupported(what: String) -> ModelError {
    ModelError::new(
        ModelErrorKind::BadRequest,
        format!("{what} cannot be sent to a Chat Completions model; use the openai_responses provider for it"),
    )
}

/// A content part as Chat Completions takes it.
fn chat_part(p: &ContentPart) -> Result<Value, ModelError> {
    Ok(match p {
        ContentPart::InputText { text } | ContentPart::OutputText { text, .. } => {
            json!({"type": "text", "text": text})
        }
        ContentPart::Refusal { refusal } => json!({"type": "text", "text": refusal}),
        ContentPart::Other(v) => {
            let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
            match ty {
                "input_image" => {
                    let mut image = Map::new();
                    if let Some(url) = v.get("image_url") {
                        image.insert("url".into(), url.clone());
                    }
                    if let Some(d) = v.get("detail") {
                        image.insert("detail".into(), d.clone());
                    }
                    json!({"type": "image_url", "image_url": image})
                }
                "input_file" => {
                    let mut file = Map::new();
                    for k in ["file_data", "file_id", "filename"] {
                        if let Some(x) = v.get(k) {
                            file.insert(k.into(), x.clone());
                        }
                    }
                    json!({"type": "file", "file": file})
                }
                _ => return Err(unsupported(format!("a content part of type {ty:?}"))),
            }
        }
    })
}

fn text_of(content: &MessageContent) -> Result<Value, ModelError> {
    Ok(match content {
        MessageContent::Text(t) => Value::String(t.clone()),
        MessageContent::Parts(parts) => {
            Value::Array(parts.iter().map(chat_part).collect::<Result<_, _>>()?)
        }
    })
}

/// Conversation items as Chat Completions messages: function calls join the assistant
/// message before them, function outputs become `tool` messages.
fn messages(request: &ModelRequest) -> Result<Vec<Value>, ModelError> {
    let mut out = Vec::with_capacity(request.input.len() + 1);
    if let Some(s) = &request.system_instructions {
        out.push(json!({"role": "system", "content": s}));
    }
    let mut assistant: Option<Map<String, Value>> = None;
    fn flush(out: &mut Vec<Value>, assistant: &mut Option<Map<String, Value>>) {
        if let Some(mut a) = assistant.take() {
            if a.get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                a.remove("tool_calls");
            }
            out.push(Value::Object(a));
        }
    }
    for item in &request.input {
        match item {
            Item::Message(m) => match m.role {
                Role::User | Role::System | Role::Developer => {
                    flush(&mut out, &mut assistant);
                    let role = match m.role {
                        Role::User => "user",
                        Role::System => "system",
                        _ => "developer",
                    };
                    out.push(json!({"role": role, "content": text_of(&m.content)?}));
                }
                Role::Assistant => {
                    flush(&mut out, &mut assistant);
                    let mut a = Map::new();
                    a.insert("role".into(), "assistant".into());
                    match &m.content {
                        MessageContent::Text(t) => {
                            a.insert("content".into(), Value::String(t.clone()));
                        }
                        MessageContent::Parts(parts) => {
                            let texts: Vec<&str> = parts
                                .iter()
                                .filter_map(|p| match p {
                                    ContentPart::OutputText { text, .. }
                                    | ContentPart::InputText { text } => Some(text.as_str()),
                                    _ => None,
                                })
                                .collect();
                            a.insert(
                                "content".into(),
                                if texts.is_empty() {
                                    Value::Null
                                } else {
                                    Value::String(texts.join("\n"))
                                },
                            );
                            if let Some(r) = m.refusal() {
                                a.insert("refusal".into(), r.into());
                            }
                        }
                    }
                    a.insert("tool_calls".into(), Value::Array(Vec::new()));
                    assistant = Some(a);
                }
            },
            Item::FunctionCall(f) => {
                let a = assistant.get_or_insert_with(|| {
                    let mut a = Map::new();
                    a.insert("role".into(), "assistant".into());
                    a.insert("content".into(), Value::Null);
                    a.insert("tool_calls".into(), Value::Array(Vec::new()));
                    a
                });
                let args = if f.arguments.is_empty() {
                    "{}"
                } else {
                    f.arguments.as_str()
                };
                let call = json!({
                    "id": f.call_id,
                    "type": "function",
                    "function": {"name": f.name, "arguments": args},
                });
                match a.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => {
                        a.insert("tool_calls".into(), Value::Array(vec![call]));
                    }
                }
            }
            Item::FunctionCallOutput(o) => {
                flush(&mut out, &mut assistant);
                out.push(json!({"role": "tool", "tool_call_id": o.call_id, "content": o.output}));
            }
            Item::Reasoning(_) => {}
            Item::Other(v) => {
                let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
                if ty != "function_call_output" {
                    return Err(unsupported(format!("an item of type {ty:?}")));
                }
                flush(&mut out, &mut assistant);
                let parts: Vec<Value> = v
                    .get("output")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|p| p.get("type").and_then(Value::as_str) == Some("input_text"))
                            .map(|p| json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": v.get("call_id").cloned().unwrap_or_default(),
                    "content": parts,
                }));
            }
        }
    }
    flush(&mut out, &mut assistant);
    Ok(out)
}

// ---- streamed chunks (typed, borrowing from the SSE data where it can) ----

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    error: Option<ChunkError>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    /// Reasoning text as DeepSeek and vLLM stream it (becomes a reasoning summary).
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    /// Reasoning text as some gateways stream it (becomes reasoning content); only strings
    /// are used.
    #[serde(default, borrow)]
    reasoning: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ChunkError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    param: Option<String>,
}

struct Call {
    chat_index: u32,
    call_id: String,
    name: String,
    arguments: String,
    output_index: Option<u32>,
    ignored: bool,
}

/// Synthesises Responses-API events from Chat Completions chunks (see the module docs).
pub struct ChatTranslator {
    who: String,
    model: String,
    created_at: f64,
    started: bool,
    seq: u64,
    next_output_index: u32,
    message_index: Option<u32>,
    text: Option<(u32, String)>,
    refusal: Option<(u32, String)>,
    calls: Vec<Call>,
    reasoning: Option<ReasoningState>,
    usage: Option<RequestUsage>,
    finish_reason: Option<String>,
}

/// A reasoning item being streamed: summary parts (from `reasoning_content`) or reasoning
/// text (from `reasoning`).
struct ReasoningState {
    output_index: u32,
    summary: Vec<String>,
    active_part: Option<usize>,
    text: Option<String>,
    done: bool,
}

impl ChatTranslator {
    /// A translator for `model`; `who` names the provider in error messages.
    pub fn new(model: impl Into<String>, who: impl Into<String>) -> Self {
        ChatTranslator {
            who: who.into(),
            model: model.into(),
            created_at: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            started: false,
            seq: 0,
            next_output_index: 0,
            message_index: None,
            text: None,
            refusal: None,
            calls: Vec::new(),
            reasoning: None,
            usage: None,
            finish_reason: None,
        }
    }

    fn seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn push(&mut self, out: &mut VecDeque<RawEvent>, e: ResponseEvent) {
        out.push_back(RawEvent::Typed(e));
    }

    fn base(&self) -> ResponseObject {
        ResponseObject::new(FAKE_ID, self.model.clone(), self.created_at)
    }

    fn start(&mut self, out: &mut VecDeque<RawEvent>) {
        if !self.started {
            self.started = true;
            let e = ResponseEvent::Created {
                response: self.base(),
                sequence_number: self.seq(),
            };
            self.push(out, e);
        }
    }

    /// Opens the assistant message if it is not open yet; returns its output index.
    fn open_message(&mut self, out: &mut VecDeque<RawEvent>) -> u32 {
        if let Some(i) = self.message_index {
            return i;
        }
        let i = self.next_output_index;
        self.next_output_index += 1;
        self.message_index = Some(i);
        let e = ResponseEvent::OutputItemAdded {
            item: Item::Message(MessageItem {
                id: Some(FAKE_ID.into()),
                role: Role::Assistant,
                content: MessageContent::Parts(Vec::new()),
                status: Some("in_progress".into()),
            }),
            output_index: i,
            sequence_number: self.seq(),
        };
        self.push(out, e);
        i
    }

    fn open_part(&mut self, out: &mut VecDeque<RawEvent>, refusal: bool) -> (u32, u32) {
        let output_index = self.open_message(out);
        let open = if refusal { &self.refusal } else { &self.text };
        if let Some((ci, _)) = open {
            return (output_index, *ci);
        }
        let ci = u32::from(self.text.is_some()) + u32::from(self.refusal.is_some());
        if refusal {
            self.refusal = Some((ci, String::new()));
        } else {
            self.text = Some((ci, String::new()));
        }
        let part = if refusal {
            ContentPart::Refusal {
                refusal: String::new(),
            }
        } else {
            ContentPart::output_text("")
        };
        let e = ResponseEvent::ContentPartAdded {
            item_id: FAKE_ID.into(),
            output_index,
            content_index: ci,
            part,
            sequence_number: self.seq(),
        };
        self.push(out, e);
        (output_index, ci)
    }

    fn call_item(c: &Call, arguments: String) -> Item {
        Item::FunctionCall(FunctionCallItem {
            id: Some(FAKE_ID.into()),
            call_id: c.call_id.clone(),
            name: c.name.clone(),
            arguments,
            status: None,
        })
    }

    fn on_tool_delta(&mut self, d: ToolCallDelta<'_>, out: &mut VecDeque<RawEvent>) {
        let pos = match self.calls.iter().position(|c| c.chat_index == d.index) {
            Some(p) => p,
            None => {
                self.calls.push(Call {
                    chat_index: d.index,
                    call_id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                    output_index: None,
                    // Only function tools are supported (custom tools are skipped, as the SDK does).
                    ignored: d.kind.as_deref().is_some_and(|k| k != "function"),
                });
                self.calls.len() - 1
            }
        };
        if self.calls[pos].ignored {
            return;
        }
        let (name, args) = match d.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        {
            let c = &mut self.calls[pos];
            if let Some(id) = d.id.filter(|s| !s.is_empty()) {
                c.call_id = id.into_owned();
            }
            if let Some(n) = name.filter(|s| !s.is_empty()) {
                c.name = n.into_owned();
            }
        }
        let args = args.unwrap_or_default();
        let mut delta: Option<String> = None;
        if self.calls[pos].output_index.is_none() {
            self.calls[pos].arguments.push_str(&args);
            let c = &self.calls[pos];
            if !c.name.is_empty() && !c.call_id.is_empty() {
                // The item opens once its id and name are known; arguments that came before
                // are sent as the first delta.
                let i = self.next_output_index;
                self.next_output_index += 1;
                self.calls[pos].output_index = Some(i);
                let e = ResponseEvent::OutputItemAdded {
                    item: Self::call_item(&self.calls[pos], String::new()),
                    output_index: i,
                    sequence_number: self.seq(),
                };
                self.push(out, e);
                if !self.calls[pos].arguments.is_empty() {
                    delta = Some(self.calls[pos].arguments.clone());
                }
            }
        } else if !args.is_empty() {
            self.calls[pos].arguments.push_str(&args);
            delta = Some(args.into_owned());
        }
        if let (Some(delta), Some(i)) = (delta, self.calls[pos].output_index) {
            let e = ResponseEvent::FunctionCallArgumentsDelta {
                item_id: FAKE_ID.into(),
                output_index: i,
                delta,
                sequence_number: self.seq(),
            };
            self.push(out, e);
        }
    }

    fn other(&mut self, out: &mut VecDeque<RawEvent>, mut v: Value) {
        if let Value::Object(m) = &mut v {
            m.insert("sequence_number".into(), self.seq().into());
        }
        out.push_back(RawEvent::Other(v));
    }

    fn reasoning_item(r: &ReasoningState) -> Item {
        let mut rest = Map::new();
        if let Some(t) = &r.text {
            rest.insert(
                "content".into(),
                json!([{"type": "reasoning_text", "text": t}]),
            );
        }
        Item::Reasoning(crate::items::ReasoningItem {
            id: Some(FAKE_ID.into()),
            summary: r
                .summary
                .iter()
                .map(|t| json!({"type": "summary_text", "text": t}))
                .collect(),
            rest,
        })
    }

    /// Opens the reasoning item if needed; returns its output index.
    fn open_reasoning(&mut self, out: &mut VecDeque<RawEvent>, as_text: bool) -> u32 {
        if let Some(r) = &self.reasoning {
            return r.output_index;
        }
        let r = ReasoningState {
            output_index: self.next_output_index,
            summary: Vec::new(),
            active_part: None,
            text: as_text.then(String::new),
            done: false,
        };
        self.next_output_index += 1;
        let e = ResponseEvent::OutputItemAdded {
            item: Self::reasoning_item(&r),
            output_index: r.output_index,
            sequence_number: self.seq(),
        };
        self.reasoning = Some(r);
        self.push(out, e);
        self.reasoning.as_ref().map_or(0, |r| r.output_index)
    }

    fn on_reasoning_summary(&mut self, delta: &str, out: &mut VecDeque<RawEvent>) {
        let oi = self.open_reasoning(out, false);
        let Some(r) = self.reasoning.as_mut() else {
            return;
        };
        let (index, opened) = match r.active_part {
            Some(i) => (i, false),
            None => {
                r.summary.push(String::new());
                let i = r.summary.len() - 1;
                r.active_part = Some(i);
                (i, true)
            }
        };
        r.summary[index].push_str(delta);
        if opened {
            self.other(
                out,
                json!({"type": "response.reasoning_summary_part.added", "item_id": FAKE_ID,
                       "output_index": oi, "summary_index": index,
                       "part": {"type": "summary_text", "text": ""}}),
            );
        }
        self.other(
            out,
            json!({"type": "response.reasoning_summary_text.delta", "item_id": FAKE_ID,
                   "output_index": oi, "summary_index": index, "delta": delta}),
        );
    }

    fn on_reasoning_text(&mut self, delta: &str, out: &mut VecDeque<RawEvent>) {
        let oi = self.open_reasoning(out, true);
        if let Some(r) = self.reasoning.as_mut() {
            r.text.get_or_insert_with(String::new).push_str(delta);
        }
        self.other(
            out,
            json!({"type": "response.reasoning_text.delta", "item_id": FAKE_ID,
                   "output_index": oi, "content_index": 0, "delta": delta}),
        );
    }

    /// Closes the summary part being streamed, if any.
    fn close_summary_part(&mut self, out: &mut VecDeque<RawEvent>) {
        let Some(r) = self.reasoning.as_mut() else {
            return;
        };
        let Some(i) = r.active_part.take() else {
            return;
        };
        let (oi, text) = (r.output_index, r.summary[i].clone());
        self.other(
            out,
            json!({"type": "response.reasoning_summary_part.done", "item_id": FAKE_ID,
                   "output_index": oi, "summary_index": i,
                   "part": {"type": "summary_text", "text": text}}),
        );
    }

    /// Closes the reasoning item; returns it with its output index.
    fn close_reasoning(&mut self, out: &mut VecDeque<RawEvent>) -> Option<(u32, Item)> {
        self.close_summary_part(out);
        let r = self.reasoning.as_mut()?;
        if r.done {
            return None;
        }
        r.done = true;
        let oi = r.output_index;
        let text = r.text.clone();
        let item = Self::reasoning_item(r);
        if let (Some(text), true) = (text, r.summary.is_empty()) {
            self.other(
                out,
                json!({"type": "response.reasoning_text.done", "item_id": FAKE_ID,
                       "output_index": oi, "content_index": 0, "text": text}),
            );
        }
        let e = ResponseEvent::OutputItemDone {
            item: item.clone(),
            output_index: oi,
            sequence_number: self.seq(),
        };
        self.push(out, e);
        Some((oi, item))
    }

    fn on_chunk(&mut self, chunk: Chunk<'_>, out: &mut VecDeque<RawEvent>) {
        if let Some(u) = chunk.usage {
            self.usage = Some(RequestUsage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
                input_tokens_details: InputTokensDetails {
                    cached_tokens: u
                        .prompt_tokens_details
                        .and_then(|d| d.cached_tokens)
                        .unwrap_or(0),
                },
                output_tokens_details: OutputTokensDetails {
                    reasoning_tokens: u
                        .completion_tokens_details
                        .and_then(|d| d.reasoning_tokens)
                        .unwrap_or(0),
                },
            });
        }
        // Only the first choice is used (n = 1), as the SDK does.
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(r) = choice.finish_reason {
            self.finish_reason = Some(r.into_owned());
        }
        let Some(delta) = choice.delta else {
            return;
        };
        if let Some(r) = delta.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
            self.on_reasoning_summary(r, out);
        }
        if let Some(raw) = delta.reasoning {
            if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get()) {
                if !text.is_empty() {
                    self.on_reasoning_text(&text, out);
                }
            }
        }
        // Visible output after reasoning closes the summary part being streamed.
        let visible = delta.content.as_deref().is_some_and(|c| !c.is_empty())
            || delta.refusal.as_deref().is_some_and(|r| !r.is_empty())
            || delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty());
        if visible && delta.reasoning_content.as_deref().is_none_or(str::is_empty) {
            self.close_summary_part(out);
        }
        if let Some(text) = delta.content {
            // An empty first delta opens nothing (it would leave an empty part behind).
            if !text.is_empty() || self.text.is_some() {
                let (output_index, content_index) = self.open_part(out, false);
                if let Some((_, acc)) = &mut self.text {
                    acc.push_str(&text);
                }
                let e = ResponseEvent::OutputTextDelta {
                    item_id: FAKE_ID.into(),
                    output_index,
                    content_index,
                    delta: text.into_owned(),
                    logprobs: Vec::new(),
                    sequence_number: self.seq(),
                };
                self.push(out, e);
            }
        }
        if let Some(r) = delta.refusal.filter(|r| !r.is_empty()) {
            let (output_index, content_index) = self.open_part(out, true);
            if let Some((_, acc)) = &mut self.refusal {
                acc.push_str(&r);
            }
            let e = ResponseEvent::RefusalDelta {
                item_id: FAKE_ID.into(),
                output_index,
                content_index,
                delta: r.into_owned(),
                sequence_number: self.seq(),
            };
            self.push(out, e);
        }
        for d in delta.tool_calls.unwrap_or_default() {
            self.on_tool_delta(d, out);
        }
    }

    /// Closes every open item and emits `response.completed`.
    fn finish(&mut self, out: &mut VecDeque<RawEvent>) -> Result<(), ModelError> {
        self.start(out);
        let nothing =
            self.text.is_none() && self.refusal.is_none() && self.calls.iter().all(|c| c.ignored);
        match self.finish_reason.as_deref() {
            Some("content_filter") if nothing => {
                let msg = "Response withheld by the provider's content filter.";
                let (output_index, content_index) = self.open_part(out, true);
                if let Some((_, acc)) = &mut self.refusal {
                    acc.push_str(msg);
                }
                let e = ResponseEvent::RefusalDelta {
                    item_id: FAKE_ID.into(),
                    output_index,
                    content_index,
                    delta: msg.into(),
                    sequence_number: self.seq(),
                };
                self.push(out, e);
            }
            Some("length") if nothing => {
                return Err(ModelError::behavior(format!(
                    "{}: the Chat Completions stream stopped at the token limit (finish_reason 'length') before any text, tool call or refusal; raise max_tokens",
                    self.who
                )));
            }
            _ => {}
        }
        let reasoning = self.close_reasoning(out);
        let mut parts: Vec<(u32, ContentPart)> = Vec::new();
        if let (Some((ci, text)), Some(oi)) = (&self.text, self.message_index) {
            let part = ContentPart::output_text(text.clone());
            parts.push((*ci, part.clone()));
            let e = ResponseEvent::ContentPartDone {
                item_id: FAKE_ID.into(),
                output_index: oi,
                content_index: *ci,
                part,
                sequence_number: self.seq(),
            };
            self.push(out, e);
        }
        if let (Some((ci, refusal)), Some(oi)) = (&self.refusal, self.message_index) {
            let part = ContentPart::Refusal {
                refusal: refusal.clone(),
            };
            parts.push((*ci, part.clone()));
            let e = ResponseEvent::ContentPartDone {
                item_id: FAKE_ID.into(),
                output_index: oi,
                content_index: *ci,
                part,
                sequence_number: self.seq(),
            };
            self.push(out, e);
        }
        let mut outputs: Vec<(u32, Item)> = Vec::with_capacity(self.calls.len() + 2);
        outputs.extend(reasoning);
        for k in 0..self.calls.len() {
            if self.calls[k].ignored {
                continue;
            }
            let streamed = self.calls[k].output_index;
            let c = &self.calls[k];
            if c.call_id.is_empty() || c.name.is_empty() {
                return Err(ModelError::behavior(format!(
                    "{}: the stream ended with tool call {} lacking {}",
                    self.who,
                    c.chat_index,
                    if c.call_id.is_empty() {
                        "an id"
                    } else {
                        "a function name"
                    }
                )));
            }
            let done = Self::call_item(c, c.arguments.clone());
            let oi = match streamed {
                Some(oi) => oi,
                None => {
                    // Never opened (its name or id came last): send it whole.
                    let oi = self.next_output_index;
                    self.next_output_index += 1;
                    self.calls[k].output_index = Some(oi);
                    let added = Self::call_item(&self.calls[k], String::new());
                    let args = self.calls[k].arguments.clone();
                    let e = ResponseEvent::OutputItemAdded {
                        item: added,
                        output_index: oi,
                        sequence_number: self.seq(),
                    };
                    self.push(out, e);
                    let e = ResponseEvent::FunctionCallArgumentsDelta {
                        item_id: FAKE_ID.into(),
                        output_index: oi,
                        delta: args,
                        sequence_number: self.seq(),
                    };
                    self.push(out, e);
                    oi
                }
            };
            let e = ResponseEvent::OutputItemDone {
                item: done.clone(),
                output_index: oi,
                sequence_number: self.seq(),
            };
            self.push(out, e);
            outputs.push((oi, done));
        }
        if let Some(oi) = self.message_index {
            parts.sort_by_key(|(ci, _)| *ci);
            let msg = Item::Message(MessageItem {
                id: Some(FAKE_ID.into()),
                role: Role::Assistant,
                content: MessageContent::Parts(parts.into_iter().map(|(_, p)| p).collect()),
                status: Some("completed".into()),
            });
            let e = ResponseEvent::OutputItemDone {
                item: msg.clone(),
                output_index: oi,
                sequence_number: self.seq(),
            };
            self.push(out, e);
            outputs.push((oi, msg));
        }
        outputs.sort_by_key(|(oi, _)| *oi);
        let mut response = self.base();
        response.status = Some("completed".into());
        response.output = outputs.into_iter().map(|(_, i)| i).collect();
        response.usage = self.usage;
        let e = ResponseEvent::Completed {
            response,
            sequence_number: self.seq(),
        };
        self.push(out, e);
        Ok(())
    }
}

impl Translate for ChatTranslator {
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
            self.finish(out)?;
            return Ok(true);
        }
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            ModelError::behavior(format!(
                "{}: malformed chunk in the Chat Completions stream ({e}): {}",
                self.who,
                quote(data, 300)
            ))
        })?;
        self.start(out);
        if let Some(err) = chunk.error {
            let code = err.code.map(|c| match c {
                Value::String(s) => s,
                other => other.to_string(),
            });
            let e = ResponseEvent::Error {
                code,
                message: err
                    .message
                    .unwrap_or_else(|| "the provider reported an error mid-stream".into()),
                param: err.param,
                sequence_number: self.seq(),
            };
            self.push(out, e);
            return Ok(true);
        }
        self.on_chunk(chunk, out);
        Ok(false)
    }

    fn on_end(&mut self, out: &mut VecDeque<RawEvent>) -> Result<(), ModelError> {
        // Servers end with `data: [DONE]`; a body that ends cleanly after a finish reason is
        // accepted, anything else lost the end of the answer.
        if self.finish_reason.is_some() {
            return self.finish(out);
        }
        Err(ModelError::behavior(format!(
            "{}: the Chat Completions stream ended before the model finished (no finish_reason and no [DONE])",
            self.who
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
