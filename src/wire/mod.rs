//! Wire formats: views of the session bus in the protocols that clients speak.
//!
//! - [`ui`]: what a chat UI sees of a run (texts, tool calls, agents, the end), shared by:
//! - [`ai_sdk`]: the Vercel AI SDK's UI message stream (`useChat`);
//! - [`ag_ui`]: AG-UI events (CopilotKit and other AG-UI clients).
//!
//! Each encoder is a pure state machine from bus frames to its protocol's SSE bytes.

pub mod ag_ui;
pub mod ai_sdk;
pub mod ui;

#[cfg(test)]
mod fixtures;

/// Appends one SSE event `data: {json}\n\n` to `out`.
pub(crate) fn sse_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        // Only a map with non-string keys can fail here, and no chunk has one.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}
