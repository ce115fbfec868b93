//! What saving the run state at every turn end costs (PROTOCOL.md 6.1–6.3: the state is the
//! baton a restart or an approval resumes from).
//!
//! - `to_text/turns_N`: serialising the state of a run after N tool turns (what the engine
//!   does at each turn end when it keeps state), and the state's size in bytes.
//! - `engine/three_turns/{no_state,state}`: a whole 3-turn run on a memory session with and
//!   without the state kept; the difference over 3 is the engine's cost per turn.
//! - `sqlite_turn_end/{no_state,state}`: one turn end in the SQLite store (items, run
//!   record and, with `state`, the state text in the same transaction), acknowledged after
//!   its commit.
//!
//! The engine and store rows are this process's CPU time (all threads), not wall time: one run
//! at a time spends most of its wall time waiting for threads to wake.
//! `cargo bench --bench run_state` prints the state sizes first, then criterion's numbers.

use std::sync::Arc;
use std::time::Duration;

use callboard::items::{Item, MessageItem, RunItem};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::run::state::{AgentRef, RunState, StateContext, TraceState, CURRENT_SCHEMA_VERSION};
use callboard::session::{
    Durability, MemorySession, RunStart, RunStatus, Session, SqliteStore, StoreOptions, TurnRecord,
};
use callboard::usage::Usage;
use callboard::{Agent, FunctionTool, Runner, ToolContext};
use criterion::{BenchmarkId, Criterion};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A run's items after `turns` tool turns: a call and its output each.
fn generated(turns: usize) -> Vec<RunItem> {
    let mut v = Vec::new();
    for i in 0..turns {
        let call: callboard::items::FunctionCallItem = serde_json::from_value(json!({
            "type": "function_call", "id": format!("fc_{i}"), "call_id": format!("call_{i}"),
            "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}", "status": "completed"
        }))
        .expect("a function call");
        let output: callboard::items::FunctionCallOutputItem = serde_json::from_value(json!({
            "type": "function_call_output", "call_id": format!("call_{i}"),
            "output": "Sunny, 21 C, light wind from the west; no rain expected today."
        }))
        .expect("a function call output");
        v.push(RunItem::ToolCall {
            agent: "Weather".into(),
            raw_item: call,
        });
        v.push(RunItem::ToolCallOutput {
            agent: "Weather".into(),
            output: "Sunny, 21 C, light wind from the west; no rain expected today.".into(),
            raw_item: output,
        });
    }
    v
}

fn state(turns: usize) -> RunState {
    RunState {
        schema_version: CURRENT_SCHEMA_VERSION.into(),
        run_id: "run_0123456789abcdef0123456789abcdef".into(),
        current_turn: turns as u64,
        current_agent: AgentRef::from("Weather"),
        starting_agent: AgentRef::from("Triage"),
        max_turns: 10,
        original_input: vec![Item::Message(MessageItem::user(
            "What is the weather in Oslo today?",
        ))],
        session_items: Some(12),
        generated_items: generated(turns),
        context: StateContext {
            usage: Usage::default(),
            approvals: Default::default(),
        },
        tool_use_tracker: vec!["Weather".into()],
        handoff_from: Some("Triage".into()),
        pending_turn: None,
        interruptions: Vec::new(),
        trace: TraceState {
            trace_id: Some("trace_0123456789abcdef0123456789abcdef".into()),
            workflow_name: Some("Agent workflow".into()),
            group_id: Some("session-1".into()),
            metadata: None,
        },
        seq_safe: 42,
    }
}

fn weather_agent(turns: usize) -> Agent {
    let mut script: Vec<ScriptedTurn> = (0..turns - 1)
        .map(|_| ScriptedTurn::call("get_weather", json!({"city": "Oslo"})))
        .collect();
    script.push(ScriptedTurn::message("Sunny in Oslo today.", 5));
    let tool = FunctionTool::from_json_schema(
        "get_weather",
        "Weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        true,
        |_c: ToolContext<()>, _a: String| async move { Ok("Sunny, 21 C".to_owned()) },
    );
    Agent::new("Weather")
        .model_instance(Arc::new(ScriptedModel::new(script)))
        .tool(tool)
}

fn bench(c: &mut Criterion) {
    for turns in [1usize, 3, 10] {
        println!(
            "run state after {turns} tool turn(s): {} bytes",
            state(turns).to_text().len()
        );
    }
    let mut g = c.benchmark_group("run_state");
    for turns in [1usize, 3, 10] {
        let s = state(turns);
        g.bench_with_input(
            BenchmarkId::new("to_text", format!("turns_{turns}")),
            &s,
            |b, s| b.iter(|| s.clone().to_text()),
        );
    }

    let rt = runtime();
    let runner: Runner = Runner::new();
    let agent = weather_agent(3);
    for keep in [false, true] {
        let name = if keep { "state" } else { "no_state" };
        g.bench_function(BenchmarkId::new("engine_three_turns", name), |b| {
            b.iter_custom(|iters| {
                cpu_time(|| {
                    rt.block_on(async {
                        for _ in 0..iters {
                            let session: Arc<dyn Session> = Arc::new(MemorySession::new("s"));
                            let r = runner
                                .request(&agent, "weather?")
                                .session(session)
                                .keep_state(keep)
                                .start()
                                .expect("start")
                                .wait()
                                .await
                                .expect("a run");
                            assert!(!r.final_output.is_null());
                        }
                    })
                })
            })
        });
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_with(
        dir.path().join("state.db").to_str().expect("utf-8"),
        StoreOptions {
            durability: Durability::Normal,
            ..StoreOptions::default()
        },
    )
    .expect("open the store");
    let text: Arc<str> = state(3).to_text().into();
    for keep in [false, true] {
        let name = if keep { "state" } else { "no_state" };
        let session = store.session("bench", &format!("s-{name}"));
        let run_id: Arc<str> = format!("run_{name}").into();
        rt.block_on(store.record_run_start(RunStart {
            run_id: run_id.to_string(),
            tenant: "bench".into(),
            session_id: Some(format!("s-{name}")),
            starting_agent: "Weather".into(),
            trace_id: None,
            seq_reserved: None,
            status: RunStatus::Running,
            request: None,
            node_id: None,
        }))
        .expect("a run record");
        let mut turn = 0u64;
        g.bench_function(BenchmarkId::new("sqlite_turn_end", name), |b| {
            b.iter_custom(|iters| {
                cpu_time(|| {
                    rt.block_on(async {
                        for _ in 0..iters {
                            turn += 1;
                            let rec = TurnRecord {
                                run_id: run_id.clone(),
                                turn,
                                agent: "Weather".into(),
                                usage: Usage::default(),
                                seq_reserved: None,
                                state: keep.then(|| text.clone()),
                                seq_safe: Some(turn),
                                pause: None,
                            };
                            let items = vec![
                                Item::Other(json!({"type": "function_call",
                                    "call_id": format!("call_{turn}"), "name": "get_weather",
                                    "arguments": "{\"city\":\"Oslo\"}"})),
                                Item::Other(json!({"type": "function_call_output",
                                    "call_id": format!("call_{turn}"), "output": "Sunny, 21 C"})),
                            ];
                            session.save_turn(items, &rec).await.expect("saved");
                        }
                    })
                })
            })
        });
    }
    g.finish();
}

/// The CPU time of this process (every thread: the runtime's, the actors', the store's
/// writer) while `f` runs: wall time would mostly measure thread wake-ups.
fn cpu_time(f: impl FnOnce()) -> Duration {
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let t0 = now();
    f();
    now().saturating_sub(t0)
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
