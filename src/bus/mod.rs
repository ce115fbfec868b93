//! The session bus: one topic per session, frames numbered by a gapless `seq`, a bounded
//! history for resume, and any number of subscribers.
//!
//! The bus carries typed frames and knows no wire format: a frame keeps the encodings that
//! `crate::wire` makes of it, once per format, on first use by a subscriber (a WebSocket or
//! SSE connection); every other subscriber and the history share those bytes. In-process
//! consumers (the library's `stream_events`) read the typed event and never pay for JSON. Live delivery uses a bounded broadcast ring: a subscriber that stops
//! reading never blocks the publisher or the others; when it falls behind by more than the
//! ring holds it is told [`Delivery::Lagged`] with the last `seq` it received, and resumes
//! from history with `after_seq`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use tokio::sync::broadcast;

mod frame;

pub use frame::{CancelMode, Frame, FrameBody, Nesting};

/// A budget on the bytes of retained frames over many topics (`limits.history_bytes`).
/// Topics count what they retain; when the total goes over, [`over`](Self::over) wakes the
/// owner of the topics, which drops the least recently used sessions' history.
#[derive(Debug)]
pub struct HistoryBudget {
    used: AtomicUsize,
    limit: usize,
    over: tokio::sync::Notify,
}

impl HistoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<HistoryBudget> {
        Arc::new(HistoryBudget {
            used: AtomicUsize::new(0),
            limit,
            over: tokio::sync::Notify::new(),
        })
    }

    /// Bytes retained now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits until the budget is (or goes) over its limit.
    pub async fn over(&self) {
        if self.used() > self.limit {
            return;
        }
        self.over.notified().await
    }

    fn add(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if now > self.limit && now - n <= self.limit {
            self.over.notify_one();
        }
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Sizes of a topic's queues.
#[derive(Clone, Debug)]
pub struct BusLimits {
    /// Frames kept per session for resume.
    pub history: usize,
    /// Frames a live subscriber may fall behind before it is told `lagged`.
    pub subscriber_queue: usize,
    /// The budget retained frames count against (none: only `history` bounds them).
    pub budget: Option<Arc<HistoryBudget>>,
}

impl Default for BusLimits {
    fn default() -> Self {
        BusLimits {
            history: 4096,
            subscriber_queue: 1024,
            budget: None,
        }
    }
}

struct TopicState {
    next_seq: u64,
    /// Retained frames with the bytes each was counted for.
    history: VecDeque<(Arc<Frame>, usize)>,
    /// Bytes retained.
    bytes: usize,
    /// Seqs `(from, to]` whose frames are superseded: a resume from anywhere in `[from, to]`
    /// continues after `to` (see [`Topic::resuming_after_gap`]).
    gap: (u64, u64),
    /// The live ring, made when the first subscriber comes and dropped when a publish finds
    /// none left: a topic nobody follows costs no ring (1024 slots are ~40 KiB).
    live: Option<broadcast::Sender<Arc<Frame>>>,
}

/// Where a topic's frames also go, in seq order (the cluster's bus stream): called under
/// the topic's lock with every frame as it is numbered, so it must never wait.
pub trait TopicMirror: Send + Sync {
    /// A frame was published.
    fn frame(&self, frame: &Arc<Frame>);
}

/// Makes the mirror of a session's topic (see [`TopicMirror`]).
pub trait MirrorFactory: Send + Sync {
    /// The mirror of `tenant`'s session `session_id`, whose numbering is `epoch`.
    fn mirror(&self, tenant: &Arc<str>, session_id: &Arc<str>, epoch: &str)
        -> Arc<dyn TopicMirror>;
}

/// One session's topic.
pub struct Topic {
    session_id: Arc<str>,
    limits: BusLimits,
    state: Mutex<TopicState>,
    mirror: OnceLock<Arc<dyn TopicMirror>>,
}

/// Resuming from a `seq` that history no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("history truncated: the oldest retained seq is {oldest_seq}")]
pub struct HistoryTruncated {
    /// The oldest seq still retained.
    pub oldest_seq: u64,
}

impl Topic {
    /// A new empty topic.
    pub fn new(session_id: impl Into<Arc<str>>, limits: BusLimits) -> Arc<Topic> {
        Arc::new(Topic {
            session_id: session_id.into(),
            state: Mutex::new(TopicState {
                next_seq: 1,
                history: VecDeque::with_capacity(limits.history.min(16)),
                bytes: 0,
                gap: (0, 0),
                live: None,
            }),
            limits,
            mirror: OnceLock::new(),
        })
    }

    /// Whether a mirror is set.
    pub fn has_mirror(&self) -> bool {
        self.mirror.get().is_some()
    }

    /// Sends every frame published from now on to `mirror` too (once; later calls are
    /// ignored).
    pub fn set_mirror(&self, mirror: Arc<dyn TopicMirror>) {
        let _ = self.mirror.set(mirror);
    }

    /// A new empty topic whose first frame will be `after_seq + 1`: a session whose earlier
    /// frames were retired keeps its numbering, so resuming clients see no reused seq.
    pub fn resuming(
        session_id: impl Into<Arc<str>>,
        limits: BusLimits,
        after_seq: u64,
    ) -> Arc<Topic> {
        let t = Topic::new(session_id, limits);
        t.lock().next_seq = after_seq + 1;
        t
    }

    /// Like [`resuming`](Self::resuming), where the frames in `(safe, after_seq]` are known to
    /// be superseded (a turn that was not saved and is published again, or numbers reserved
    /// and never used): a subscriber that saw up to any seq in `[safe, after_seq]` resumes
    /// after `after_seq` without missing anything.
    pub fn resuming_after_gap(
        session_id: impl Into<Arc<str>>,
        limits: BusLimits,
        safe: u64,
        after_seq: u64,
    ) -> Arc<Topic> {
        let t = Topic::resuming(session_id, limits, after_seq);
        t.lock().gap = (safe.min(after_seq), after_seq);
        t
    }

    /// The session id.
    pub fn session_id(&self) -> &Arc<str> {
        &self.session_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a frame: numbers it, serialises it, keeps it in history and hands it to
    /// every subscriber. Never blocks on a subscriber.
    pub fn publish(&self, run_id: &Arc<str>, body: FrameBody) -> Arc<Frame> {
        self.publish_nested(run_id, body, None)
    }

    /// Publishes a frame of a nested run (`nesting` set) or of a top run (`None`).
    pub fn publish_nested(
        &self,
        run_id: &Arc<str>,
        body: FrameBody,
        nesting: Option<Arc<Nesting>>,
    ) -> Arc<Frame> {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let mut frame = Frame::new(self.session_id.clone(), seq, run_id.clone(), body);
        frame.nesting = nesting;
        let frame = Arc::new(frame);
        self.keep_and_deliver(&mut st, &frame, true);
        frame
    }

    /// Takes a frame numbered elsewhere (the session's run executing on another node, read
    /// from the cluster's bus stream): kept and delivered like a published frame, never
    /// mirrored back. A frame at or below the last seq is ignored (`None`): this topic has
    /// it already.
    pub fn relay(&self, frame: Frame) -> Option<Arc<Frame>> {
        let mut st = self.lock();
        if frame.seq < st.next_seq {
            return None;
        }
        st.next_seq = frame.seq + 1;
        let frame = Arc::new(frame);
        self.keep_and_deliver(&mut st, &frame, false);
        Some(frame)
    }

    /// Continues the numbering after `seq`, the session's last frame on the cluster's bus
    /// stream (written by this node or another): ahead of this topic, the retained frames
    /// are dropped (a resume from them would miss the frames in between); behind it (a
    /// numbering loaded from the store's reservation), the numbering comes back to the bus's,
    /// unless this topic holds frames past `seq` the bus has not taken yet. Answers whether
    /// the numbering moved.
    pub fn continue_after(&self, seq: u64) -> bool {
        let mut st = self.lock();
        if seq + 1 == st.next_seq {
            return false;
        }
        if seq + 1 < st.next_seq {
            if st.history.back().is_some_and(|(f, _)| f.seq > seq) {
                return false;
            }
            st.next_seq = seq + 1;
            st.gap = (0, 0);
            return true;
        }
        st.next_seq = seq + 1;
        drop(st);
        self.drop_history();
        true
    }

    /// A numbering loaded with a superseded gap (see [`resuming_after_gap`](Self::resuming_after_gap))
    /// that has published nothing since continues right after the gap's start instead:
    /// in a cluster, when the bus stream holds no frame of the session, the seqs reserved
    /// past the last one known published were never used by any node. Answers whether it
    /// moved.
    pub fn continue_after_safe(&self) -> bool {
        let mut st = self.lock();
        let (from, to) = st.gap;
        if to == 0 || st.next_seq != to + 1 {
            return false;
        }
        st.next_seq = from + 1;
        st.gap = (0, 0);
        true
    }

    fn keep_and_deliver(&self, st: &mut TopicState, frame: &Arc<Frame>, mirror: bool) {
        if self.limits.history > 0 {
            if st.history.len() >= self.limits.history {
                if let Some((_, n)) = st.history.pop_front() {
                    st.bytes -= n;
                    if let Some(b) = &self.limits.budget {
                        b.sub(n);
                    }
                }
            }
            let n = frame.approx_bytes();
            st.history.push_back((frame.clone(), n));
            st.bytes += n;
            if let Some(b) = &self.limits.budget {
                b.add(n);
            }
        }
        if mirror {
            if let Some(m) = self.mirror.get() {
                m.frame(frame);
            }
        }
        if let Some(live) = &st.live {
            if live.send(frame.clone()).is_err() {
                // Nobody follows any more: free the ring.
                st.live = None;
            }
        }
    }

    /// Drops the retained frames (resuming from before them then gets `history_truncated`);
    /// answers the bytes freed.
    pub fn drop_history(&self) -> usize {
        let mut st = self.lock();
        st.history.clear();
        let n = std::mem::take(&mut st.bytes);
        if let Some(b) = &self.limits.budget {
            b.sub(n);
        }
        n
    }

    /// Frees the live ring if nobody follows the topic any more (the ring is otherwise only
    /// freed by the next publish); answers whether it did.
    pub fn release_idle_ring(&self) -> bool {
        let mut st = self.lock();
        if st.live.as_ref().is_some_and(|l| l.receiver_count() == 0) {
            st.live = None;
            return true;
        }
        false
    }

    /// Bytes of retained frames.
    pub fn retained_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Tells the subscribers that the session's numbering restarted under `epoch` (they get
    /// [`Delivery::Reset`]); the topic is not used afterwards.
    pub fn reset(&self, epoch: &str) {
        self.drop_history();
        let frame = Frame::new(
            self.session_id.clone(),
            0,
            Arc::from(""),
            FrameBody::SessionReset {
                epoch: epoch.to_owned(),
            },
        );
        if let Some(live) = &self.lock().live {
            let _ = live.send(Arc::new(frame));
        }
    }

    /// The last seq published (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Subscribes: frames after `after_seq` from history, then live ones, with no gap and no
    /// duplicate. `None` means live frames only.
    pub fn subscribe(&self, after_seq: Option<u64>) -> Result<Subscription, HistoryTruncated> {
        let mut st = self.lock();
        let queue = self.limits.subscriber_queue.max(1);
        let rx = st
            .live
            .get_or_insert_with(|| broadcast::channel(queue).0)
            .subscribe();
        let last_published = st.next_seq - 1;
        let mut backlog = VecDeque::new();
        let mut last_seq = last_published;
        // A resume inside the superseded gap continues after it.
        let after_seq = after_seq.map(|a| {
            let (from, to) = st.gap;
            if to > 0 && a >= from && a <= to {
                to
            } else {
                a
            }
        });
        if let Some(after) = after_seq {
            let oldest = st.history.front().map_or(st.next_seq, |(f, _)| f.seq);
            if after + 1 < oldest && after < last_published {
                return Err(HistoryTruncated { oldest_seq: oldest });
            }
            if after > last_published {
                // A seq this numbering never reached: the client saw another numbering.
                return Err(HistoryTruncated { oldest_seq: oldest });
            }
            backlog.extend(
                st.history
                    .iter()
                    .filter(|(f, _)| f.seq > after)
                    .map(|(f, _)| f.clone()),
            );
            last_seq = after.min(last_published);
        }
        Ok(Subscription {
            backlog,
            rx,
            last_seq,
            replayed: false,
        })
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().live.as_ref().map_or(0, |l| l.receiver_count())
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        if let Some(b) = &self.limits.budget {
            b.sub(self.lock().bytes);
        }
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Delivery {
    /// The next frame.
    Frame(Arc<Frame>),
    /// The subscriber fell behind; resubscribe with `after_seq = resume_after_seq`.
    Lagged {
        /// The last seq delivered.
        resume_after_seq: u64,
    },
    /// The session's numbering restarted (it was deleted): resubscribe under `epoch`.
    Reset {
        /// The new epoch.
        epoch: String,
    },
}

/// The reset notice a frame carries, if it is one.
fn reset_notice(f: &Frame) -> Option<Delivery> {
    match &f.body {
        FrameBody::SessionReset { epoch } => Some(Delivery::Reset {
            epoch: epoch.clone(),
        }),
        _ => None,
    }
}

/// A subscriber of one topic.
pub struct Subscription {
    backlog: VecDeque<Arc<Frame>>,
    rx: broadcast::Receiver<Arc<Frame>>,
    last_seq: u64,
    /// Whether the last frame came from history (a resume) rather than live.
    replayed: bool,
}

impl Subscription {
    /// The next delivery; `None` when the topic is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if let Some(d) = self.next_replayed() {
            return Some(d);
        }
        loop {
            match self.rx.recv().await {
                Ok(f) => {
                    if let Some(d) = self.live(f) {
                        return Some(d);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(self.lagged()),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A delivery if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        if let Some(d) = self.next_replayed() {
            return Some(d);
        }
        loop {
            match self.rx.try_recv() {
                Ok(f) => {
                    if let Some(d) = self.live(f) {
                        return Some(d);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Some(self.lagged()),
                Err(_) => return None,
            }
        }
    }

    /// The next replayed frame, if any are left; otherwise marks what follows as live.
    fn next_replayed(&mut self) -> Option<Delivery> {
        let Some(f) = self.backlog.pop_front() else {
            self.replayed = false;
            return None;
        };
        self.last_seq = f.seq;
        self.replayed = true;
        Some(Delivery::Frame(f))
    }

    /// What a live frame delivers: a reset notice, the frame, or nothing (already delivered
    /// from the backlog).
    fn live(&mut self, f: Arc<Frame>) -> Option<Delivery> {
        if let Some(reset) = reset_notice(&f) {
            return Some(reset);
        }
        if f.seq <= self.last_seq {
            return None;
        }
        self.last_seq = f.seq;
        Some(Delivery::Frame(f))
    }

    /// The ring overtook this subscriber: it resumes after the last seq it got.
    fn lagged(&self) -> Delivery {
        Delivery::Lagged {
            resume_after_seq: self.last_seq,
        }
    }

    /// The last seq delivered.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether the last frame delivered came from history (a resume) rather than live: its
    /// time since publishing is not a delivery latency.
    pub fn replayed(&self) -> bool {
        self.replayed
    }
}

/// All topics, keyed by session (the server prefixes the tenant).
#[derive(Clone, Default)]
pub struct Bus {
    topics: Arc<DashMap<String, Arc<Topic>>>,
    limits: BusLimits,
}

impl Bus {
    /// An empty bus with these limits.
    pub fn new(limits: BusLimits) -> Self {
        Bus {
            topics: Arc::new(DashMap::new()),
            limits,
        }
    }

    /// The topic for `key`, created if new.
    pub fn topic(&self, key: &str) -> Arc<Topic> {
        if let Some(t) = self.topics.get(key) {
            return t.clone();
        }
        self.topics
            .entry(key.to_owned())
            .or_insert_with(|| Topic::new(key, self.limits.clone()))
            .clone()
    }

    /// The topic stored under `key` (e.g. `"{tenant}/{session}"`), created if new, whose
    /// frames show `session_id` (the id the client knows).
    pub fn topic_with(&self, key: &str, session_id: &str) -> Arc<Topic> {
        if let Some(t) = self.topics.get(key) {
            return t.clone();
        }
        self.topics
            .entry(key.to_owned())
            .or_insert_with(|| Topic::new(session_id, self.limits.clone()))
            .clone()
    }

    /// Like [`topic_with`](Self::topic_with), but a topic created now numbers its frames
    /// after `after_seq` (see [`Topic::resuming`]).
    pub fn topic_resuming(&self, key: &str, session_id: &str, after_seq: u64) -> Arc<Topic> {
        if let Some(t) = self.topics.get(key) {
            return t.clone();
        }
        self.topics
            .entry(key.to_owned())
            .or_insert_with(|| Topic::resuming(session_id, self.limits.clone(), after_seq))
            .clone()
    }

    /// The topic for `key` if it exists.
    pub fn get(&self, key: &str) -> Option<Arc<Topic>> {
        self.topics.get(key).map(|t| t.clone())
    }

    /// Forgets a topic (its subscribers see the end of their subscription).
    pub fn remove(&self, key: &str) -> Option<Arc<Topic>> {
        self.topics.remove(key).map(|(_, t)| t)
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether there are no topics.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The limits new topics get.
    pub fn limits(&self) -> BusLimits {
        self.limits.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StreamEvent;

    fn ev(t: &str) -> FrameBody {
        FrameBody::Event {
            event: StreamEvent::AgentUpdated {
                new_agent: t.into(),
            },
            tool: None,
        }
    }

    #[tokio::test]
    async fn relayed_frames_keep_their_seqs_and_the_numbering_follows_the_bus() {
        let run: Arc<str> = "run_1".into();
        // Loaded from a reservation: 10 known published, up to 100 reserved.
        let t = Topic::resuming_after_gap("s", BusLimits::default(), 10, 100);
        assert!(t.continue_after_safe(), "nothing on the bus: on after 10");
        assert_eq!(t.last_seq(), 10);
        let mut sub = t.subscribe(Some(10)).unwrap();
        // Frames numbered on another node come in with their seqs, once.
        assert!(t
            .relay(Frame::new("s".into(), 11, run.clone(), ev("x")))
            .is_some());
        assert!(t
            .relay(Frame::new("s".into(), 11, run.clone(), ev("x")))
            .is_none());
        assert!(t
            .relay(Frame::new("s".into(), 12, run.clone(), ev("y")))
            .is_some());
        for want in [11, 12] {
            match sub.recv().await.unwrap() {
                Delivery::Frame(f) => assert_eq!(f.seq, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        // The bus moved on without this node: the numbering follows, history goes.
        assert!(t.continue_after(20));
        assert_eq!(t.publish(&run, ev("z")).seq, 21);
        assert!(!t.continue_after(21), "in step");
        // Behind the bus's last frame with frames of its own not on the bus: kept.
        assert!(!t.continue_after(15));
        assert_eq!(t.last_seq(), 21);
    }

    #[tokio::test]
    async fn seq_is_gapless_and_resume_has_no_duplicates() {
        let t = Topic::new("s", BusLimits::default());
        let run: Arc<str> = "run_1".into();
        for i in 0..5 {
            t.publish(&run, ev(&format!("a{i}")));
        }
        let mut sub = t.subscribe(Some(2)).unwrap();
        t.publish(&run, ev("live"));
        let mut seen = vec![];
        for _ in 0..4 {
            match sub.recv().await.unwrap() {
                Delivery::Frame(f) => seen.push(f.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, vec![3, 4, 5, 6]);
        assert!(sub.try_recv().is_none());
    }

    #[tokio::test]
    async fn slow_subscriber_lags_without_blocking() {
        let t = Topic::new(
            "s",
            BusLimits {
                history: 100,
                subscriber_queue: 4,
                budget: None,
            },
        );
        let run: Arc<str> = "r".into();
        let mut slow = t.subscribe(None).unwrap();
        for i in 0..20 {
            t.publish(&run, ev(&i.to_string()));
        }
        match slow.recv().await.unwrap() {
            Delivery::Lagged { resume_after_seq } => assert_eq!(resume_after_seq, 0),
            other => panic!("expected lagged, got {other:?}"),
        }
        let mut again = t.subscribe(Some(0)).unwrap();
        let mut n = 0;
        while let Some(Delivery::Frame(_)) = again.try_recv() {
            n += 1;
        }
        assert_eq!(n, 20);
    }

    #[test]
    fn truncated_history_is_reported() {
        let t = Topic::new(
            "s",
            BusLimits {
                history: 3,
                subscriber_queue: 4,
                budget: None,
            },
        );
        let run: Arc<str> = "r".into();
        for i in 0..10 {
            t.publish(&run, ev(&i.to_string()));
        }
        assert_eq!(
            t.subscribe(Some(2)).err(),
            Some(HistoryTruncated { oldest_seq: 8 })
        );
        assert!(t.subscribe(Some(7)).is_ok());
        assert!(t.subscribe(Some(10)).is_ok());
    }
}
