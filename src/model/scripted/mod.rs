//! The `scripted` model provider: deterministic, offline, labelled as what it is.
//!
//! It plays a script of turns (function calls whose arguments stream in several deltas,
//! handoff calls, text messages streamed as K deltas, failures) and emits exactly the
//! Responses-API event sequence a real server would. Tests, benchmarks and the demo cast use
//! it; it never pretends to be a language model.
//!
//! Which turn it plays is derived from the request, not from hidden state, so one scripted
//! model can serve any number of concurrent runs: turn `n` is played when the conversation
//! holds `n` tool-output blocks after its last user message (each finished turn that asked
//! for tools adds one block).

pub mod demo;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::events::{RawEvent, ResponseEvent, ResponseObject};
use super::{EventStream, Model, ModelApi, ModelError, ModelErrorKind, ModelRequest};
use crate::items::{ContentPart, FunctionCallItem, Item, MessageContent, MessageItem, Role};
use crate::usage::RequestUsage;

/// One output item of a scripted turn.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScriptedOutput {
    /// A function call whose arguments arrive in `chunks` deltas.
    Call {
        /// Tool name (`transfer_to_<agent>` for a handoff).
        name: String,
        /// Arguments JSON.
        arguments: String,
        /// Number of argument deltas (at least 1).
        #[serde(default = "default_chunks")]
        chunks: usize,
    },
    /// An assistant message streamed as `deltas` pieces.
    Message {
        /// The whole text.
        text: String,
        /// Number of text deltas (at least 1).
        #[serde(default = "default_chunks")]
        deltas: usize,
    },
    /// A refusal.
    Refusal {
        /// The refusal text.
        refusal: String,
    },
}

fn default_chunks() -> usize {
    3
}

/// One model turn of a script.
#[derive(Clone, Debug, PartialEq)]
pub enum ScriptedTurn {
    /// A complete response with these output items, ending in `response.completed`.
    Respond(Vec<ScriptedOutput>),
    /// The call fails before any event (as an HTTP error would).
    Fail(ModelError),
    /// The stream emits `response.created` and then `response.failed` with this message.
    ResponseFailed(String),
    /// The stream emits these outputs and then ends without a terminal event.
    NoTerminal(Vec<ScriptedOutput>),
}

impl ScriptedTurn {
    /// A turn with no outputs yet; add them with the builder methods.
    pub fn new() -> Self {
        ScriptedTurn::Respond(Vec::new())
    }

    /// A turn that calls `name` with `arguments`, streamed in 3 deltas.
    pub fn call(name: impl Into<String>, arguments: Value) -> Self {
        Self::new().with_call(name, arguments)
    }

    /// A turn that hands off to `agent` (calls `transfer_to_<agent>`).
    pub fn handoff(agent: &str) -> Self {
        Self::new().with_handoff(agent)
    }

    /// A turn that answers `text` in `deltas` pieces.
    pub fn message(text: impl Into<String>, deltas: usize) -> Self {
        Self::new().with_message(text, deltas)
    }

    /// Adds a function call.
    pub fn with_call(self, name: impl Into<String>, arguments: Value) -> Self {
        self.push(ScriptedOutput::Call {
            name: name.into(),
            arguments: arguments.to_string(),
            chunks: 3,
        })
    }

    /// Adds a handoff call.
    pub fn with_handoff(self, agent: &str) -> Self {
        self.push(ScriptedOutput::Call {
            name: crate::names::default_tool_name(agent),
            arguments: "{}".into(),
            chunks: 1,
        })
    }

    /// Adds a message.
    pub fn with_message(self, text: impl Into<String>, deltas: usize) -> Self {
        self.push(ScriptedOutput::Message {
            text: text.into(),
            deltas,
        })
    }

    fn push(self, o: ScriptedOutput) -> Self {
        match self {
            ScriptedTurn::Respond(mut v) => {
                v.push(o);
                ScriptedTurn::Respond(v)
            }
            ScriptedTurn::NoTerminal(mut v) => {
                v.push(o);
                ScriptedTurn::NoTerminal(v)
            }
            other => other,
        }
    }
}

