//! The load clients: WebSocket connections speaking PROTOCOL.md section 2 that run
//! conversations (a shared workload of sessions, paced or at full speed), hold idle
//! connections, or follow one session as fan-out subscribers, checking every frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::check::{histogram, record, scan, Counters, Expect, Failure, Follower, RunCheck};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Default longest wait for any one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a connection's handshake.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// The server under load: its WebSocket URL and API key.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub key: Option<String>,
}

impl Target {
    /// A target from a base URL (`http://host:port`, `ws://host:port`) or the full WebSocket
    /// URL (`ws://host:port/v1/ws`).
    pub fn new(url: &str, key: Option<String>) -> Result<Target, String> {
        let url = url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("{url:?} is not a URL: give one such as http://127.0.0.1:7700")
        })?;
        let scheme = match scheme {
            "http" | "ws" => "ws",
            "https" | "wss" => {
                return Err(format!(
                    "{url:?}: TLS is not supported by `callboard loadtest`; test the node behind \
                     its TLS terminator over ws:// or http://"
                ))
            }
            s => {
                return Err(format!(
                    "{url:?}: unknown scheme {s:?}; use http:// or ws://"
                ))
            }
        };
        let rest = if rest.contains('/') {
            rest.to_owned()
        } else {
            format!("{rest}/v1/ws")
        };
        Ok(Target {
            url: format!("{scheme}://{rest}"),
            key,
        })
    }
}

/// Opens one connection (small buffers: 10,000 client connections must fit in one process).
pub async fn connect(t: &Target) -> Result<Ws, Failure> {
    let mut req = t
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Failure::new("connect", format!("{}: {e}", t.url)))?;
    if let Some(k) = &t.key {
        let v = format!("Bearer {k}")
            .parse()
            .map_err(|_| Failure::new("connect", "the API key is not a valid header value"))?;
        req.headers_mut().insert("authorization", v);
    }
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let conn = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
    match tokio::time::timeout(CONNECT_WAIT, conn).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(res))) => Err(Failure::new(
            format!("http_{}", res.status().as_u16()),
            format!("the server refused the WebSocket upgrade: {}", res.status()),
        )),
        Ok(Err(e)) => Err(Failure::new("connect", format!("{}: {e}", t.url))),
        Err(_) => Err(Failure::new("connect", format!("{}: timed out", t.url))),
    }
}

/// The next text frame.
pub async fn next_text(ws: &mut Ws, wait: Duration) -> Result<String, Failure> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => {
                return Err(Failure::new(
                    "timeout",
                    format!("no frame for {} s", wait.as_secs()),
                ))
            }
            Ok(None) => return Err(Failure::new("closed", "connection closed")),
            Ok(Some(Err(e))) => return Err(Failure::new("read", e.to_string())),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(c)))) => {
                return Err(Failure::new(
                    "closed",
                    format!("closed by the server: {c:?}"),
                ))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Sends one JSON frame.
pub async fn send(ws: &mut Ws, v: Value) -> Result<(), Failure> {
    tokio::time::timeout(CONNECT_WAIT, ws.send(Message::text(v.to_string())))
        .await
        .map_err(|_| Failure::new("send", "send timed out"))?
        .map_err(|e| Failure::new("send", e.to_string()))
}

/// The code and message of an `error` frame.
fn error_frame(t: &str) -> Failure {
    let v: Value = serde_json::from_str(t).unwrap_or_default();
    Failure::new(
        v["error"]["code"].as_str().unwrap_or("error"),
        v["error"]["message"].as_str().unwrap_or(t),
    )
}

/// What every run sends and expects.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub agent: String,
    pub input: String,
    pub expect: Expect,
    /// Sends `trace: {disabled: true}` with each run.
    pub trace_disabled: bool,
    /// Longest wait for any one frame.
    pub frame_wait: Duration,
}

/// Whether a failure ends only the run (the connection is still in step) or the connection.
fn ends_only_the_run(f: &Failure) -> bool {
    !matches!(
        f.code.as_str(),
        "connect" | "timeout" | "closed" | "read" | "send" | "protocol" | "content"
    )
}

/// Latency histograms one client fills.
pub struct Histograms {
    /// The main latency: per delta with [`Expect::FakeModel`], else per run.
    pub main: Histogram<u64>,
    /// Per run: `run.create` sent to its end frame received.
    pub run: Histogram<u64>,
}

impl Histograms {
    pub fn new() -> Self {
        Histograms {
            main: histogram(),
            run: histogram(),
        }
    }

