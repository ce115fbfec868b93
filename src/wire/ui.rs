//! What a chat UI sees of one run, derived from its bus frames: text parts opening, growing
//! and closing, tool calls with streamed arguments and their outputs, agent changes, model
//! calls, a pause for client-side tools, and the end. The AI SDK and AG-UI encoders are thin
//! translations of these events; the bookkeeping (which item is which call, which text is
//! open, when a run waits only on its clients) lives here once.
//!
//! [`UiRun`] is a pure state machine: frames in, [`UiEvent`]s out through a callback, no I/O,
//! no clock. Events borrow from the frame (or the state) for the length of the callback, so
//! encoding a text delta allocates nothing.

use std::fmt;

use serde_json::Value;

use crate::bus::{CancelMode, Frame, FrameBody};
use crate::events::StreamEvent;
use crate::items::{ContentPart, FunctionCallItem, Item, RunItem};
use crate::model::{RawEvent, ResponseEvent};

/// The id of a text part: the message item's id, plus the part's index when it is not the
/// first (`msg_1`, `msg_1:1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextId<'a> {
    /// The message item's id.
    pub item_id: &'a str,
    /// The content part's index in the message.
    pub index: u32,
}

impl fmt::Display for TextId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            f.write_str(self.item_id)
        } else {
            write!(f, "{}:{}", self.item_id, self.index)
        }
    }
}

impl serde::Serialize for TextId<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.index == 0 {
            s.serialize_str(self.item_id)
        } else {
            s.collect_str(self)
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunEnd<'a> {
    /// `run.completed`.
    Completed {
        /// The final output (a JSON string for text).
        final_output: &'a Value,
        /// The agent that produced it.
        last_agent: &'a str,
        /// `{requests, input_tokens, output_tokens, total_tokens}`.
        usage: &'a Value,
        /// The run's trace id.
        trace_id: Option<&'a str>,
    },
    /// `run.failed`.
    Failed {
        /// The SDK exception name.
        error_type: &'a str,
        /// The message.
        message: &'a str,
    },
    /// `run.cancelled`.
    Cancelled {
        /// How.
        mode: CancelMode,
    },
}