impl Default for ScriptedTurn {
    fn default() -> Self {
        Self::new()
    }
}

type TurnFn = dyn Fn(&ModelRequest, usize) -> ScriptedTurn + Send + Sync;

enum Script {
    Turns {
        turns: Vec<ScriptedTurn>,
        repeat_last: bool,
    },
    Func(Arc<TurnFn>),
}

/// A deterministic model that plays a script. See the module documentation.
pub struct ScriptedModel {
    name: String,
    script: Script,
    delay: Duration,
    api: ModelApi,
    responses: AtomicU64,
}

impl ScriptedModel {
    /// Plays `turns` in order (turn `n` for the `n`-th turn of a run); a run that goes past
    /// the end gets a `ModelBehaviorError` saying the script is exhausted.
    pub fn new(turns: Vec<ScriptedTurn>) -> Self {
        Self::with_script(Script::Turns {
            turns,
            repeat_last: false,
        })
    }

    /// Chooses each turn with `f(request, turn_index)`.
    pub fn from_fn(
        f: impl Fn(&ModelRequest, usize) -> ScriptedTurn + Send + Sync + 'static,
    ) -> Self {
        Self::with_script(Script::Func(Arc::new(f)))
    }

    fn with_script(script: Script) -> Self {
        ScriptedModel {
            name: "scripted".into(),
            script,
            delay: Duration::ZERO,
            api: ModelApi::Responses,
            responses: AtomicU64::new(0),
        }
    }

    /// Plays the last turn again once the script runs out (a model that always calls a tool).
    pub fn repeat_last(mut self) -> Self {
        if let Script::Turns { repeat_last, .. } = &mut self.script {
            *repeat_last = true;
        }
        self
    }

    /// Waits this long before each delta event (a slow model).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Names the model (shown in spans and responses).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Reports the model as a Chat Completions model (generation spans).
    pub fn as_chat_completions(mut self) -> Self {
        self.api = ModelApi::ChatCompletions;
        self
    }

    fn pick(&self, req: &ModelRequest) -> ScriptedTurn {
        let index = turn_index(&req.input);
        match &self.script {
            Script::Func(f) => f(req, index),
            Script::Turns { turns, repeat_last } => match turns.get(index) {
                Some(t) => t.clone(),
                None if *repeat_last && !turns.is_empty() => turns[turns.len() - 1].clone(),
                None => ScriptedTurn::Fail(ModelError::behavior(format!(
                    "scripted model: the script has {} turns and turn {} was asked for",
                    turns.len(),
                    index + 1
                ))),
            },
        }
    }
}

/// Counts tool-output blocks after the last user message: the index of the turn to play.
pub fn turn_index(input: &[Item]) -> usize {
    let start = input
        .iter()
        .rposition(|i| matches!(i, Item::Message(m) if m.role == Role::User))
        .map_or(0, |p| p + 1);
    let mut blocks = 0;
    let mut in_block = false;
    for item in &input[start..] {
        let is_output = matches!(item, Item::FunctionCallOutput(_))
            || matches!(item, Item::Other(v) if v.get("type").and_then(Value::as_str) == Some("function_call_output"));
        if is_output && !in_block {
            blocks += 1;
        }
        in_block = is_output;
    }
    blocks
}

/// Splits `s` into `n` pieces on character boundaries (the last piece takes the remainder).
pub fn split_text(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = n.max(1).min(chars.len().max(1));
    let base = chars.len() / n;
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    for i in 0..n {
        let len = if i + 1 == n { chars.len() - pos } else { base };
        out.push(chars[pos..pos + len].iter().collect());
        pos += len;
    }
    out
}

fn estimate_tokens(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4)
}

