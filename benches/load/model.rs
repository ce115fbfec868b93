//! The fake OpenAI-compatible model server: Chat Completions and Responses streaming, with
//! the conversation scripted from what the request contains (like `src/demo.rs` does):
//!
//! 1. an agent offered `get_weather` that has not called it yet calls `get_weather`;
//! 2. an agent offered a `transfer_to_*` tool that already has the weather hands off;
//! 3. any other agent answers in `tokens` deltas, `delay_ms` apart.
//!
//! Each answer delta is `w<i>@<unix nanos> `, so a client can tell the latency from the
//! moment the server emitted it. `POST /tool/weather` serves the `http` tool of the server
//! config. It runs in its own process (`load fake-model`), so its CPU is never counted as
//! callboard's or the SDK's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{json, Value};

/// Unix time in nanoseconds (the clock both processes share).
pub use callboard::loadtest::check::now_ns;

/// How the fake model behaves.
#[derive(Clone, Copy, Debug)]
pub struct ModelOpts {
    /// Deltas in the final answer.
    pub tokens: usize,
    /// Pause between deltas (0: the whole answer at once).
    pub delay_ms: u64,
}

struct St {
    opts: ModelOpts,
    requests: AtomicU64,
    ids: AtomicU64,
}

/// What a request asks for.
enum Turn {
    Call { name: String, args: String },
    Answer,
}

