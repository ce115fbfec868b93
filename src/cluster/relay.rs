//! A frame read from the bus stream made a typed frame again, for the session topic of the
//! node that accepted a run that executes on another node: its clients (WebSocket, HTTP,
//! SSE, AI SDK, AG-UI) read that topic as if the run were local. The frame keeps the exact
//! SDK and chat bytes the executing node made; the typed body (read back from the SDK
//! encoding) serves the per-run formats (AI SDK, AG-UI).

use std::sync::Arc;

use serde_json::Value;

use super::bus::Relayed;
use crate::bus::{CancelMode, Frame, FrameBody, Nesting};
use crate::events::StreamEvent;
use crate::items::RunItem;
use crate::model::RawEvent;
use crate::run::ToolApproval;
use crate::wire::Format;

/// The typed frame of `r` in session `session_id`; `None` when its SDK bytes do not read
/// as a frame (a newer node's frame type, or damage).
pub fn frame_of(r: &Relayed, session_id: &Arc<str>) -> Option<Frame> {
    let v: Value = serde_json::from_slice(&r.sdk).ok()?;
    let body = body_of(&v, r.tool.as_deref())?;
    let mut f = Frame::new(
        session_id.clone(),
        r.seq,
        Arc::from(r.run_id.as_str()),
        body,
    );
    f.nesting = nesting_of(&v);
    Format::Sdk.preset(&f, Some(r.sdk.clone()));
    Format::Chat.preset(&f, r.chat.clone());
    Some(f)
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn nesting_of(v: &Value) -> Option<Arc<Nesting>> {
    let path: Vec<Arc<str>> = v
        .get("path")?
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str().map(Arc::from))
        .collect();
    Some(Arc::new(Nesting {
        path: path.into(),
        depth: v.get("depth")?.as_u64()? as u32,
        parent_call_id: Arc::from(v.get("parent_call_id")?.as_str()?),
    }))
}

fn body_of(v: &Value, tool: Option<&str>) -> Option<FrameBody> {
    Some(match v.get("type")?.as_str()? {
        "event" => FrameBody::Event {
            event: event_of(v.get("event")?)?,
            tool: tool.map(Arc::from),
        },
        "run.completed" => FrameBody::RunCompleted {
            final_output: v.get("final_output").cloned().unwrap_or(Value::Null),
            last_agent: str_of(v, "last_agent").unwrap_or_default(),
            usage: v.get("usage").cloned().unwrap_or(Value::Null),
            trace_id: str_of(v, "trace_id"),
        },
        "run.failed" => {
            let e = v.get("error")?;
            FrameBody::RunFailed {
                error_type: str_of(e, "type").unwrap_or_default(),
                message: str_of(e, "message").unwrap_or_default(),
            }
        }
        "run.cancelled" => FrameBody::RunCancelled {
            mode: serde_json::from_value::<CancelMode>(v.get("mode")?.clone()).ok()?,
            by_run_id: str_of(v, "by_run_id").map(Arc::from),
        },
        "run.queued" => FrameBody::RunQueued {
            position: v.get("position")?.as_u64()? as usize,
        },
        "run.interrupted" => FrameBody::RunInterrupted {
            interruptions: serde_json::from_value::<Vec<ToolApproval>>(
                v.get("interruptions")?.clone(),
            )
            .ok()?,
        },
        "run.resumed" => FrameBody::RunResumed,
        "tool.call" => FrameBody::ToolCall {
            call_id: str_of(v, "call_id")?,
            name: str_of(v, "name")?,
            arguments: str_of(v, "arguments").unwrap_or_default(),
        },
        "tool.progress" => FrameBody::ToolProgress {
            call_id: Arc::from(str_of(v, "call_id")?),
            tool: Arc::from(str_of(v, "tool")?),
            progress: v.get("progress")?.as_f64()?,
            total: v.get("total").and_then(Value::as_f64),
            message: str_of(v, "message"),
        },
        _ => return None,
    })
}

fn event_of(e: &Value) -> Option<StreamEvent> {
    Some(match e.get("type")?.as_str()? {
        "raw_response_event" => {
            let data = serde_json::to_string(e.get("data")?).ok()?;
            StreamEvent::RawResponse(Arc::new(RawEvent::from_json(&data).ok()?))
        }
        "run_item_stream_event" => StreamEvent::RunItem(Arc::new(
            serde_json::from_value::<RunItem>(e.get("item")?.clone()).ok()?,
        )),
        "agent_updated_stream_event" => StreamEvent::AgentUpdated {
            new_agent: Arc::from(e.get("new_agent")?.get("name")?.as_str()?),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn relayed(f: &Frame) -> Relayed {
        Relayed {
            seq: f.seq,
            run_id: f.run_id.to_string(),
            depth: f.depth(),
            sdk: Format::Sdk.bytes(f).cloned().unwrap_or_default(),
            chat: Format::Chat.bytes(f).cloned(),
            tool: None,
            epoch: None,
        }
    }

    #[test]
    fn frames_read_back_as_they_were() {
        let s: Arc<str> = "s1".into();
        let run: Arc<str> = "run_1".into();
        let bodies = vec![
            FrameBody::Event {
                event: StreamEvent::AgentUpdated {
                    new_agent: "B".into(),
                },
                tool: None,
            },
            FrameBody::RunCompleted {
                final_output: Value::String("hi".into()),
                last_agent: "C".into(),
                usage: serde_json::json!({"requests": 1}),
                trace_id: None,
            },
            FrameBody::RunFailed {
                error_type: "UserError".into(),
                message: "no".into(),
            },
            FrameBody::RunCancelled {
                mode: CancelMode::AfterTurn,
                by_run_id: Some("run_2".into()),
            },
            FrameBody::RunQueued { position: 2 },
            FrameBody::RunResumed,
            FrameBody::ToolCall {
                call_id: "c".into(),
                name: "n".into(),
                arguments: "{}".into(),
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let mut f = Frame::new(s.clone(), i as u64 + 1, run.clone(), body.clone());
            if i == 0 {
                f.nesting = Some(Arc::new(Nesting {
                    path: vec![Arc::from("A"), Arc::from("B")].into(),
                    depth: 1,
                    parent_call_id: "call_1".into(),
                }));
            }
            let r = relayed(&f);
            let back = frame_of(&r, &s).expect("reads back");
            assert_eq!(back.body, body);
            assert_eq!(back.seq, f.seq);
            assert_eq!(back.nesting, f.nesting);
            let sdk: &Bytes = Format::Sdk.bytes(&back).expect("sdk bytes");
            assert_eq!(sdk.as_ptr(), r.sdk.as_ptr(), "the very bytes relayed");
        }
    }
}
