//! A followed session as a stream of what the connection's writer sends: the session's
//! frames in the subscription's format and down to its depth, ended by `lagged` or by the
//! session's reset. The writer polls every session its connection follows itself (no task
//! per subscription), so one wake-up and one flush carry whatever was published meanwhile.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{AbortHandle, Stream};

use crate::bus::{Delivery, Subscription};
use crate::hub::connection::Out;
use crate::hub::frames;
use crate::service::error::ApiError;
use crate::service::{Core, Depth, Format, SubscriptionCount};

/// A followed session, as the writer polls it.
pub struct Followed(Pin<Box<dyn Stream<Item = Out> + Send>>);

impl std::fmt::Debug for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Followed")
    }
}

impl Stream for Followed {
    type Item = Out;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// The reader's handle on a session its writer follows.
#[derive(Debug)]
pub struct Handle {
    abort: AbortHandle,
    ended: Arc<AtomicBool>,
}

impl Handle {
    /// Stops following (the writer drops the subscription at its next poll).
    pub fn abort(&self) {
        self.abort.abort();
    }

    /// Whether the following ended (stopped, lagged, reset, or the session went away).
    pub fn is_finished(&self) -> bool {
        self.abort.is_aborted() || self.ended.load(Ordering::Acquire)
    }
}

/// Marks its following ended when dropped (with the stream's state).
struct Ended(Arc<AtomicBool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The state a followed stream keeps between frames.
struct Local {
    core: Arc<Core>,
    sub: Subscription,
    format: Format,
    depth: Depth,
    session_id: Arc<str>,
    done: bool,
    _counted: SubscriptionCount,
    _ended: Ended,
}

fn abortable(
    s: impl Stream<Item = Out> + Send + 'static,
    ended: Arc<AtomicBool>,
) -> (Followed, Handle) {
    let (s, abort) = futures::stream::abortable(s);
    (Followed(Box::pin(s)), Handle { abort, ended })
}

/// Follows a subscription of this node's bus, in a format and down to a depth of nested
/// runs.
pub fn local(
    core: &Arc<Core>,
    sub: Subscription,
    (format, depth): (Format, Depth),
    session_id: Arc<str>,
) -> (Followed, Handle) {
    let ended = Arc::new(AtomicBool::new(false));
    let st = Local {
        _counted: core.count_subscription(),
        core: core.clone(),
        sub,
        format,
        depth,
        session_id,
        done: false,
        _ended: Ended(ended.clone()),
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.sub.recv().await? {
                Delivery::Frame(f) => {
                    if !st.depth.admits(&f) || st.format.bytes(&f).is_none() {
                        continue;
                    }
                    let out = Out::Frame {
                        frame: f,
                        format: st.format,
                        live: !st.sub.replayed(),
                    };
                    return Some((out, st));
                }
                Delivery::Reset { epoch } => {
                    // The session was deleted: its numbering restarted under a new epoch.
                    let e = ApiError::HistoryTruncated {
                        after_seq: st.sub.last_seq(),
                        oldest_seq: 1,
                        epoch: Some(epoch),
                    };
                    st.done = true;
                    return Some((Out::Own(e.frame(None)), st));
                }
                Delivery::Lagged { resume_after_seq } => {
                    crate::service::telemetry::Lagged {
                        session_id: &st.session_id,
                        resume_after_seq,
                        surface: "ws",
                    }
                    .emit(&st.core.metrics);
                    st.done = true;
                    let notice = frames::lagged(&st.session_id, resume_after_seq);
                    return Some((Out::Own(notice), st));
                }
            }
        }
    });
    abortable(s, ended)
}

/// Follows the bus stream (a session followed in a cluster). It reads at the pace of the
/// connection (the consumer pulls as frames are sent), so it is never `lagged`; retained
/// frames that no longer reach back to `after_seq` end it with `history_truncated`.
#[cfg(feature = "nats")]
pub fn remote(
    core: &Arc<Core>,
    follow: crate::cluster::bus::RemoteFollow,
    (format, depth): (Format, Depth),
    after_seq: u64,
    epoch: String,
) -> (Followed, Handle) {
    use crate::cluster::bus::RemoteDelivery;
    struct Remote {
        follow: crate::cluster::bus::RemoteFollow,
        format: Format,
        depth: Depth,
        after_seq: u64,
        epoch: Option<String>,
        _counted: SubscriptionCount,
        _ended: Ended,
    }
    let ended = Arc::new(AtomicBool::new(false));
    let st = Remote {
        follow,
        format,
        depth,
        after_seq,
        epoch: Some(epoch),
        _counted: core.count_subscription(),
        _ended: Ended(ended.clone()),
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        let epoch = st.epoch.take()?;
        loop {
            match st.follow.recv().await? {
                RemoteDelivery::Frame(f) => {
                    if !st.depth.admits_depth(f.depth) {
                        continue;
                    }
                    if let Some(b) = f.bytes(st.format) {
                        let out = Out::Relayed(Box::new(b.clone()));
                        st.epoch = Some(epoch);
                        return Some((out, st));
                    }
                }
                RemoteDelivery::Truncated { oldest_seq } => {
                    let e = ApiError::HistoryTruncated {
                        after_seq: st.after_seq,
                        oldest_seq,
                        epoch: Some(epoch),
                    };
                    // `epoch` stays taken: the stream ends after this.
                    return Some((Out::Own(e.frame(None)), st));
                }
            }
        }
    });
    abortable(s, ended)
}
