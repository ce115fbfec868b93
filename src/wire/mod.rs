//! Wire formats: every way a subscriber can read the session bus is an encoding of its typed
//! frames, made here. The bus knows none of them.
//!
//! - [`sdk`]: PROTOCOL.md's full frames carrying the SDK's stream events (the default).
//! - [`chat`]: the compact relay a chat UI wants (`token`, `agent_change`, `tool_start`...).
//! - [`ui`]: what a chat UI sees of one run (texts, tool calls, agents, the end), shared by:
//! - [`ai_sdk`]: the Vercel AI SDK's UI message stream (`useChat`), and
//! - [`ag_ui`]: AG-UI events (CopilotKit and other AG-UI clients).
//!
//! Stateless formats are encoded once per frame and the bytes shared by every subscriber and
//! the history (a frame keeps one slot per such format). The AI SDK and AG-UI streams are
//! per-run state machines (ids, open parts, steps): each stream encodes the frames it follows
//! into its own SSE bytes.

pub mod ag_ui;
pub mod ai_sdk;
pub mod chat;
pub mod sdk;
pub mod ui;

#[cfg(test)]
mod fixtures;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bus::Frame;

/// Output format of a subscription.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Full frames with SDK stream events.
    #[default]
    Sdk,
    /// The compact chat relay.
    Chat,
}

impl Format {
    /// The bytes of `frame` in this format (made once, shared), or `None` when the format
    /// skips it.
    pub fn bytes<'f>(&self, frame: &'f Frame) -> Option<&'f Bytes> {
        match self {
            Format::Sdk => Some(sdk::bytes(frame)),
            Format::Chat => chat::bytes(frame),
        }
    }

    /// The SSE `event:` name of `frame` in this format.
    pub fn event_name(&self, frame: &Frame) -> &'static str {
        match self {
            Format::Sdk => frame.body.type_name(),
            Format::Chat => chat::type_name(frame),
        }
    }
}

/// Appends one SSE event `data: {json}\n\n` to `out`.
pub(crate) fn sse_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        // Only a map with non-string keys can fail here, and no chunk has one.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}
