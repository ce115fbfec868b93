//! The `chat` format: the compact relay a chat UI wants: `token` for each text delta,
//! `agent_change`, `tool_start`, `tool_end`; end frames and tool calls as in the `sdk` format.
//! Other stream events are skipped. Seq numbers are the session's, so both formats resume alike.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::sdk::FrameHead;
use crate::bus::{Frame, FrameBody};
use crate::events::StreamEvent;
use crate::items::RunItem;
use crate::model::{RawEvent, ResponseEvent};

/// The frame slot this format's bytes are kept in.
const SLOT: usize = 1;

/// The chat frame's type and its one field, or `None` when the format skips the frame;
/// `Err(())` for frames carried as in the `sdk` format.
fn shape(frame: &Frame) -> Result<Option<(&'static str, &'static str, &str)>, ()> {
    let FrameBody::Event { event, tool } = &frame.body else {
        return Err(());
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
            let mut m = s.serialize_map(Some(5))?;
            FrameHead::of(self.0, self.1).write(&mut m)?;
            m.serialize_entry(self.2, self.3)?;
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
}
