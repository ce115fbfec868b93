//! One WebSocket connection: a reader that parses client frames and acts on them, and a
//! writer that drains the bounded outbound queue and polls every followed session itself
//! (`crate::hub::follow`): no task per subscription, and one wake-up and one flush carry
//! whatever was published and queued meanwhile.
//!
//! The loop is generic over `Sink<Message>` / `Stream<Item = Result<Message, E>>`, so tests
//! can drive it with channels; the socket is a thin adapter.
//!
//! Slow clients: the writer reads a followed session only as fast as the socket takes its
//! frames; the bus never waits for it. When the bus ring overtakes the writer, the
//! subscription ends with a `lagged` frame and the client resumes with `after_seq`. A socket that accepts no write for
//! `write_timeout_ms` is closed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::stream::SelectAll;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};

use crate::bus::{Frame, Subscription};
use crate::hub::follow::{self, Followed};
use crate::hub::frames::{self, Accepted, ClientFrame};
use crate::service::delivery::Batch;
use crate::service::error::ApiError;
use crate::service::{ConnectionSlot, Core, Depth, Format};

/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// What the writer sends.
#[derive(Debug)]
pub enum Out {
    /// A frame of a followed session in `format`: its encoding is made once per format and
    /// shared by every subscriber. `live` when it came from the live ring rather than from
    /// history, so that its time since publishing is observed when the write completes.
    Frame {
        /// The frame.
        frame: Arc<Frame>,
        /// The format asked for (the forwarder checked that it does not skip the frame).
        format: Format,
        /// Live, not a resume from history.
        live: bool,
    },
    /// A text frame serialised elsewhere (relayed from another node of a cluster).
    Relayed(Box<Bytes>),
    /// Follow a session from now on (the writer polls it with the others).
    Follow(Followed),
    /// A text frame made for this connection only.
    Own(String),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// Close the socket with this code and reason (after what is queued before it).
    Close(u16, &'static str),
}

/// Close code for a message over the size the server reads ("message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;

/// How often an idle connection is pinged (keeps proxies from timing it out; a dead peer
/// then fails the write and is closed).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

struct Conn {
    core: Arc<Core>,
    tenant: Arc<str>,
    tx: mpsc::Sender<Out>,
    /// Followed sessions: the handle on the writer's following, and when the connection last
    /// asked for it (for making room under the subscription limit).
    subs: HashMap<String, (follow::Handle, u64)>,
    /// A counter ordering the subscriptions by last use.
    tick: u64,
}

/// Serves one connection until the client leaves, the socket fails, or the server shuts
/// down (then the socket is closed with code 1001). `slot` is the connection's place under
/// the connection limit, released at the end.
pub async fn run<S, R, E>(
    core: Arc<Core>,
    tenant: Arc<str>,
    slot: ConnectionSlot,
    sink: S,
    mut stream: R,
) where
    S: Sink<Message> + Send + Unpin + 'static,
    R: Stream<Item = Result<Message, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    core.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    // futures' bounded channel allocates per queued message rather than a block of slots up
    // front, so an idle connection's queue is a couple of hundred bytes; its capacity is the
    // buffer plus one place per sender (the reader is the only one).
    let (tx, rx) = mpsc::channel(core.limits.outbound_queue.saturating_sub(1));
    let write_timeout = Duration::from_millis(core.limits.write_timeout_ms.max(1));
    let mut writer = tokio::spawn(write_loop(core.clone(), sink, rx, write_timeout));
    let mut conn = Conn {
        core: core.clone(),
        tenant,
        tx,
        subs: HashMap::new(),
        tick: 0,
    };
    let close = core.close_sockets.clone();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                // Boxed: what a frame's handling awaits (a run's start, the session store)
                // is large, and would otherwise be resident in every idle connection.
                Some(Ok(Message::Text(t))) => Box::pin(conn.handle_text(t.as_str())).await,
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > core.limits.max_frame_bytes {
                        conn.error(None, ApiError::FrameTooLarge { size: b.len(), limit: core.limits.max_frame_bytes }).await;
                    } else {
                        conn.error(None, ApiError::BadRequest("binary frames are not accepted; send JSON text frames".into())).await;
                    }
                }
                Some(Err(e)) if is_too_big(&e) => {
                    // Read no further: the message is far over the limit (code 1009).
                    let _ = conn.tx.send(Out::Close(CLOSE_TOO_BIG, "message too big")).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // ping/pong are answered by the socket layer
            },
            _ = &mut writer => break,
            _ = close.cancelled() => break,
        }
    }
    for (_, (h, _)) in conn.subs.drain() {
        h.abort();
    }
    drop(conn);
    if !writer.is_finished() {
        // The writer drains what is queued, then closes (1001 on shutdown, 1000 otherwise).
        if tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
    drop(slot);
}

