//! Wire formats: every way a subscriber can read the session bus is an encoding of its typed
//! frames, made here. The bus knows none of them.
//!
//! - [`sdk`]: PROTOCOL.md's full frames carrying the SDK's stream events (the default).
//! - [`chat`]: the compact relay a chat UI wants (`token`, `agent_change`, `tool_start`...).
//!
//! Stateless formats are encoded once per frame and the bytes shared by every subscriber and
//! the history (a frame keeps one slot per such format).

pub mod chat;
pub mod sdk;

use bytes::Bytes;
use serde::Deserialize;

use crate::bus::Frame;

/// Output format of a subscription.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
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
