//! The `sdk` format: PROTOCOL.md's frames (`event` with the SDK's stream event, `run.completed`,
//! `run.failed`, `run.cancelled`, `tool.call`), each with `type`, `session_id`, `run_id`, `seq`.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::bus::{Frame, FrameBody};

/// The frame slot this format's bytes are kept in.
pub(crate) const SLOT: usize = 0;

/// The head every frame shares: `type`, `session_id`, `run_id`, `seq`.
pub(crate) struct FrameHead<'a> {
    pub ty: &'a str,
    pub session_id: &'a str,
    pub run_id: &'a str,
    pub seq: u64,
}

impl FrameHead<'_> {
    /// The head of `frame` under the type name `ty`.
    pub fn of<'a>(frame: &'a Frame, ty: &'a str) -> FrameHead<'a> {
        FrameHead {
            ty,
            session_id: &frame.session_id,
            run_id: &frame.run_id,
            seq: frame.seq,
        }
    }

    /// Writes the head's entries into a map.
    pub fn write<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("type", self.ty)?;
        m.serialize_entry("session_id", self.session_id)?;
        m.serialize_entry("run_id", self.run_id)?;
        m.serialize_entry("seq", &self.seq)
    }
}

struct SdkFrame<'a>(&'a Frame);

impl Serialize for SdkFrame<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut m = s.serialize_map(None)?;
        FrameHead::of(f, f.body.type_name()).write(&mut m)?;
        match &f.body {
            FrameBody::Event { event, .. } => m.serialize_entry("event", event)?,
            FrameBody::RunCompleted {
                final_output,
                last_agent,
                usage,
                trace_id,
            } => {
                m.serialize_entry("final_output", final_output)?;
                m.serialize_entry("last_agent", last_agent)?;
                m.serialize_entry("usage", usage)?;
                m.serialize_entry("trace_id", trace_id)?;
            }
            FrameBody::RunFailed {
                error_type,
                message,
            } => {
                #[derive(Serialize)]
                struct E<'a> {
                    #[serde(rename = "type")]
                    ty: &'a str,
                    message: &'a str,
                }
                m.serialize_entry(
                    "error",
                    &E {
                        ty: error_type,
                        message,
                    },
                )?;
            }
            FrameBody::RunCancelled { mode, by_run_id } => {
                m.serialize_entry("mode", mode.as_str())?;
                if let Some(by) = by_run_id {
                    m.serialize_entry("by_run_id", by.as_ref())?;
                }
            }
            FrameBody::SessionReset { epoch } => m.serialize_entry("epoch", epoch)?,
            FrameBody::RunQueued { position } => m.serialize_entry("position", position)?,
            FrameBody::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                m.serialize_entry("call_id", call_id)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("arguments", arguments)?;
            }
        }
        m.end()
    }
}

fn encode(frame: &Frame) -> Bytes {
    let mut buf = Vec::with_capacity(384);
    match serde_json::to_writer(&mut buf, &SdkFrame(frame)) {
        Ok(()) => Bytes::from(buf),
        Err(e) => Bytes::from(format!(
            "{{\"type\":\"error\",\"error\":{{\"code\":\"internal\",\"message\":\"frame could not be serialised: {e}\"}}}}"
        )),
    }
}

/// The frame as PROTOCOL.md's JSON, serialised on first use and shared.
pub fn bytes(frame: &Frame) -> &Bytes {
    match frame.encoded(SLOT, |f| Some(encode(f))) {
        Some(b) => b,
        // The slot always holds bytes for this format (`encode` never answers None).
        None => unreachable!("the sdk encoding of a frame is never skipped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StreamEvent;
    use std::sync::Arc;

    #[test]
    fn frames_serialise_once() {
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
        let a = bytes(&f).clone();
        assert_eq!(
            std::str::from_utf8(&a).unwrap(),
            r#"{"type":"event","session_id":"s1","run_id":"run_1","seq":7,"event":{"type":"agent_updated_stream_event","new_agent":{"name":"Billing"}}}"#
        );
        // The second call shares the same bytes.
        assert_eq!(bytes(&f).as_ptr(), a.as_ptr());
    }
}