/// Whether a read error is a message over the socket's size limit.
fn is_too_big(e: &impl std::fmt::Display) -> bool {
    let t = e.to_string();
    t.contains("Message too long") || t.contains("Space limit exceeded") || t.contains("too big")
}

/// The message to write for `o`; a live frame's publishing time goes into `live`.
fn to_message(o: Out, live: &mut Vec<std::time::Instant>) -> Option<Message> {
    match o {
        Out::Frame {
            frame,
            format,
            live: is_live,
        } => {
            let b = format.bytes(&frame)?.clone();
            if is_live {
                live.push(frame.published);
            }
            Utf8Bytes::try_from(b).ok().map(Message::Text)
        }
        Out::Relayed(b) => Utf8Bytes::try_from(*b).ok().map(Message::Text),
        Out::Own(s) => Some(Message::Text(s.into())),
        Out::Ping => Some(Message::Ping(Bytes::new())),
        Out::Close(..) | Out::Follow(_) => None,
    }
}

/// The sessions a writer follows, made on the first follow (an idle connection has none).
type Follows = Option<SelectAll<Followed>>;

/// The next frame of any followed session; pending while none is ready (or none followed).
async fn next_followed(follows: &mut Follows) -> Out {
    if let Some(f) = follows.as_mut().filter(|f| !f.is_empty()) {
        if let Some(o) = f.next().await {
            return o;
        }
    }
    std::future::pending().await
}

/// A frame of a followed session if one is ready now.
fn ready_followed(follows: &mut Follows) -> Option<Out> {
    follows.as_mut()?.next().now_or_never().flatten()
}

