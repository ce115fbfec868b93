//! AG-UI events (protocol 1.0, `@ag-ui/core`), as an AG-UI client such as `HttpAgent`
//! reads them over SSE.
//!
//! `RUN_STARTED` (the client's `threadId` and `runId`), then a step per agent
//! (`STEP_STARTED` / `STEP_FINISHED` named after the agent, so a handoff is a step change),
//! text as `TEXT_MESSAGE_START` / `_CONTENT` / `_END` (role `assistant`), tool calls
//! (handoffs included) as `TOOL_CALL_START` / `_ARGS` / `_END` and `TOOL_CALL_RESULT`, and at
//! the end `RUN_FINISHED` (`result` the final output, `usage` the run's tokens; outcome
//! `cancelled` for a cancelled run) or `RUN_ERROR` (`code` the SDK exception name).
//!
//! When the run waits only on client-side tool calls the stream ends with `RUN_FINISHED`
//! (outcome `success` with `pendingToolCallIds`): the client answers with a new request whose
//! trailing `tool` messages carry the outputs, and that request's stream
//! ([`AgUiStream::continuing`]) carries the run on.

use serde::Serialize;
use serde_json::Value;

use crate::bus::Frame;
use crate::wire::sse_json;
use crate::wire::ui::{RunEnd, TextId, UiEvent, UiRun};

pub use crate::wire::ai_sdk::Flow;

/// `metadata.callboard` of `RUN_STARTED` and `RUN_FINISHED`.
#[derive(Serialize)]
struct Meta<'a> {
    callboard: MetaInner<'a>,
}

#[derive(Serialize)]
struct MetaInner<'a> {
    run_id: &'a str,
    session_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// AG-UI's `TokenUsage`.
#[derive(Serialize)]
struct TokenUsage {
    #[serde(rename = "inputTokens")]
    input_tokens: u64,
    #[serde(rename = "outputTokens")]
    output_tokens: u64,
    #[serde(rename = "totalTokens")]
    total_tokens: u64,
}

impl TokenUsage {
    fn of(usage: &Value) -> TokenUsage {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        TokenUsage {
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            total_tokens: n("total_tokens"),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Outcome<'a> {
    Success {
        #[serde(rename = "pendingToolCallIds", skip_serializing_if = "Vec::is_empty")]
        pending_tool_call_ids: Vec<&'a str>,
    },
    Cancelled,
}

/// One AG-UI event, with the field names of `@ag-ui/core`'s schemas.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum Event<'a> {
    RunStarted {
        #[serde(rename = "threadId")]
        thread_id: &'a str,
        #[serde(rename = "runId")]
        run_id: &'a str,
        metadata: Meta<'a>,
    },
    StepStarted {
        #[serde(rename = "stepName")]
        step_name: &'a str,
    },
    StepFinished {
        #[serde(rename = "stepName")]
        step_name: &'a str,
    },
    TextMessageStart {
        #[serde(rename = "messageId")]
        message_id: TextId<'a>,
        role: &'a str,
    },
    TextMessageContent {
        #[serde(rename = "messageId")]
        message_id: TextId<'a>,
        delta: &'a str,
    },
    TextMessageEnd {
        #[serde(rename = "messageId")]
        message_id: TextId<'a>,
    },
    ToolCallStart {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "toolCallName")]
        tool_call_name: &'a str,
    },
    ToolCallArgs {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        delta: &'a str,
    },
    ToolCallEnd {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
    },
    ToolCallResult {
        #[serde(rename = "messageId")]
        message_id: &'a str,
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        content: &'a str,
        role: &'a str,
    },
    RunFinished {
        #[serde(rename = "threadId")]
        thread_id: &'a str,
        #[serde(rename = "runId")]
        run_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        outcome: Outcome<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<[TokenUsage; 1]>,
        metadata: Meta<'a>,
    },
    RunError {
        message: &'a str,
        code: &'a str,
    },
}

/// Identity of the run this stream shows.
struct Ids {
    thread_id: String,
    client_run_id: String,
    run_id: String,
}

impl Ids {
    fn meta<'a>(&'a self, last_agent: Option<&'a str>, trace_id: Option<&'a str>) -> Meta<'a> {
        Meta {
            callboard: MetaInner {
                run_id: &self.run_id,
                session_id: &self.thread_id,
                last_agent,
                trace_id,
            },
        }
    }
}

/// Step and tool-call state that the events open and close.
#[derive(Default)]
struct Open {
    step: Option<String>,
    tool_calls: Vec<String>,
    awaiting: bool,
    done: bool,
}

/// The AG-UI event stream of one run, from its frames.
pub struct AgUiStream {
    ui: UiRun,
    ids: Ids,
    open: Open,
    started: bool,
    resume_step: Option<String>,
}

