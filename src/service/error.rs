//! [`ApiError`]: every error the service answers a client with, whatever the transport: its
//! PROTOCOL.md code and the JSON shape `{"error":{"code","message"}}`. The HTTP status of
//! each lives with the HTTP server (`crate::server::error`).

use serde::Serialize;

/// An error answered to a client. Messages say what was wrong and what to do; internal
/// details are logged, never sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, an unknown frame type, a missing or wrong field.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad API key.
    #[error(
        "a valid API key is required: send `Authorization: Bearer <key>` or `?access_token=<key>`"
    )]
    Unauthorized,
    /// A valid key without the right to this endpoint.
    #[error("{0}")]
    Forbidden(String),
    /// No agent by that name.
    #[error("no agent named `{0}`; GET /v1/agents lists them")]
    UnknownAgent(String),
    /// A session or run that does not exist (or is another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// A WebSocket message over the frame limit.
    #[error("the frame has {size} bytes and the limit is {limit}; send smaller frames")]
    FrameTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An HTTP request body over its endpoint's limit.
    #[error(
        "the request body is over the limit of {limit} bytes ({setting}); send smaller requests"
    )]
    BodyTooLarge {
        /// The limit.
        limit: usize,
        /// The setting that raises it.
        setting: &'static str,
    },
    /// A run input over the input limit.
    #[error("the input has {size} bytes and the limit is {limit}; shorten it")]
    InputTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A limit on concurrent runs or connections was reached.
    #[error("{0}")]
    Overloaded(String),
    /// The request conflicts with the resource's state (a call already decided, a run not
    /// waiting for a decision).
    #[error("{0}")]
    Conflict(String),
    /// The session already has a run in progress (one run per session at a time).
    #[error("{0}")]
    SessionBusy(String),
    /// Resume from a seq that history no longer holds.
    #[error("seq {after_seq} cannot be resumed exactly: it is older than the session's retained history or of another numbering (oldest retained seq: {oldest_seq}); resubscribe with the epoch given and after_seq >= {}, and reload the conversation's items", oldest_seq.saturating_sub(1))]
    HistoryTruncated {
        /// What was asked for.
        after_seq: u64,
        /// The oldest retained seq.
        oldest_seq: u64,
        /// The session's epoch (its current numbering).
        epoch: Option<String>,
    },
    /// The server is shutting down.
    #[error("the server is shutting down; retry on another instance or later")]
    ShuttingDown,
    /// Not in this build.
    #[error("{0}")]
    NotImplemented(String),
    /// Something broke inside; the details are in the server log.
    #[error("internal error; the server log has the details")]
    Internal,
}

impl ApiError {
    /// The PROTOCOL.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::UnknownAgent(_) => "unknown_agent",
            ApiError::NotFound(_) => "not_found",
            ApiError::FrameTooLarge { .. } => "frame_too_large",
            ApiError::InputTooLarge { .. } => "input_too_large",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::SessionBusy(_) => "session_busy",
            ApiError::Conflict(_) => "conflict",
            ApiError::HistoryTruncated { .. } => "history_truncated",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal => "internal",
        }
    }

    /// The `error` object: `{code, message}` (plus `oldest_seq` for `history_truncated`).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
            oldest_seq: match self {
                ApiError::HistoryTruncated { oldest_seq, .. } => Some(*oldest_seq),
                _ => None,
            },
            epoch: match self {
                ApiError::HistoryTruncated { epoch, .. } => epoch.clone(),
                _ => None,
            },
        }
    }

    /// The WebSocket `error` frame answering request `id`.
    pub fn frame(&self, id: Option<&serde_json::Value>) -> String {
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a serde_json::Value>,
            error: ErrorBody,
        }
        serde_json::to_string(&Frame {
            ty: "error",
            id,
            error: self.body(),
        })
        .unwrap_or_else(|_| {
            r#"{"type":"error","error":{"code":"internal","message":"internal error"}}"#.into()
        })
    }
}

/// The code of an error answer, carried as a response extension so it can be counted.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// The `error` object of answers and frames.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorBody {
    /// The error code.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
    /// For `history_truncated`: the oldest retained seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
    /// For `history_truncated`: the session's current epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}
