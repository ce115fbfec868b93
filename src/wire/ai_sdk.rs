//! The Vercel AI SDK's UI message stream (`ai` 5 to 7, header
//! `x-vercel-ai-ui-message-stream: v1`): what `useChat` and `readUIMessageStream` read.
//!
//! One run is one assistant message: `start`, then per model call a step (`start-step` ...
//! `finish-step`, closed when the next model call starts or the run ends, so a step holds
//! its tools' outputs as the SDK's own steps do), text as `text-start` / `text-delta` /
//! `text-end`, tool calls (handoffs included) as `tool-input-start` / `tool-input-delta` /
//! `tool-input-available` and `tool-output-available`, each new agent as a `data-agent` part
//! `{name}`, and at the end `finish` (usage in `messageMetadata`), `error` then `finish` for a
//! failed run, or `abort` for a cancelled one; then `data: [DONE]`.
//!
//! When the run waits only on client-side tool calls the stream ends with
//! `finish {finishReason: "tool-calls"}`: `useChat` answers them (`addToolOutput`) with a new
//! request, and that request's stream ([`AiSdkStream::continuing`]) carries the run on as the
//! same message.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::bus::{CancelMode, Frame};
use crate::wire::sse_json;
use crate::wire::ui::{RunEnd, TextId, UiEvent, UiRun};

/// The response header that marks a UI message stream.
pub const HEADER: (&str, &str) = ("x-vercel-ai-ui-message-stream", "v1");

/// Whether the stream goes on after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// More frames are wanted.
    Continue,
    /// The stream is complete (`[DONE]` written).
    Done,
}

/// Message metadata of `start`.
#[derive(Serialize)]
struct StartMeta<'a> {
    run_id: &'a str,
    session_id: &'a str,
}

/// Message metadata of `finish`.
#[derive(Serialize)]
struct FinishMeta<'a> {
    run_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorMeta<'a>>,
}

#[derive(Serialize)]
struct ErrorMeta<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct AgentData<'a> {
    name: &'a str,
}

/// One chunk of the stream, as the `ai` package's `uiMessageChunkSchema` names its fields.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Chunk<'a> {
    Start {
        #[serde(rename = "messageId")]
        message_id: &'a str,
        #[serde(rename = "messageMetadata")]
        message_metadata: StartMeta<'a>,
    },
    StartStep,
    FinishStep,
    TextStart {
        id: TextId<'a>,
    },
    TextDelta {
        id: TextId<'a>,
        delta: &'a str,
    },
    TextEnd {
        id: TextId<'a>,
    },
    ToolInputStart {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "toolName")]
        tool_name: &'a str,
    },
    ToolInputDelta {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "inputTextDelta")]
        input_text_delta: &'a str,
    },
    ToolInputAvailable {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "toolName")]
        tool_name: &'a str,
        input: Input<'a>,
    },
    ToolOutputAvailable {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        output: &'a str,
    },
    /// A call waits for the user's approval (`addToolApprovalResponse` answers it; the
    /// approval id is the call id).
    ToolApprovalRequest {
        #[serde(rename = "approvalId")]
        approval_id: &'a str,
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
    },
    #[serde(rename = "data-agent")]
    DataAgent {
        data: AgentData<'a>,
    },
    Error {
        #[serde(rename = "errorText")]
        error_text: &'a str,
    },
    Finish {
        #[serde(rename = "finishReason")]
        finish_reason: &'a str,
        #[serde(rename = "messageMetadata")]
        message_metadata: FinishMeta<'a>,
    },
    Abort {
        reason: &'a str,
    },
}

/// A tool call's input: its arguments JSON as sent when it parses, `{}` when empty, else the
/// text as a JSON string (the UI still shows what the model wrote).
enum Input<'a> {
    Json(&'a RawValue),
    Empty,
    Text(&'a str),
}

impl<'a> Input<'a> {
    fn of(arguments: &'a str) -> Input<'a> {
        if arguments.trim().is_empty() {
            return Input::Empty;
        }
        match serde_json::from_str::<&RawValue>(arguments) {
            Ok(v) => Input::Json(v),
            Err(_) => Input::Text(arguments),
        }
    }
}

impl Serialize for Input<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Json(v) => v.serialize(s),
            Input::Empty => serde_json::Map::new().serialize(s),
            Input::Text(t) => s.serialize_str(t),
        }
    }
}

/// The UI message stream of one run, from its frames.
pub struct AiSdkStream {
    ui: UiRun,
    run_id: String,
    session_id: String,
    started: bool,
    step_open: bool,
    done: bool,
}