/// Builds the full event sequence of one turn (without delays).
fn build_events(
    resp_id: &str,
    model: &str,
    outputs: &[ScriptedOutput],
    request: &ModelRequest,
    terminal: bool,
) -> Vec<RawEvent> {
    let mut ev = Vec::with_capacity(8 + outputs.len() * 8);
    let mut seq = 0u64;
    let mut next = || {
        let s = seq;
        seq += 1;
        s
    };
    let created_at = chrono::Utc::now().timestamp() as f64;
    let base = ResponseObject::new(resp_id, model, created_at);
    ev.push(ResponseEvent::Created {
        response: base.clone(),
        sequence_number: next(),
    });
    ev.push(ResponseEvent::InProgress {
        response: base.clone(),
        sequence_number: next(),
    });
    let mut done_items = Vec::with_capacity(outputs.len());
    let mut out_tokens = 0u64;
    for (idx, o) in outputs.iter().enumerate() {
        let output_index = idx as u32;
        match o {
            ScriptedOutput::Call {
                name,
                arguments,
                chunks,
            } => {
                let item_id = format!("fc_{resp_id}_{idx}");
                let call_id = format!("call_{resp_id}_{idx}");
                let mut item = FunctionCallItem {
                    id: Some(item_id.clone()),
                    call_id,
                    name: name.clone(),
                    arguments: String::new(),
                    status: Some("in_progress".into()),
                };
                ev.push(ResponseEvent::OutputItemAdded {
                    item: Item::FunctionCall(item.clone()),
                    output_index,
                    sequence_number: next(),
                });
                for piece in split_text(arguments, *chunks) {
                    ev.push(ResponseEvent::FunctionCallArgumentsDelta {
                        item_id: item_id.clone(),
                        output_index,
                        delta: piece,
                        sequence_number: next(),
                    });
                }
                ev.push(ResponseEvent::FunctionCallArgumentsDone {
                    item_id: item_id.clone(),
                    output_index,
                    name: None,
                    arguments: arguments.clone(),
                    sequence_number: next(),
                });
                item.arguments = arguments.clone();
                item.status = Some("completed".into());
                out_tokens += estimate_tokens(arguments) + 1;
                ev.push(ResponseEvent::OutputItemDone {
                    item: Item::FunctionCall(item.clone()),
                    output_index,
                    sequence_number: next(),
                });
                done_items.push(Item::FunctionCall(item));
            }
            ScriptedOutput::Message { text, deltas } => {
                let item_id = format!("msg_{resp_id}_{idx}");
                ev.push(message_added(&item_id, output_index, next()));
                ev.push(ResponseEvent::ContentPartAdded {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    part: ContentPart::output_text(""),
                    sequence_number: next(),
                });
                let pieces = split_text(text, *deltas);
                out_tokens += pieces.len() as u64;
                for piece in pieces {
                    ev.push(ResponseEvent::OutputTextDelta {
                        item_id: item_id.clone(),
                        output_index,
                        content_index: 0,
                        delta: piece,
                        logprobs: Vec::new(),
                        sequence_number: next(),
                    });
                }
                ev.push(ResponseEvent::OutputTextDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: Vec::new(),
                    sequence_number: next(),
                });
                ev.push(ResponseEvent::ContentPartDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    part: ContentPart::output_text(text.clone()),
                    sequence_number: next(),
                });
                let item = Item::Message(MessageItem::assistant(item_id, text.clone()));
                ev.push(ResponseEvent::OutputItemDone {
                    item: item.clone(),
                    output_index,
                    sequence_number: next(),
                });
                done_items.push(item);
            }
            ScriptedOutput::Refusal { refusal } => {
                let item_id = format!("msg_{resp_id}_{idx}");
                ev.push(message_added(&item_id, output_index, next()));
                ev.push(ResponseEvent::RefusalDelta {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    delta: refusal.clone(),
                    sequence_number: next(),
                });
                ev.push(ResponseEvent::RefusalDone {
                    item_id: item_id.clone(),
                    output_index,
                    content_index: 0,
                    refusal: refusal.clone(),
                    sequence_number: next(),
                });
                let item = Item::Message(MessageItem {
                    id: Some(item_id),
                    role: Role::Assistant,
                    content: MessageContent::Parts(vec![ContentPart::Refusal {
                        refusal: refusal.clone(),
                    }]),
                    status: Some("completed".into()),
                });
                ev.push(ResponseEvent::OutputItemDone {
                    item: item.clone(),
                    output_index,
                    sequence_number: next(),
                });
                out_tokens += 1;
                done_items.push(item);
            }
        }
    }
    if terminal {
        let in_tokens = request
            .system_instructions
            .as_deref()
            .map_or(0, estimate_tokens)
            + request
                .input
                .iter()
                .map(|i| match i {
                    Item::Message(m) => estimate_tokens(&m.text()),
                    Item::FunctionCall(f) => estimate_tokens(&f.arguments) + 1,
                    Item::FunctionCallOutput(o) => estimate_tokens(&o.output),
                    _ => 1,
                })
                .sum::<u64>();
        let mut done = base;
        done.status = Some("completed".into());
        done.output = done_items;
        done.usage = Some(RequestUsage {
            input_tokens: in_tokens,
            output_tokens: out_tokens,
            total_tokens: in_tokens + out_tokens,
            ..Default::default()
        });
        ev.push(ResponseEvent::Completed {
            response: done,
            sequence_number: next(),
        });
    }
    ev.into_iter().map(RawEvent::Typed).collect()
}

