//! The SQLite session store: items written per second with many sessions writing at once
//! (batched into shared transactions), and the latency a turn end adds (one `add_items` of a
//! typical turn, acknowledged only after its commit), for both fsync policies.
//!
//! `cargo bench --bench session_store` prints p50/p99/max turn-end latencies first (5,000
//! samples per case), then criterion's measurements. `SESSION_BENCH_LATENCY_ONLY=1` stops
//! after the latency report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callboard::items::{Item, MessageItem};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::session::{Durability, MemorySession, Session, SqliteStore, StoreOptions};
use callboard::{Agent, Runner};
use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A typical tool turn: the user's message, a function call, its output, the answer.
fn turn(i: usize) -> Vec<Item> {
    vec![
        Item::Message(MessageItem::user(format!(
            "What's the weather in city {i}?"
        ))),
        Item::Other(
            json!({"type": "function_call", "call_id": format!("call_{i}"),
            "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}),
        ),
        Item::Other(
            json!({"type": "function_call_output", "call_id": format!("call_{i}"),
            "output": "Sunny, 21 C"}),
        ),
        Item::Message(MessageItem::assistant(
            format!("msg_{i}"),
            "Here is the forecast you asked for: it is sunny, 21 C. Anything else?",
        )),
    ]
}

fn open(dir: &tempfile::TempDir, name: &str, durability: Durability) -> SqliteStore {
    let path = dir.path().join(name);
    SqliteStore::open_with(
        path.to_str().expect("a UTF-8 temp path"),
        StoreOptions {
            durability,
            checkpoint_interval: std::env::var("SESSION_BENCH_CHECKPOINT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(
                    StoreOptions::default().checkpoint_interval,
                    Duration::from_millis,
                ),
            ..StoreOptions::default()
        },
    )
    .expect("open the store")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// How the other sessions write while one session's turn-end latency is measured.
#[derive(Clone, Copy)]
enum Background {
    /// Nobody else.
    Idle,
    /// 16 sessions, each ending a turn every 2 ms (32,000 items/s in all).
    Paced,
    /// 16 sessions writing turns back to back (the writer saturated).
    FlatOut,
}

impl Background {
    fn label(self) -> &'static str {
        match self {
            Background::Idle => "alone",
            Background::Paced => "16 sessions at 500 turns/s each",
            Background::FlatOut => "16 sessions writing flat out",
        }
    }
}

/// Turn-end latency: one session saving one turn at a time while others write.
fn latency_report() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases = [
        (Durability::Normal, Background::Idle),
        (Durability::Normal, Background::Paced),
        (Durability::Normal, Background::FlatOut),
        (Durability::Full, Background::Idle),
        (Durability::Full, Background::Paced),
    ];
    for (n, (durability, background)) in cases.into_iter().enumerate() {
        let label = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let store = open(&dir, &format!("lat-{n}.db"), durability);
        let samples = rt.block_on(async {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut bg = Vec::new();
            let others = match background {
                Background::Idle => 0,
                _ => 16,
            };
            for b in 0..others {
                let s = store.session("bench", &format!("bg{b}"));
                let stop = stop.clone();
                bg.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(2));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if matches!(background, Background::Paced) {
                            tick.tick().await;
                        }
                        let _ = s.add_items(turn(i)).await;
                        i += 1;
                    }
                }));
            }
            let s = store.session("bench", "measured");
            for i in 0..200 {
                let _ = s.add_items(turn(i)).await;
            }
            let mut samples = Vec::with_capacity(5000);
            for i in 0..5000 {
                let items = turn(i);
                let t = Instant::now();
                s.add_items(items).await.expect("add_items");
                samples.push(t.elapsed());
                if matches!(background, Background::Paced) {
                    // The measured session also ends turns at a human-ish pace.
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in bg {
                let _ = t.await;
            }
            samples
        });
        let mut sorted = samples;
        sorted.sort();
        let st = store.stats();
        println!(
            "turn-end add_items (4 items), synchronous={label}, {}: p50 {:?}, p99 {:?}, \
             max {:?} ({} writes in {} transactions, largest {}; writer busy {:.1} µs/write)",
            background.label(),
            percentile(&sorted, 0.50),
            percentile(&sorted, 0.99),
            sorted[sorted.len() - 1],
            st.writes,
            st.batches,
            st.largest_batch,
            st.commit_seconds * 1e6 / st.writes.max(1) as f64
        );
    }
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut g = c.benchmark_group("session_store/items_written");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (label, durability) in [("full", Durability::Full), ("normal", Durability::Normal)] {
        let store = open(&dir, &format!("tp-{label}.db"), durability);
        for sessions in [1usize, 64] {
            let turns_per_session = 256 / sessions.max(1);
            let per_iter = sessions * turns_per_session.max(1) * 4;
            let handles: Vec<Arc<dyn Session>> = (0..sessions)
                .map(|i| store.session("bench", &format!("s{i}")))
                .collect();
            g.throughput(Throughput::Elements(per_iter as u64));
            g.bench_with_input(
                BenchmarkId::new(label, format!("{sessions}_sessions")),
                &sessions,
                |b, _| {
                    b.to_async(&rt).iter(|| {
                        let handles = handles.clone();
                        async move {
                            let mut tasks = Vec::with_capacity(handles.len());
                            for s in handles {
                                tasks.push(tokio::spawn(async move {
                                    for t in 0..turns_per_session.max(1) {
                                        s.add_items(turn(t)).await.expect("add_items");
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.expect("writer task");
                            }
                        }
                    })
                },
            );
        }
    }
    g.finish();

    let mut g = c.benchmark_group("session_store/turn_end");
    g.sample_size(50);
    let store = open(&dir, "turn.db", Durability::Full);
    let s = store.session("bench", "one");
    g.bench_function("add_items_4_full", |b| {
        b.to_async(&rt).iter(|| {
            let s = s.clone();
            async move { s.add_items(turn(1)).await.expect("add_items") }
        })
    });
    let reader = store.session("bench", "one");
    g.bench_function("get_items_last_20", |b| {
        b.to_async(&rt).iter(|| {
            let s = reader.clone();
            async move { s.get_items(Some(20)).await.expect("get_items") }
        })
    });
    g.finish();

    // A whole one-turn run through the Runner, without a session, with a MemorySession and
    // with the SQLite store: the difference is what the store adds to a run.
    let mut g = c.benchmark_group("session_store/one_turn_run");
    g.sample_size(50);
    let model = Arc::new(ScriptedModel::new(vec![ScriptedTurn::message(
        "Hello there!",
        3,
    )]));
    let agent: Agent = Agent::new("bench").model_instance(model);
    let runner: Runner = Runner::new();
    let sqlite = open(&dir, "runs.db", Durability::Normal);
    for kind in ["none", "memory", "sqlite"] {
        g.bench_function(kind, |b| {
            let mut n = 0u64;
            b.to_async(&rt).iter(|| {
                n += 1;
                let session: Option<Arc<dyn Session>> = match kind {
                    "memory" => Some(Arc::new(MemorySession::new(format!("m{n}")))),
                    "sqlite" => Some(sqlite.session("bench", &format!("s{n}"))),
                    _ => None,
                };
                let req = runner.request(&agent, "hi");
                let req = match session {
                    Some(s) => req.session(s),
                    None => req,
                };
                async move { req.run().await.expect("run") }
            })
        });
    }
    g.finish();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (criterion's test mode) does not.
    let quick = !std::env::args().any(|a| a == "--bench");
    if !quick {
        latency_report();
    }
    if std::env::var_os("SESSION_BENCH_LATENCY_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    c.final_summary();
}
