//! The session bus on JetStream: one stream (`{prefix}_bus`) with a subject per tenant and
//! session. The node running a session's run publishes each frame, in seq order, with an
//! expected-last-subject-sequence guard, so two nodes can never both write one session: a
//! publish that finds another node's frame last goes on only when that frame is older (a
//! lower seq: the session moved here), and otherwise stops this node writing the session.
//! A client on any node follows a session through an ordered consumer: exact replay of the
//! retained frames after its `after_seq`, then live frames.
//!
//! A message holds the frame's encodings in both stateless wire formats (SDK JSON, chat), so
//! followers on other nodes send the very bytes a follower on the running node gets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::node::{Cluster, ClusterError};
use crate::bus::{Frame, MirrorFactory, TopicMirror};
use crate::wire::Format;

const SEQ: &str = "Cb-Seq";
const RUN: &str = "Cb-Run";
const DEPTH: &str = "Cb-Depth";
const EPOCH: &str = "Cb-Epoch";
const CHAT: &str = "Cb-Chat";
const TOOL: &str = "Cb-Tool";

/// Hex of `s` (subject tokens may not hold `.`, `*`, `>` or spaces).
fn token(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Cluster {
    /// The bus subject of `tenant`'s session `session_id`.
    pub fn bus_subject(&self, tenant: &str, session_id: &str) -> String {
        format!(
            "{}.bus.{}.{}",
            self.config.prefix,
            token(tenant),
            token(session_id)
        )
    }

    /// The stream sequence and frame seq of the last frame on `subject` (zeros when none).
    pub(crate) async fn last_on(
        &self,
        subject: &str,
    ) -> Result<(u64, u64, Option<String>), ClusterError> {
        match self.bus.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let seq = header_u64(&m.headers, SEQ);
                let epoch = m.headers.get(EPOCH).map(|v| v.as_str().to_owned());
                Ok((m.sequence, seq, epoch))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((0, 0, None)),
            Err(e) => Err(ClusterError::JetStream {
                what: "read a session's last frame".into(),
                reason: e.to_string(),
            }),
        }
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    h.get(name)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Makes the mirror of each session topic ([`MirrorFactory`] for the session owners).
pub struct BusMirrors {
    /// The cluster.
    pub cluster: Arc<Cluster>,
}

impl MirrorFactory for BusMirrors {
    fn mirror(
        &self,
        tenant: &Arc<str>,
        session_id: &Arc<str>,
        epoch: &str,
    ) -> Arc<dyn TopicMirror> {
        let (tx, rx) = mpsc::channel(self.cluster.config.bus_queue.max(1));
        let m = Arc::new(SessionMirror {
            tx,
            stopped: Arc::new(AtomicBool::new(false)),
            subject: self.cluster.bus_subject(tenant, session_id),
        });
        tokio::spawn(publish_loop(
            self.cluster.clone(),
            m.subject.clone(),
            epoch.to_owned(),
            rx,
            m.stopped.clone(),
        ));
        m
    }
}

/// One session's mirror: a bounded queue to its publisher task.
struct SessionMirror {
    tx: mpsc::Sender<Arc<Frame>>,
    stopped: Arc<AtomicBool>,
    subject: String,
}

impl TopicMirror for SessionMirror {
    fn frame(&self, frame: &Arc<Frame>) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(frame.clone()).is_err() {
            // Full (NATS slower than the session for `bus_queue` frames) or stopped: the
            // frames from here do not go to other nodes; their followers see the gap.
            self.stopped.store(true, Ordering::Relaxed);
            tracing::warn!(subject = %self.subject, seq = frame.seq,
                "the bus stream is behind by more than cluster.bus_queue frames; this session's frames stop going to other nodes until it is next activated");
        }
    }
}

/// The message of a frame: its headers and both encodings.
fn message(frame: &Frame, epoch: &str) -> (HeaderMap, Bytes) {
    let sdk = Format::Sdk.bytes(frame).cloned().unwrap_or_default();
    let chat = Format::Chat.bytes(frame).cloned();
    let mut h = HeaderMap::new();
    h.insert(SEQ, frame.seq.to_string().as_str());
    h.insert(RUN, &*frame.run_id);
    h.insert(DEPTH, frame.depth().to_string().as_str());
    h.insert(EPOCH, epoch);
    h.insert(CHAT, if chat.is_some() { "1" } else { "0" });
    if let crate::bus::FrameBody::Event {
        tool: Some(tool), ..
    } = &frame.body
    {
        h.insert(TOOL, &**tool);
    }
    h.insert("Nats-Msg-Id", format!("{epoch}:{}", frame.seq).as_str());
    let mut b = BytesMut::with_capacity(4 + sdk.len() + chat.as_ref().map_or(0, Bytes::len));
    b.put_u32(sdk.len() as u32);
    b.put_slice(&sdk);
    if let Some(c) = &chat {
        b.put_slice(c);
    }
    (h, b.freeze())
}

async fn publish_loop(
    cluster: Arc<Cluster>,
    subject: String,
    epoch: String,
    mut rx: mpsc::Receiver<Arc<Frame>>,
    stopped: Arc<AtomicBool>,
) {
    let mut last: Option<u64> = None;
    while let Some(frame) = rx.recv().await {
        if let Err(e) = publish_one(&cluster, &subject, &epoch, &frame, &mut last).await {
            stopped.store(true, Ordering::Relaxed);
            tracing::error!(subject = %subject, seq = frame.seq, error = %e,
                "this session's frames stop going to the bus stream");
            return;
        }
    }
}

/// Publishes one frame after `last` (the subject's last stream sequence, read when unknown),
/// retrying for `outage_wait_ms` while NATS is away.
async fn publish_one(
    cluster: &Cluster,
    subject: &str,
    epoch: &str,
    frame: &Frame,
    last: &mut Option<u64>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(cluster.config.outage_wait_ms);
    let (headers, payload) = message(frame, epoch);
    loop {
        let expected = match *last {
            Some(l) => l,
            None => match cluster.last_on(subject).await {
                Ok((s, _, _)) => {
                    *last = Some(s);
                    s
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for NATS");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone())
            .expected_last_subject_sequence(expected);
        let acked = match cluster.js.send_publish(subject.to_owned(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => {
                *last = Some(ack.sequence);
                return Ok(());
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another node wrote the session since: go on only after older frames.
                let (s, their_seq, _) =
                    cluster.last_on(subject).await.map_err(|e| e.to_string())?;
                if their_seq >= frame.seq {
                    return Err(format!(
                        "another node publishes this session (its frame {their_seq} is not older than this node's {}); two nodes never write one session",
                        frame.seq
                    ));
                }
                *last = Some(s);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for NATS to publish a frame");
                *last = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(format!(
                    "NATS did not take the frame within cluster.outage_wait_ms: {e}"
                ))
            }
        }
    }
}

/// A frame from the bus stream, with its encodings.
#[derive(Clone, Debug)]
pub struct Relayed {
    /// Its seq.
    pub seq: u64,
    /// Its run.
    pub run_id: String,
    /// Its nesting depth (0: the top run's).
    pub depth: u32,
    /// The SDK JSON encoding.
    pub sdk: Bytes,
    /// The chat encoding (`None` when the chat format skips the frame).
    pub chat: Option<Bytes>,
    /// The tool of a tool event.
    pub tool: Option<String>,
    /// The session's epoch when it was published.
    pub epoch: Option<String>,
}

impl Relayed {
    /// The bytes of `format`.
    pub fn bytes(&self, format: Format) -> Option<&Bytes> {
        match format {
            Format::Sdk => Some(&self.sdk),
            Format::Chat => self.chat.as_ref(),
        }
    }

    fn parse(m: &async_nats::jetstream::Message) -> Option<Relayed> {
        let h = m.headers.as_ref()?;
        let p = &m.payload;
        if p.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if p.len() < 4 + n {
            return None;
        }
        let has_chat = h.get(CHAT).is_some_and(|v| v.as_str() == "1");
        Some(Relayed {
            seq: header_u64(h, SEQ),
            run_id: h
                .get(RUN)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            depth: header_u64(h, DEPTH) as u32,
            sdk: p.slice(4..4 + n),
            chat: has_chat.then(|| p.slice(4 + n..)),
            tool: h.get(TOOL).map(|v| v.as_str().to_owned()),
            epoch: h.get(EPOCH).map(|v| v.as_str().to_owned()),
        })
    }
}

/// What a remote follower receives.
#[derive(Debug)]
pub enum RemoteDelivery {
    /// The next frame.
    Frame(Relayed),
    /// The frames after the follower's `after_seq` are no longer retained from this one on.
    Truncated {
        /// The oldest retained seq.
        oldest_seq: u64,
    },
}

/// A session followed through the bus stream from any node. The ordered consumer is made
/// again from the last frame delivered when it fails or stays quiet while the subject has
/// newer frames (a NATS restart loses the consumer).
pub struct RemoteFollow {
    cluster: Arc<Cluster>,
    subject: String,
    messages: Option<pull::Ordered>,
    /// The stream sequence of the last message read.
    stream_seq: u64,
    after: u64,
    first: bool,
}

/// What a follow starts from: the session's last frame on the bus.
pub struct Followed {
    /// The follow.
    pub follow: RemoteFollow,
    /// The seq of the last frame on the bus (0 when none).
    pub last_seq: u64,
    /// The epoch of that frame.
    pub epoch: Option<String>,
}

/// How long a follow waits for a frame before it checks the subject for newer ones.
const QUIET_CHECK: Duration = Duration::from_secs(2);

impl Cluster {
    async fn ordered(
        &self,
        subject: &str,
        deliver_policy: DeliverPolicy,
    ) -> Result<pull::Ordered, ClusterError> {
        let err = |e: &dyn std::fmt::Display| ClusterError::JetStream {
            what: "follow a session".into(),
            reason: e.to_string(),
        };
        let consumer = self
            .bus
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        consumer.messages().await.map_err(|e| err(&e))
    }

    /// Follows `tenant`'s session: the retained frames after `after_seq`, then live ones
    /// (live only when `None`).
    pub async fn follow(
        self: &Arc<Self>,
        tenant: &str,
        session_id: &str,
        after_seq: Option<u64>,
    ) -> Result<Followed, ClusterError> {
        let subject = self.bus_subject(tenant, session_id);
        let (stream_seq, last_seq, epoch) = self.last_on(&subject).await?;
        let policy = match after_seq {
            Some(_) => DeliverPolicy::All,
            None => DeliverPolicy::New,
        };
        let messages = self.ordered(&subject, policy).await?;
        Ok(Followed {
            follow: RemoteFollow {
                cluster: self.clone(),
                subject,
                messages: Some(messages),
                stream_seq: if after_seq.is_some() { 0 } else { stream_seq },
                after: after_seq.unwrap_or(0),
                first: after_seq.is_some(),
            },
            last_seq,
            epoch,
        })
    }
}

impl RemoteFollow {
    /// The next delivery; `None` when the bus stream cannot be read again within
    /// `cluster.outage_wait_ms`.
    pub async fn recv(&mut self) -> Option<RemoteDelivery> {
        let mut failing_since: Option<Instant> = None;
        loop {
            let next = match self.messages.as_mut() {
                Some(m) => tokio::time::timeout(QUIET_CHECK, m.next()).await,
                None => Ok(None),
            };
            let m = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => {
                    self.messages = None;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(self.cluster.config.outage_wait_ms) {
                        tracing::warn!(subject = %self.subject, "a session follow over the bus stream ended: NATS stayed away");
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.restart().await;
                    continue;
                }
                Err(_) => {
                    // Quiet: fine, unless the subject has frames past the last one read.
                    if let Ok((s, _, _)) = self.cluster.last_on(&self.subject).await {
                        if s > self.stream_seq {
                            self.restart().await;
                        }
                    }
                    continue;
                }
            };
            failing_since = None;
            if let Ok(info) = m.info() {
                self.stream_seq = self.stream_seq.max(info.stream_sequence);
            }
            let Some(f) = Relayed::parse(&m) else {
                continue;
            };
            if std::mem::take(&mut self.first) && f.seq > self.after + 1 && self.after > 0 {
                // The retained frames start past the follower's place.
                self.after = f.seq;
                return Some(RemoteDelivery::Truncated { oldest_seq: f.seq });
            }
            if f.seq <= self.after {
                continue;
            }
            self.after = f.seq;
            return Some(RemoteDelivery::Frame(f));
        }
    }

    /// Makes the consumer again, from the message after the last one read.
    async fn restart(&mut self) {
        let policy = DeliverPolicy::ByStartSequence {
            start_sequence: self.stream_seq + 1,
        };
        match self.cluster.ordered(&self.subject, policy).await {
            Ok(m) => self.messages = Some(m),
            Err(e) => {
                tracing::debug!(error = %e, "could not follow the session again yet");
                self.messages = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_subject_safe() {
        assert_eq!(token("a.b *>"), "612e62202a3e");
    }
}