impl AgUiStream {
    /// The stream of callboard run `run_id` in session (thread) `thread_id`, answering the
    /// client's `RunAgentInput.runId` `client_run_id`.
    pub fn new(
        thread_id: impl Into<String>,
        client_run_id: impl Into<String>,
        run_id: impl Into<String>,
    ) -> AgUiStream {
        AgUiStream::with(UiRun::new(), thread_id, client_run_id, run_id)
    }

    /// The stream of a run that goes on after the client answered the tool calls `answered`
    /// (their results are not repeated: the client's `tool` messages hold them), while
    /// `agent` runs (its step opens the stream again).
    pub fn continuing(
        thread_id: impl Into<String>,
        client_run_id: impl Into<String>,
        run_id: impl Into<String>,
        answered: Vec<String>,
        agent: Option<String>,
    ) -> AgUiStream {
        let mut s = AgUiStream::with(
            UiRun::continuing(answered, agent.clone()),
            thread_id,
            client_run_id,
            run_id,
        );
        s.resume_step = agent;
        s
    }

    fn with(
        ui: UiRun,
        thread_id: impl Into<String>,
        client_run_id: impl Into<String>,
        run_id: impl Into<String>,
    ) -> AgUiStream {
        AgUiStream {
            ui,
            ids: Ids {
                thread_id: thread_id.into(),
                client_run_id: client_run_id.into(),
                run_id: run_id.into(),
            },
            open: Open::default(),
            started: false,
            resume_step: None,
        }
    }

    /// Whether the stream is complete.
    pub fn is_done(&self) -> bool {
        self.open.done
    }

    /// Writes `RUN_STARTED` (once; [`push`](Self::push) does it before the first event
    /// otherwise).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        sse_json(
            out,
            &Event::RunStarted {
                thread_id: &self.ids.thread_id,
                run_id: &self.ids.client_run_id,
                metadata: self.ids.meta(None, None),
            },
        );
        if let Some(agent) = self.resume_step.take() {
            sse_json(out, &Event::StepStarted { step_name: &agent });
            self.open.step = Some(agent);
        }
    }

    /// Encodes one frame of the run (frames of other runs are skipped) into `out`.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Flow {
        if self.open.done {
            return Flow::Done;
        }
        if *frame.run_id != *self.ids.run_id {
            return Flow::Continue;
        }
        self.start(out);
        let AgUiStream { ui, ids, open, .. } = self;
        ui.push(frame, &mut |ev| encode(ev, ids, open, out));
        if self.open.awaiting && !self.open.done {
            close_step(&mut self.open, out);
            let pending: Vec<&str> = self.ui.client_calls().collect();
            sse_json(
                out,
                &Event::RunFinished {
                    thread_id: &self.ids.thread_id,
                    run_id: &self.ids.client_run_id,
                    result: None,
                    outcome: Outcome::Success {
                        pending_tool_call_ids: pending,
                    },
                    usage: None,
                    metadata: self.ids.meta(self.ui.agent(), None),
                },
            );
            self.open.done = true;
        }
        if self.open.done {
            Flow::Done
        } else {
            Flow::Continue
        }
    }

    /// Ends the stream early with `RUN_ERROR` (the server can no longer follow the run).
    pub fn fail(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        if self.open.done {
            return;
        }
        self.start(out);
        sse_json(out, &Event::RunError { message, code });
        self.open.done = true;
    }
}

fn close_step(open: &mut Open, out: &mut Vec<u8>) {
    if let Some(step) = open.step.take() {
        sse_json(out, &Event::StepFinished { step_name: &step });
    }
}

