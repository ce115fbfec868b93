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

struct Setup {
    runner: Runner,
    agent: Agent,
    tracer: Tracer,
    processor: BatchTraceProcessor,
    _dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("callboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = TraceStore::open(dir.join("traces.db")).expect("store");
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(StoreSink::new(store))];
    let processor = BatchTraceProcessor::new(sinks, BatchConfig::default());
    let tracer = Tracer::new();
    tracer.set_disabled(false);
    tracer.add_processor(Arc::new(processor.clone()));
    Setup {
        runner: Runner::new(),
        agent: cast(),
        tracer,
        processor,
        _dir: dir,
    }
}

async fn runs(s: &Setup, n: u64, traced: bool) -> Duration {
    let cfg = RunConfig::default()
        .tracer(s.tracer.clone())
        .tracing_disabled(!traced);
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
    s.processor.flush().await;
    process_cpu() - start
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = Arc::new(rt.block_on(async { setup() }));
    // The headline figure: alternating blocks of runs off and on, summed, as one ratio.
    let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
    let (blocks, per_block) = (10, 200u64);
    rt.block_on(async {
        runs(&s, 200, true).await;
        for _ in 0..blocks {
            off += runs(&s, per_block, false).await;
            on += runs(&s, per_block, true).await;
        }
    });
    let n = (blocks as u64 * per_block) as f64;
    let (off_us, on_us) = (off.as_secs_f64() * 1e6 / n, on.as_secs_f64() * 1e6 / n);
    println!(
        "tracing overhead: CPU per 3-turn run off {off_us:.1} µs, on (store sink) {on_us:.1} µs, ratio {:.3} (+{:.1}%) over {} runs each",
        on_us / off_us,
        (on_us / off_us - 1.0) * 100.0,
        n
    );
    let mut g = c.benchmark_group("run_3_turns_cpu");
    g.measurement_time(Duration::from_secs(8));
    for (name, traced) in [("tracing_off", false), ("tracing_store", true)] {
        let s = s.clone();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let s = s.clone();
                async move { runs(&s, iters, traced).await }
            })
        });
    }
    g.finish();

    let st = s.processor.stats().snapshot();
    println!(
        "tracing pipeline: queued {}, exported {}, dropped {}, failed {}",
        st.queued,
        st.exported(),
        st.dropped_total(),
        st.failed()
    );
    s.processor.shutdown_blocking();
    let _ = std::fs::remove_dir_all(&s._dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
