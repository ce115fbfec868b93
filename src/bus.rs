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
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use crate::events::StreamEvent;

/// How a run was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CancelMode {
    /// Stop now (the SDK's default).
    #[default]
    Immediate,
    /// Finish the current turn (tools, session save), then stop.
    AfterTurn,
}

impl CancelMode {
    /// `immediate` or `after_turn`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CancelMode::Immediate => "immediate",
            CancelMode::AfterTurn => "after_turn",
        }
    }
}

/// What a frame says.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameBody {
    /// A stream event; `tool` names the tool of `tool_called` / `tool_output` events.
    Event {
        /// The event.
        event: StreamEvent,
        /// The tool's name, for tool events.
        tool: Option<Arc<str>>,
    },
    /// The run finished with a final output.
    RunCompleted {
        /// The final output (text as a JSON string, structured output as JSON).
        final_output: Value,
        /// The agent that produced it.
        last_agent: String,
        /// `{requests, input_tokens, output_tokens, total_tokens}`.
        usage: Value,
        /// The run's trace id (`null` when tracing is off).
        trace_id: Option<String>,
    },
    /// The run failed.
    RunFailed {
        /// The SDK exception name.
        error_type: String,
        /// The message.
        message: String,
    },
    /// The run was cancelled.
    RunCancelled {
        /// How.
        mode: CancelMode,
    },
    /// A client-side tool call waiting for `tool.result`.
    ToolCall {
        /// The call id.
        call_id: String,
        /// The tool.
        name: String,
        /// Arguments JSON.
        arguments: String,
    },
}

impl FrameBody {
    /// The frame's `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            FrameBody::Event { .. } => "event",
            FrameBody::RunCompleted { .. } => "run.completed",
            FrameBody::RunFailed { .. } => "run.failed",
            FrameBody::RunCancelled { .. } => "run.cancelled",
            FrameBody::ToolCall { .. } => "tool.call",
        }
    }

    /// Whether the frame ends its run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            FrameBody::RunCompleted { .. }
                | FrameBody::RunFailed { .. }
                | FrameBody::RunCancelled { .. }
        )
    }
}

/// A published frame: numbered, serialised once, shared by everyone who receives it.
#[derive(Debug)]
pub struct Frame {
    /// The session (topic) it belongs to.
    pub session_id: Arc<str>,
    /// Gapless per-session number, from 1.
    pub seq: u64,
    /// The run it belongs to.
    pub run_id: Arc<str>,
    /// What it says.
    pub body: FrameBody,
    /// Encodings made once and shared by every subscriber (slots are the wire formats',
    /// see `crate::wire`; the bus does not know what they hold).
    encoded: [OnceLock<Option<Bytes>>; ENCODING_SLOTS],
}

/// How many per-frame encodings a frame can keep (one per stateless wire format).
pub const ENCODING_SLOTS: usize = 2;

impl Frame {
    /// Builds a frame (encoded later, once per format, when first needed).
    pub fn new(session_id: Arc<str>, seq: u64, run_id: Arc<str>, body: FrameBody) -> Frame {
        Frame {
            session_id,
            seq,
            run_id,
            body,
            encoded: Default::default(),
        }
    }

    /// The encoding kept in `slot`, made by `encode` on first use; `None` when the format
    /// skips this frame.
    pub fn encoded(
        &self,
        slot: usize,
        encode: impl FnOnce(&Frame) -> Option<Bytes>,
    ) -> Option<&Bytes> {
        self.encoded[slot % ENCODING_SLOTS]
            .get_or_init(|| encode(self))
            .as_ref()
    }

    /// The stream event, for `event` frames.
    pub fn event(&self) -> Option<&StreamEvent> {
        match &self.body {
            FrameBody::Event { event, .. } => Some(event),
            _ => None,
        }
    }
}

/// Sizes of a topic's queues.
#[derive(Clone, Copy, Debug)]
pub struct BusLimits {
    /// Frames kept per session for resume.
    pub history: usize,
    /// Frames a live subscriber may fall behind before it is told `lagged`.
    pub subscriber_queue: usize,
}

impl Default for BusLimits {
    fn default() -> Self {
        BusLimits {
            history: 4096,
            subscriber_queue: 1024,
        }
    }
}

struct TopicState {
    next_seq: u64,
    history: VecDeque<Arc<Frame>>,
    run_listeners: Vec<(Arc<str>, mpsc::UnboundedSender<Arc<Frame>>)>,
}

