//! The wire formats against each other: encoding the frames of a whole run in the native
//! `sdk` format, the `chat` relay, the AI SDK UI message stream and AG-UI. Each iteration
//! builds fresh frames (the stateless formats cache their bytes on a frame) and encodes all of
//! them, with the per-run state machines for the two front-end protocols. Throughput is in
//! frames, so criterion's elements/s is frames per second and the time per element is the
//! CPU per frame (one thread, no I/O).
//!
//! Two runs, made once by the real engine: the demo cast's weather question (a handoff, a
//! tool call, a 20-delta answer: 60 frames) and a long answer (one agent, 400 deltas).
//!
//! `cargo bench --bench wire`

use std::sync::Arc;

use callboard::bus::{Bus, BusLimits, Delivery, Frame, FrameBody};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::run::Runner;
use callboard::wire::ag_ui::AgUiStream;
use callboard::wire::ai_sdk::AiSdkStream;
use callboard::wire::{chat, sdk};
use callboard::Agent;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// The bodies of every frame of one run of `agent` on `input`.
fn run_frames(rt: &tokio::runtime::Runtime, agent: Agent, input: &str) -> Vec<FrameBody> {
    rt.block_on(async {
        let bus = Bus::new(BusLimits::default());
        let runner: Runner = Runner::new().with_bus(bus.clone());
        runner.register(&agent);
        let topic = bus.topic("bench");
        let mut sub = topic.subscribe(Some(0)).expect("a new topic");
        let _run = runner
            .request(&agent, input)
            .topic(topic.clone())
            .run_id("run_bench")
            .start()
            .expect("the run starts");
        let mut v = Vec::new();
        // Until the end frame (it may come after the run signals its end).
        while let Some(Delivery::Frame(f)) = sub.recv().await {
            v.push(f.body.clone());
            if f.body.is_terminal() {
                break;
            }
        }
        v
    })
}

fn fresh(bodies: &[FrameBody], session: &Arc<str>, run: &Arc<str>) -> Vec<Frame> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Frame::new(session.clone(), i as u64 + 1, run.clone(), b.clone()))
        .collect()
}

fn formats(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let demo = callboard::demo::cast(Arc::new(callboard::demo::demo_model()));
    let long_text = "word ".repeat(400);
    let long = Agent::new("Writer").model_instance(Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::message(long_text.trim_end(), 400),
    ])));
    let runs = [
        (
            "demo run",
            run_frames(&rt, demo, "What is the weather in Oslo?"),
        ),
        ("long answer", run_frames(&rt, long, "Write.")),
    ];
    let session: Arc<str> = "session-42".into();
    let run: Arc<str> = "run_bench".into();
    for (name, bodies) in &runs {
        // Bytes on the wire per run, for the README's table.
        let frames = fresh(bodies, &session, &run);
        let sdk_bytes: usize = frames.iter().map(|f| sdk::bytes(f).len()).sum();
        let chat_bytes: usize = frames
            .iter()
            .filter_map(|f| chat::bytes(f))
            .map(|b| b.len())
            .sum();
        let mut ai = Vec::new();
        let mut s = AiSdkStream::new("session-42", "run_bench");
        frames.iter().for_each(|f| {
            s.push(f, &mut ai);
        });
        let mut ag = Vec::new();
        let mut s = AgUiStream::new("session-42", "client-run", "run_bench");
        frames.iter().for_each(|f| {
            s.push(f, &mut ag);
        });
        eprintln!(
            "{name}: {} frames; bytes per run: sdk {sdk_bytes}, chat {chat_bytes}, ai-sdk {}, ag-ui {}",
            frames.len(),
            ai.len(),
            ag.len()
        );

        let mut g = c.benchmark_group(format!("wire/{name}"));
        g.throughput(Throughput::Elements(bodies.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("sdk"), |b| {
            b.iter(|| {
                let frames = fresh(bodies, &session, &run);
                frames.iter().map(|f| sdk::bytes(f).len()).sum::<usize>()
            })
        });
        g.bench_function(BenchmarkId::from_parameter("chat"), |b| {
            b.iter(|| {
                let frames = fresh(bodies, &session, &run);
                frames
                    .iter()
                    .filter_map(|f| chat::bytes(f))
                    .map(|b| b.len())
                    .sum::<usize>()
            })
        });
        g.bench_function(BenchmarkId::from_parameter("ai-sdk"), |b| {
            let mut out = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                let frames = fresh(bodies, &session, &run);
                let mut s = AiSdkStream::new("session-42", "run_bench");
                for f in &frames {
                    s.push(f, &mut out);
                }
                out.len()
            })
        });
        g.bench_function(BenchmarkId::from_parameter("ag-ui"), |b| {
            let mut out = Vec::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                let frames = fresh(bodies, &session, &run);
                let mut s = AgUiStream::new("session-42", "client-run", "run_bench");
                for f in &frames {
                    s.push(f, &mut out);
                }
                out.len()
            })
        });
        g.bench_function(BenchmarkId::from_parameter("frames only"), |b| {
            b.iter(|| fresh(bodies, &session, &run).len())
        });
        g.finish();
    }
}

criterion_group!(benches, formats);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
