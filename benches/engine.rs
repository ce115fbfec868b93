//! Engine benchmark: the 3-turn run (tool call, handoff, 20-delta message) on the scripted
//! model, end to end through the agent actors and the bus, tracing off.
//!
//! `cargo bench --bench engine` prints criterion's wall time for one run, then a table of
//! CPU time per run and per event, and throughput, at 1, 100 and 1,000 concurrent runs.
//! CPU time is the process's user+system time (from /proc/self/stat) over many runs; the
//! scripted model's own cost (building its events) is measured alone and subtracted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::model::{Model, ModelRequest};
use callboard::{Agent, FunctionTool, RunConfig, Runner, ToolContext};
use criterion::Criterion;
use futures::StreamExt;
use serde_json::json;

/// With the `mimalloc` feature the bench allocates with mimalloc, as an application that
/// picks it would (`cargo bench --bench engine --no-default-features --features mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cast() -> Agent {
    let text =
        "The forecast for Oslo is sunny with a light breeze and twelve degrees in the afternoon.";
    let m = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("Weather"),
        ScriptedTurn::message(text, 20),
    ]));
    let tool = FunctionTool::new(
        "get_weather",
        "Weather.",
        |_c: ToolContext<()>, a: serde_json::Value| async move {
            Ok::<_, String>(format!("sunny in {}", a["city"]))
        },
    );
    let weather = Agent::new("Weather")
        .instructions("answer")
        .model_instance(m.clone());
    Agent::new("Triage")
        .instructions("route")
        .model_instance(m)
        .tool(tool)
        .handoff(&weather)
}

fn cfg() -> RunConfig {
    RunConfig::default().tracing_disabled(true)
}

/// Process CPU time (user + system) in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn one_run(runner: &Runner, agent: &Agent) -> usize {
    let mut run = runner
        .request(agent, "weather in Oslo?")
        .config(cfg())
        .start()
        .expect("start");
    let mut s = run.stream_events();
    let mut n = 0;
    while s.next().await.is_some() {
        n += 1;
    }
    assert!(run.error().is_none(), "{:?}", run.error());
    n
}

/// Events and CPU of the scripted model alone, for the three turns of one run.
async fn model_only(m: &ScriptedModel, reqs: &[ModelRequest]) -> usize {
    let mut n = 0;
    for r in reqs {
        let mut s = m.stream(r.clone(), Default::default());
        while s.next().await.is_some() {
            n += 1;
        }
    }
    n
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`, criterion's test
    // mode) do one quick pass and no table.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = if std::env::var("ENGINE_BENCH_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    let runner: Runner = rt.block_on(async { Runner::new() });
    let agent = cast();

    // `ENGINE_BENCH_PROFILE=N`: just N runs one at a time (for callgrind / perf).
    if let Some(n) = std::env::var("ENGINE_BENCH_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        rt.block_on(async {
            for _ in 0..n {
                one_run(&runner, &agent).await;
            }
        });
        return;
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    c.bench_function("engine/3-turn run, 1 at a time", |b| {
        b.to_async(&rt).iter(|| one_run(&runner, &agent))
    });
    c.final_summary();
    if quick {
        return;
    }

    // The scripted model's own work for one run: the same three requests the engine makes.
    let reqs = rt.block_on(async {
        let r = runner
            .request(&agent, "weather in Oslo?")
            .config(cfg())
            .run()
            .await
            .expect("run");
        let input = r.to_input_list();
        let user = input[..1].to_vec();
        let t2 = input[..3].to_vec();
        let t3 = input[..5].to_vec();
        [user, t2, t3]
            .into_iter()
            .map(|input| ModelRequest {
                system_instructions: Some("route".into()),
                input,
                tools: vec![],
                output_schema: None,
                settings: Default::default(),
            })
            .collect::<Vec<_>>()
    });
    let model = ScriptedModel::new(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("Weather"),
        ScriptedTurn::message(
            "The forecast for Oslo is sunny with a light breeze and twelve degrees in the afternoon.",
            20,
        ),
    ]);
    let n_model = 20_000;
    let t0 = cpu_seconds();
    rt.block_on(async {
        for _ in 0..n_model {
            model_only(&model, &reqs).await;
        }
    });
    let model_cpu = (cpu_seconds() - t0) / n_model as f64;

    println!();
    println!(
        "nproc={}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "allocator: {}",
        if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "the system's (glibc malloc)"
        }
    );
    println!(
        "scripted model alone: {:.1} µs CPU per run",
        model_cpu * 1e6
    );
    table(
        "multi-thread (one worker per core), runs consumed in block_on (the main thread)",
        &rt,
        &runner,
        &agent,
        model_cpu,
        false,
    );
    table(
        "multi-thread (one worker per core), runs consumed in a spawned task (as the server's are)",
        &rt,
        &runner,
        &agent,
        model_cpu,
        true,
    );
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let runner2: Runner = current.block_on(async { Runner::new() });
    table(
        "current-thread",
        &current,
        &runner2,
        &agent,
        model_cpu,
        false,
    );
}

/// Runs, CPU and throughput at 1, 100 and 1,000 concurrent runs on one runtime. `spawned`:
/// the runs are started and consumed inside a spawned task rather than in `block_on`, whose
/// future lives on the calling thread, so that every event wakes that thread from another.
fn table(
    flavour: &str,
    rt: &tokio::runtime::Runtime,
    runner: &Runner,
    agent: &Agent,
    model_cpu: f64,
    spawned: bool,
) {
    println!();
    println!("tokio runtime: {flavour}");
    println!("| concurrent runs | runs | runs/s | CPU µs/run | engine CPU µs/run (minus model) | CPU µs/event | errors |");
    println!("|---|---|---|---|---|---|---|");
    for &conc in &[1usize, 100, 1000] {
        let rounds = (20_000 / conc).max(10);
        let t0 = cpu_seconds();
        let w0 = Instant::now();
        let (runner, agent) = (runner.clone(), agent.clone());
        let work = async move {
            let (runner, agent) = (&runner, &agent);
            let mut events = 0usize;
            let mut errors = 0usize;
            for _ in 0..rounds {
                let runs: Vec<_> = (0..conc)
                    .map(|_| {
                        runner
                            .request(agent, "weather in Oslo?")
                            .config(cfg())
                            .start()
                    })
                    .collect();
                let outs = futures::future::join_all(runs.into_iter().map(|r| async move {
                    match r {
                        Ok(mut run) => {
                            let mut s = run.stream_events();
                            let mut n = 0;
                            while s.next().await.is_some() {
                                n += 1;
                            }
                            (n, run.error().is_some())
                        }
                        Err(_) => (0, true),
                    }
                }))
                .await;
                for (n, e) in outs {
                    events += n;
                    errors += e as usize;
                }
            }
            (events, errors)
        };
        let (events, errors) = if spawned {
            rt.block_on(async move { tokio::spawn(work).await.expect("the runs' task") })
        } else {
            rt.block_on(work)
        };
        let wall = w0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - t0;
        let runs = rounds * conc;
        let per_run = cpu / runs as f64;
        println!(
            "| {conc} | {runs} | {:.0} | {:.1} | {:.1} | {:.2} | {errors} |",
            runs as f64 / wall,
            per_run * 1e6,
            (per_run - model_cpu) * 1e6,
            cpu / events.max(1) as f64 * 1e6,
        );
    }
}