/// The events of one UI event.
fn encode(ev: UiEvent<'_>, ids: &Ids, open: &mut Open, out: &mut Vec<u8>) {
    match ev {
        UiEvent::Agent { name } => {
            close_step(open, out);
            open.step = Some(name.to_owned());
            sse_json(out, &Event::StepStarted { step_name: name });
        }
        UiEvent::ModelCall => {}
        UiEvent::TextStart(id) => sse_json(
            out,
            &Event::TextMessageStart {
                message_id: id,
                role: "assistant",
            },
        ),
        UiEvent::TextDelta(id, delta) => sse_json(
            out,
            &Event::TextMessageContent {
                message_id: id,
                delta,
            },
        ),
        UiEvent::TextEnd(id) => sse_json(out, &Event::TextMessageEnd { message_id: id }),
        UiEvent::ToolStart { call_id, name } => {
            open.tool_calls.push(call_id.to_owned());
            sse_json(
                out,
                &Event::ToolCallStart {
                    tool_call_id: call_id,
                    tool_call_name: name,
                },
            );
        }
        UiEvent::ToolArgs { call_id, delta } => sse_json(
            out,
            &Event::ToolCallArgs {
                tool_call_id: call_id,
                delta,
            },
        ),
        UiEvent::ToolInput { call_id, .. } => {
            if let Some(p) = open.tool_calls.iter().position(|c| c == call_id) {
                open.tool_calls.swap_remove(p);
                sse_json(
                    out,
                    &Event::ToolCallEnd {
                        tool_call_id: call_id,
                    },
                );
            }
        }
        UiEvent::ToolOutput { call_id, output } => {
            let message_id = format!("{call_id}-result");
            sse_json(
                out,
                &Event::ToolCallResult {
                    message_id: &message_id,
                    tool_call_id: call_id,
                    content: output,
                    role: "tool",
                },
            );
        }
        UiEvent::AwaitingClient => open.awaiting = true,
        // AG-UI has no approval events: the stream ends as an error that says why, and the
        // decision is made over HTTP or WebSocket (PROTOCOL.md 6.3).
        UiEvent::ApprovalRequested { .. } => {}
        UiEvent::AwaitingApproval => encode(
            UiEvent::End(RunEnd::Failed {
                error_type: "Interrupted",
                message: "the run waits for a person's approval of a tool call",
            }),
            ids,
            open,
            out,
        ),
        UiEvent::End(end) => {
            for call_id in std::mem::take(&mut open.tool_calls) {
                sse_json(
                    out,
                    &Event::ToolCallEnd {
                        tool_call_id: &call_id,
                    },
                );
            }
            match end {
                RunEnd::Completed {
                    final_output,
                    last_agent,
                    usage,
                    trace_id,
                } => {
                    close_step(open, out);
                    sse_json(
                        out,
                        &Event::RunFinished {
                            thread_id: &ids.thread_id,
                            run_id: &ids.client_run_id,
                            result: (!final_output.is_null()).then_some(final_output),
                            outcome: Outcome::Success {
                                pending_tool_call_ids: Vec::new(),
                            },
                            usage: Some([TokenUsage::of(usage)]),
                            metadata: ids.meta(Some(last_agent), trace_id),
                        },
                    );
                }
                RunEnd::Failed {
                    error_type,
                    message,
                } => sse_json(
                    out,
                    &Event::RunError {
                        message,
                        code: error_type,
                    },
                ),
                RunEnd::Cancelled { .. } => {
                    close_step(open, out);
                    sse_json(
                        out,
                        &Event::RunFinished {
                            thread_id: &ids.thread_id,
                            run_id: &ids.client_run_id,
                            result: None,
                            outcome: Outcome::Cancelled,
                            usage: None,
                            metadata: ids.meta(None, None),
                        },
                    );
                }
            }
            open.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{self, parse_sse, types};
    use std::sync::Arc;

    fn encode_all(s: &mut AgUiStream, frames: &[Arc<Frame>]) -> (Vec<Value>, Flow) {
        let mut out = Vec::new();
        let mut flow = Flow::Continue;
        for f in frames {
            flow = s.push(f, &mut out);
        }
        (parse_sse(&out), flow)
    }

    /// Checks the sequence rules AG-UI clients enforce: `RUN_STARTED` first, nothing after
    /// the end, messages, tool calls and steps opened before use and closed before
    /// `RUN_FINISHED`, a step not started twice.
    fn check_sequence(ev: &[Value]) {
        let mut texts = Vec::new();
        let mut calls = Vec::new();
        let mut steps: Vec<String> = Vec::new();
        assert_eq!(ev[0]["type"], "RUN_STARTED");
        for (i, e) in ev.iter().enumerate() {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            match e["type"].as_str().unwrap() {
                "TEXT_MESSAGE_START" => {
                    assert!(!texts.contains(&s("messageId")));
                    texts.push(s("messageId"));
                }
                "TEXT_MESSAGE_CONTENT" => assert!(texts.contains(&s("messageId"))),
                "TEXT_MESSAGE_END" => texts.retain(|t| *t != s("messageId")),
                "TOOL_CALL_START" => calls.push(s("toolCallId")),
                "TOOL_CALL_ARGS" => assert!(calls.contains(&s("toolCallId"))),
                "TOOL_CALL_END" => calls.retain(|t| *t != s("toolCallId")),
                "STEP_STARTED" => {
                    assert!(!steps.contains(&s("stepName")));
                    steps.push(s("stepName"));
                }
                "STEP_FINISHED" => steps.retain(|t| *t != s("stepName")),
                "RUN_FINISHED" => {
                    assert_eq!(i, ev.len() - 1);
                    assert!(texts.is_empty() && calls.is_empty() && steps.is_empty());
                }
                "RUN_ERROR" => assert_eq!(i, ev.len() - 1),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn demo_run_is_a_step_per_agent_with_tool_calls_and_text() {
        let frames = fixtures::weather_run().await;
        let mut s = AgUiStream::new("s1", "client-run", "run_1");
        let (ev, flow) = encode_all(&mut s, &frames);
        assert_eq!(flow, Flow::Done);
        check_sequence(&ev);
        assert_eq!(ev[0]["threadId"], "s1");
        assert_eq!(ev[0]["runId"], "client-run");
        assert_eq!(ev[0]["metadata"]["callboard"]["run_id"], "run_1");
        let steps: Vec<String> = ev
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("STEP_"))
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["stepName"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                "STEP_STARTED Triage",
                "STEP_FINISHED Triage",
                "STEP_STARTED Weather",
                "STEP_FINISHED Weather"
            ]
        );
        let t = types(&ev);
        assert_eq!(t.iter().filter(|x| *x == "TOOL_CALL_START").count(), 2);
        assert_eq!(t.iter().filter(|x| *x == "TOOL_CALL_RESULT").count(), 2);
        assert_eq!(
            t.iter().filter(|x| *x == "TEXT_MESSAGE_CONTENT").count(),
            20
        );
        let args: String = ev
            .iter()
            .filter(|e| e["type"] == "TOOL_CALL_ARGS")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert!(args.contains(r#"{"city":"Oslo"}"#), "{args}");
        let fin = ev.last().unwrap();
        assert_eq!(fin["type"], "RUN_FINISHED");
        assert_eq!(fin["outcome"]["type"], "success");
        assert!(fin["result"]
            .as_str()
            .unwrap()
            .starts_with("Here is the forecast"));
        assert!(fin["usage"][0]["totalTokens"].as_u64().unwrap() > 0);
        assert_eq!(fin["metadata"]["callboard"]["last_agent"], "Weather");
        let start = ev
            .iter()
            .find(|e| e["type"] == "TEXT_MESSAGE_START")
            .unwrap();
        assert_eq!(start["role"], "assistant");
    }

    #[tokio::test]
    async fn failed_run_is_a_run_error_with_the_sdk_exception_as_code() {
        let frames = fixtures::demo_run(crate::demo::demo_model(), "What is the weather?", 1).await;
        let (ev, _) = encode_all(&mut AgUiStream::new("s1", "r", "run_1"), &frames);
        check_sequence(&ev);
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "RUN_ERROR");
        assert_eq!(last["code"], "MaxTurnsExceeded");
        assert_eq!(last["message"], "Max turns (1) exceeded");
    }

    #[test]
    fn client_tool_finishes_the_run_with_pending_calls_and_the_continuation_goes_on() {
        let (ev, flow) = encode_all(
            &mut AgUiStream::new("s1", "r1", "run_1"),
            &fixtures::client_tool_turn(),
        );
        assert_eq!(flow, Flow::Done);
        check_sequence(&ev);
        let fin = ev.last().unwrap();
        assert_eq!(fin["type"], "RUN_FINISHED");
        assert_eq!(
            fin["outcome"]["pendingToolCallIds"],
            serde_json::json!(["call_c"])
        );
        let mut c = AgUiStream::continuing(
            "s1",
            "r2",
            "run_1",
            vec!["call_c".into()],
            Some("Triage".into()),
        );
        let rest = [
            fixtures::tool_output(30, "call_c", "confirm", "yes"),
            fixtures::completed(31, "ok"),
        ];
        let (ev, _) = encode_all(&mut c, &rest);
        check_sequence(&ev);
        assert_eq!(
            types(&ev),
            [
                "RUN_STARTED",
                "STEP_STARTED",
                "STEP_FINISHED",
                "RUN_FINISHED"
            ]
        );
        assert_eq!(ev[1]["stepName"], "Triage");
        assert_eq!(ev[3]["runId"], "r2");
        assert_eq!(ev[3]["result"], "ok");
    }

    #[test]
    fn cancelled_run_closes_what_is_open() {
        let mut frames = fixtures::client_tool_turn();
        frames.truncate(4); // agent, created, call started, args: the call is open
        frames.push(Arc::new(Frame::new(
            "s1".into(),
            5,
            "run_1".into(),
            crate::bus::FrameBody::RunCancelled {
                by_run_id: None,
                mode: crate::bus::CancelMode::Immediate,
            },
        )));
        let (ev, _) = encode_all(&mut AgUiStream::new("s1", "r", "run_1"), &frames);
        check_sequence(&ev);
        let t = types(&ev);
        assert_eq!(
            t[t.len() - 3..],
            ["TOOL_CALL_END", "STEP_FINISHED", "RUN_FINISHED"]
        );
        assert_eq!(ev.last().unwrap()["outcome"]["type"], "cancelled");
    }
}