/// One thing a chat UI shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UiEvent<'a> {
    /// An agent took over (the first one included); repeated announcements of the same agent
    /// are dropped.
    Agent {
        /// Its name.
        name: &'a str,
    },
    /// A model call began (`response.created`).
    ModelCall,
    /// A text part opened.
    TextStart(TextId<'a>),
    /// A piece of an open text part.
    TextDelta(TextId<'a>, &'a str),
    /// A text part closed.
    TextEnd(TextId<'a>),
    /// A tool call began (its arguments follow).
    ToolStart {
        /// The call id.
        call_id: &'a str,
        /// The tool.
        name: &'a str,
    },
    /// A piece of a tool call's arguments.
    ToolArgs {
        /// The call id.
        call_id: &'a str,
        /// The piece.
        delta: &'a str,
    },
    /// A tool call's arguments are complete.
    ToolInput {
        /// The call id.
        call_id: &'a str,
        /// The tool.
        name: &'a str,
        /// The whole arguments JSON string.
        arguments: &'a str,
    },
    /// A tool's output (handoffs included: their output names the new agent).
    ToolOutput {
        /// The call id.
        call_id: &'a str,
        /// The output as the model reads it.
        output: &'a str,
    },
    /// The run waits only on client-side tool calls now (all others have their outputs):
    /// a front end that answers tool calls with a new request ends its stream here.
    AwaitingClient,
    /// A tool call waits for a person's approval (one per pending call, before
    /// [`UiEvent::AwaitingApproval`]).
    ApprovalRequested {
        /// The call id.
        call_id: &'a str,
    },
    /// The run paused for approval (PROTOCOL.md 6.3): it goes on when every pending call is
    /// decided, and its frames then follow on a new stream.
    AwaitingApproval,
    /// The run ended; nothing follows.
    End(RunEnd<'a>),
}

/// One tool call seen in the run.
#[derive(Debug)]
struct Call {
    item_id: Option<String>,
    call_id: String,
    started: bool,
    input: bool,
    client: bool,
}

/// The state of one run as a chat UI sees it.
#[derive(Debug, Default)]
pub struct UiRun {
    agent: Option<String>,
    open_texts: Vec<(String, u32)>,
    streamed_items: Vec<String>,
    calls: Vec<Call>,
    skip_outputs: Vec<String>,
    awaiting: bool,
    ended: bool,
}

/// Text of a content part that a UI shows (`output_text` and `refusal`).
fn is_text_part(p: &ContentPart) -> bool {
    matches!(
        p,
        ContentPart::OutputText { .. } | ContentPart::Refusal { .. }
    )
}

impl UiRun {
    /// A run seen from its first frame.
    pub fn new() -> UiRun {
        UiRun::default()
    }

    /// A run seen from the middle, after the client answered the tool calls `answered`: their
    /// outputs are not repeated (the client has them). `agent` is the agent running then (a
    /// repeated announcement of it is dropped).
    pub fn continuing(answered: Vec<String>, agent: Option<String>) -> UiRun {
        UiRun {
            skip_outputs: answered,
            agent,
            ..UiRun::default()
        }
    }

    /// Whether the run has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the run waits on its clients (see [`UiEvent::AwaitingClient`]).
    pub fn awaiting_client(&self) -> bool {
        self.awaiting
    }

    /// The client-side calls the run waits for.
    pub fn client_calls(&self) -> impl Iterator<Item = &str> {
        self.calls
            .iter()
            .filter(|c| c.client)
            .map(|c| c.call_id.as_str())
    }

    /// The agent now running, once known.
    pub fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// Feeds one frame of the run; `emit` receives what a UI shows of it, in order.
    pub fn push(&mut self, frame: &Frame, emit: &mut impl FnMut(UiEvent<'_>)) {
        // A UI of the run shows its top run (depth 0, the SDK's stream); nested runs (agents
        // called as tools) are their `tool_called` / `tool_output` there.
        if self.ended || frame.nesting.is_some() {
            return;
        }
        match &frame.body {
            FrameBody::Event { event, .. } => self.event(event, emit),
            // Progress has no part in these protocols yet.
            FrameBody::ToolProgress { .. } => {}
            FrameBody::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                let i = self.ensure_input(call_id, name, arguments, emit);
                self.calls[i].client = true;
            }
            FrameBody::RunCompleted {
                final_output,
                last_agent,
                usage,
                trace_id,
            } => self.end(
                RunEnd::Completed {
                    final_output,
                    last_agent,
                    usage,
                    trace_id: trace_id.as_deref(),
                },
                emit,
            ),
            FrameBody::RunFailed {
                error_type,
                message,
            } => self.end(
                RunEnd::Failed {
                    error_type,
                    message,
                },
                emit,
            ),
            FrameBody::RunCancelled { mode, .. } => {
                self.end(RunEnd::Cancelled { mode: *mode }, emit)
            }
            // Subscriptions report a deleted session themselves (`Delivery::Reset`); a queued
            // notice says nothing a UI stream shows before the run starts.
            FrameBody::SessionReset { .. }
            | FrameBody::RunQueued { .. }
            | FrameBody::RunResumed => {}
            // A run paused for approval: the UI stream ends here; the decision comes with
            // the next request (or over HTTP / WebSocket) and the resumed run is followed anew.
            FrameBody::RunInterrupted { interruptions } => {
                self.close_texts(None, emit);
                for i in interruptions {
                    emit(UiEvent::ApprovalRequested {
                        call_id: &i.call_id,
                    });
                }
                emit(UiEvent::AwaitingApproval);
            }
        }
        if !self.awaiting && !self.ended && self.calls.iter().any(|c| c.client) {
            // Every call still open is a client's: the run can go on only when they answer.
            if self.calls.iter().all(|c| c.client) {
                self.awaiting = true;
                emit(UiEvent::AwaitingClient);
            }
        }
    }

    fn end<'f>(&mut self, end: RunEnd<'f>, emit: &mut impl FnMut(UiEvent<'_>)) {
        self.close_texts(None, emit);
        self.ended = true;
        emit(UiEvent::End(end));
    }

    fn event(&mut self, event: &StreamEvent, emit: &mut impl FnMut(UiEvent<'_>)) {
        match event {
            StreamEvent::AgentUpdated { new_agent } => {
                if self.agent.as_deref() != Some(&**new_agent) {
                    self.agent = Some(new_agent.to_string());
                    emit(UiEvent::Agent { name: new_agent });
                }
            }
            StreamEvent::RawResponse(raw) => {
                if let RawEvent::Typed(e) = raw.as_ref() {
                    self.raw(e, emit);
                }
            }
            StreamEvent::RunItem(item) => self.item(item, emit),
        }
    }

    fn raw(&mut self, e: &ResponseEvent, emit: &mut impl FnMut(UiEvent<'_>)) {
        match e {
            ResponseEvent::Created { .. } => {
                self.close_texts(None, emit);
                self.streamed_items.clear();
                emit(UiEvent::ModelCall);
            }
            ResponseEvent::OutputItemAdded {
                item: Item::FunctionCall(f),
                ..
            } => {
                let i = self.call_index(f);
                self.start_call(i, &f.call_id, &f.name, &f.arguments, emit);
            }
            ResponseEvent::FunctionCallArgumentsDelta { item_id, delta, .. } => {
                if let Some(c) = self
                    .calls
                    .iter()
                    .find(|c| c.item_id.as_deref() == Some(item_id.as_str()) && !c.input)
                {
                    if !delta.is_empty() {
                        emit(UiEvent::ToolArgs {
                            call_id: &c.call_id,
                            delta,
                        });
                    }
                }
            }
            ResponseEvent::OutputItemDone {
                item: Item::FunctionCall(f),
                ..
            } => {
                self.ensure_input(&f.call_id, &f.name, &f.arguments, emit);
            }
            ResponseEvent::OutputItemDone {
                item: Item::Message(m),
                ..
            } => {
                if let Some(id) = m.id.as_deref() {
                    self.close_texts(Some(id), emit);
                }
            }
            ResponseEvent::ContentPartAdded {
                item_id,
                content_index,
                part,
                ..
            } if is_text_part(part) => {
                self.open_text(item_id, *content_index, emit);
            }
            ResponseEvent::OutputTextDelta {
                item_id,
                content_index,
                delta,
                ..
            }
            | ResponseEvent::RefusalDelta {
                item_id,
                content_index,
                delta,
                ..
            } => {
                let id = self.open_text(item_id, *content_index, emit);
                if !delta.is_empty() {
                    emit(UiEvent::TextDelta(id, delta));
                }
            }
            ResponseEvent::OutputTextDone {
                item_id,
                content_index,
                ..
            }
            | ResponseEvent::RefusalDone {
                item_id,
                content_index,
                ..
            }
            | ResponseEvent::ContentPartDone {
                item_id,
                content_index,
                ..
            } => self.close_text(item_id, *content_index, emit),
            ResponseEvent::Completed { .. }
            | ResponseEvent::Failed { .. }
            | ResponseEvent::Incomplete { .. } => self.close_texts(None, emit),
            _ => {}
        }
    }

    fn item(&mut self, item: &RunItem, emit: &mut impl FnMut(UiEvent<'_>)) {
        match item {
            RunItem::McpListTools { .. } => {}
            RunItem::ToolCall { raw_item, .. } | RunItem::HandoffCall { raw_item, .. } => {
                self.ensure_input(&raw_item.call_id, &raw_item.name, &raw_item.arguments, emit);
            }
            RunItem::ToolCallOutput { raw_item, .. } | RunItem::HandoffOutput { raw_item, .. } => {
                self.calls.retain(|c| c.call_id != raw_item.call_id);
                if !self.calls.iter().any(|c| c.client) {
                    self.awaiting = false;
                }
                if let Some(p) = self
                    .skip_outputs
                    .iter()
                    .position(|c| *c == raw_item.call_id)
                {
                    self.skip_outputs.swap_remove(p);
                } else {
                    emit(UiEvent::ToolOutput {
                        call_id: &raw_item.call_id,
                        output: &raw_item.output,
                    });
                }
            }
            RunItem::MessageOutput { raw_item, .. } => {
                // A provider that streamed no text for this message: show it whole.
                let id = raw_item.id.as_deref().unwrap_or("message");
                if self.streamed_items.iter().any(|s| s == id) {
                    return;
                }
                let text = match &raw_item.content {
                    crate::items::MessageContent::Text(t) => Some(t.as_str()),
                    crate::items::MessageContent::Parts(parts) => {
                        parts.iter().find_map(|p| match p {
                            ContentPart::OutputText { text, .. } => Some(text.as_str()),
                            ContentPart::Refusal { refusal } => Some(refusal.as_str()),
                            _ => None,
                        })
                    }
                };
                if let Some(text) = text {
                    let tid = TextId {
                        item_id: id,
                        index: 0,
                    };
                    self.streamed_items.push(id.to_owned());
                    emit(UiEvent::TextStart(tid));
                    emit(UiEvent::TextDelta(tid, text));
                    emit(UiEvent::TextEnd(tid));
                }
            }
            RunItem::Reasoning { .. } => {}
        }
    }

    /// The index of the call for a function call item, registered if new.
    fn call_index(&mut self, f: &FunctionCallItem) -> usize {
        if let Some(i) = self.calls.iter().position(|c| c.call_id == f.call_id) {
            if self.calls[i].item_id.is_none() {
                self.calls[i].item_id = f.id.clone();
            }
            return i;
        }
        self.calls.push(Call {
            item_id: f.id.clone(),
            call_id: f.call_id.clone(),
            started: false,
            input: false,
            client: false,
        });
        self.calls.len() - 1
    }

    fn start_call<'f>(
        &mut self,
        i: usize,
        call_id: &'f str,
        name: &'f str,
        arguments: &'f str,
        emit: &mut impl FnMut(UiEvent<'_>),
    ) {
        if self.calls[i].started {
            return;
        }
        self.calls[i].started = true;
        emit(UiEvent::ToolStart { call_id, name });
        if !arguments.is_empty() {
            emit(UiEvent::ToolArgs {
                call_id,
                delta: arguments,
            });
        }
    }

    /// Makes sure the call was started and its input announced; returns its index.
    fn ensure_input<'f>(
        &mut self,
        call_id: &'f str,
        name: &'f str,
        arguments: &'f str,
        emit: &mut impl FnMut(UiEvent<'_>),
    ) -> usize {
        let i = match self.calls.iter().position(|c| c.call_id == call_id) {
            Some(i) => i,
            None => {
                self.calls.push(Call {
                    item_id: None,
                    call_id: call_id.to_owned(),
                    started: false,
                    input: false,
                    client: false,
                });
                self.calls.len() - 1
            }
        };
        if !self.calls[i].input {
            self.start_call(i, call_id, name, arguments, emit);
            self.calls[i].input = true;
            emit(UiEvent::ToolInput {
                call_id,
                name,
                arguments,
            });
        }
        i
    }

    fn open_text<'f>(
        &mut self,
        item_id: &'f str,
        index: u32,
        emit: &mut impl FnMut(UiEvent<'_>),
    ) -> TextId<'f> {
        let id = TextId { item_id, index };
        if !self
            .open_texts
            .iter()
            .any(|(i, n)| i == item_id && *n == index)
        {
            self.open_texts.push((item_id.to_owned(), index));
            if !self.streamed_items.iter().any(|s| s == item_id) {
                self.streamed_items.push(item_id.to_owned());
            }
            emit(UiEvent::TextStart(id));
        }
        id
    }

    fn close_text(&mut self, item_id: &str, index: u32, emit: &mut impl FnMut(UiEvent<'_>)) {
        if let Some(p) = self
            .open_texts
            .iter()
            .position(|(i, n)| i == item_id && *n == index)
        {
            self.open_texts.remove(p);
            emit(UiEvent::TextEnd(TextId { item_id, index }));
        }
    }

    /// Closes the open texts of `item` (all of them when `None`).
    fn close_texts(&mut self, item: Option<&str>, emit: &mut impl FnMut(UiEvent<'_>)) {
        let mut k = 0;
        while k < self.open_texts.len() {
            if item.is_none_or(|it| self.open_texts[k].0 == it) {
                let (id, index) = self.open_texts.remove(k);
                emit(UiEvent::TextEnd(TextId {
                    item_id: &id,
                    index,
                }));
            } else {
                k += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures;

    /// A UI event as a short owned line, for comparing sequences.
    fn show(ev: UiEvent<'_>) -> String {
        match ev {
            UiEvent::Agent { name } => format!("agent {name}"),
            UiEvent::ModelCall => "model".into(),
            UiEvent::TextStart(id) => format!("text_start {id}"),
            UiEvent::TextDelta(_, d) => format!("delta {d}"),
            UiEvent::TextEnd(id) => format!("text_end {id}"),
            UiEvent::ToolStart { call_id, name } => format!("tool_start {call_id} {name}"),
            UiEvent::ToolArgs { delta, .. } => format!("args {delta}"),
            UiEvent::ToolInput {
                call_id, arguments, ..
            } => format!("input {call_id} {arguments}"),
            UiEvent::ToolOutput { call_id, output } => format!("output {call_id} {output}"),
            UiEvent::AwaitingClient => "awaiting".into(),
            UiEvent::ApprovalRequested { call_id } => format!("approval {call_id}"),
            UiEvent::AwaitingApproval => "awaiting_approval".into(),
            UiEvent::End(RunEnd::Completed { last_agent, .. }) => format!("completed {last_agent}"),
            UiEvent::End(RunEnd::Failed { error_type, .. }) => format!("failed {error_type}"),
            UiEvent::End(RunEnd::Cancelled { mode }) => format!("cancelled {}", mode.as_str()),
        }
    }

    fn run(ui: &mut UiRun, frames: &[std::sync::Arc<Frame>]) -> Vec<String> {
        let mut v = Vec::new();
        for f in frames {
            ui.push(f, &mut |e| v.push(show(e)));
        }
        v
    }

    /// Collapses runs of `delta` / `args` lines into one line with their concatenation.
    fn joined(lines: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in lines {
            for p in ["delta ", "args "] {
                if let Some(rest) = l.strip_prefix(p) {
                    if let Some(last) = out.last_mut().filter(|x| x.starts_with(p)) {
                        last.push_str(rest);
                    } else {
                        out.push(l.clone());
                    }
                }
            }
            if !l.starts_with("delta ") && !l.starts_with("args ") {
                out.push(l);
            }
        }
        out
    }

    #[tokio::test]
    async fn demo_run_reads_as_agents_tools_and_text() {
        let frames = fixtures::weather_run().await;
        let mut ui = UiRun::new();
        let lines = run(&mut ui, &frames);
        assert!(ui.ended());
        let deltas = lines.iter().filter(|l| l.starts_with("delta ")).count();
        assert_eq!(deltas, 20, "the demo answers in 20 deltas: {lines:#?}");
        let j = joined(lines);
        let names: Vec<&str> = j.iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "agent",
                "model",
                "tool_start",
                "args",
                "input",
                "output",
                "agent",
                "model",
                "tool_start",
                "args",
                "input",
                "output",
                "model",
                "text_start",
                "delta",
                "text_end",
                "completed"
            ],
            "{j:#?}"
        );
        assert_eq!(j[0], "agent Triage");
        assert!(j[2].ends_with(" transfer_to_weather"), "{}", j[2]);
        assert_eq!(j[6], "agent Weather");
        assert!(j[8].ends_with(" get_weather"), "{}", j[8]);
        assert_eq!(j[9], r#"args {"city":"Oslo"}"#);
        assert!(j[14].starts_with("delta Here is the forecast"), "{}", j[14]);
        assert_eq!(j[16], "completed Weather");
    }

    #[tokio::test]
    async fn chat_completions_events_read_the_same() {
        // That adapter sends no output_text.done: the text still closes (at content_part.done
        // or the item's end) and the run reads the same.
        let model = crate::demo::demo_model().as_chat_completions();
        let frames = fixtures::demo_run(model, "What is the weather in Oslo?", 10).await;
        let mut ui = UiRun::new();
        let j = joined(run(&mut ui, &frames));
        let starts = j.iter().filter(|l| l.starts_with("text_start")).count();
        let ends = j.iter().filter(|l| l.starts_with("text_end")).count();
        assert_eq!((starts, ends), (1, 1), "{j:#?}");
        assert_eq!(j.last().unwrap(), "completed Weather");
    }

    #[tokio::test]
    async fn max_turns_ends_as_failed() {
        let frames = fixtures::demo_run(crate::demo::demo_model(), "What is the weather?", 1).await;
        let mut ui = UiRun::new();
        let lines = run(&mut ui, &frames);
        assert_eq!(
            lines.last().unwrap(),
            "failed MaxTurnsExceeded",
            "{lines:#?}"
        );
        // Nothing after the end.
        let mut more = Vec::new();
        ui.push(&fixtures::completed(99, "late"), &mut |e| {
            more.push(show(e))
        });
        assert!(more.is_empty());
    }

    #[test]
    fn waits_for_clients_only_when_every_other_call_has_its_output() {
        let frames = fixtures::client_tool_turn();
        let mut ui = UiRun::new();
        let (before, last) = frames.split_at(frames.len() - 1);
        let lines = run(&mut ui, before);
        assert!(!lines.contains(&"awaiting".to_owned()), "{lines:#?}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("input ")).count(),
            2,
            "{lines:#?}"
        );
        let lines = run(&mut ui, last);
        assert_eq!(lines, ["output call_l found", "awaiting"]);
        assert!(ui.awaiting_client());
        assert_eq!(ui.client_calls().collect::<Vec<_>>(), ["call_c"]);
    }

    #[test]
    fn a_continuation_skips_the_answered_outputs_and_shows_calls_it_never_saw() {
        let mut ui = UiRun::continuing(vec!["call_c".into()], None);
        let frames = [
            fixtures::tool_output(20, "call_c", "confirm", "yes"),
            fixtures::tool_output(21, "call_x", "other", "z"),
            fixtures::completed(22, "done"),
        ];
        let lines = run(&mut ui, &frames);
        assert_eq!(lines, ["output call_x z", "completed Triage"]);
    }

    #[test]
    fn text_ids_name_the_part() {
        let id = TextId {
            item_id: "msg_1",
            index: 2,
        };
        assert_eq!(id.to_string(), "msg_1:2");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""msg_1:2""#);
        let id0 = TextId {
            item_id: "msg_1",
            index: 0,
        };
        assert_eq!(serde_json::to_string(&id0).unwrap(), r#""msg_1""#);
    }
}
