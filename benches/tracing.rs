//! CPU cost of tracing per run: the 3-turn scripted run (tool call, handoff, 5-delta
//! message) with tracing off, and with tracing on into the SQLite store sink, side by side.
//!
//! Time here is process CPU time (every thread: the run's, the tracing actor's and the
//! sink's), measured with `CLOCK_PROCESS_CPUTIME_ID`; each sample ends with a flush so the
//! export work of its runs is counted in it. Run: `cargo bench --bench tracing`.

use std::sync::Arc;
use std::time::Duration;

use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::trace::sinks::{StoreSink, TraceStore};
use callboard::trace::{BatchConfig, BatchTraceProcessor, Sink, Tracer};
use callboard::{Agent, FunctionTool, RunConfig, Runner, ToolContext};
use criterion::{criterion_group, criterion_main, Criterion};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, JsonSchema)]
struct CityArgs {
    city: String,
}

fn cast() -> Agent {
    let model = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("B"),
        ScriptedTurn::message("It is sunny in Oslo.", 5),
    ]));
    let tool = FunctionTool::new(
        "get_weather",
        "Weather for a city.",
        |_ctx: ToolContext<()>, a: CityArgs| async move {
            Ok::<_, String>(format!("sunny in {}", a.city))
        },
    );
    let b = Agent::new("B")
        .instructions("Answer.")
        .model_instance(model.clone());
    Agent::new("A")
        .instructions("Route.")
        .model_instance(model)
        .tool(tool)
        .handoff(&b)
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a run is traced into.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Tracing off.
    Off,
    /// Spans made, no processor (the engine's own cost of tracing).
    SpansOnly,
    /// Spans handed to the tracing actor, which has no sink.
    ActorNoSink,
    /// Spans exported to JSON by the actor and handed to a sink that does nothing.
    NullSink,
    /// Spans through the actor into the SQLite store sink.
    Store,
}

/// A sink that keeps what it is given.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<callboard::trace::ExportItem>>);

#[async_trait::async_trait]
impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    async fn export(
        &self,
        batch: &[callboard::trace::ExportItem],
    ) -> Result<(), callboard::trace::SinkError> {
        self.0.lock().expect("items").extend_from_slice(batch);
        Ok(())
    }
}

/// A sink that takes batches and does nothing with them.
struct Null;

#[async_trait::async_trait]
impl Sink for Null {
    fn name(&self) -> &str {
        "null"
    }
    async fn export(
        &self,
        batch: &[callboard::trace::ExportItem],
    ) -> Result<(), callboard::trace::SinkError> {
        std::hint::black_box(batch);
        Ok(())
    }
}

struct Setup {
    runner: Runner,
    agent: Agent,
    spans_only: Tracer,
    actor: (Tracer, BatchTraceProcessor),
    null: (Tracer, BatchTraceProcessor),
    store: (Tracer, BatchTraceProcessor),
    dir: std::path::PathBuf,
}

