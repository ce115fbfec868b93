//! Chat Completions streams: typed chunks, translated into the Responses-API event sequence
//! (`ChatTranslator`).

use std::borrow::Cow;
use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::items::{ContentPart, FunctionCallItem, Item, MessageContent, MessageItem, Role};
use crate::model::http::{quote, Translate};
use crate::model::openai_responses::FAKE_ID;
use crate::model::{ModelError, RawEvent, ResponseEvent, ResponseObject};
use crate::usage::{InputTokensDetails, OutputTokensDetails, RequestUsage};

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
