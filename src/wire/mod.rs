//! Wire formats: every way a subscriber can read the session bus is an encoding of its typed
//! frames, made here. The bus knows none of them.
//!
//! - [`sdk`]: PROTOCOL.md's full frames carrying the SDK's stream events (the default).
//! - [`chat`]: the compact relay a chat UI wants (`token`, `agent_change`, `tool_start`...).
//! - [`ui`]: what a chat UI sees of one run (texts, tool calls, agents, the end), shared by:
//! - [`ai_sdk`]: the Vercel AI SDK's UI message stream (`useChat`), and
//! - [`ag_ui`]: AG-UI events (CopilotKit and other AG-UI clients).
//!
//! A subscription also says how deep into nested runs it reads ([`Depth`]); every format
//! sees a nested frame's `path` and `depth` on [`Frame::nesting`](crate::bus::Frame).
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
use serde::{Deserialize, Deserializer, Serialize};

use crate::bus::Frame;

/// How deep into nested runs (agents called as tools) a subscription reads (PROTOCOL.md
/// section 6.4): `0` (the default) is the top run only, exactly the SDK's stream; a number
/// also takes nested runs down to that depth; `"all"` takes every depth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Depth {
    /// Frames down to this depth.
    #[default]
    Top,
    /// Frames down to this depth (1, 2, ...).
    Upto(u32),
    /// Every frame.
    All,
}

impl Depth {
    /// Whether a subscriber at this depth reads `frame`.
    pub fn admits(&self, frame: &Frame) -> bool {
        match self {
            Depth::Top => frame.nesting.is_none(),
            Depth::Upto(d) => frame.depth() <= *d,
            Depth::All => true,
        }
    }

    /// Whether a frame at nesting `depth` (0: a top run's) is shown.
    pub fn admits_depth(&self, depth: u32) -> bool {
        match self {
            Depth::Top => depth == 0,
            Depth::Upto(d) => depth <= *d,
            Depth::All => true,
        }
    }
}

impl Serialize for Depth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Depth::Top => s.serialize_u32(0),
            Depth::Upto(n) => s.serialize_u32(*n),
            Depth::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::N(0)) => Ok(Depth::Top),
            Ok(Raw::N(n)) => Ok(Depth::Upto(n)),
            Ok(Raw::S(s)) if s == "all" => Ok(Depth::All),
            Ok(Raw::S(s)) => s
                .parse::<u32>()
                .map(|n| if n == 0 { Depth::Top } else { Depth::Upto(n) })
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`depth` must be a number or \"all\", not {s:?}"
                    ))
                }),
            Err(_) => Err(serde::de::Error::custom(
                "`depth` must be a number or \"all\"",
            )),
        }
    }
}

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

    /// Gives `frame` its bytes in this format ahead of first use (`None`: the format skips
    /// it), as made by the node that numbered it.
    pub fn preset(&self, frame: &Frame, bytes: Option<Bytes>) {
        match self {
            Format::Sdk => frame.preset(sdk::SLOT, bytes),
            Format::Chat => frame.preset(chat::SLOT, bytes),
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