impl AiSdkStream {
    /// The stream of a run from its first frame; the message id is the run id.
    pub fn new(session_id: impl Into<String>, run_id: impl Into<String>) -> AiSdkStream {
        AiSdkStream::with(UiRun::new(), session_id.into(), run_id.into())
    }

    /// The stream of a run that goes on after the client answered the tool calls `answered`
    /// (same message id; those calls' outputs are not repeated).
    pub fn continuing(
        session_id: impl Into<String>,
        run_id: impl Into<String>,
        answered: Vec<String>,
    ) -> AiSdkStream {
        AiSdkStream::with(
            UiRun::continuing(answered, None),
            session_id.into(),
            run_id.into(),
        )
    }

    fn with(ui: UiRun, session_id: String, run_id: String) -> AiSdkStream {
        AiSdkStream {
            ui,
            run_id,
            session_id,
            started: false,
            step_open: false,
            done: false,
        }
    }

    /// Whether `[DONE]` was written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Writes `start` (once; [`push`](Self::push) does it before the first chunk otherwise).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        sse_json(
            out,
            &Chunk::Start {
                message_id: &self.run_id,
                message_metadata: StartMeta {
                    run_id: &self.run_id,
                    session_id: &self.session_id,
                },
            },
        );
    }

    /// Encodes one frame of the run (frames of other runs are skipped) into `out`.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Flow {
        if self.done {
            return Flow::Done;
        }
        if *frame.run_id != *self.run_id {
            return Flow::Continue;
        }
        self.start(out);
        let AiSdkStream {
            ui,
            run_id,
            step_open,
            done,
            ..
        } = self;
        ui.push(frame, &mut |ev| {
            encode(ev, run_id, step_open, done, out);
        });
        if self.done {
            Flow::Done
        } else {
            Flow::Continue
        }
    }

    /// Ends the stream early with an `error` chunk (the server can no longer follow the run,
    /// for example when its frames are no longer retained).
    pub fn fail(&mut self, error_text: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(out);
        if self.step_open {
            self.step_open = false;
            sse_json(out, &Chunk::FinishStep);
        }
        sse_json(out, &Chunk::Error { error_text });
        finish(out, "error", meta(&self.run_id));
        self.done = true;
    }
}

fn meta(run_id: &str) -> FinishMeta<'_> {
    FinishMeta {
        run_id,
        last_agent: None,
        usage: None,
        trace_id: None,
        error: None,
    }
}

fn finish(out: &mut Vec<u8>, reason: &str, message_metadata: FinishMeta<'_>) {
    sse_json(
        out,
        &Chunk::Finish {
            finish_reason: reason,
            message_metadata,
        },
    );
    out.extend_from_slice(b"data: [DONE]\n\n");
}

