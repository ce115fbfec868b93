//! The `chat` format: the compact relay a chat UI wants: `token` for each text delta,
//! `agent_change`, `tool_start`, `tool_end`, `tool_progress`; end frames and tool calls as in
//! the `sdk` format. Other stream events are skipped. A nested run's frames also carry its
//! `agent`, `depth` and `parent_call_id`. Seq numbers are the session's, so both formats
//! resume alike.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::sdk::{write_progress, FrameHead};
use crate::bus::{Frame, FrameBody};
use crate::events::StreamEvent;
use crate::items::RunItem;
use crate::model::{RawEvent, ResponseEvent};

/// The frame slot this format's bytes are kept in.
pub(crate) const SLOT: usize = 1;

/// The chat frame's type and its one field, or `None` when the format skips the frame;
/// `Err(())` for frames carried as in the `sdk` format.
fn shape(frame: &Frame) -> Result<Option<(&'static str, &'static str, &str)>, ()> {
    let (event, tool) = match &frame.body {
        FrameBody::Event { event, tool } => (event, tool),
        FrameBody::ToolProgress { .. } => return Ok(Some(("tool_progress", "", ""))),
        _ => return Err(()),
    };
    Ok(match event {
        StreamEvent::RawResponse(r) => match r.as_ref() {
            RawEvent::Typed(ResponseEvent::OutputTextDelta { delta, .. }) => {
                Some(("token", "text", delta))
            }
            _ => None,
        },
        StreamEvent::AgentUpdated { new_agent } => Some(("agent_change", "agent", new_agent)),
        StreamEvent::RunItem(item) => match item.as_ref() {
            RunItem::ToolCall { raw_item, .. } => Some(("tool_start", "tool", &raw_item.name)),
            RunItem::ToolCallOutput { .. } => {
                Some(("tool_end", "tool", tool.as_deref().unwrap_or("")))
            }
            _ => None,
        },
    })
}

fn encode(frame: &Frame) -> Option<Bytes> {
    let (ty, key, val) = match shape(frame) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(()) => return Some(super::sdk::bytes(frame).clone()),
    };
    struct Chat<'a>(&'a Frame, &'a str, &'a str, &'a str);
    impl Serialize for Chat<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            FrameHead::of(self.0, self.1).write(&mut m)?;
            if let Some(n) = &self.0.nesting {
                m.serialize_entry("agent", n.agent())?;
                m.serialize_entry("depth", &n.depth)?;
                m.serialize_entry("parent_call_id", &n.parent_call_id)?;
            }
            match &self.0.body {
                FrameBody::ToolProgress {
                    call_id,
                    tool,
                    progress,
                    total,
                    message,
                } => write_progress(&mut m, call_id, tool, *progress, *total, message.as_deref())?,
                _ => m.serialize_entry(self.2, self.3)?,
            }
            m.end()
        }
    }
    serde_json::to_vec(&Chat(frame, ty, key, val))
        .ok()
        .map(Bytes::from)
}

/// The frame in the chat format (made once, shared), or `None` when the format skips it.
pub fn bytes(frame: &Frame) -> Option<&Bytes> {
    frame.encoded(SLOT, encode)
}

/// The chat frame's type name (the SSE `event:` name).
pub fn type_name(frame: &Frame) -> &'static str {
    match shape(frame) {
        Ok(Some((ty, _, _))) => ty,
        _ => frame.body.type_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn agent_changes_are_compact() {
        let run: Arc<str> = "run_1".into();
        let f = Frame::new(
            "s1".into(),
            7,
            run,
            FrameBody::Event {
                event: StreamEvent::AgentUpdated {
                    new_agent: "Billing".into(),
                },
                tool: None,
            },
        );
        assert_eq!(
            std::str::from_utf8(bytes(&f).unwrap()).unwrap(),
            r#"{"type":"agent_change","session_id":"s1","run_id":"run_1","seq":7,"agent":"Billing"}"#
        );
        assert_eq!(type_name(&f), "agent_change");
    }

    #[test]
    fn nested_tokens_say_their_agent_and_depth() {
        use crate::bus::Nesting;
        use crate::model::RawEvent;
        let ev = RawEvent::from_json(
            r#"{"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"Hi","sequence_number":3}"#,
        )
        .unwrap();
        let mut f = Frame::new(
            "s1".into(),
            8,
            "run_1".into(),
            FrameBody::Event {
                event: StreamEvent::RawResponse(Arc::new(ev)),
                tool: None,
            },
        );
        f.nesting = Some(Arc::new(Nesting {
            path: vec!["Orchestrator".into(), "Researcher".into()].into(),
            depth: 1,
            parent_call_id: "call_1".into(),
        }));
        assert_eq!(
            std::str::from_utf8(bytes(&f).unwrap()).unwrap(),
            r#"{"type":"token","session_id":"s1","run_id":"run_1","seq":8,"agent":"Researcher","depth":1,"parent_call_id":"call_1","text":"Hi"}"#
        );
        let p = Frame::new(
            "s1".into(),
            9,
            "run_1".into(),
            FrameBody::ToolProgress {
                call_id: "c".into(),
                tool: "t".into(),
                progress: 1.0,
                total: None,
                message: Some("half".into()),
            },
        );
        assert_eq!(
            std::str::from_utf8(bytes(&p).unwrap()).unwrap(),
            r#"{"type":"tool_progress","session_id":"s1","run_id":"run_1","seq":9,"call_id":"c","tool":"t","progress":1.0,"message":"half"}"#
        );
    }
}