    /// Adds them to the scenario's.
    pub fn merge_into(&self, c: &Counters) {
        c.merge_latency(&self.main);
        c.merge_run_latency(&self.run);
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

/// One run on `session`; returns the run's frames seen.
pub async fn one_run(
    ws: &mut Ws,
    spec: &RunSpec,
    session: &str,
    req: u64,
    fol: &mut Follower,
    c: &Counters,
    h: &mut Histograms,
) -> Result<u64, Failure> {
    let mut create = json!({"type": "run.create", "id": format!("r{req}"), "session_id": session,
                            "agent": spec.agent, "input": spec.input});
    if spec.trace_disabled {
        create["trace"] = json!({"disabled": true});
    }
    let t0 = Instant::now();
    send(ws, create).await?;
    let mut run = RunCheck::default();
    let mut frames = 0u64;
    loop {
        let t = next_text(ws, spec.frame_wait).await?;
        let ty = scan::frame_type(&t).unwrap_or("");
        match ty {
            "run.accepted"
            | "pong"
            | "session.subscribed"
            | "session.unsubscribed"
            | "run.queued" => continue,
            "error" => return Err(error_frame(&t)),
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
            return Err(Failure::new("protocol", format!("frame without seq: {t}")));
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
                        run.delta(spec.expect, d, &mut h.main)?;
                    }
                } else if t.contains("\"name\":\"tool_output\"") {
                    run.tool_output = true;
                } else if t.contains("\"name\":\"handoff_occured\"") {
                    run.handoff = true;
                }
            }
            "run.completed" => {
                let us = t0.elapsed().as_micros() as u64;
                record(&mut h.run, us);
                if !matches!(spec.expect, Expect::FakeModel { .. }) {
                    record(&mut h.main, us);
                }
                if spec.expect != Expect::Any {
                    let v: Value = serde_json::from_str(&t)
                        .map_err(|e| Failure::new("protocol", e.to_string()))?;
                    run.finish(
                        spec.expect,
                        v["final_output"].as_str().unwrap_or(""),
                        v["last_agent"].as_str().unwrap_or(""),
                    )?;
                }
                return Ok(frames);
            }
            "run.failed" => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                return Err(Failure::new(
                    format!(
                        "run_failed:{}",
                        v["error"]["type"].as_str().unwrap_or("unknown")
                    ),
                    v["error"]["message"].as_str().unwrap_or(&t),
                ));
            }
            "run.cancelled" => return Err(Failure::new("run_cancelled", t)),
            _ => {}
        }
    }
}

/// A workload shared by its clients: sessions taken in turn, each with the same number of
/// runs, run starts paced over all clients.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Session ids are `<prefix>-<n>`.
    pub prefix: String,
    /// Sessions in all (unbounded when `None`: until `until`).
    pub sessions: Option<u64>,
    /// Runs one after the other on each session (its conversation grows).
    pub runs_per_session: u64,
    /// Run starts per second over all clients (as fast as they go when `None`).
    pub rate: Option<f64>,
    /// No run starts after this.
    pub until: Option<Instant>,
}

/// The shared state of a [`Workload`] being run.
pub struct Queue {
    pub work: Workload,
    next_session: AtomicU64,
    next_start: AtomicU64,
    t0: tokio::time::Instant,
}

impl Queue {
    pub fn new(work: Workload) -> Arc<Queue> {
        Arc::new(Queue {
            work,
            next_session: AtomicU64::new(0),
            next_start: AtomicU64::new(0),
            t0: tokio::time::Instant::now(),
        })
    }

    fn over(&self) -> bool {
        self.work.until.is_some_and(|u| Instant::now() >= u)
    }

    /// The next session's number, `None` when the workload is done.
    fn next_session(&self) -> Option<u64> {
        if self.over() {
            return None;
        }
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        match self.work.sessions {
            Some(max) if n >= max => None,
            _ => Some(n),
        }
    }

    /// Waits for the next run start the pace allows.
    async fn pace(&self) {
        if let Some(rate) = self.work.rate.filter(|r| *r > 0.0) {
            let n = self.next_start.fetch_add(1, Ordering::Relaxed);
            let at = self.t0 + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(at).await;
        }
    }
}

/// One client of a workload: one connection, taking sessions from `q` until it is done.
/// A failure that leaves the connection out of step (a timeout, a lost connection, a frame
/// check) is counted and the client reconnects; a client that cannot connect stops.
pub async fn worker(target: Target, spec: RunSpec, q: Arc<Queue>, c: Arc<Counters>) {
    let mut h = Histograms::new();
    let mut ws: Option<Ws> = None;
    let mut req = 0u64;
    'sessions: while let Some(n) = q.next_session() {
        let session = format!("{}-{n}", q.work.prefix);
        let mut fol = Follower::new();
        for _ in 0..q.work.runs_per_session.max(1) {
            if q.over() {
                break 'sessions;
            }
            q.pace().await;
            if q.over() {
                break 'sessions;
            }
            let conn = match ws.as_mut() {
                Some(w) => w,
                None => match connect(&target).await {
                    Ok(w) => ws.insert(w),
                    Err(e) => {
                        c.fail(e);
                        break 'sessions;
                    }
                },
            };
            req += 1;
            match one_run(conn, &spec, &session, req, &mut fol, &c, &mut h).await {
                Ok(_) => {
                    c.runs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let keep = ends_only_the_run(&e);
                    c.fail(e);
                    if !keep {
                        if let Some(mut w) = ws.take() {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(2), w.close(None)).await;
                        }
                    }
                    // The session's seq is no longer known: go on with the next one.
                    continue 'sessions;
                }
            }
        }
    }
    h.merge_into(&c);
    if let Some(mut w) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(2), w.close(None)).await;
    }
}

