//! What a run request does when its session already has a run (PROTOCOL.md 6.2,
//! double-texting): a session policy that requests and the `[sessions]` config both name.

use serde::{Deserialize, Serialize};

/// What a run request does when its session already has a run (PROTOCOL.md 6.2).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBusy {
    /// Refused with `session_busy` (HTTP 409).
    #[default]
    Reject,
    /// Accepted, queued, started when the runs before it end, in order.
    Enqueue,
    /// The running run ends (`run.cancelled {mode: "interrupted"}`) keeping its completed
    /// turns; this one starts next.
    Interrupt,
    /// The running run ends (`run.cancelled {mode: "rolled_back"}`) and its items are
    /// removed; this one starts next.
    Rollback,
}
