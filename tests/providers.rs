//! The OpenAI providers end to end: an OpenAI-compatible server written here (axum on a
//! loopback port) streams real SSE, cut at awkward byte boundaries, slowly, or broken in
//! every way the providers must survive; runs go through `callboard::Runner`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use callboard::bus::{BusLimits, Delivery, FrameBody, Topic};
use callboard::model::config::ProviderConfig;
use callboard::tool::{FunctionTool, ToolContext};
use callboard::{Agent, AgentsError, CancelMode, Model, RunConfig, Runner, StreamEvent};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the fake server

/// How a reply's body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// The body ends properly.
    Clean,
    /// The connection is cut (the chunked body never terminates properly).
    Abort,
    /// The body never ends and sends nothing more.
    Hang,
}

#[derive(Clone, Debug)]
enum Piece {
    Data(Bytes),
    Pause(Duration),
}

#[derive(Clone, Debug)]
enum Reply {
    Sse {
        pieces: Vec<Piece>,
        end: End,
    },
    Status {
        code: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

#[derive(Debug)]
struct Seen {
    /// The client's address: the same port means the same (pooled) connection.
    peer: std::net::SocketAddr,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct ServerState {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    /// Set when a streamed body was dropped by the server (the client went away or it ended).
    body_dropped: AtomicUsize,
    /// Set when the server has written the last piece of a body.
    sent_all: AtomicBool,
}

struct Server {
    url: String,
    state: Arc<ServerState>,
}

impl Server {
    fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
    fn peer(&self, i: usize) -> std::net::SocketAddr {
        self.state.seen.lock().unwrap()[i].peer
    }
    fn request(&self, i: usize) -> (String, HeaderMap, Value) {
        let s = &self.state.seen.lock().unwrap()[i];
        (s.path.clone(), s.headers.clone(), s.body.clone())
    }
}

struct DropFlag(Arc<ServerState>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.body_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts a server that answers request `n` with `replies[n]` (the last one repeats).
async fn server(replies: Vec<Reply>) -> Server {
    let state = Arc::new(ServerState {
        replies: Mutex::new(replies.into()),
        ..Default::default()
    });
    let st = state.clone();
    let app = axum::Router::new().fallback(
        move |peer: axum::extract::ConnectInfo<std::net::SocketAddr>,
              req: axum::extract::Request| {
            let st = st.clone();
            async move { answer(st, peer.0, req).await }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    Server {
        url: format!("http://{addr}/v1"),
        state,
    }
}

async fn answer(
    st: Arc<ServerState>,
    peer: std::net::SocketAddr,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        peer,
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let reply = {
        let mut q = st.replies.lock().unwrap();
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().cloned().unwrap()
        }
    };
    match reply {
        Reply::Status {
            code,
            headers,
            body,
        } => {
            let mut r = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Body::from(body)).unwrap()
        }
        Reply::Sse { pieces, end } => {
            let guard = DropFlag(st.clone());
            let body = futures::stream::unfold(
                (VecDeque::from(pieces), guard, false),
                move |(mut pieces, guard, ended)| async move {
                    if ended {
                        return None;
                    }
                    loop {
                        match pieces.pop_front() {
                            Some(Piece::Pause(d)) => tokio::time::sleep(d).await,
                            Some(Piece::Data(b)) => {
                                return Some((
                                    Ok::<Bytes, std::io::Error>(b),
                                    (pieces, guard, false),
                                ))
                            }
                            None => {
                                guard.0.sent_all.store(true, Ordering::SeqCst);
                                return match end {
                                    End::Clean => None,
                                    End::Abort => Some((
                                        Err(std::io::Error::other("cut by the test server")),
                                        (pieces, guard, true),
                                    )),
                                    End::Hang => {
                                        let _guard = guard;
                                        futures::future::pending::<()>().await;
                                        None
                                    }
                                };
                            }
                        }
                    }
                },
            );
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

// ---------------------------------------------------------------- SSE builders

/// SSE text of Responses events (`event:` line plus `data:`).
fn responses_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {}\n\n", e["type"].as_str().unwrap(), e))
        .collect()
}

/// SSE text of Chat Completions chunks, ending with `[DONE]`.
fn chat_sse(chunks: &[Value]) -> String {
    let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

/// The text cut into `n`-byte pieces (splitting lines, JSON and UTF-8 characters).
fn cut(text: &str, n: usize) -> Vec<Piece> {
    text.as_bytes()
        .chunks(n)
        .map(|c| Piece::Data(Bytes::copy_from_slice(c)))
        .collect()
}

/// Like [`sse_reply`], but the body ends only `pause` after its last event, as a server
/// that closes the stream lazily.
fn sse_reply_lingering(text: &str, n: usize, pause: Duration) -> Reply {
    let mut pieces = cut(text, n);
    pieces.push(Piece::Pause(pause));
    Reply::Sse {
        pieces,
        end: End::Clean,
    }
}

fn sse_reply(text: &str, n: usize) -> Reply {
    Reply::Sse {
        pieces: cut(text, n),
        end: End::Clean,
    }
}

fn status(code: u16, body: Value) -> Reply {
    Reply::Status {
        code,
        headers: vec![],
        body: body.to_string(),
    }
}

fn resp(id: &str, status: &str, output: Value, usage: Option<Value>) -> Value {
    json!({"id": id, "object": "response", "created_at": 1.0, "status": status, "model": "gpt-test",
           "output": output, "usage": usage})
}

/// A Responses stream answering `text` in `deltas`.
fn responses_text(id: &str, deltas: &[&str], usage: Value) -> Vec<Value> {
    let text: String = deltas.concat();
    let msg = json!({"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let mut ev = vec![
        json!({"type": "response.created", "sequence_number": 0, "response": resp(id, "in_progress", json!([]), None)}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": resp(id, "in_progress", json!([]), None)}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    for d in deltas {
        ev.push(json!({"type": "response.output_text.delta", "sequence_number": ev.len(), "item_id": "msg_1",
                       "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}));
    }
    ev.push(
        json!({"type": "response.output_text.done", "sequence_number": ev.len(), "item_id": "msg_1",
                   "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    ev.push(json!({"type": "response.content_part.done", "sequence_number": ev.len(), "item_id": "msg_1",
                   "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
    ev.push(json!({"type": "response.output_item.done", "sequence_number": ev.len(), "output_index": 0, "item": msg}));
    ev.push(
        json!({"type": "response.completed", "sequence_number": ev.len(),
                   "response": resp(id, "completed", json!([msg]), Some(usage))}),
    );
    ev
}

/// A Responses stream calling `name` with `args` sent in `pieces`.
fn responses_call(id: &str, name: &str, pieces: &[&str], usage: Value) -> Vec<Value> {
    let args: String = pieces.concat();
    let item = |status: &str, a: &str| {
        json!({"type": "function_call", "id": "fc_1", "call_id": "call_1",
                                               "name": name, "arguments": a, "status": status})
    };
    let mut ev = vec![
        json!({"type": "response.created", "sequence_number": 0, "response": resp(id, "in_progress", json!([]), None)}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": resp(id, "in_progress", json!([]), None)}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0, "item": item("in_progress", "")}),
    ];
    for p in pieces {
        ev.push(
            json!({"type": "response.function_call_arguments.delta", "sequence_number": ev.len(),
                       "item_id": "fc_1", "output_index": 0, "delta": p}),
        );
    }
    ev.push(
        json!({"type": "response.function_call_arguments.done", "sequence_number": ev.len(),
                   "item_id": "fc_1", "output_index": 0, "arguments": args}),
    );
    ev.push(
        json!({"type": "response.output_item.done", "sequence_number": ev.len(), "output_index": 0,
                   "item": item("completed", &args)}),
    );
    ev.push(json!({"type": "response.completed", "sequence_number": ev.len(),
                   "response": resp(id, "completed", json!([item("completed", &args)]), Some(usage))}));
    ev
}

fn usage(i: u64, o: u64) -> Value {
    json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
           "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn chat_usage(p: u64, c: u64) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
           "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
}

/// Chat chunks answering `text` in `deltas`, with usage.
fn chat_text(deltas: &[&str], p: u64, c: u64) -> Vec<Value> {
    let mut v = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for d in deltas {
        v.push(chunk(json!({"content": d}), None));
    }
    v.push(chunk(json!({}), Some("stop")));
    v.push(chat_usage(p, c));
    v
}

// ---------------------------------------------------------------- run helpers

fn config(kind: &str, url: &str) -> ProviderConfig {
    toml::from_str(&format!(
        r#"provider = "{kind}"
        base_url = "{url}"
        api_key = "sk-test"
        model = "gpt-test"
        retry_backoff_ms = 5
        retry_backoff_max_ms = 20
        idle_timeout_ms = 5000
        request_timeout_ms = 20000"#
    ))
    .unwrap()
}

fn build(c: &ProviderConfig) -> Arc<dyn Model> {
    c.build().unwrap()
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
struct City {
    city: String,
}

fn agent(model: Arc<dyn Model>) -> Agent {
    Agent::new("Assistant")
        .instructions("Answer briefly.")
        .model_instance(model)
        .tool(FunctionTool::new(
            "get_weather",
            "Weather for a city.",
            |_ctx: ToolContext<()>, a: City| async move {
                Ok::<_, String>(format!("sunny in {}", a.city))
            },
        ))
}

/// What a run produced, seen by two consumers: the run's own frames and a topic subscriber.
struct Outcome {
    /// `raw:<type>`, `item:<name>` or `agent:<name>` per stream event.
    events: Vec<String>,
    /// The terminal frame's type.
    terminal: String,
    /// `(error_type, message)` of `run.failed`.
    failed: Option<(String, String)>,
    result: Result<Finished, AgentsError>,
    elapsed: Duration,
}

/// What a finished run left on its handle.
struct Finished {
    final_output: Value,
    usage: callboard::Usage,
}

impl Finished {
    fn final_output_text(&self) -> Option<&str> {
        self.final_output.as_str()
    }
}

fn label(e: &StreamEvent) -> String {
    match e {
        StreamEvent::RawResponse(r) => format!("raw:{}", r.type_name()),
        StreamEvent::RunItem(i) => format!("item:{}", i.event_name()),
        StreamEvent::AgentUpdated { new_agent } => format!("agent:{new_agent}"),
    }
}

async fn run(model: Arc<dyn Model>, input: &str) -> Outcome {
    let runner: Runner = Runner::new();
    let topic = Topic::new("s", BusLimits::default());
    let mut sub = topic.subscribe(None).unwrap();
    let started = Instant::now();
    let mut handle = runner
        .request(&agent(model), input)
        .config(RunConfig::default().tracing_disabled(true))
        .topic(topic.clone())
        .start()
        .unwrap();
    let mut frames = handle.frames().unwrap();
    let mut events = Vec::new();
    let mut terminal = String::new();
    let mut failed = None;
    tokio::time::timeout(WAIT, async {
        while let Some(f) = frames.recv().await {
            if let Some(e) = f.event() {
                events.push(label(e));
            }
            if let FrameBody::RunFailed {
                error_type,
                message,
            } = &f.body
            {
                failed = Some((error_type.clone(), message.clone()));
            }
            if f.body.is_terminal() {
                terminal = f.body.type_name().to_owned();
                break;
            }
        }
    })
    .await
    .expect("the run's frames ended");
    let elapsed = started.elapsed();
    // The other consumer sees the same terminal frame and its stream ends too.
    let other = tokio::time::timeout(WAIT, async {
        loop {
            match sub.recv().await {
                Some(Delivery::Frame(f)) if f.body.is_terminal() => return f.body.type_name(),
                Some(_) => {}
                None => return "closed",
            }
        }
    })
    .await
    .expect("the subscriber's stream ended");
    assert_eq!(other, terminal);
    // Read from the handle (its `wait()` is for callers that wait before the run ends).
    let result = match handle.error() {
        Some(e) => Err(e),
        None => Ok(Finished {
            final_output: handle.final_output().unwrap_or(Value::Null),
            usage: handle.usage(),
        }),
    };
    Outcome {
        events,
        terminal,
        failed,
        result,
        elapsed,
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------- good streams

#[tokio::test]
async fn responses_text_streams_every_event_in_order() {
    let sse = responses_sse(&responses_text(
        "resp_1",
        &["Hél", "lo ", "wörld", "!"],
        usage(12, 4),
    ));
    let s = server(vec![sse_reply(&sse, 5)]).await;
    let out = run(build(&config("openai_responses", &s.url)), "hi").await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    assert_eq!(
        strs(&out.events),
        [
            "agent:Assistant",
            "raw:response.created",
            "raw:response.in_progress",
            "raw:response.output_item.added",
            "raw:response.content_part.added",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.output_text.done",
            "raw:response.content_part.done",
            "raw:response.output_item.done",
            "raw:response.completed",
            "item:message_output_created",
        ]
    );
    let r = out.result.unwrap();
    assert_eq!(r.final_output_text(), Some("Héllo wörld!"));
    assert_eq!(
        (
            r.usage.requests,
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.total_tokens
        ),
        (1, 12, 4, 16)
    );
    let (path, headers, body) = s.request(0);
    assert_eq!(path, "/v1/responses");
    assert_eq!(headers["authorization"], "Bearer sk-test");
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["instructions"], "Answer briefly.");
    assert_eq!(body["input"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["name"], "get_weather");
    assert_eq!(
        body["tools"][0]["parameters"]["properties"]["city"]["type"],
        "string"
    );
}

#[tokio::test]
async fn responses_tool_call_then_answer() {
    let turn1 = responses_sse(&responses_call(
        "resp_1",
        "get_weather",
        &["{\"ci", "ty\":\"Os", "lo\"}"],
        usage(20, 5),
    ));
    let turn2 = responses_sse(&responses_text(
        "resp_2",
        &["It is ", "sunny."],
        usage(30, 3),
    ));
    let s = server(vec![sse_reply(&turn1, 7), sse_reply(&turn2, 1)]).await;
    let out = run(
        build(&config("openai_responses", &s.url)),
        "weather in Oslo?",
    )
    .await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    let turn1_events = [
        "raw:response.created",
        "raw:response.in_progress",
        "raw:response.output_item.added",
        "raw:response.function_call_arguments.delta",
        "raw:response.function_call_arguments.delta",
        "raw:response.function_call_arguments.delta",
        "raw:response.function_call_arguments.done",
        "raw:response.output_item.done",
        "raw:response.completed",
        "item:tool_called",
        "item:tool_output",
    ];
    assert_eq!(strs(&out.events[1..12]), turn1_events);
    assert_eq!(out.events.last().unwrap(), "item:message_output_created");
    let r = out.result.unwrap();
    assert_eq!(r.final_output_text(), Some("It is sunny."));
    assert_eq!((r.usage.requests, r.usage.total_tokens), (2, 58));
    assert_eq!(
        s.peer(0),
        s.peer(1),
        "the second turn reuses the pooled connection"
    );
    let (_, _, body) = s.request(1);
    let input = body["input"].as_array().unwrap();
    assert_eq!(input[1]["type"], "function_call");
    assert_eq!(input[1]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(
        input[2],
        json!({"type": "function_call_output", "call_id": "call_1", "output": "sunny in Oslo"})
    );
}

#[tokio::test]
async fn chat_text_has_the_sdk_sequence_and_usage() {
    let sse = chat_sse(&chat_text(&["Hél", "lo ", "wörld", "!"], 11, 4));
    let s = server(vec![sse_reply(&sse, 3)]).await;
    let out = run(build(&config("openai_chat_completions", &s.url)), "hi").await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    // No in_progress, no output_text.done: as the SDK's Chat Completions model.
    assert_eq!(
        strs(&out.events),
        [
            "agent:Assistant",
            "raw:response.created",
            "raw:response.output_item.added",
            "raw:response.content_part.added",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.output_text.delta",
            "raw:response.content_part.done",
            "raw:response.output_item.done",
            "raw:response.completed",
            "item:message_output_created",
        ]
    );
    let r = out.result.unwrap();
    assert_eq!(r.final_output_text(), Some("Héllo wörld!"));
    assert_eq!(
        (
            r.usage.requests,
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.total_tokens
        ),
        (1, 11, 4, 15)
    );
    let (path, headers, body) = s.request(0);
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(headers["authorization"], "Bearer sk-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
}

#[tokio::test]
async fn chat_two_tool_calls_in_one_turn_then_answer() {
    let call = |i: u32, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut tc = json!({"index": i, "function": {"arguments": args}});
        if let Some(id) = id {
            tc["id"] = json!(id);
            tc["type"] = json!("function");
        }
        if let Some(n) = name {
            tc["function"]["name"] = json!(n);
        }
        chunk(json!({"tool_calls": [tc]}), None)
    };
    let turn1 = chat_sse(&[
        chunk(json!({"role": "assistant"}), None),
        call(0, Some("call_a"), Some("get_weather"), ""),
        call(0, None, None, "{\"city\":"),
        call(0, None, None, "\"Oslo\"}"),
        call(
            1,
            Some("call_b"),
            Some("get_weather"),
            "{\"city\":\"Bergen\"}",
        ),
        chunk(json!({}), Some("tool_calls")),
        chat_usage(40, 20),
    ]);
    let turn2 = chat_sse(&chat_text(&["Both ", "sunny."], 60, 2));
    let s = server(vec![sse_reply(&turn1, 11), sse_reply(&turn2, 4)]).await;
    let out = run(
        build(&config("openai_chat_completions", &s.url)),
        "Oslo and Bergen?",
    )
    .await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    assert_eq!(
        strs(&out.events[..13]),
        [
            "agent:Assistant",
            "raw:response.created",
            "raw:response.output_item.added",
            "raw:response.function_call_arguments.delta",
            "raw:response.function_call_arguments.delta",
            "raw:response.output_item.added",
            "raw:response.function_call_arguments.delta",
            "raw:response.output_item.done",
            "raw:response.output_item.done",
            "raw:response.completed",
            "item:tool_called",
            "item:tool_called",
            "item:tool_output",
        ]
    );
    let r = out.result.unwrap();
    assert_eq!(r.final_output_text(), Some("Both sunny."));
    assert_eq!(
        (
            r.usage.requests,
            r.usage.input_tokens,
            r.usage.output_tokens
        ),
        (2, 100, 22)
    );
    assert_eq!(
        s.peer(0),
        s.peer(1),
        "the second turn reuses the pooled connection"
    );
    let (_, _, body) = s.request(1);
    let m = body["messages"].as_array().unwrap();
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["tool_calls"][0]["id"], "call_a");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(m[2]["tool_calls"][1]["id"], "call_b");
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "call_a", "content": "sunny in Oslo"})
    );
    assert_eq!(
        m[4],
        json!({"role": "tool", "tool_call_id": "call_b", "content": "sunny in Bergen"})
    );
}

#[tokio::test]
async fn structured_output_and_settings_reach_both_apis() {
    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Answer {
        city: String,
    }
    for kind in ["openai_responses", "openai_chat_completions"] {
        let sse = if kind == "openai_responses" {
            responses_sse(&responses_text(
                "r",
                &["{\"city\":", "\"Oslo\"}"],
                usage(1, 1),
            ))
        } else {
            chat_sse(&chat_text(&["{\"city\":", "\"Oslo\"}"], 1, 1))
        };
        let s = server(vec![sse_reply(&sse, 64)]).await;
        let mut c = config(kind, &s.url);
        c.temperature = Some(0.25);
        c.max_tokens = Some(99);
        c.tool_choice = Some("auto".into());
        c.extra_headers.insert("x-team".into(), "blue".into());
        let a: Agent = Agent::new("A")
            .instructions("JSON only.")
            .model_instance(build(&c))
            .output_type::<Answer>();
        let r = tokio::time::timeout(
            WAIT,
            Runner::new()
                .request(&a, "where?")
                .config(RunConfig::default().tracing_disabled(true))
                .run(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.final_output["city"], "Oslo", "{kind}");
        let (_, headers, body) = s.request(0);
        assert_eq!(headers["x-team"], "blue");
        assert_eq!(body["temperature"], 0.25);
        assert_eq!(body["tool_choice"], "auto");
        if kind == "openai_responses" {
            assert_eq!(body["max_output_tokens"], 99);
            assert_eq!(body["text"]["format"]["type"], "json_schema");
            assert_eq!(body["text"]["format"]["name"], "final_output");
            assert_eq!(
                body["text"]["format"]["schema"]["properties"]["city"]["type"],
                "string"
            );
        } else {
            assert_eq!(body["max_tokens"], 99);
            assert_eq!(body["response_format"]["type"], "json_schema");
            assert_eq!(
                body["response_format"]["json_schema"]["name"],
                "final_output"
            );
        }
    }
}

#[tokio::test]
async fn slow_streams_are_published_as_they_arrive() {
    // One delta every 150 ms: the first delta must reach the consumer long before the
    // server has sent the last one (no buffering anywhere on the way).
    let chunks = chat_text(&["a", "b", "c", "d", "e"], 1, 5);
    let mut pieces = Vec::new();
    for c in &chunks {
        pieces.push(Piece::Data(Bytes::from(format!("data: {c}\n\n"))));
        pieces.push(Piece::Pause(Duration::from_millis(150)));
    }
    pieces.push(Piece::Data(Bytes::from_static(b"data: [DONE]\n\n")));
    let s = server(vec![Reply::Sse {
        pieces,
        end: End::Clean,
    }])
    .await;
    let model = build(&config("openai_chat_completions", &s.url));
    let runner: Runner = Runner::new();
    let mut h = runner
        .request(&agent(model), "hi")
        .config(RunConfig::default().tracing_disabled(true))
        .start()
        .unwrap();
    let mut events = h.stream_events();
    let first_delta = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.next().await {
            if label(&e) == "raw:response.output_text.delta" {
                return Instant::now();
            }
        }
        panic!("no delta");
    })
    .await
    .unwrap();
    assert!(
        !s.state.sent_all.load(Ordering::SeqCst),
        "the first delta waited for the whole stream"
    );
    let n = tokio::time::timeout(WAIT, events.count()).await.unwrap();
    assert!(n >= 8);
    assert!(first_delta.elapsed() >= Duration::from_millis(400));
    assert_eq!(h.error(), None);
}

// ---------------------------------------------------------------- HTTP errors

#[tokio::test]
async fn unauthorized_fails_at_once_naming_provider_and_variable() {
    let s = server(vec![status(401, json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}))]).await;
    let mut c = config("openai_responses", &s.url);
    c.api_key = None;
    c.api_key_env = Some("CALLBOARD_TEST_KEY_THAT_IS_NOT_SET".into());
    let out = run(build(&c), "hi").await;
    assert_eq!(out.terminal, "run.failed");
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "AuthenticationError");
    assert!(msg.contains("openai_responses"), "{msg}");
    assert!(msg.contains("CALLBOARD_TEST_KEY_THAT_IS_NOT_SET"), "{msg}");
    assert!(msg.contains("Incorrect API key provided"), "{msg}");
    assert_eq!(s.requests(), 1, "401 is not retried");
    assert!(matches!(out.result, Err(AgentsError::Model(_))));
    assert_eq!(strs(&out.events), ["agent:Assistant"]);
}

#[tokio::test]
async fn forbidden_fails_at_once_naming_provider_and_variable() {
    let s = server(vec![status(
        403,
        json!({"error": {"message": "model not allowed"}}),
    )])
    .await;
    let mut c = config("openai_chat_completions", &s.url);
    c.api_key = None;
    c.api_key_env = Some("CALLBOARD_TEST_FORBIDDEN_KEY".into());
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "PermissionDeniedError");
    assert!(msg.contains("openai_chat_completions"), "{msg}");
    assert!(msg.contains("CALLBOARD_TEST_FORBIDDEN_KEY"), "{msg}");
    assert!(msg.contains("model not allowed"), "{msg}");
    assert_eq!(s.requests(), 1);
}

#[tokio::test]
async fn bad_request_passes_the_provider_message_through() {
    let s = server(vec![status(400, json!({"error": {"message": "Invalid schema for function 'get_weather': 'city' is required.", "type": "invalid_request_error", "param": "tools[0]"}}))]).await;
    let out = run(build(&config("openai_responses", &s.url)), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "BadRequestError");
    assert!(
        msg.contains("Invalid schema for function 'get_weather': 'city' is required."),
        "{msg}"
    );
    assert_eq!(s.requests(), 1);
}

#[tokio::test]
async fn rate_limit_honours_retry_after_then_succeeds() {
    let limited = Reply::Status {
        code: 429,
        headers: vec![("retry-after", "1".into())],
        body: json!({"error": {"message": "slow down"}}).to_string(),
    };
    let ok = sse_reply(&chat_sse(&chat_text(&["ok"], 1, 1)), 16);
    let s = server(vec![limited, ok]).await;
    let out = run(build(&config("openai_chat_completions", &s.url)), "hi").await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    assert_eq!(s.requests(), 2);
    // The backoff is 5 ms; only Retry-After explains a one-second wait.
    assert!(
        out.elapsed >= Duration::from_millis(950),
        "{:?}",
        out.elapsed
    );
    assert_eq!(out.result.unwrap().usage.requests, 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_fail_clearly() {
    let s = server(vec![status(
        503,
        json!({"error": {"message": "overloaded"}}),
    )])
    .await;
    let mut c = config("openai_responses", &s.url);
    c.max_retries = Some(3);
    c.retry_backoff_ms = Some(40);
    c.retry_backoff_max_ms = Some(1000);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "InternalServerError");
    assert!(msg.contains("503") && msg.contains("overloaded"), "{msg}");
    assert!(msg.contains("gave up after 4 attempts"), "{msg}");
    assert_eq!(s.requests(), 4);
    // Backoffs of 40, 80 and 160 ms, each jittered down by at most a quarter.
    assert!(
        out.elapsed >= Duration::from_millis(210),
        "{:?}",
        out.elapsed
    );
}

#[tokio::test]
async fn rate_limit_retries_run_out() {
    let limited = Reply::Status {
        code: 429,
        headers: vec![("retry-after-ms", "30".into())],
        body: json!({"error": {"message": "quota"}}).to_string(),
    };
    let s = server(vec![limited]).await;
    let mut c = config("openai_chat_completions", &s.url);
    c.max_retries = Some(1);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "RateLimitError");
    assert!(
        msg.contains("gave up after 2 attempts") && msg.contains("quota"),
        "{msg}"
    );
    assert_eq!(s.requests(), 2);
}

#[tokio::test]
async fn refused_connections_are_retried_then_fail_clearly() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let c = config("openai_responses", &format!("http://127.0.0.1:{port}/v1"));
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "APIConnectionError");
    assert!(msg.contains("could not connect"), "{msg}");
    assert!(msg.contains("gave up after 3 attempts"), "{msg}");
}

/// A raw TCP server: the first `resets` connections are closed before any byte is sent;
/// the next one gets `response` verbatim.
async fn raw_server(resets: usize, response: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i < resets {
                drop(sock);
                continue;
            }
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/v1"), conns)
}

#[tokio::test]
async fn connections_reset_before_the_first_byte_are_retried() {
    let body = chat_sse(&chat_text(&["fine"], 2, 1));
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (url, conns) = raw_server(2, response).await;
    let out = run(build(&config("openai_chat_completions", &url)), "hi").await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    assert_eq!(out.result.unwrap().final_output_text(), Some("fine"));
}

// ---------------------------------------------------------------- broken streams

async fn failing_run(kind: &str, reply: Reply) -> Outcome {
    let s = server(vec![reply]).await;
    run(build(&config(kind, &s.url)), "hi").await
}

#[tokio::test]
async fn error_failed_and_incomplete_events_fail_the_run() {
    let created = json!({"type": "response.created", "sequence_number": 0, "response": resp("r", "in_progress", json!([]), None)});
    let cases = [
        json!({"type": "error", "sequence_number": 1, "code": "server_error", "message": "The server had an error"}),
        json!({"type": "response.failed", "sequence_number": 1,
               "response": {"id": "r", "status": "failed", "model": "m", "error": {"code": "server_error", "message": "boom"}}}),
        json!({"type": "response.incomplete", "sequence_number": 1,
               "response": {"id": "r", "status": "incomplete", "model": "m", "incomplete_details": {"reason": "max_output_tokens"}}}),
    ];
    for terminal in cases {
        let ty = terminal["type"].as_str().unwrap().to_owned();
        let sse = responses_sse(&[created.clone(), terminal]);
        let out = failing_run("openai_responses", sse_reply(&sse, 9)).await;
        assert_eq!(out.terminal, "run.failed", "{ty}");
        assert_eq!(out.failed.as_ref().unwrap().0, "ModelBehaviorError", "{ty}");
        assert_eq!(
            strs(&out.events),
            [
                "agent:Assistant",
                "raw:response.created",
                &format!("raw:{ty}")
            ]
        );
        assert!(matches!(
            out.result,
            Err(AgentsError::ModelBehaviorError(_))
        ));
    }
    // A Chat Completions server reporting an error mid-stream.
    let sse = "data: {\"error\":{\"message\":\"upstream overloaded\",\"code\":503}}\n\n".to_owned();
    let out = failing_run("openai_chat_completions", sse_reply(&sse, 7)).await;
    let (ty, _) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert_eq!(
        strs(&out.events),
        ["agent:Assistant", "raw:response.created", "raw:error"]
    );
}

#[tokio::test]
async fn malformed_chunks_fail_the_run() {
    let mut sse = chat_sse(&chat_text(&["a"], 1, 1)[..2]);
    sse.insert_str(0, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"del\n\n");
    let out = failing_run("openai_chat_completions", sse_reply(&sse, 5)).await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert!(msg.contains("malformed chunk"), "{msg}");
    let sse =
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n";
    let out = failing_run("openai_responses", sse_reply(sse, 5)).await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert!(msg.contains("malformed event"), "{msg}");
}

#[tokio::test]
async fn connection_dropped_mid_stream_fails_the_run() {
    for kind in ["openai_responses", "openai_chat_completions"] {
        let text = if kind == "openai_responses" {
            responses_sse(&responses_text("r", &["a", "b", "c"], usage(1, 1))[..5])
        } else {
            chat_sse(&chat_text(&["a", "b", "c"], 1, 1)[..3])
        };
        let text = text.trim_end_matches("data: [DONE]\n\n").to_owned();
        // The pause lets what was sent reach the client before the connection is cut.
        let mut pieces = cut(&text, 13);
        pieces.push(Piece::Pause(Duration::from_millis(50)));
        let out = failing_run(
            kind,
            Reply::Sse {
                pieces,
                end: End::Abort,
            },
        )
        .await;
        assert_eq!(out.terminal, "run.failed", "{kind}");
        let (ty, msg) = out.failed.unwrap();
        assert_eq!(ty, "APIConnectionError", "{kind}: {msg}");
        assert!(msg.contains("mid-stream"), "{msg}");
        assert!(
            out.events
                .iter()
                .any(|e| e == "raw:response.output_text.delta"),
            "{kind}"
        );
    }
    // A body that ends cleanly but before the answer is finished.
    let text = chat_sse(&chat_text(&["a"], 1, 1)[..2]);
    let text = text.trim_end_matches("data: [DONE]\n\n").to_owned();
    let out = failing_run("openai_chat_completions", sse_reply(&text, 8)).await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert!(msg.contains("ended before the model finished"), "{msg}");
    let text = responses_sse(&responses_text("r", &["a"], usage(1, 1))[..4]);
    let out = failing_run("openai_responses", sse_reply(&text, 8)).await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert_eq!(msg, "Model did not produce a final response!");
}

// ---------------------------------------------------------------- timeouts and cancel

#[tokio::test]
async fn idle_timeout_ends_a_stalled_stream() {
    let text = responses_sse(&responses_text("r", &["a", "b"], usage(1, 1))[..5]);
    let s = server(vec![Reply::Sse {
        pieces: cut(&text, 50),
        end: End::Hang,
    }])
    .await;
    let mut c = config("openai_responses", &s.url);
    c.idle_timeout_ms = Some(300);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelTimeoutError");
    assert!(
        msg.contains("idle_timeout_ms") && msg.contains("stalled"),
        "{msg}"
    );
    assert!(
        out.elapsed >= Duration::from_millis(290) && out.elapsed < Duration::from_secs(3),
        "{:?}",
        out.elapsed
    );
    assert_eq!(s.requests(), 1, "a stream that started is not retried");
}

#[tokio::test]
async fn request_timeout_bounds_a_stream_that_never_ends() {
    let mut pieces = vec![Piece::Data(Bytes::from(format!(
        "data: {}\n\n",
        chunk(json!({"content": ""}), None)
    )))];
    for _ in 0..200 {
        pieces.push(Piece::Pause(Duration::from_millis(40)));
        pieces.push(Piece::Data(Bytes::from(format!(
            "data: {}\n\n",
            chunk(json!({"content": "."}), None)
        ))));
    }
    let s = server(vec![Reply::Sse {
        pieces,
        end: End::Hang,
    }])
    .await;
    let mut c = config("openai_chat_completions", &s.url);
    c.request_timeout_ms = Some(500);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelTimeoutError");
    assert!(msg.contains("request_timeout_ms"), "{msg}");
    assert!(
        out.elapsed >= Duration::from_millis(490) && out.elapsed < Duration::from_secs(3),
        "{:?}",
        out.elapsed
    );
    assert!(
        out.events
            .iter()
            .filter(|e| *e == "raw:response.output_text.delta")
            .count()
            >= 3
    );
}

#[tokio::test]
async fn response_headers_that_never_come_hit_the_idle_timeout() {
    // Accepts and reads the request, then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    let mut c = config("openai_responses", &format!("http://{addr}/v1"));
    c.idle_timeout_ms = Some(200);
    c.max_retries = Some(1);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelTimeoutError");
    assert!(
        msg.contains("no response within") && msg.contains("gave up after 2 attempts"),
        "{msg}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_timeout_applies_when_the_server_cannot_accept() {
    // A listener with a full accept queue: the kernel drops further SYNs, so connecting hangs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let mut c = config("openai_chat_completions", &format!("http://{addr}/v1"));
    c.connect_timeout_ms = Some(250);
    c.max_retries = Some(0);
    let out = run(build(&c), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelTimeoutError", "{msg}");
    assert!(msg.contains("connect_timeout_ms"), "{msg}");
    assert!(out.elapsed < Duration::from_secs(3), "{:?}", out.elapsed);
    drop(listener);
}

#[tokio::test]
async fn cancelling_a_run_closes_the_model_connection_promptly() {
    let mut pieces = vec![Piece::Data(Bytes::from(format!(
        "data: {}\n\n",
        chunk(json!({"content": ""}), None)
    )))];
    for _ in 0..500 {
        pieces.push(Piece::Data(Bytes::from(format!(
            "data: {}\n\n",
            chunk(json!({"content": "tick "}), None)
        ))));
        pieces.push(Piece::Pause(Duration::from_millis(20)));
    }
    let s = server(vec![Reply::Sse {
        pieces,
        end: End::Hang,
    }])
    .await;
    let model = build(&config("openai_chat_completions", &s.url));
    let runner: Runner = Runner::new();
    let mut h = runner
        .request(&agent(model), "hi")
        .config(RunConfig::default().tracing_disabled(true))
        .start()
        .unwrap();
    let mut frames = h.frames().unwrap();
    let mut deltas = 0;
    let terminal = tokio::time::timeout(WAIT, async {
        while let Some(f) = frames.recv().await {
            if f.event().map(label).as_deref() == Some("raw:response.output_text.delta") {
                deltas += 1;
                if deltas == 3 {
                    h.cancel(CancelMode::Immediate);
                }
            }
            if f.body.is_terminal() {
                return f.body.type_name();
            }
        }
        "closed"
    })
    .await
    .unwrap();
    assert_eq!(terminal, "run.cancelled");
    let cancelled_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), async {
        while s.state.body_dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server saw the connection close");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert!(!s.state.sent_all.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_json_answer_instead_of_a_stream_is_reported() {
    let s = server(vec![status(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": []}),
    )])
    .await;
    let out = run(build(&config("openai_chat_completions", &s.url)), "hi").await;
    let (ty, msg) = out.failed.unwrap();
    assert_eq!(ty, "ModelBehaviorError");
    assert!(msg.contains("instead of an event stream"), "{msg}");
    assert_eq!(s.requests(), 1);
}

#[tokio::test]
async fn chat_reasoning_content_becomes_a_reasoning_item() {
    let sse = chat_sse(&[
        chunk(
            json!({"role": "assistant", "reasoning_content": "The user "}),
            None,
        ),
        chunk(json!({"reasoning_content": "greets me."}), None),
        chunk(json!({"content": "Hello!"}), None),
        chunk(json!({}), Some("stop")),
        chat_usage(5, 9),
    ]);
    let s = server(vec![sse_reply(&sse, 6)]).await;
    let out = run(build(&config("openai_chat_completions", &s.url)), "hi").await;
    assert_eq!(out.terminal, "run.completed", "{:?}", out.failed);
    assert_eq!(
        strs(&out.events[out.events.len() - 3..]),
        [
            "raw:response.completed",
            "item:reasoning_item_created",
            "item:message_output_created"
        ]
    );
    assert!(out
        .events
        .contains(&"raw:response.reasoning_summary_text.delta".to_owned()));
    let r = out.result.unwrap();
    assert_eq!(r.final_output_text(), Some("Hello!"));
    assert_eq!(r.usage.output_tokens, 9);
}

#[tokio::test]
async fn bodies_that_end_late_are_drained_so_the_connection_is_reused() {
    // The server ends each body 150 ms after `[DONE]`. The run is over at `[DONE]`; the
    // provider reads the rest in the background, so the next run finds the connection idle
    // in the pool instead of opening a new one.
    let sse = chat_sse(&chat_text(&["one"], 1, 1));
    let s = server(vec![sse_reply_lingering(
        &sse,
        64,
        Duration::from_millis(150),
    )])
    .await;
    let model = build(&config("openai_chat_completions", &s.url));
    let first = run(model.clone(), "hi").await;
    assert_eq!(first.terminal, "run.completed", "{:?}", first.failed);
    assert!(
        first.elapsed < Duration::from_millis(140),
        "{:?}",
        first.elapsed
    );
    tokio::time::timeout(WAIT, async {
        while s.state.body_dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server finished the first body");
    // Give the client a moment to read the end of the body it is draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = run(model, "again").await;
    assert_eq!(second.terminal, "run.completed", "{:?}", second.failed);
    assert_eq!(s.requests(), 2);
    assert_eq!(s.peer(0), s.peer(1), "the pooled connection was reused");
}