/// Runs `q` with `concurrency` clients to the end.
pub async fn run_workload(
    target: &Target,
    spec: &RunSpec,
    q: Arc<Queue>,
    concurrency: usize,
    c: Arc<Counters>,
) {
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        tasks.push(tokio::spawn(worker(
            target.clone(),
            spec.clone(),
            q.clone(),
            c.clone(),
        )));
    }
    for t in tasks {
        if let Err(e) = t.await {
            c.error("client", format!("a client task ended abnormally: {e}"));
        }
    }
}

/// Subscribes and waits until the server has taken the subscription (a ping sent after it
/// is answered).
pub async fn subscribe(ws: &mut Ws, session: &str, after_seq: Option<u64>) -> Result<(), Failure> {
    let mut sub = json!({"type": "session.subscribe", "session_id": session});
    if let Some(a) = after_seq {
        sub["after_seq"] = json!(a);
    }
    send(ws, sub).await?;
    send(ws, json!({"type": "ping"})).await?;
    loop {
        let t = next_text(ws, FRAME_WAIT).await?;
        match scan::frame_type(&t) {
            Some("pong") => return Ok(()),
            Some("error") => return Err(error_frame(&t)),
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
    expect: Expect,
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
            c.error("deadline", "fan-out subscriber: deadline reached");
            break;
        }
        let t = match next_text(&mut ws, FRAME_WAIT).await {
            Ok(t) => t,
            Err(e) => {
                c.fail(e);
                break;
            }
        };
        let ty = scan::frame_type(&t).unwrap_or("");
        if ty == "error" {
            c.fail(error_frame(&t));
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
                c.fail(e);
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
                        if let Err(e) = run.delta(expect, d, &mut lat) {
                            c.fail(e);
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
                    expect,
                    v["final_output"].as_str().unwrap_or(""),
                    v["last_agent"].as_str().unwrap_or(""),
                ) {
                    c.fail(e);
                }
                run = RunCheck::default();
                done += 1;
            }
            "run.failed" | "run.cancelled" => {
                c.error("run_failed", format!("fan-out run ended: {t}"));
                done += 1;
            }
            _ => {}
        }
    }
    c.merge_latency(&lat);
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Starts one run on `session` from a driver connection and waits for its acceptance.
pub async fn start_run(
    ws: &mut Ws,
    spec: &RunSpec,
    session: &str,
    req: u64,
) -> Result<(), Failure> {
    let mut create = json!({"type": "run.create", "id": format!("f{req}"), "session_id": session,
                            "agent": spec.agent, "input": spec.input});
    if spec.trace_disabled {
        create["trace"] = json!({"disabled": true});
    }
    send(ws, create).await?;
    loop {
        let t = next_text(ws, spec.frame_wait).await?;
        match scan::frame_type(&t) {
            Some("run.accepted") => return Ok(()),
            Some("error") => return Err(error_frame(&t)),
            _ => continue,
        }
    }
}

/// Waits until the run on the driver's connection ends (the driver is subscribed too);
/// returns the seq of its `run.completed`.
pub async fn wait_end(ws: &mut Ws, wait: Duration) -> Result<u64, Failure> {
    loop {
        let t = next_text(ws, wait).await?;
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
            Some("error") => return Err(error_frame(&t)),
            Some("run.failed") | Some("run.cancelled") => {
                return Err(Failure::new("run_failed", format!("fan-out run: {t}")))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_base_urls_and_ws_urls() {
        let t = Target::new("http://127.0.0.1:7700/", None).unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:7700/v1/ws");
        let t = Target::new("ws://h:1/v1/ws", Some("k".into())).unwrap();
        assert_eq!(t.url, "ws://h:1/v1/ws");
        assert!(Target::new("127.0.0.1:7700", None).is_err());
        assert!(Target::new("https://h", None).unwrap_err().contains("TLS"));
    }

    #[test]
    fn connection_failures_end_the_connection_and_server_errors_only_the_run() {
        assert!(ends_only_the_run(&Failure::new("unknown_agent", "")));
        assert!(ends_only_the_run(&Failure::new(
            "run_failed:MaxTurnsExceeded",
            ""
        )));
        assert!(!ends_only_the_run(&Failure::new("timeout", "")));
        assert!(!ends_only_the_run(&Failure::new("content", "")));
    }
}