/// What the conversation since the last user message contains.
fn decide(body: &Value, chat: bool, defaults: ModelOpts) -> (Turn, ModelOpts) {
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    if chat {
                        t["function"]["name"].as_str()
                    } else {
                        t["name"].as_str()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let items: &[Value] = if chat {
        body["messages"].as_array().map_or(&[], |v| v.as_slice())
    } else {
        body["input"].as_array().map_or(&[], |v| v.as_slice())
    };
    let last_user = items
        .iter()
        .rposition(|m| m["role"].as_str() == Some("user"))
        .unwrap_or(0);
    let since = &items[last_user..];
    let outputs = since
        .iter()
        .filter(|m| {
            if chat {
                m["role"].as_str() == Some("tool")
            } else {
                m["type"].as_str() == Some("function_call_output")
            }
        })
        .count();
    // The user text may set `tokens=N` and `delay_ms=N` for this conversation.
    let mut opts = defaults;
    if let Some(u) = items.get(last_user) {
        let text = match &u["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        for word in text.split_whitespace() {
            if let Some(n) = word.strip_prefix("tokens=").and_then(|n| n.parse().ok()) {
                opts.tokens = n;
            }
            if let Some(n) = word.strip_prefix("delay_ms=").and_then(|n| n.parse().ok()) {
                opts.delay_ms = n;
            }
        }
    }
    let turn = if tools.contains(&"get_weather") && outputs == 0 {
        Turn::Call {
            name: "get_weather".into(),
            args: r#"{"city":"Oslo"}"#.into(),
        }
    } else if let Some(t) = tools.iter().find(|t| t.starts_with("transfer_to_")) {
        Turn::Call {
            name: (*t).to_owned(),
            args: "{}".into(),
        }
    } else {
        Turn::Answer
    };
    (turn, opts)
}

/// Stands for the answer's full text in the pieces after the deltas.
const TEXT_MARK: &str = "@@TEXT@@";

/// One SSE piece: either bytes to send now or a delta whose text is stamped when it is sent.
enum Piece {
    Data(String),
    Delta(usize),
}

fn sse(ev: &Value) -> String {
    format!("data: {ev}\n\n")
}

fn sse_named(ev: &Value) -> String {
    format!(
        "event: {}\ndata: {ev}\n\n",
        ev["type"].as_str().unwrap_or("")
    )
}

fn delta_text(i: usize) -> String {
    format!("w{i}@{} ", now_ns())
}

fn chat_pieces(turn: &Turn, id: u64, tokens: usize) -> (Vec<Piece>, Stamp) {
    let cid = format!("chatcmpl-{id}");
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": cid, "object": "chat.completion.chunk", "created": 1, "model": "fake",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let usage = json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": 1, "model": "fake",
                       "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}});
    let mut v = Vec::new();
    match turn {
        Turn::Call { name, args } => {
            v.push(Piece::Data(sse(&chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": format!("call_{id}"), "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ))));
            let mid = args.len() / 2;
            for part in [&args[..mid], &args[mid..]] {
                v.push(Piece::Data(sse(&chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    None,
                ))));
            }
            v.push(Piece::Data(sse(&chunk(json!({}), Some("tool_calls")))));
        }
        Turn::Answer => {
            v.push(Piece::Data(sse(&chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))));
            for i in 0..tokens {
                v.push(Piece::Delta(i));
            }
            v.push(Piece::Data(sse(&chunk(json!({}), Some("stop")))));
        }
    }
    v.push(Piece::Data(sse(&usage)));
    v.push(Piece::Data("data: [DONE]\n\n".into()));
    let cid2 = format!("chatcmpl-{id}");
    let stamp = move |i: usize| {
        let t = delta_text(i);
        let f = sse(
            &json!({"id": cid2, "object": "chat.completion.chunk", "created": 1, "model": "fake",
                    "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]}),
        );
        (f, t)
    };
    (v, Box::new(stamp))
}

fn responses_pieces(turn: &Turn, id: u64, tokens: usize) -> (Vec<Piece>, Stamp) {
    let rid = format!("resp_{id}");
    let resp = |status: &str, output: Value| json!({"id": rid, "object": "response", "created_at": 1, "status": status, "model": "fake", "output": output});
    let seq = std::cell::Cell::new(0u64);
    let mut v = Vec::new();
    let push = |v: &mut Vec<Piece>, mut ev: Value| {
        ev["sequence_number"] = json!(seq.get());
        seq.set(seq.get() + 1);
        v.push(Piece::Data(sse_named(&ev)));
    };
    push(
        &mut v,
        json!({"type": "response.created", "response": resp("in_progress", json!([]))}),
    );
    push(
        &mut v,
        json!({"type": "response.in_progress", "response": resp("in_progress", json!([]))}),
    );
    let item;
    match turn {
        Turn::Call { name, args } => {
            let fid = format!("fc_{id}");
            let cid = format!("call_{id}");
            push(
                &mut v,
                json!({"type": "response.output_item.added", "output_index": 0,
                       "item": {"type": "function_call", "id": fid, "call_id": cid, "name": name, "arguments": "", "status": "in_progress"}}),
            );
            let mid = args.len() / 2;
            for part in [&args[..mid], &args[mid..]] {
                push(
                    &mut v,
                    json!({"type": "response.function_call_arguments.delta", "item_id": fid, "output_index": 0, "delta": part}),
                );
            }
            push(
                &mut v,
                json!({"type": "response.function_call_arguments.done", "item_id": fid, "output_index": 0, "arguments": args}),
            );
            item = json!({"type": "function_call", "id": fid, "call_id": cid, "name": name, "arguments": args, "status": "completed"});
            push(
                &mut v,
                json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            );
        }
        Turn::Answer => {
            let mid = format!("msg_{id}");
            push(
                &mut v,
                json!({"type": "response.output_item.added", "output_index": 0,
                       "item": {"type": "message", "id": mid, "role": "assistant", "status": "in_progress", "content": []}}),
            );
            push(
                &mut v,
                json!({"type": "response.content_part.added", "item_id": mid, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for i in 0..tokens {
                v.push(Piece::Delta(i));
                seq.set(seq.get() + 1);
            }
            // The full text is only known once the deltas are sent (they carry their send
            // times): TEXT_MARK is replaced by it then.
            let text = TEXT_MARK;
            push(
                &mut v,
                json!({"type": "response.output_text.done", "item_id": mid, "output_index": 0, "content_index": 0, "text": text}),
            );
            push(
                &mut v,
                json!({"type": "response.content_part.done", "item_id": mid, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            item = json!({"type": "message", "id": mid, "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": text, "annotations": []}]});
            push(
                &mut v,
                json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            );
        }
    }
    let mut done = resp("completed", json!([item]));
    done["usage"] =
        json!({"input_tokens": 20, "output_tokens": tokens, "total_tokens": 20 + tokens});
    push(
        &mut v,
        json!({"type": "response.completed", "response": done}),
    );
    let mid = format!("msg_{id}");
    let stamp = move |i: usize| {
        let t = delta_text(i);
        let f = sse_named(
            &json!({"type": "response.output_text.delta", "sequence_number": 4 + i, "item_id": mid,
                          "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
        );
        (f, t)
    };
    (v, Box::new(stamp))
}

fn fill(piece: String, text: &str) -> String {
    if piece.contains(TEXT_MARK) {
        piece.replace(TEXT_MARK, text)
    } else {
        piece
    }
}

/// Makes the SSE frame of delta `i` and returns it with the delta's text.
type Stamp = Box<dyn Fn(usize) -> (String, String) + Send>;

async fn handle(st: Arc<St>, chat: bool, body: Bytes) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let id = st.ids.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from(r#"{"error":{"message":"bad json"}}"#))
            .unwrap_or_default();
    };
    let (turn, opts) = decide(&req, chat, st.opts);
    let (pieces, stamp) = if chat {
        chat_pieces(&turn, id, opts.tokens)
    } else {
        responses_pieces(&turn, id, opts.tokens)
    };
    let delay = Duration::from_millis(opts.delay_ms);
    let body = if delay.is_zero() {
        let mut s = String::new();
        let mut text = String::new();
        for p in pieces {
            match p {
                Piece::Data(d) => s.push_str(&fill(d, &text)),
                Piece::Delta(i) => {
                    let (frame, t) = stamp(i);
                    text.push_str(&t);
                    s.push_str(&frame);
                }
            }
        }
        Body::from(s)
    } else {
        let stream = futures::stream::unfold(
            (pieces.into_iter(), stamp, false, String::new()),
            move |(mut it, stamp, mut after_delta, mut text)| async move {
                let p = it.next()?;
                let out = match p {
                    Piece::Data(d) => fill(d, &text),
                    Piece::Delta(i) => {
                        if after_delta {
                            tokio::time::sleep(delay).await;
                        }
                        after_delta = true;
                        let (frame, t) = stamp(i);
                        text.push_str(&t);
                        frame
                    }
                };
                Some((
                    Ok::<Bytes, Infallible>(Bytes::from(out)),
                    (it, stamp, after_delta, text),
                ))
            },
        );
        Body::from_stream(stream)
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_default()
}

/// The router of the fake model server.
pub fn router(opts: ModelOpts) -> axum::Router {
    let st = Arc::new(St {
        opts,
        requests: AtomicU64::new(0),
        ids: AtomicU64::new(1),
    });
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(st): State<Arc<St>>, body: Bytes| handle(st, true, body)),
        )
        .route(
            "/v1/responses",
            post(|State(st): State<Arc<St>>, body: Bytes| handle(st, false, body)),
        )
        .route("/tool/weather", post(|| async { "sunny in Oslo, 12°C" }))
        .with_state(st)
}

/// Runs the fake model server on `port` (0: any) of 127.0.0.1 and prints `LISTENING <addr>`.
pub fn serve_blocking(port: u16, opts: ModelOpts) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("LISTENING {}", listener.local_addr()?);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(opts)).await
    })
}
