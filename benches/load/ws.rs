//! The WebSocket clients: scripted conversations, idle connections and fan-out subscribers,
//! speaking PROTOCOL.md section 2 and checking every frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::check::{histogram, scan, Counters, RunCheck, SeqCheck, SeqState};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for any one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(60);

/// Opens one connection.
pub async fn connect(url: &str) -> Result<Ws, String> {
    // Small buffers: 10,000 client connections must fit in this process too.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let conn = tokio_tungstenite::connect_async_with_config(url, Some(cfg), true);
    match tokio::time::timeout(Duration::from_secs(30), conn).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.next()).await {
            Err(_) => return Err("no frame for 60 s".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed by the server: {c:?}")),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), String> {
    tokio::time::timeout(
        Duration::from_secs(30),
        ws.send(Message::text(v.to_string())),
    )
    .await
    .map_err(|_| "send timed out".to_owned())?
    .map_err(|e| format!("send: {e}"))
}

/// How one frame of a session is handled by a client following it.
pub struct Follower {
    pub seq: SeqState,
    /// After `lagged`: frames are ignored until the resubscription's next seq.
    pub resync: bool,
}

impl Follower {
    pub fn new() -> Self {
        Follower {
            seq: SeqState::default(),
            resync: false,
        }
    }

    /// Returns whether the frame is new (to be looked at).
    pub fn take(&mut self, seq: u64, c: &Counters) -> bool {
        if self.resync {
            if seq == self.seq.last + 1 {
                self.resync = false;
                self.seq.last = seq;
                return true;
            }
            return false;
        }
        self.seq.check(seq, c) != SeqCheck::Duplicate
    }
}

/// One conversation on `session`; returns the run's frames seen.
#[allow(clippy::too_many_arguments)]
async fn one_run(
    ws: &mut Ws,
    session: &str,
    prompt: &str,
    tokens: usize,
    req: u64,
    fol: &mut Follower,
    c: &Counters,
    lat: &mut Histogram<u64>,
) -> Result<u64, String> {
    send(
        ws,
        json!({"type": "run.create", "id": format!("r{req}"), "session_id": session,
               "agent": "Triage", "input": prompt, "trace": {"disabled": true}}),
    )
    .await?;
    let mut run = RunCheck::default();
    let mut frames = 0u64;
    loop {
        let t = next_text(ws).await?;
        let ty = scan::frame_type(&t).unwrap_or("");
        match ty {
            "run.accepted" | "pong" => continue,
            "error" => return Err(format!("server error: {t}")),
            "lagged" => {
                c.lagged.fetch_add(1, Ordering::Relaxed);
                fol.resync = true;
                send(
                    ws,
                    json!({"type": "session.subscribe", "session_id": session, "after_seq": fol.seq.last}),
                )
                .await?;
                continue;
            }
            _ => {}
        }
        let Some(seq) = scan::u64_field(&t, "seq") else {
            return Err(format!("frame without seq: {t}"));
        };
        if !fol.take(seq, c) {
            continue;
        }
        frames += 1;
        c.frames.fetch_add(1, Ordering::Relaxed);
        match ty {
            "event" => {
                if t.contains("\"response.output_text.delta\"") {
                    if let Some(d) = scan::str_field(&t, "delta") {
                        run.delta(d, lat)?;
                    }
                } else if t.contains("\"name\":\"tool_output\"") {
                    run.tool_output = true;
                } else if t.contains("\"name\":\"handoff_occured\"") {
                    run.handoff = true;
                }
            }
            "run.completed" => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                run.finish(
                    tokens,
                    v["final_output"].as_str().unwrap_or(""),
                    v["last_agent"].as_str().unwrap_or(""),
                )?;
                return Ok(frames);
            }
            "run.failed" | "run.cancelled" => return Err(format!("run ended: {t}")),
            _ => {}
        }
    }
}