/// One session's topic.
pub struct Topic {
    session_id: Arc<str>,
    limits: BusLimits,
    state: Mutex<TopicState>,
    live: broadcast::Sender<Arc<Frame>>,
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
        let (live, _) = broadcast::channel(limits.subscriber_queue.max(1));
        Arc::new(Topic {
            session_id: session_id.into(),
            limits,
            state: Mutex::new(TopicState {
                next_seq: 1,
                history: VecDeque::with_capacity(limits.history.min(256)),
                run_listeners: Vec::new(),
            }),
            live,
        })
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
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let terminal = body.is_terminal();
        let frame = Arc::new(Frame::new(
            self.session_id.clone(),
            seq,
            run_id.clone(),
            body,
        ));
        if self.limits.history > 0 {
            if st.history.len() >= self.limits.history {
                st.history.pop_front();
            }
            st.history.push_back(frame.clone());
        }
        let _ = self.live.send(frame.clone());
        if !st.run_listeners.is_empty() {
            st.run_listeners.retain(|(rid, tx)| {
                if rid == run_id {
                    tx.send(frame.clone()).is_ok() && !terminal
                } else {
                    !tx.is_closed()
                }
            });
        }
        frame
    }

    /// A lossless listener for one run's frames (the library's `stream_events` uses it).
    pub fn listen_run(&self, run_id: Arc<str>) -> mpsc::UnboundedReceiver<Arc<Frame>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().run_listeners.push((run_id, tx));
        rx
    }

    /// The last seq published (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Subscribes: frames after `after_seq` from history, then live ones, with no gap and no
    /// duplicate. `None` means live frames only.
    pub fn subscribe(&self, after_seq: Option<u64>) -> Result<Subscription, HistoryTruncated> {
        let st = self.lock();
        let rx = self.live.subscribe();
        let last_published = st.next_seq - 1;
        let mut backlog = VecDeque::new();
        let mut last_seq = last_published;
        if let Some(after) = after_seq {
            let oldest = st.history.front().map_or(st.next_seq, |f| f.seq);
            if after + 1 < oldest && after < last_published {
                return Err(HistoryTruncated { oldest_seq: oldest });
            }
            backlog.extend(st.history.iter().filter(|f| f.seq > after).cloned());
            last_seq = after.min(last_published);
        }
        Ok(Subscription {
            backlog,
            rx,
            last_seq,
        })
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.live.receiver_count()
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
}

/// A subscriber of one topic.
pub struct Subscription {
    backlog: VecDeque<Arc<Frame>>,
    rx: broadcast::Receiver<Arc<Frame>>,
    last_seq: u64,
}

impl Subscription {
    /// The next delivery; `None` when the topic is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if let Some(f) = self.backlog.pop_front() {
            self.last_seq = f.seq;
            return Some(Delivery::Frame(f));
        }
        loop {
            match self.rx.recv().await {
                Ok(f) if f.seq <= self.last_seq => continue,
                Ok(f) => {
                    self.last_seq = f.seq;
                    return Some(Delivery::Frame(f));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(Delivery::Lagged {
                        resume_after_seq: self.last_seq,
                    })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A delivery if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        if let Some(f) = self.backlog.pop_front() {
            self.last_seq = f.seq;
            return Some(Delivery::Frame(f));
        }
        loop {
            match self.rx.try_recv() {
                Ok(f) if f.seq <= self.last_seq => continue,
                Ok(f) => {
                    self.last_seq = f.seq;
                    return Some(Delivery::Frame(f));
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    return Some(Delivery::Lagged {
                        resume_after_seq: self.last_seq,
                    })
                }
                Err(_) => return None,
            }
        }
    }

    /// The last seq delivered.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
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
            .or_insert_with(|| Topic::new(key, self.limits))
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
            .or_insert_with(|| Topic::new(session_id, self.limits))
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
            .or_insert_with(|| Topic::resuming(session_id, self.limits, after_seq))
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
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str) -> FrameBody {
        FrameBody::Event {
            event: StreamEvent::AgentUpdated {
                new_agent: t.into(),
            },
            tool: None,
        }
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
                Delivery::Lagged { .. } => panic!("lagged"),
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
            },
        );
        let run: Arc<str> = "r".into();
        let mut slow = t.subscribe(None).unwrap();
        for i in 0..20 {
            t.publish(&run, ev(&i.to_string()));
        }
        match slow.recv().await.unwrap() {
            Delivery::Lagged { resume_after_seq } => assert_eq!(resume_after_seq, 0),
            Delivery::Frame(_) => panic!("expected lagged"),
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