/// The chunks of one UI event.
fn encode(ev: UiEvent<'_>, run_id: &str, step_open: &mut bool, done: &mut bool, out: &mut Vec<u8>) {
    let mut close_step = |out: &mut Vec<u8>| {
        if *step_open {
            *step_open = false;
            sse_json(out, &Chunk::FinishStep);
        }
    };
    match ev {
        UiEvent::Agent { name } => sse_json(
            out,
            &Chunk::DataAgent {
                data: AgentData { name },
            },
        ),
        UiEvent::ModelCall => {
            close_step(out);
            *step_open = true;
            sse_json(out, &Chunk::StartStep);
        }
        UiEvent::TextStart(id) => sse_json(out, &Chunk::TextStart { id }),
        UiEvent::TextDelta(id, delta) => sse_json(out, &Chunk::TextDelta { id, delta }),
        UiEvent::TextEnd(id) => sse_json(out, &Chunk::TextEnd { id }),
        UiEvent::ToolStart { call_id, name } => sse_json(
            out,
            &Chunk::ToolInputStart {
                tool_call_id: call_id,
                tool_name: name,
            },
        ),
        UiEvent::ToolArgs { call_id, delta } => sse_json(
            out,
            &Chunk::ToolInputDelta {
                tool_call_id: call_id,
                input_text_delta: delta,
            },
        ),
        UiEvent::ToolInput {
            call_id,
            name,
            arguments,
        } => sse_json(
            out,
            &Chunk::ToolInputAvailable {
                tool_call_id: call_id,
                tool_name: name,
                input: Input::of(arguments),
            },
        ),
        UiEvent::ToolOutput { call_id, output } => sse_json(
            out,
            &Chunk::ToolOutputAvailable {
                tool_call_id: call_id,
                output,
            },
        ),
        UiEvent::ApprovalRequested { call_id } => sse_json(
            out,
            &Chunk::ToolApprovalRequest {
                approval_id: call_id,
                tool_call_id: call_id,
            },
        ),
        UiEvent::AwaitingClient | UiEvent::AwaitingApproval => {
            close_step(out);
            finish(out, "tool-calls", meta(run_id));
            *done = true;
        }
        UiEvent::End(end) => {
            close_step(out);
            match end {
                RunEnd::Completed {
                    last_agent,
                    usage,
                    trace_id,
                    ..
                } => finish(
                    out,
                    "stop",
                    FinishMeta {
                        last_agent: Some(last_agent),
                        usage: Some(usage),
                        trace_id,
                        ..meta(run_id)
                    },
                ),
                RunEnd::Failed {
                    error_type,
                    message,
                } => {
                    let text = format!("{error_type}: {message}");
                    sse_json(out, &Chunk::Error { error_text: &text });
                    finish(
                        out,
                        "error",
                        FinishMeta {
                            error: Some(ErrorMeta {
                                ty: error_type,
                                message,
                            }),
                            ..meta(run_id)
                        },
                    );
                }
                RunEnd::Cancelled { mode } => {
                    let reason = match mode {
                        CancelMode::Immediate => "run cancelled (immediate)",
                        CancelMode::AfterTurn => "run cancelled (after_turn)",
                        CancelMode::Interrupted => "run cancelled (interrupted by a new message)",
                        CancelMode::RolledBack => "run cancelled (rolled back by a new message)",
                    };
                    sse_json(out, &Chunk::Abort { reason });
                    out.extend_from_slice(b"data: [DONE]\n\n");
                }
            }
            *done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{self, parse_sse, types};
    use std::sync::Arc;

    fn encode_all(s: &mut AiSdkStream, frames: &[Arc<Frame>]) -> (Vec<Value>, Flow) {
        let mut out = Vec::new();
        let mut flow = Flow::Continue;
        for f in frames {
            flow = s.push(f, &mut out);
        }
        (parse_sse(&out), flow)
    }

    #[tokio::test]
    async fn demo_run_is_one_message_with_steps_tools_agents_and_text() {
        let frames = fixtures::weather_run().await;
        let mut s = AiSdkStream::new("s1", "run_1");
        let (ev, flow) = encode_all(&mut s, &frames);
        assert_eq!(flow, Flow::Done);
        let t = types(&ev);
        assert_eq!(t[0], "start");
        assert_eq!(ev[0]["messageId"], "run_1");
        assert_eq!(ev[0]["messageMetadata"]["session_id"], "s1");
        assert_eq!(t.last().unwrap(), "[DONE]");
        // Three model calls, each a step; steps never nest.
        assert_eq!(t.iter().filter(|x| *x == "start-step").count(), 3);
        assert_eq!(t.iter().filter(|x| *x == "finish-step").count(), 3);
        let mut depth = 0;
        for x in &t {
            match x.as_str() {
                "start-step" => depth += 1,
                "finish-step" => depth -= 1,
                _ => {}
            }
            assert!((0..=1).contains(&depth));
        }
        let agents: Vec<&Value> = ev
            .iter()
            .filter(|e| e["type"] == "data-agent")
            .map(|e| &e["data"]["name"])
            .collect();
        assert_eq!(agents, ["Triage", "Weather"]);
        // The weather call: its input parsed, its output given.
        let input = ev
            .iter()
            .find(|e| e["type"] == "tool-input-available" && e["toolName"] == "get_weather")
            .expect("get_weather input");
        assert_eq!(input["input"], serde_json::json!({"city": "Oslo"}));
        let id = input["toolCallId"].as_str().unwrap();
        let output = ev
            .iter()
            .find(|e| e["type"] == "tool-output-available" && e["toolCallId"] == id)
            .expect("get_weather output");
        assert!(output["output"].as_str().unwrap().contains("Oslo"));
        // The handoff is a tool call too.
        assert!(ev
            .iter()
            .any(|e| e["type"] == "tool-input-start" && e["toolName"] == "transfer_to_weather"));
        // The text: one part, 20 deltas, closed before the step ends.
        let text: String = ev
            .iter()
            .filter(|e| e["type"] == "text-delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert!(text.starts_with("Here is the forecast"), "{text}");
        let end = t.iter().position(|x| x == "text-end").unwrap();
        assert_eq!(t[end + 1], "finish-step");
        // The end: usage and the last agent in the metadata.
        let fin = &ev[ev.len() - 2];
        assert_eq!(fin["type"], "finish");
        assert_eq!(fin["finishReason"], "stop");
        assert_eq!(fin["messageMetadata"]["last_agent"], "Weather");
        assert_eq!(fin["messageMetadata"]["usage"]["requests"], 3);
        assert!(
            fin["messageMetadata"]["usage"]["total_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
        // Nothing after [DONE].
        let mut out = Vec::new();
        assert_eq!(s.push(&frames[0], &mut out), Flow::Done);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn failed_run_ends_with_error_then_finish() {
        let frames = fixtures::demo_run(crate::demo::demo_model(), "What is the weather?", 1).await;
        let (ev, flow) = encode_all(&mut AiSdkStream::new("s1", "run_1"), &frames);
        assert_eq!(flow, Flow::Done);
        let t = types(&ev);
        let n = t.len();
        assert_eq!(
            t[n - 4..],
            ["finish-step", "error", "finish", "[DONE]"],
            "{t:?}"
        );
        assert_eq!(
            ev[n - 3]["errorText"],
            "MaxTurnsExceeded: Max turns (1) exceeded"
        );
        assert_eq!(ev[n - 2]["finishReason"], "error");
        assert_eq!(
            ev[n - 2]["messageMetadata"]["error"]["type"],
            "MaxTurnsExceeded"
        );
    }

    #[test]
    fn client_tool_ends_the_stream_and_the_continuation_goes_on() {
        let frames = fixtures::client_tool_turn();
        let mut s = AiSdkStream::new("s1", "run_1");
        let (ev, flow) = encode_all(&mut s, &frames);
        assert_eq!(flow, Flow::Done);
        let t = types(&ev);
        let n = t.len();
        assert_eq!(
            t[n - 4..],
            ["tool-output-available", "finish-step", "finish", "[DONE]"]
        );
        assert_eq!(ev[n - 2]["finishReason"], "tool-calls");
        let confirm = ev
            .iter()
            .find(|e| e["type"] == "tool-input-available" && e["toolName"] == "confirm")
            .unwrap();
        assert_eq!(confirm["input"]["question"], "Sure?");

        let mut c = AiSdkStream::continuing("s1", "run_1", vec!["call_c".into()]);
        let rest = [
            fixtures::tool_output(30, "call_c", "confirm", "yes"),
            fixtures::completed(31, "ok"),
        ];
        let (ev, flow) = encode_all(&mut c, &rest);
        assert_eq!(flow, Flow::Done);
        assert_eq!(types(&ev), ["start", "finish", "[DONE]"]);
        assert_eq!(ev[0]["messageId"], "run_1");
    }

    #[test]
    fn a_run_paused_for_approval_asks_for_it_and_the_resumed_run_goes_on() {
        let mut frames = fixtures::client_tool_turn();
        // The turn's server-side call ran; the client-side one waits for approval instead.
        frames.truncate(frames.len() - 1);
        let seq = frames.last().map_or(1, |f| f.seq + 1);
        frames.push(fixtures::interrupted(seq, "call_c", "confirm"));
        let mut s = AiSdkStream::new("s1", "run_1");
        let (ev, flow) = encode_all(&mut s, &frames);
        assert_eq!(flow, Flow::Done);
        let t = types(&ev);
        let n = t.len();
        assert_eq!(
            t[n - 4..],
            ["tool-approval-request", "finish-step", "finish", "[DONE]"]
        );
        assert_eq!(ev[n - 4]["approvalId"], "call_c");
        assert_eq!(ev[n - 4]["toolCallId"], "call_c");
        assert_eq!(ev[n - 2]["finishReason"], "tool-calls");

        let mut c = AiSdkStream::continuing("s1", "run_1", Vec::new());
        let rest = [
            fixtures::tool_output(30, "call_c", "confirm", "yes"),
            fixtures::completed(31, "ok"),
        ];
        let (ev, flow) = encode_all(&mut c, &rest);
        assert_eq!(flow, Flow::Done);
        assert_eq!(
            types(&ev),
            ["start", "tool-output-available", "finish", "[DONE]"]
        );
        assert_eq!(ev[1]["toolCallId"], "call_c");
    }

    #[test]
    fn other_runs_are_skipped_and_early_failure_is_an_error_part() {
        let mut s = AiSdkStream::new("s1", "run_2");
        let mut out = Vec::new();
        assert_eq!(
            s.push(&fixtures::completed(1, "x"), &mut out),
            Flow::Continue
        );
        assert!(out.is_empty());
        s.fail("history truncated", &mut out);
        assert!(s.is_done());
        let ev = parse_sse(&out);
        assert_eq!(types(&ev), ["start", "error", "finish", "[DONE]"]);
        assert_eq!(ev[1]["errorText"], "history truncated");
    }

    #[test]
    fn tool_input_is_json_when_it_parses() {
        let s = |a: &str| serde_json::to_string(&Input::of(a)).unwrap();
        assert_eq!(s(r#"{"a": 1}"#), r#"{"a": 1}"#);
        assert_eq!(s(""), "{}");
        assert_eq!(s("{broken"), r#""{broken""#);
    }
}