/// A client holding one connection, running `runs` conversations, a new session every
/// `per_session` runs (the session keeps the conversation, so its history grows).
#[allow(clippy::too_many_arguments)]
pub async fn conversation_client(
    url: String,
    prefix: String,
    idx: usize,
    runs: usize,
    per_session: usize,
    tokens: usize,
    delay_ms: u64,
    c: Arc<Counters>,
    deadline: Instant,
) {
    let mut lat = histogram();
    let mut ws = match connect(&url).await {
        Ok(w) => w,
        Err(e) => {
            c.error(e);
            return;
        }
    };
    let prompt = format!("weather in Oslo please tokens={tokens} delay_ms={delay_ms}");
    let mut fol = Follower::new();
    let mut session = String::new();
    for r in 0..runs {
        if Instant::now() > deadline {
            c.error("scenario deadline reached");
            break;
        }
        if r % per_session.max(1) == 0 {
            session = format!("{prefix}-c{idx}-s{r}");
            fol = Follower::new();
        }
        match one_run(
            &mut ws, &session, &prompt, tokens, r as u64, &mut fol, &c, &mut lat,
        )
        .await
        {
            Ok(_) => {
                c.runs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.error(e);
                break;
            }
        }
    }
    c.merge_latency(&lat);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// A client opening new one-run sessions at `per_s` a second until `until` (the soak): each
/// run on its own session, one connection, the pace kept from the start (a slow run makes the
/// next ones start sooner, not the rate drift).
#[allow(clippy::too_many_arguments)]
pub async fn paced_sessions(
    url: String,
    prefix: String,
    idx: usize,
    per_s: f64,
    until: Instant,
    tokens: usize,
    c: Arc<Counters>,
) {
    let mut lat = histogram();
    let mut ws = match connect(&url).await {
        Ok(w) => w,
        Err(e) => {
            c.error(e);
            return;
        }
    };
    let prompt = format!("weather in Oslo please tokens={tokens} delay_ms=0");
    let period = Duration::from_secs_f64(1.0 / per_s.max(1e-3));
    let mut next = tokio::time::Instant::now();
    let mut r = 0u64;
    while Instant::now() < until {
        tokio::time::sleep_until(next).await;
        next += period;
        let session = format!("{prefix}-p{idx}-s{r}");
        let mut fol = Follower::new();
        match one_run(
            &mut ws, &session, &prompt, tokens, r, &mut fol, &c, &mut lat,
        )
        .await
        {
            Ok(_) => {
                c.runs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.error(e);
                break;
            }
        }
        r += 1;
    }
    c.merge_latency(&lat);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Subscribes and waits until the server has taken the subscription (a ping sent after it
/// is answered).
pub async fn subscribe(ws: &mut Ws, session: &str, after_seq: Option<u64>) -> Result<(), String> {
    let mut sub = json!({"type": "session.subscribe", "session_id": session});
    if let Some(a) = after_seq {
        sub["after_seq"] = json!(a);
    }
    send(ws, sub).await?;
    send(ws, json!({"type": "ping"})).await?;
    loop {
        let t = next_text(ws).await?;
        match scan::frame_type(&t) {
            Some("pong") => return Ok(()),
            Some("error") => return Err(format!("subscribe: {t}")),
            _ => continue,
        }
    }
}

/// A fan-out subscriber: follows `session` until `runs` runs completed on it; checks every
/// frame and records delta latency.
pub async fn fan_subscriber(
    mut ws: Ws,
    session: String,
    after_seq: u64,
    runs: usize,
    tokens: usize,
    c: Arc<Counters>,
    deadline: Instant,
) {
    let mut lat = histogram();
    let mut fol = Follower::new();
    fol.seq.last = after_seq;
    let mut run = RunCheck::default();
    let mut done = 0;
    while done < runs {
        if Instant::now() > deadline {
            c.error("fan-out subscriber: deadline reached");
            break;
        }
        let t = match next_text(&mut ws).await {
            Ok(t) => t,
            Err(e) => {
                c.error(format!("fan-out subscriber: {e}"));
                break;
            }
        };
        let ty = scan::frame_type(&t).unwrap_or("");
        if ty == "error" {
            c.error(format!("fan-out subscriber: {t}"));
            break;
        }
        if ty == "lagged" {
            c.lagged.fetch_add(1, Ordering::Relaxed);
            fol.resync = true;
            if let Err(e) = send(
                &mut ws,
                json!({"type": "session.subscribe", "session_id": session, "after_seq": fol.seq.last}),
            )
            .await
            {
                c.error(e);
                break;
            }
            continue;
        }
        let Some(seq) = scan::u64_field(&t, "seq") else {
            continue;
        };
        if !fol.take(seq, &c) {
            continue;
        }
        c.frames.fetch_add(1, Ordering::Relaxed);
        match ty {
            "event" => {
                if t.contains("\"response.output_text.delta\"") {
                    if let Some(d) = scan::str_field(&t, "delta") {
                        if let Err(e) = run.delta(d, &mut lat) {
                            c.error(e);
                        }
                    }
                } else if t.contains("\"name\":\"tool_output\"") {
                    run.tool_output = true;
                } else if t.contains("\"name\":\"handoff_occured\"") {
                    run.handoff = true;
                }
            }
            "run.completed" => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if let Err(e) = run.finish(
                    tokens,
                    v["final_output"].as_str().unwrap_or(""),
                    v["last_agent"].as_str().unwrap_or(""),
                ) {
                    c.error(e);
                }
                run = RunCheck::default();
                done += 1;
            }
            "run.failed" | "run.cancelled" => {
                c.error(format!("fan-out run ended: {t}"));
                done += 1;
            }
            _ => {}
        }
    }
    c.merge_latency(&lat);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Starts one run on `session` from the driver connection and waits for its acceptance.
pub async fn start_run(ws: &mut Ws, session: &str, prompt: &str, req: u64) -> Result<(), String> {
    send(
        ws,
        json!({"type": "run.create", "id": format!("f{req}"), "session_id": session,
               "agent": "Triage", "input": prompt, "trace": {"disabled": true}}),
    )
    .await?;
    loop {
        let t = next_text(ws).await?;
        match scan::frame_type(&t) {
            Some("run.accepted") => return Ok(()),
            Some("error") => return Err(format!("run.create: {t}")),
            _ => continue,
        }
    }
}

/// Waits until the run on the driver's connection ends (the driver is subscribed too);
/// returns the seq of its `run.completed`.
pub async fn wait_end(ws: &mut Ws) -> Result<u64, String> {
    loop {
        let t = next_text(ws).await?;
        match scan::frame_type(&t) {
            Some("run.completed") => return Ok(scan::u64_field(&t, "seq").unwrap_or(0)),
            Some("lagged") => {
                let after = scan::u64_field(&t, "resume_after_seq").unwrap_or(0);
                let session = scan::str_field(&t, "session_id").unwrap_or("").to_owned();
                send(
                    ws,
                    json!({"type": "session.subscribe", "session_id": session, "after_seq": after}),
                )
                .await?;
            }
            Some("run.failed") | Some("run.cancelled") | Some("error") => {
                return Err(format!("fan-out run: {t}"))
            }
            _ => continue,
        }
    }
}
