//! The SSE-to-event path of both OpenAI providers: SSE bytes (cut into network-sized chunks)
//! are parsed, translated into Responses-API raw events and published onto a session topic,
//! exactly as a live stream is after its response headers. Throughput is in raw events.
//!
//! `cargo bench --bench providers`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callboard::bus::{BusLimits, FrameBody, Topic};
use callboard::model::http::events_from_sse;
use callboard::model::openai_chat::ChatTranslator;
use callboard::model::openai_responses::ResponsesTranslator;
use callboard::StreamEvent;
use criterion::{criterion_group, Criterion, Throughput};
use futures::StreamExt;
use serde_json::json;

const DELTAS: usize = 1000;
/// Bytes per body chunk handed to the parser (a typical TCP read of a streaming answer).
const CHUNK: usize = 1400;

fn words(i: usize) -> String {
    format!(" word{i}")
}

/// A Responses stream of one message in `DELTAS` deltas.
fn responses_sse() -> String {
    let resp = |status: &str| json!({"id": "resp_1", "object": "response", "created_at": 1.0, "status": status, "model": "gpt-test", "output": []});
    let mut ev = vec![
        json!({"type": "response.created", "sequence_number": 0, "response": resp("in_progress")}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": resp("in_progress")}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    let mut text = String::new();
    for i in 0..DELTAS {
        let d = words(i);
        text.push_str(&d);
        ev.push(json!({"type": "response.output_text.delta", "sequence_number": ev.len(), "item_id": "msg_1",
                       "output_index": 0, "content_index": 0, "delta": d, "logprobs": []}));
    }
    let msg = json!({"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": text, "annotations": []}]});
    ev.push(
        json!({"type": "response.output_text.done", "sequence_number": ev.len(), "item_id": "msg_1",
                   "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    ev.push(json!({"type": "response.content_part.done", "sequence_number": ev.len(), "item_id": "msg_1",
                   "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
    ev.push(json!({"type": "response.output_item.done", "sequence_number": ev.len(), "output_index": 0, "item": msg}));
    let mut done = resp("completed");
    done["output"] = json!([msg]);
    done["usage"] =
        json!({"input_tokens": 10, "output_tokens": DELTAS, "total_tokens": DELTAS + 10});
    ev.push(json!({"type": "response.completed", "sequence_number": ev.len(), "response": done}));
    ev.iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

/// A Chat Completions stream of one message in `DELTAS` chunks, with usage and `[DONE]`.
fn chat_sse() -> String {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut s = format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant", "content": ""}), None)
    );
    for i in 0..DELTAS {
        s.push_str(&format!(
            "data: {}\n\n",
            chunk(json!({"content": words(i)}), None)
        ));
    }
    s.push_str(&format!("data: {}\n\n", chunk(json!({}), Some("stop"))));
    s.push_str(&format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": DELTAS, "total_tokens": DELTAS + 10}})
    ));
    s.push_str("data: [DONE]\n\n");
    s
}

fn chunks(text: &str) -> Vec<Bytes> {
    text.as_bytes()
        .chunks(CHUNK)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn body(chunks: &[Bytes]) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::iter(chunks.to_vec()).map(Ok)
}

/// Runs one stream through the path; returns the number of raw events.
async fn drive(chunks: &[Bytes], chat: bool, topic: Option<&Arc<Topic>>) -> usize {
    let run_id: Arc<str> = "run_bench".into();
    let mut stream = if chat {
        events_from_sse(body(chunks), ChatTranslator::new("m", "bench"), "bench").boxed()
    } else {
        events_from_sse(body(chunks), ResponsesTranslator::new("bench"), "bench").boxed()
    };
    let mut n = 0;
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else {
            panic!("the benchmark stream is well formed")
        };
        n += 1;
        match topic {
            Some(t) => {
                t.publish(
                    &run_id,
                    FrameBody::Event {
                        event: StreamEvent::RawResponse(Arc::new(ev)),
                        tool: None,
                    },
                );
            }
            None => {
                std::hint::black_box(ev);
            }
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    for (name, chat, text) in [
        ("responses", false, responses_sse()),
        ("chat_completions", true, chat_sse()),
    ] {
        let chunks = chunks(&text);
        let events = rt.block_on(drive(&chunks, chat, None));
        let mut g = c.benchmark_group(format!("sse_to_events/{name}"));
        g.throughput(Throughput::Elements(events as u64));
        g.measurement_time(Duration::from_secs(4));
        g.sample_size(20);
        g.bench_function("parse_translate", |b| {
            b.iter(|| rt.block_on(drive(&chunks, chat, None)))
        });
        g.bench_function("parse_translate_publish", |b| {
            let topic = Topic::new("bench", BusLimits::default());
            let _sub = topic.subscribe(None);
            b.iter(|| rt.block_on(drive(&chunks, chat, Some(&topic))))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);

/// `PROVIDERS_BENCH_ONLY=<responses|chat_completions>[_publish]:<streams>` runs just that many
/// streams of one case and prints the event count, for `perf stat -e task-clock` (CPU time,
/// which other load on the machine does not inflate the way it inflates wall time).
fn only(spec: &str) {
    let (case, n) = spec.split_once(':').unwrap_or((spec, "1000"));
    let n: usize = n.parse().unwrap_or(1000);
    let publish = case.ends_with("_publish");
    let chat = case.starts_with("chat");
    let text = if chat { chat_sse() } else { responses_sse() };
    let chunks = chunks(&text);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let topic = Topic::new("bench", BusLimits::default());
    let _sub = topic.subscribe(None);
    let start = std::time::Instant::now();
    let mut events = 0;
    for _ in 0..n {
        events += rt.block_on(drive(&chunks, chat, publish.then_some(&topic)));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{case}: {events} events in {secs:.3} s wall ({:.0} events/s wall)",
        events as f64 / secs
    );
}

fn main() {
    if let Ok(spec) = std::env::var("PROVIDERS_BENCH_ONLY") {
        only(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
