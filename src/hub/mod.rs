//! The WebSocket hub: one [`connection`] per socket (the HTTP server authenticates the
//! upgrade at `GET /v1/ws` and hands the socket over). A connection follows any number of sessions, and a session
//! has any number of connections; each connection has one bounded outbound queue, drained by
//! a writer that also polls the sessions it follows, feeds everything ready and flushes once.
//!
//! - [`frames`]: the client frames (one tagged enum) and the hub's own small frames.
//! - [`connection`]: the per-socket protocol loop, generic over `Sink` / `Stream`.
//! - [`follow`]: a followed session as a stream the writer polls.

pub mod connection;
pub mod follow;
pub mod frames;

/// WebSocket read buffer: small, because it is resident on every connection (DESIGN.md);
/// client frames are small, and a larger message grows it while it is read.
pub const READ_BUFFER: usize = 1024;
/// WebSocket write buffer: large enough for feed-then-flush batching.
pub const WRITE_BUFFER: usize = 16 * 1024;
