//! Frames for the encoders' tests: real runs of the demo cast through the engine (so the
//! raw events are exactly what providers and the engine publish), and a hand-built
//! client-side tool call.

use std::sync::Arc;

use serde_json::Value;

use crate::bus::{Bus, BusLimits, Delivery, Frame, FrameBody};
use crate::events::StreamEvent;
use crate::items::{FunctionCallItem, Item, RunItem};
use crate::model::scripted::ScriptedModel;
use crate::model::{RawEvent, ResponseEvent, ResponseObject};
use crate::run::{RunConfig, Runner};

/// Every frame of one run of the demo cast on `model` (max `max_turns` turns).
pub async fn demo_run(model: ScriptedModel, input: &str, max_turns: u64) -> Vec<Arc<Frame>> {
    let bus = Bus::new(BusLimits::default());
    let runner: Runner = Runner::new().with_bus(bus.clone());
    let agent = crate::demo::cast(Arc::new(model));
    runner.register(&agent);
    let topic = bus.topic("s1");
    let cfg = RunConfig {
        max_turns,
        ..RunConfig::default()
    };
    let mut sub = topic.subscribe(Some(0)).expect("a new topic");
    let _run = runner
        .request(&agent, input)
        .config(cfg)
        .topic(topic.clone())
        .run_id("run_1")
        .start()
        .expect("the run starts");
    // Until the end frame: it may be published after the run's own end is signalled.
    let mut frames = Vec::new();
    loop {
        let d = tokio::time::timeout(std::time::Duration::from_secs(30), sub.recv())
            .await
            .expect("the run ends in time");
        if let Some(Delivery::Frame(f)) = d {
            let end = f.body.is_terminal();
            frames.push(f);
            if end {
                return frames;
            }
        } else {
            panic!("the subscription ended before the run: {d:?}");
        }
    }
}

/// The demo's weather question: Triage hands off to Weather, which calls `get_weather`
/// and answers in 20 deltas.
pub async fn weather_run() -> Vec<Arc<Frame>> {
    demo_run(
        crate::demo::demo_model(),
        "What is the weather in Oslo?",
        10,
    )
    .await
}

fn frame(seq: u64, body: FrameBody) -> Arc<Frame> {
    Arc::new(Frame::new("s1".into(), seq, "run_1".into(), body))
}

fn raw(seq: u64, e: ResponseEvent) -> Arc<Frame> {
    frame(
        seq,
        FrameBody::Event {
            event: StreamEvent::RawResponse(Arc::new(RawEvent::Typed(e))),
            tool: None,
        },
    )
}

/// A turn in which the model calls the client-side tool `confirm` and the server tool
/// `lookup`; `lookup` answers, then `confirm` is sent to the clients. Ends with the
/// `tool.call` frame (the run waits).
pub fn client_tool_turn() -> Vec<Arc<Frame>> {
    let call = |id: &str, call_id: &str, name: &str, args: &str| FunctionCallItem {
        id: Some(id.into()),
        call_id: call_id.into(),
        name: name.into(),
        arguments: args.into(),
        status: None,
    };
    let resp = ResponseObject::new("resp_1", "m", 0.0);
    let mut v = vec![
        frame(
            1,
            FrameBody::Event {
                event: StreamEvent::AgentUpdated {
                    new_agent: "Triage".into(),
                },
                tool: None,
            },
        ),
        raw(
            2,
            ResponseEvent::Created {
                response: resp.clone(),
                sequence_number: 0,
            },
        ),
    ];
    let mut seq = 3;
    for (id, call_id, name, args) in [
        ("fc_1", "call_c", "confirm", r#"{"question":"Sure?"}"#),
        ("fc_2", "call_l", "lookup", r#"{"q":"x"}"#),
    ] {
        v.push(raw(
            seq,
            ResponseEvent::OutputItemAdded {
                item: Item::FunctionCall(call(id, call_id, name, "")),
                output_index: 0,
                sequence_number: 1,
            },
        ));
        v.push(raw(
            seq + 1,
            ResponseEvent::FunctionCallArgumentsDelta {
                item_id: id.into(),
                output_index: 0,
                delta: args.into(),
                sequence_number: 2,
            },
        ));
        v.push(raw(
            seq + 2,
            ResponseEvent::OutputItemDone {
                item: Item::FunctionCall(call(id, call_id, name, args)),
                output_index: 0,
                sequence_number: 3,
            },
        ));
        seq += 3;
    }
    v.push(raw(
        seq,
        ResponseEvent::Completed {
            response: resp,
            sequence_number: 9,
        },
    ));
    for (id, call_id, name, args) in [
        ("fc_1", "call_c", "confirm", r#"{"question":"Sure?"}"#),
        ("fc_2", "call_l", "lookup", r#"{"q":"x"}"#),
    ] {
        seq += 1;
        v.push(frame(
            seq,
            FrameBody::Event {
                event: StreamEvent::RunItem(Arc::new(RunItem::ToolCall {
                    agent: "Triage".into(),
                    raw_item: call(id, call_id, name, args),
                })),
                tool: Some(name.into()),
            },
        ));
    }
    seq += 1;
    v.push(frame(
        seq,
        FrameBody::ToolCall {
            call_id: "call_c".into(),
            name: "confirm".into(),
            arguments: r#"{"question":"Sure?"}"#.into(),
        },
    ));
    seq += 1;
    v.push(tool_output(seq, "call_l", "lookup", "found"));
    v
}

/// A `tool_output` frame.
pub fn tool_output(seq: u64, call_id: &str, tool: &str, output: &str) -> Arc<Frame> {
    frame(
        seq,
        FrameBody::Event {
            event: StreamEvent::RunItem(Arc::new(RunItem::ToolCallOutput {
                agent: "Triage".into(),
                output: output.into(),
                raw_item: crate::items::FunctionCallOutputItem {
                    call_id: call_id.into(),
                    output: output.into(),
                },
            })),
            tool: Some(tool.into()),
        },
    )
}

/// A `run.interrupted` frame: `call_id` of `tool` waits for approval.
pub fn interrupted(seq: u64, call_id: &str, tool: &str) -> Arc<Frame> {
    frame(
        seq,
        FrameBody::RunInterrupted {
            interruptions: vec![crate::items::ToolApproval {
                item_type: "tool_approval_item".into(),
                agent: "Triage".into(),
                tool: tool.into(),
                call_id: call_id.into(),
                arguments: "{}".into(),
                deadline_ms: None,
            }],
        },
    )
}

/// A `run.completed` frame.
pub fn completed(seq: u64, output: &str) -> Arc<Frame> {
    frame(
        seq,
        FrameBody::RunCompleted {
            final_output: Value::String(output.into()),
            last_agent: "Triage".into(),
            usage: serde_json::json!({"requests":1,"input_tokens":3,"output_tokens":4,"total_tokens":7}),
            trace_id: None,
        },
    )
}

/// The JSON events of an SSE body (`data: [DONE]` as the string `"[DONE]"`).
pub fn parse_sse(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("SSE is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "events end with a blank line"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .expect("each event is one data line");
            assert!(!data.contains('\n'), "one line per event");
            if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).expect("data is JSON")
            }
        })
        .collect()
}

/// The `type` of each event (`[DONE]` for the end marker).
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            e => e["type"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}