fn traced_into(sinks: Vec<Arc<dyn Sink>>) -> (Tracer, BatchTraceProcessor) {
    let processor = BatchTraceProcessor::new(sinks, BatchConfig::default());
    let tracer = Tracer::new();
    tracer.set_disabled(false);
    tracer.add_processor(Arc::new(processor.clone()));
    (tracer, processor)
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("callboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = TraceStore::open(dir.join("traces.db")).expect("store");
    let spans_only = Tracer::new();
    spans_only.set_disabled(false);
    Setup {
        runner: Runner::new(),
        agent: cast(),
        spans_only,
        actor: traced_into(vec![]),
        null: traced_into(vec![Arc::new(Null)]),
        store: traced_into(vec![Arc::new(StoreSink::new(store))]),
        dir,
    }
}

async fn runs(s: &Setup, n: u64, mode: Mode) -> Duration {
    let (tracer, processor) = match mode {
        Mode::Off | Mode::SpansOnly => (&s.spans_only, None),
        Mode::ActorNoSink => (&s.actor.0, Some(&s.actor.1)),
        Mode::NullSink => (&s.null.0, Some(&s.null.1)),
        Mode::Store => (&s.store.0, Some(&s.store.1)),
    };
    let cfg = RunConfig::default()
        .tracer(tracer.clone())
        .tracing_disabled(mode == Mode::Off);
    let start = process_cpu();
    for _ in 0..n {
        let r = s
            .runner
            .request(&s.agent, "weather?")
            .config(cfg.clone())
            .run()
            .await
            .expect("run");
        std::hint::black_box(r);
    }
    // Count the export work of these runs too.
    if let Some(p) = processor {
        p.flush().await;
    }
    process_cpu() - start
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = Arc::new(rt.block_on(async { setup() }));
    // The store alone: `TRACING_BENCH_STORE=1` times inserts of recorded runs' items.
    if std::env::var("TRACING_BENCH_STORE").is_ok() {
        let sample = Arc::new(Collect::default());
        let (tracer, p) = traced_into(vec![sample.clone()]);
        let cfg = RunConfig::default().tracer(tracer.clone());
        rt.block_on(async {
            for _ in 0..50 {
                let r = s
                    .runner
                    .request(&s.agent, "weather?")
                    .config(cfg.clone())
                    .run()
                    .await;
                std::hint::black_box(r.expect("run"));
            }
            p.flush().await;
        });
        let items = sample.0.lock().expect("items").clone();
        for (n, size) in [(1, 128), (2, 1024)] {
            let store = TraceStore::open(s.dir.join(format!("store-only-{n}.db"))).expect("store");
            let start = process_cpu();
            for _ in 0..40 {
                for chunk in items.chunks(size) {
                    store.insert(chunk).expect("insert");
                }
            }
            let per_run = (process_cpu() - start).as_secs_f64() * 1e6 / (40.0 * 50.0);
            println!(
                "store insert: {per_run:.1} µs of CPU per run's items (transactions of {size})"
            );
        }
        return;
    }
    // Instruction counts (deterministic where timings are noisy):
    // `TRACING_BENCH_CALLGRIND=store:2000 valgrind --tool=callgrind target/release/deps/tracing-*`
    // does 200 warm-up runs and then 2000 runs in that mode (off, spans, actor, null, store),
    // flushing at the end; the difference of two counts (N and 0 runs) over N is the
    // instructions per run.
    if let Ok(v) = std::env::var("TRACING_BENCH_CALLGRIND") {
        let (mode, n) = v.split_once(':').unwrap_or((v.as_str(), "1000"));
        let mode = match mode {
            "off" => Mode::Off,
            "spans" => Mode::SpansOnly,
            "actor" => Mode::ActorNoSink,
            "null" => Mode::NullSink,
            _ => Mode::Store,
        };
        let n: u64 = n.parse().unwrap_or(1000);
        rt.block_on(async {
            runs(&s, 200, mode).await;
            runs(&s, n, mode).await;
        });
        return;
    }
    // For profilers: `TRACING_BENCH_PROFILE=1` only does store-sink runs, then stops.
    if std::env::var("TRACING_BENCH_PROFILE").is_ok() {
        rt.block_on(async {
            for _ in 0..20 {
                runs(&s, 250, Mode::Store).await;
            }
        });
        return;
    }
    // Under `cargo test` (criterion's test mode: no `--bench` argument) skip the long tables.
    if std::env::args().any(|a| a == "--bench") {
        if std::env::var("TRACING_BENCH_LATENCY_ONLY").is_err() {
            overhead_table(&rt, &s);
        }
        rt.block_on(visibility_latency(&s));
    }
    let mut g = c.benchmark_group("run_3_turns_cpu");
    g.measurement_time(Duration::from_secs(5));
    for (name, mode) in [("tracing_off", Mode::Off), ("tracing_store", Mode::Store)] {
        let s = s.clone();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let s = s.clone();
                async move { runs(&s, iters, mode).await }
            })
        });
    }
    g.finish();

    let st = s.store.1.stats().snapshot();
    println!(
        "store pipeline: queued {}, exported {}, dropped {}, failed {}",
        st.queued,
        st.exported(),
        st.dropped_total(),
        st.failed()
    );
    s.store.1.shutdown_blocking();
    s.actor.1.shutdown_blocking();
    s.null.1.shutdown_blocking();
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Spans of one run of [`cast`]: task, two agents, three turns, three responses, a function
/// and a handoff.
const SPANS_PER_RUN: usize = 11;