fn is_delta(e: &RawEvent) -> bool {
    matches!(
        e,
        RawEvent::Typed(
            ResponseEvent::OutputTextDelta { .. }
                | ResponseEvent::FunctionCallArgumentsDelta { .. }
                | ResponseEvent::RefusalDelta { .. }
        )
    )
}

impl Model for ScriptedModel {
    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> EventStream {
        let n = self.responses.fetch_add(1, Ordering::Relaxed);
        let resp_id = format!("resp_{n:06}");
        let events: Vec<Result<RawEvent, ModelError>> = match self.pick(&request) {
            ScriptedTurn::Respond(outputs) => {
                build_events(&resp_id, &self.name, &outputs, &request, true)
                    .into_iter()
                    .map(Ok)
                    .collect()
            }
            ScriptedTurn::NoTerminal(outputs) => {
                build_events(&resp_id, &self.name, &outputs, &request, false)
                    .into_iter()
                    .map(Ok)
                    .collect()
            }
            ScriptedTurn::Fail(e) => vec![Err(e)],
            ScriptedTurn::ResponseFailed(message) => {
                let base = ResponseObject::new(&resp_id, &self.name, 0.0);
                let mut failed = base.clone();
                failed.status = Some("failed".into());
                failed.error =
                    Some(serde_json::json!({"code": "server_error", "message": message}));
                vec![
                    Ok(RawEvent::Typed(ResponseEvent::Created {
                        response: base,
                        sequence_number: 0,
                    })),
                    Ok(RawEvent::Typed(ResponseEvent::Failed {
                        response: failed,
                        sequence_number: 1,
                    })),
                ]
            }
        };
        let delay = self.delay;
        if delay.is_zero() {
            return futures::stream::iter(events)
                .take_until(cancel.cancelled_owned())
                .boxed();
        }
        futures::stream::iter(events)
            .then(move |e| async move {
                if matches!(&e, Ok(ev) if is_delta(ev)) {
                    tokio::time::sleep(delay).await;
                }
                e
            })
            .take_until(cancel.cancelled_owned())
            .boxed()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn api(&self) -> ModelApi {
        self.api
    }
}

/// Parses a script from config (`[[models.NAME.script]]` tables): each turn is a list of
/// outputs, or `{ fail = "message" }`.
pub fn turns_from_json(v: &Value) -> Result<Vec<ScriptedTurn>, String> {
    let arr = v.as_array().ok_or("the script must be a list of turns")?;
    let mut turns = Vec::with_capacity(arr.len());
    for (i, t) in arr.iter().enumerate() {
        if let Some(msg) = t.get("fail").and_then(Value::as_str) {
            turns.push(ScriptedTurn::Fail(ModelError::new(
                ModelErrorKind::Behavior,
                msg,
            )));
            continue;
        }
        let outputs = t
            .get("outputs")
            .cloned()
            .ok_or_else(|| format!("turn {}: needs `outputs` (a list) or `fail`", i + 1))?;
        let outputs: Vec<ScriptedOutput> =
            serde_json::from_value(outputs).map_err(|e| format!("turn {}: {e}", i + 1))?;
        turns.push(ScriptedTurn::Respond(outputs));
    }
    Ok(turns)
}

/// `response.output_item.added` for an assistant message that is starting.
fn message_added(item_id: &str, output_index: u32, sequence_number: u64) -> ResponseEvent {
    ResponseEvent::OutputItemAdded {
        item: Item::Message(MessageItem {
            id: Some(item_id.to_owned()),
            role: Role::Assistant,
            content: MessageContent::Parts(Vec::new()),
            status: Some("in_progress".into()),
        }),
        output_index,
        sequence_number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::FunctionCallOutputItem;

    fn req(input: Vec<Item>) -> ModelRequest {
        ModelRequest {
            system_instructions: None,
            input,
            tools: vec![],
            output_schema: None,
            settings: Default::default(),
        }
    }

    #[test]
    fn split_is_lossless() {
        assert_eq!(split_text("Hello world", 3).concat(), "Hello world");
        assert_eq!(split_text("héllo", 5), vec!["h", "é", "l", "l", "o"]);
        assert_eq!(split_text("ab", 5).len(), 2);
        assert_eq!(split_text("", 3), vec![""]);
    }

    #[test]
    fn turn_index_counts_output_blocks() {
        let call = |id: &str| {
            Item::FunctionCall(FunctionCallItem {
                id: None,
                call_id: id.into(),
                name: "t".into(),
                arguments: "{}".into(),
                status: None,
            })
        };
        let out = |id: &str| {
            Item::FunctionCallOutput(FunctionCallOutputItem {
                call_id: id.into(),
                output: "x".into(),
            })
        };
        let user = Item::Message(MessageItem::user("hi"));
        assert_eq!(turn_index(std::slice::from_ref(&user)), 0);
        assert_eq!(
            turn_index(&[user.clone(), call("a"), call("b"), out("a"), out("b")]),
            1
        );
        assert_eq!(
            turn_index(&[user.clone(), call("a"), out("a"), call("b"), out("b"), user]),
            0
        );
    }

    #[tokio::test]
    async fn message_turn_has_the_responses_sequence() {
        let m = ScriptedModel::new(vec![ScriptedTurn::message("Hello there", 4)]);
        let evs: Vec<_> = m
            .stream(
                req(vec![Item::Message(MessageItem::user("hi"))]),
                CancellationToken::new(),
            )
            .collect()
            .await;
        let names: Vec<_> = evs
            .iter()
            .map(|e| e.as_ref().unwrap().type_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, e) in evs.iter().enumerate() {
            let v = serde_json::to_value(e.as_ref().unwrap()).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
        }
    }

    #[tokio::test]
    async fn exhausted_script_is_an_error() {
        let m = ScriptedModel::new(vec![]);
        let evs: Vec<_> = m
            .stream(req(vec![]), CancellationToken::new())
            .collect()
            .await;
        assert!(matches!(&evs[0], Err(e) if e.kind == ModelErrorKind::Behavior));
    }

    #[test]
    fn scripts_parse_from_config_json() {
        let v = serde_json::json!([
            {"outputs": [{"kind": "call", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}]},
            {"outputs": [{"kind": "message", "text": "Sunny", "deltas": 2}]},
            {"fail": "boom"}
        ]);
        let t = turns_from_json(&v).unwrap();
        assert_eq!(t.len(), 3);
        assert!(turns_from_json(&serde_json::json!([{"outputs": [{"kind": "nope"}]}])).is_err());
    }
}
