//! The session bus's hot paths: publishing a frame (numbering, serialising once, history)
//! and delivering it to 1, 100 and 1,000 subscribers; and serialising stream events into
//! frames. SSE parsing is in `benches/providers.rs`, one engine run in `benches/engine.rs`.
//!
//! `cargo bench --bench bus`

use std::sync::Arc;

use callboard::bus::{BusLimits, Delivery, Frame, FrameBody, Subscription, Topic};
use callboard::items::{FunctionCallItem, RunItem};
use callboard::model::{RawEvent, ResponseEvent};
use callboard::wire::{chat, sdk};
use callboard::StreamEvent;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

fn delta(i: u64) -> FrameBody {
    FrameBody::Event {
        event: StreamEvent::RawResponse(Arc::new(RawEvent::Typed(
            ResponseEvent::OutputTextDelta {
                item_id: "msg_68a1f0c2d4e5".into(),
                output_index: 0,
                content_index: 0,
                delta: " word".into(),
                logprobs: Vec::new(),
                sequence_number: i,
            },
        ))),
        tool: None,
    }
}

fn tool_called() -> FrameBody {
    FrameBody::Event {
        event: StreamEvent::RunItem(Arc::new(RunItem::ToolCall {
            agent: "Triage".into(),
            raw_item: FunctionCallItem {
                id: Some("fc_1".into()),
                call_id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
                status: Some("completed".into()),
            },
        })),
        tool: Some("get_weather".into()),
    }
}

fn limits() -> BusLimits {
    BusLimits {
        history: 4096,
        subscriber_queue: 1024,
        budget: None,
    }
}

fn drain(subs: &mut [Subscription]) -> usize {
    let mut n = 0;
    for s in subs.iter_mut() {
        // Each connection's writer takes the frame's bytes (serialised once, then shared).
        while let Some(Delivery::Frame(f)) = s.try_recv() {
            n += sdk::bytes(&f).len().min(1);
        }
    }
    n
}

fn serialisation(c: &mut Criterion) {
    let mut g = c.benchmark_group("bus/serialise");
    g.throughput(Throughput::Elements(1));
    let run: Arc<str> = "run_3f2a9c0e1b7d4a5f".into();
    let session: Arc<str> = "session-42".into();
    g.bench_function("output_text.delta frame", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            sdk::bytes(&Frame::new(session.clone(), i, run.clone(), delta(i))).len()
        })
    });
    g.bench_function("tool_called frame", |b| {
        b.iter(|| sdk::bytes(&Frame::new(session.clone(), 1, run.clone(), tool_called())).len())
    });
    g.bench_function("delta frame, chat format too", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let f = Frame::new(session.clone(), i, run.clone(), delta(i));
            sdk::bytes(&f).len() + chat::bytes(&f).map_or(0, |j| j.len())
        })
    });
    g.finish();
}

fn publish(c: &mut Criterion) {
    let run: Arc<str> = "run_1".into();
    let mut g = c.benchmark_group("bus/publish");
    g.throughput(Throughput::Elements(1));
    g.bench_function("no subscriber", |b| {
        let t = Topic::new("s", limits());
        let mut i = 0;
        b.iter(|| {
            i += 1;
            t.publish(&run, delta(i))
        })
    });
    g.finish();

    // Fan-out: a batch of 64 frames published, then every subscriber drains it (what a
    // connection's writer does), so the ring never overflows.
    const BATCH: u64 = 64;
    let mut g = c.benchmark_group("bus/fan-out");
    for subs in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements(BATCH * subs as u64));
        g.bench_with_input(BenchmarkId::new("deliveries", subs), &subs, |b, &n| {
            let t = Topic::new("s", limits());
            let mut subs: Vec<Subscription> =
                (0..n).filter_map(|_| t.subscribe(None).ok()).collect();
            let mut i = 0;
            b.iter(|| {
                for _ in 0..BATCH {
                    i += 1;
                    t.publish(&run, delta(i));
                }
                drain(&mut subs)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, serialisation, publish);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