/// How long a finished run's spans take to be readable in the store, with the default
/// batching (`export_delay_ms` 100, `schedule_delay_ms` 5000): runs one at a time, each
/// polled for (every 1 ms) until its trace has ended in the store with all 12 spans.
async fn visibility_latency(s: &Setup) {
    let store = TraceStore::open(s.dir.join("latency.db")).expect("store");
    let (tracer, processor) = traced_into(vec![Arc::new(StoreSink::new(store.clone()))]);
    let cfg = RunConfig::default().tracer(tracer.clone());
    let mut ms = Vec::new();
    for _ in 0..40 {
        let r = s
            .runner
            .request(&s.agent, "weather?")
            .config(cfg.clone())
            .run()
            .await
            .expect("run");
        let ended = std::time::Instant::now();
        let id = r.trace_id.clone().expect("traced");
        loop {
            let done = store
                .get_trace_full(&id, None)
                .ok()
                .flatten()
                .is_some_and(|t| t.ended_at.is_some() && t.spans.len() == SPANS_PER_RUN);
            if done {
                break;
            }
            if ended.elapsed() > Duration::from_secs(30) {
                let got = store.get_trace_full(&id, None).ok().flatten();
                panic!(
                    "never stored: {:?}",
                    got.map(|t| (t.ended_at, t.spans.len()))
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ms.push(ended.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "a finished run's spans readable in the store after: median {:.0} ms, min {:.0} ms, max {:.0} ms ({} runs, default batching)",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
    processor.shutdown_async().await;
}

/// CPU per run in each mode, alternating blocks of runs, side by side in one invocation.
fn overhead_table(rt: &tokio::runtime::Runtime, s: &Arc<Setup>) {
    let modes = [
        Mode::Off,
        Mode::SpansOnly,
        Mode::ActorNoSink,
        Mode::NullSink,
        Mode::Store,
    ];
    let mut cpu = [Duration::ZERO; 5];
    let mut block_ratios: [Vec<f64>; 5] = Default::default();
    let (blocks, per_block) = (15, 200u64);
    rt.block_on(async {
        for m in modes {
            runs(s, 100, m).await;
        }
        for _ in 0..blocks {
            let mut this = [Duration::ZERO; 5];
            for (i, m) in modes.iter().enumerate() {
                this[i] = runs(s, per_block, *m).await;
                cpu[i] += this[i];
            }
            for i in 0..5 {
                block_ratios[i].push(this[i].as_secs_f64() / this[0].as_secs_f64());
            }
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let n = (blocks as u64 * per_block) as f64;
    let us: Vec<f64> = cpu.iter().map(|d| d.as_secs_f64() * 1e6 / n).collect();
    println!("CPU per 3-turn run (process CPU time, {n} runs per mode, alternating blocks of {per_block}):");
    for (i, (m, u)) in modes.iter().zip(&us).enumerate() {
        println!(
            "  {:<12} {u:>8.1} µs  ratio {:.3} (+{:.1}%), median of per-block ratios {:.3}",
            format!("{m:?}"),
            u / us[0],
            (u / us[0] - 1.0) * 100.0,
            median(&mut block_ratios[i])
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