/// What one write (one flush) gathers.
#[derive(Default)]
struct Gathered {
    /// Messages fed.
    n: u64,
    /// A close asked for (code, reason): nothing after it is written.
    closing: Option<(u16, &'static str)>,
    /// Publishing times of the live frames fed.
    live: Vec<std::time::Instant>,
}

/// Feeds one outbound item to the socket (or acts on it: close, follow).
async fn put<S: Sink<Message> + Unpin>(
    o: Out,
    sink: &mut S,
    follows: &mut Follows,
    g: &mut Gathered,
) -> Result<(), S::Error> {
    match o {
        Out::Close(code, reason) => g.closing = Some((code, reason)),
        Out::Follow(f) => follows.get_or_insert_with(SelectAll::new).push(f),
        o => {
            if let Some(m) = to_message(o, &mut g.live) {
                sink.feed(m).await?;
                g.n += 1;
            }
        }
    }
    Ok(())
}

async fn write_loop<S>(core: Arc<Core>, mut sink: S, mut rx: mpsc::Receiver<Out>, timeout: Duration)
where
    S: Sink<Message> + Send + Unpin + 'static,
{
    let close = core.close_sockets.clone();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let mut follows: Follows = None;
    let mut g = Gathered::default();
    loop {
        let (first, followed) = tokio::select! {
            biased;
            m = rx.next() => match m {
                Some(o) => (o, false),
                None => break,
            },
            o = next_followed(&mut follows) => (o, true),
            _ = close.cancelled() => break,
            _ = heartbeat.tick() => (Out::Ping, false),
        };
        let batch = async {
            let mut next = Some((first, followed));
            while let Some((o, followed)) = next.take() {
                if followed {
                    // What the reader queued before this frame was published goes first
                    // (`run.accepted` before its run's frames).
                    while g.closing.is_none() {
                        let Ok(q) = rx.try_recv() else { break };
                        put(q, &mut sink, &mut follows, &mut g).await?;
                    }
                }
                if g.closing.is_some() {
                    break;
                }
                put(o, &mut sink, &mut follows, &mut g).await?;
                if g.n >= 256 || g.closing.is_some() {
                    break;
                }
                next = match rx.try_recv() {
                    Ok(q) => Some((q, false)),
                    Err(_) => ready_followed(&mut follows).map(|o| (o, true)),
                };
            }
            sink.flush().await
        };
        match tokio::time::timeout(timeout, batch).await {
            Ok(Ok(())) => {
                core.metrics.frames_sent.fetch_add(g.n, Ordering::Relaxed);
                g.n = 0;
                if !g.live.is_empty() {
                    let written = std::time::Instant::now();
                    let mut batch = Batch::default();
                    for p in g.live.drain(..) {
                        batch.frame(p, written);
                    }
                    core.metrics.delivery.ws.add(&batch);
                    if g.live.capacity() > 64 {
                        g.live.shrink_to(64);
                    }
                }
            }
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!("closing a WebSocket that accepted no write in time");
                return;
            }
        }
        if g.closing.is_some() {
            break;
        }
    }
    drop(follows);
    let (code, reason) = match g.closing {
        Some(c) => c,
        None if core.close_sockets.is_cancelled() => (CLOSE_GOING_AWAY, "server shutting down"),
        None => (1000, ""),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

impl Conn {
    async fn send_own(&mut self, s: String) {
        let _ = self.tx.send(Out::Own(s)).await;
    }

    async fn error(&mut self, id: Option<&serde_json::Value>, e: ApiError) {
        let message = e.to_string();
        crate::service::telemetry::ErrorSent {
            code: e.code(),
            surface: "ws",
            message: &message,
        }
        .emit(&self.core.metrics);
        self.send_own(e.frame(id)).await;
    }

    async fn handle_text(&mut self, text: &str) {
        let limit = self.core.limits.max_frame_bytes;
        if text.len() > limit {
            return self
                .error(
                    None,
                    ApiError::FrameTooLarge {
                        size: text.len(),
                        limit,
                    },
                )
                .await;
        }
        let frame = match frames::parse(text) {
            Ok(f) => f,
            Err((id, e)) => return self.error(id.as_ref(), e).await,
        };
        match frame {
            ClientFrame::Ping(p) => self.send_own(frames::pong(p.id.as_ref())).await,
            ClientFrame::RunCreate(mut req) => {
                let id = req.id.take();
                let Some(session_id) = req.session_id.clone() else {
                    return self
                        .error(
                            id.as_ref(),
                            ApiError::BadRequest("run.create needs `session_id`".into()),
                        )
                        .await;
                };
                let view = (
                    req.format.unwrap_or_default(),
                    req.depth.unwrap_or_default(),
                );
                let prepared = match self.core.prepare_run(&self.tenant, &session_id, req).await {
                    Ok(p) => p,
                    Err(e) => return self.error(id.as_ref(), e).await,
                };
                // run.accepted goes out before the run exists, so it precedes every frame of
                // the run on this connection.
                let accepted = Accepted {
                    ty: "run.accepted",
                    id: id.as_ref(),
                    run_id: prepared.run_id(),
                    session_id: &session_id,
                    trace_id: prepared.trace_id(),
                    epoch: prepared.epoch(),
                };
                let text = serde_json::to_string(&accepted).unwrap_or_default();
                self.send_own(text).await;
                // Follow the session (if not yet) from its last seq before the run starts,
                // so none of the run's frames is missed.
                let following = self
                    .subs
                    .get(&session_id)
                    .is_some_and(|(h, _)| !h.is_finished());
                if following {
                    self.touch(&session_id);
                } else {
                    // Room under the limit: the least recently used idle subscription goes.
                    if let Err(e) = self.make_room().await {
                        return self.error(id.as_ref(), e).await;
                    }
                    let topic = prepared.topic().clone();
                    match topic.subscribe(Some(topic.last_seq())) {
                        Ok(sub) => self.forward_to(&session_id, sub, view).await,
                        Err(_) => {
                            return self.error(id.as_ref(), ApiError::Internal).await;
                        }
                    }
                }
                if let Err(e) = prepared.launch().await {
                    self.error(id.as_ref(), e).await;
                }
            }
            ClientFrame::RunCancel(c) => {
                if let Err(e) = self.core.cancel_any(&self.tenant, &c.run_id, c.mode).await {
                    self.error(c.id.as_ref(), e).await;
                }
            }
            ClientFrame::Approve(a) => {
                let d = crate::run::state::Decision {
                    approved: true,
                    message: None,
                };
                let r = self
                    .core
                    .decide(&self.tenant, &a.run_id, &a.call_id, d, a.always)
                    .await;
                if let Err(e) = r {
                    self.error(a.id.as_ref(), e).await;
                }
            }
            ClientFrame::Reject(r) => {
                let d = crate::run::state::Decision {
                    approved: false,
                    message: r.message,
                };
                let res = self
                    .core
                    .decide(&self.tenant, &r.run_id, &r.call_id, d, false)
                    .await;
                if let Err(e) = res {
                    self.error(r.id.as_ref(), e).await;
                }
            }
            ClientFrame::Subscribe(s) => self.follow(s).await,
            ClientFrame::Unsubscribe(u) => match self.subs.remove(&u.session_id) {
                Some((h, _)) => h.abort(),
                None => {
                    self.error(
                        u.id.as_ref(),
                        ApiError::NotFound(format!(
                            "this connection does not follow session `{}`",
                            u.session_id.chars().take(100).collect::<String>()
                        )),
                    )
                    .await
                }
            },
            ClientFrame::ToolResult(r) => {
                let output = match r.output {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                if let Err(e) = self
                    .core
                    .tool_result_any(&self.tenant, &r.run_id, &r.call_id, output)
                    .await
                {
                    self.error(r.id.as_ref(), e).await;
                }
            }
        }
    }

    /// Follows a session (replacing an earlier subscription to it): answers
    /// `session.subscribed` with the session's epoch, then replays retained frames after
    /// `after_seq` and live ones through a forwarder task.
    async fn follow(&mut self, s: frames::Subscribe) {
        let id = s.id.as_ref();
        if let Some((old, _)) = self.subs.remove(&s.session_id) {
            old.abort();
        }
        if let Err(e) = self.make_room().await {
            return self.error(id, e).await;
        }
        #[cfg(feature = "nats")]
        if self.core.cluster().is_some() {
            return self.follow_remote(s).await;
        }
        let subscribed = match self
            .core
            .subscribe(&self.tenant, &s.session_id, s.after_seq, s.epoch.as_deref())
            .await
        {
            Ok(sub) => sub,
            Err(e) => return self.error(id, e).await,
        };
        let ack = frames::Subscribed {
            ty: "session.subscribed",
            id,
            session_id: &s.session_id,
            epoch: &subscribed.epoch,
            last_seq: subscribed.last_seq,
        };
        self.send_own(serde_json::to_string(&ack).unwrap_or_default())
            .await;
        let view = (s.format.unwrap_or_default(), s.depth.unwrap_or_default());
        self.forward_to(&s.session_id, subscribed.sub, view).await;
    }

    /// [`follow`](Self::follow) in a cluster: through the bus stream, so the frames of a run
    /// on any node arrive with their seqs.
    #[cfg(feature = "nats")]
    async fn follow_remote(&mut self, s: frames::Subscribe) {
        let id = s.id.as_ref();
        let (followed, epoch) = match self
            .core
            .follow_remote(&self.tenant, &s.session_id, s.after_seq, s.epoch.as_deref())
            .await
        {
            Ok(f) => f,
            Err(e) => return self.error(id, e).await,
        };
        let ack = frames::Subscribed {
            ty: "session.subscribed",
            id,
            session_id: &s.session_id,
            epoch: &epoch,
            last_seq: followed.last_seq,
        };
        self.send_own(serde_json::to_string(&ack).unwrap_or_default())
            .await;
        let view = (s.format.unwrap_or_default(), s.depth.unwrap_or_default());
        let (f, h) = follow::remote(
            &self.core,
            followed.follow,
            view,
            s.after_seq.unwrap_or(0),
            epoch,
        );
        let _ = self.tx.send(Out::Follow(f)).await;
        self.tick += 1;
        self.subs.insert(s.session_id.clone(), (h, self.tick));
    }

    fn touch(&mut self, session_id: &str) {
        self.tick += 1;
        if let Some(s) = self.subs.get_mut(session_id) {
            s.1 = self.tick;
        }
    }

    /// Keeps the followed sessions under `max_subscriptions_per_connection`: ended
    /// subscriptions go first, then the least recently used one whose session has no run
    /// going (the client is told `session.unsubscribed`); when every one is busy, the new one
    /// is refused `overloaded`.
    async fn make_room(&mut self) -> Result<(), ApiError> {
        self.subs.retain(|_, (h, _)| !h.is_finished());
        let max = self.core.limits.max_subscriptions_per_connection;
        if self.subs.len() < max {
            return Ok(());
        }
        let mut idle: Vec<(u64, String)> = self
            .subs
            .iter()
            .filter(|(sid, _)| {
                self.core
                    .sessions
                    .active_owner(&self.tenant, sid)
                    .is_none_or(|o| o.current_run().is_none())
            })
            .map(|(sid, (_, t))| (*t, sid.clone()))
            .collect();
        idle.sort();
        let Some((_, victim)) = idle.into_iter().next() else {
            return Err(ApiError::Overloaded(format!(
                "this connection follows {} sessions with runs going (the limit); unsubscribe from one",
                self.subs.len()
            )));
        };
        if let Some((h, _)) = self.subs.remove(&victim) {
            h.abort();
        }
        let notice = serde_json::json!({
            "type": "session.unsubscribed",
            "session_id": victim,
            "reason": format!("this connection follows at most {max} sessions; resubscribe with after_seq to follow it again"),
        });
        self.send_own(notice.to_string()).await;
        Ok(())
    }

    /// Has the writer follow a subscription (in a format and down to a depth of nested
    /// runs); queued after what this connection queued before, so it comes after it.
    async fn forward_to(&mut self, session_id: &str, sub: Subscription, view: (Format, Depth)) {
        let (f, h) = follow::local(&self.core, sub, view, Arc::from(session_id));
        let _ = self.tx.send(Out::Follow(f)).await;
        self.tick += 1;
        self.subs.insert(session_id.to_owned(), (h, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use futures::channel::mpsc as fmpsc;

    async fn next_text(rx: &mut fmpsc::Receiver<Message>) -> serde_json::Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), rx.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open");
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
        }
    }

    /// What an idle connection keeps resident: its loop's and its writer's state stay small
    /// (the handling of a client frame is allocated only while it runs).
    #[tokio::test]
    async fn an_idle_connection_keeps_little_state() {
        let cfg = Config::parse("t.toml", "[models.default]\nprovider = \"scripted\"\n").unwrap();
        let core = Core::new(cfg).unwrap();
        let (to_client, _from_server) = fmpsc::channel::<Message>(1);
        let (_to_server, from_client) =
            fmpsc::channel::<Result<Message, std::convert::Infallible>>(1);
        let slot = core.connection_slot().unwrap();
        let looping = run(
            core.clone(),
            "t".into(),
            slot,
            to_client.clone(),
            from_client,
        );
        let (_tx, rx) = mpsc::channel::<Out>(0);
        let writing = write_loop(core.clone(), to_client, rx, Duration::from_secs(1));
        let (l, w) = (
            std::mem::size_of_val(&looping),
            std::mem::size_of_val(&writing),
        );
        eprintln!("connection loop {l} bytes, writer {w} bytes");
        assert!(l <= IDLE_LOOP_BYTES, "the connection loop holds {l} bytes");
        assert!(w <= IDLE_LOOP_BYTES, "the writer holds {w} bytes");
    }

    /// Most an idle connection's loop and writer may each hold.
    const IDLE_LOOP_BYTES: usize = 1024;

    /// The protocol loop driven with channels instead of a socket.
    #[tokio::test]
    async fn the_loop_speaks_the_protocol_over_channels() {
        let cfg = Config::parse("t.toml", "[models.default]\nprovider = \"scripted\"\n").unwrap();
        let core = Core::new(cfg).unwrap();
        let (to_client, mut from_server) = fmpsc::channel::<Message>(64);
        let (mut to_server, from_client) =
            fmpsc::channel::<Result<Message, std::convert::Infallible>>(64);
        let slot = core.connection_slot().unwrap();
        let task = tokio::spawn(run(core.clone(), "t".into(), slot, to_client, from_client));
        let text = |s: &str| Ok(Message::Text(s.to_owned().into()));
        to_server
            .send(text(r#"{"type":"ping","id":"p"}"#))
            .await
            .unwrap();
        assert_eq!(next_text(&mut from_server).await["type"], "pong");
        to_server.send(text(r#"{"type":"bogus"}"#)).await.unwrap();
        assert_eq!(
            next_text(&mut from_server).await["error"]["code"],
            "bad_request"
        );
        to_server
            .send(text(
                r#"{"type":"run.create","id":1,"session_id":"s","agent":"Triage","input":"billing","format":"chat"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(next_text(&mut from_server).await["type"], "run.accepted");
        loop {
            let f = next_text(&mut from_server).await;
            if f["type"] == "run.completed" {
                assert_eq!(f["last_agent"], "Billing");
                break;
            }
        }
        core.close_sockets.cancel();
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match from_server.next().await {
                    Some(Message::Close(c)) => return c,
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(close.map(|c| c.code), Some(CLOSE_GOING_AWAY));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(core.metrics.connections.load(Ordering::Acquire), 0);
    }
}
