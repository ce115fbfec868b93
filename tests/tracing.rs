//! Tracing: the SDK's span tree and export JSON, trace() grouping, custom spans in tools,
//! the switches, the tracing actor's batching and shutdown, and every sink against a real
//! receiver on loopback. Each test uses its own `Tracer` (never the process-global one).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::trace::sinks::{
    ConsoleSink, JsonlSink, OpenAiSink, OpenAiSinkConfig, OtlpSink, OtlpSinkConfig, StoreSink,
    TraceQuery, TraceStore,
};
use callboard::trace::{
    self, BatchConfig, BatchTraceProcessor, ExportItem, ItemKind, Sink, SinkError, SpanData,
    TraceOptions, TraceProcessor, Tracer,
};
use callboard::{Agent, FunctionTool, RunConfig, Runner, ToolContext};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Helpers.

/// Records every processor callback with the export as it was at that moment.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(&'static str, Value)>>,
}

impl Recorder {
    fn push(&self, what: &'static str, v: Option<Value>) {
        self.events
            .lock()
            .unwrap()
            .push((what, v.unwrap_or(Value::Null)));
    }
    fn all(&self) -> Vec<(&'static str, Value)> {
        self.events.lock().unwrap().clone()
    }
    fn of(&self, what: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, v)| v)
            .collect()
    }
}

impl TraceProcessor for Recorder {
    fn on_trace_start(&self, t: &trace::Trace) {
        self.push("trace_start", t.export());
    }
    fn on_trace_end(&self, t: &trace::Trace) {
        self.push("trace_end", t.export());
    }
    fn on_span_start(&self, s: &trace::Span) {
        self.push("span_start", s.export());
    }
    fn on_span_end(&self, s: &trace::Span) {
        self.push("span_end", s.export());
    }
}

fn recording_tracer() -> (Tracer, Arc<Recorder>) {
    let t = Tracer::new();
    t.set_disabled(false);
    t.set_include_sensitive_data(true);
    let r = Arc::new(Recorder::default());
    t.add_processor(r.clone());
    (t, r)
}

#[derive(Deserialize, JsonSchema)]
struct CityArgs {
    city: String,
}

/// A (with get_weather, handing off to B) and B; the model calls the tool, then hands off,
/// then B answers in 5 deltas: the SDK's reference run.
fn reference_cast() -> Agent {
    let model = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("get_weather", json!({"city": "Oslo"})),
        ScriptedTurn::handoff("B"),
        ScriptedTurn::message("It is sunny in Oslo.", 5),
    ]));
    let tool = FunctionTool::new(
        "get_weather",
        "Weather for a city.",
        |_ctx: ToolContext<()>, a: CityArgs| async move {
            let s = trace::custom_span("lookup", json!({"city": a.city}));
            s.finish();
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

fn cfg(tracer: &Tracer) -> RunConfig {
    RunConfig::default().tracer(tracer.clone())
}

async fn run_reference(tracer: &Tracer, config: RunConfig) -> callboard::RunResult {
    let runner: Runner = Runner::new();
    let agent = reference_cast();
    let _ = tracer;
    tokio::time::timeout(
        WAIT,
        runner.request(&agent, "weather?").config(config).run(),
    )
    .await
    .expect("run finished in time")
    .expect("run succeeded")
}

fn label(span: &Value) -> String {
    let d = &span["span_data"];
    match d["type"].as_str().unwrap() {
        "custom" => format!("custom:{}", d["name"].as_str().unwrap()),
        "agent" => format!("agent:{}", d["name"].as_str().unwrap()),
        "function" => format!("function:{}", d["name"].as_str().unwrap()),
        t => t.to_owned(),
    }
}

async fn serve(router: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    addr
}

/// A receiver that records each request and answers with the queued statuses (then 200).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(&self, path: &str) -> SocketAddr {
        let me = self.clone();
        let router = Router::new().route(
            path,
            post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    me.got.lock().unwrap().push((headers, body));
                    let code = me.statuses.lock().unwrap().pop_front().unwrap_or(200);
                    (StatusCode::from_u16(code).unwrap(), "{}")
                }
            }),
        );
        serve(router).await
    }
    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }
}

fn pipeline(sinks: Vec<Arc<dyn Sink>>, batch: BatchConfig) -> (Tracer, BatchTraceProcessor) {
    let t = Tracer::new();
    t.set_disabled(false);
    t.set_include_sensitive_data(true);
    let p = BatchTraceProcessor::new(sinks, batch);
    t.add_processor(Arc::new(p.clone()));
    (t, p)
}

/// Exports on flush, shutdown and the trigger ratio only (the timer is a minute away and
/// no export follows new items by itself), so tests see exactly the batches they cause.
fn quick_batches() -> BatchConfig {
    BatchConfig {
        export_delay_ms: 0,
        schedule_delay_ms: 60_000,
        export_timeout_ms: 2_000,
        shutdown_timeout_ms: 5_000,
        ..BatchConfig::default()
    }
}

// ------------------------------------------------------------------------------------------
// The SDK's span tree.

#[tokio::test]
async fn span_tree_of_tool_handoff_message_run_matches_the_sdk() {
    let (tracer, rec) = recording_tracer();
    let result = run_reference(&tracer, cfg(&tracer)).await;
    assert_eq!(result.final_output_text(), Some("It is sunny in Oslo."));

    let events = rec.all();
    assert_eq!(events.first().unwrap().0, "trace_start");
    assert_eq!(events.last().unwrap().0, "trace_end");
    let trace = &events[0].1;
    assert_eq!(trace["object"], "trace");
    assert_eq!(trace["workflow_name"], "Agent workflow");
    let trace_id = trace["id"].as_str().unwrap();
    assert!(trace_id.starts_with("trace_") && trace_id.len() == 6 + 32);
    assert_eq!(result.trace_id.as_deref(), Some(trace_id));

    let starts: Vec<String> = rec.of("span_start").iter().map(label).collect();
    assert_eq!(
        starts,
        [
            "custom:task",
            "agent:A",
            "custom:turn",
            "response",
            "function:get_weather",
            "custom:lookup",
            "custom:turn",
            "response",
            "handoff",
            "agent:B",
            "custom:turn",
            "response",
        ]
    );
    let ends = rec.of("span_end");
    let end_labels: Vec<String> = ends.iter().map(label).collect();
    assert_eq!(
        end_labels,
        [
            "response",
            "custom:lookup",
            "function:get_weather",
            "custom:turn",
            "response",
            "handoff",
            "custom:turn",
            "agent:A",
            "response",
            "custom:turn",
            "agent:B",
            "custom:task",
        ],
        "order of end"
    );

    // Parent links.
    let by_label = |l: &str, nth: usize| -> &Value {
        ends.iter()
            .filter(|s| label(s) == l)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {l} #{nth}"))
    };
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let parent = |v: &Value| v["parent_id"].as_str().map(str::to_owned);
    let task = by_label("custom:task", 0);
    let (a, b) = (by_label("agent:A", 0), by_label("agent:B", 0));
    assert_eq!(parent(task), None);
    assert_eq!(parent(a), Some(id(task)));
    assert_eq!(parent(b), Some(id(task)), "B is A's sibling under task");
    let (t1, t2, t3) = (
        by_label("custom:turn", 0),
        by_label("custom:turn", 1),
        by_label("custom:turn", 2),
    );
    assert_eq!(parent(t1), Some(id(a)));
    assert_eq!(parent(t2), Some(id(a)));
    assert_eq!(parent(t3), Some(id(b)));
    assert_eq!(parent(by_label("response", 0)), Some(id(t1)));
    assert_eq!(parent(by_label("function:get_weather", 0)), Some(id(t1)));
    assert_eq!(parent(by_label("response", 1)), Some(id(t2)));
    assert_eq!(parent(by_label("handoff", 0)), Some(id(t2)));
    assert_eq!(parent(by_label("response", 2)), Some(id(t3)));
    assert_eq!(
        parent(by_label("custom:lookup", 0)),
        Some(id(by_label("function:get_weather", 0))),
        "a custom_span inside a tool is a child of the tool's function span"
    );

    // Export JSON, field for field.
    for s in &ends {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            [
                "ended_at",
                "error",
                "id",
                "object",
                "parent_id",
                "span_data",
                "started_at",
                "trace_id"
            ]
        );
        assert_eq!(s["object"], "trace.span");
        assert_eq!(s["trace_id"], trace_id);
        let sid = s["id"].as_str().unwrap();
        assert!(sid.starts_with("span_") && sid.len() == 5 + 24, "{sid}");
        for k in ["started_at", "ended_at"] {
            let t = s[k].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
            assert!(t.ends_with("+00:00"));
        }
        assert!(s["error"].is_null());
    }
    assert_eq!(
        a["span_data"],
        json!({"type": "agent", "name": "A", "handoffs": ["B"], "tools": ["get_weather"], "output_type": "str"})
    );
    assert_eq!(
        task["span_data"]["data"]["sdk_span_type"], "task",
        "task is a custom span"
    );
    assert_eq!(task["span_data"]["data"]["name"], "Agent workflow");
    assert!(task["span_data"]["data"]["usage"]["requests"].as_u64() == Some(3));
    assert_eq!(t1["span_data"]["data"]["turn"], 1);
    assert_eq!(t3["span_data"]["data"]["agent_name"], "B");
    assert_eq!(
        by_label("handoff", 0)["span_data"],
        json!({"type": "handoff", "from_agent": "A", "to_agent": "B"})
    );
    let f = by_label("function:get_weather", 0);
    assert_eq!(f["span_data"]["input"], "{\"city\":\"Oslo\"}");
    assert_eq!(f["span_data"]["output"], "sunny in Oslo");
    assert!(by_label("response", 0)["span_data"]["response_id"].is_string());
}

#[tokio::test]
async fn spans_are_exported_at_start_and_again_at_end() {
    let (tracer, rec) = recording_tracer();
    run_reference(&tracer, cfg(&tracer)).await;
    let starts = rec.of("span_start");
    let find = |v: &[Value], l: &str| v.iter().find(|s| label(s) == l).cloned().unwrap();
    let a0 = find(&starts, "agent:A");
    assert_eq!(a0["span_data"]["tools"], json!([]));
    assert_eq!(a0["span_data"]["handoffs"], json!([]));
    assert!(a0["ended_at"].is_null());
    let h0 = find(&starts, "handoff");
    assert_eq!(h0["span_data"]["from_agent"], "A");
    assert!(h0["span_data"]["to_agent"].is_null());
    let f0 = find(&starts, "function:get_weather");
    assert!(f0["span_data"]["input"].is_null());
    let ends = rec.of("span_end");
    let a1 = find(&ends, "agent:A");
    assert_eq!(a1["id"], a0["id"]);
    assert_eq!(a1["span_data"]["tools"], json!(["get_weather"]));
    assert_eq!(a1["span_data"]["handoffs"], json!(["B"]));
    assert_eq!(find(&ends, "handoff")["span_data"]["to_agent"], "B");
}

#[tokio::test]
async fn trace_scope_groups_runs_and_carries_workflow_group_and_metadata() {
    let (tracer, rec) = recording_tracer();
    let mut md = serde_json::Map::new();
    md.insert("customer".into(), json!("c-1"));
    let opts = TraceOptions {
        workflow_name: Some("Support flow".into()),
        group_id: Some("conv-7".into()),
        metadata: Some(md),
        ..Default::default()
    };
    let t2 = tracer.clone();
    let ids = trace::trace_with(&tracer, opts, async move {
        let r1 = run_reference(&t2, cfg(&t2)).await;
        let r2 = run_reference(&t2, cfg(&t2)).await;
        (
            r1.trace_id.as_deref().map(str::to_owned),
            r2.trace_id.as_deref().map(str::to_owned),
        )
    })
    .await;
    let traces = rec.of("trace_start");
    assert_eq!(
        traces.len(),
        1,
        "runs inside a trace create none of their own"
    );
    assert_eq!(rec.of("trace_end").len(), 1);
    let t = &traces[0];
    assert_eq!(t["workflow_name"], "Support flow");
    assert_eq!(t["group_id"], "conv-7");
    assert_eq!(t["metadata"]["customer"], "c-1");
    assert_eq!(ids.0.as_deref(), t["id"].as_str());
    assert_eq!(ids.1.as_deref(), t["id"].as_str());
    let tasks: Vec<Value> = rec
        .of("span_end")
        .into_iter()
        .filter(|s| label(s) == "custom:task")
        .collect();
    assert_eq!(tasks.len(), 2);
    for task in tasks {
        assert_eq!(task["trace_id"], t["id"]);
        assert_eq!(task["span_data"]["data"]["name"], "Agent workflow");
    }
    let all = rec.all();
    assert_eq!(
        all.last().unwrap().0,
        "trace_end",
        "the trace ends after both runs"
    );
}

#[tokio::test]
async fn sensitive_data_switch_keeps_or_drops_inputs_and_outputs() {
    for on in [true, false] {
        let (tracer, rec) = recording_tracer();
        let mut c = cfg(&tracer);
        c.trace_include_sensitive_data = Some(on);
        run_reference(&tracer, c).await;
        let f = rec
            .of("span_end")
            .into_iter()
            .find(|s| label(s) == "function:get_weather")
            .unwrap();
        assert_eq!(f["span_data"]["input"].is_string(), on);
        assert_eq!(f["span_data"]["output"].is_string(), on);
    }
    // Chat Completions: the generation span's input and output.
    for on in [true, false] {
        let (tracer, rec) = recording_tracer();
        tracer.set_include_sensitive_data(on);
        let model = Arc::new(
            ScriptedModel::new(vec![ScriptedTurn::message("hi", 2)])
                .as_chat_completions()
                .with_name("gpt-test"),
        );
        let agent: Agent = Agent::new("G").model_instance(model);
        let runner: Runner = Runner::new();
        tokio::time::timeout(WAIT, runner.request(&agent, "x").config(cfg(&tracer)).run())
            .await
            .unwrap()
            .unwrap();
        let g = rec
            .of("span_end")
            .into_iter()
            .find(|s| label(s) == "generation")
            .unwrap();
        assert_eq!(g["span_data"]["model"], "gpt-test");
        assert_eq!(g["span_data"]["input"].is_array(), on);
        assert_eq!(!g["span_data"]["output"].is_null(), on);
    }
}

#[tokio::test]
async fn metadata_is_copied_onto_every_span_when_asked() {
    let (tracer, rec) = recording_tracer();
    tracer.set_metadata_on_spans(true);
    let mut c = cfg(&tracer);
    let mut md = serde_json::Map::new();
    md.insert("tenant".into(), json!("acme"));
    c.trace_metadata = Some(md);
    run_reference(&tracer, c).await;
    let ends = rec.of("span_end");
    assert!(!ends.is_empty());
    for s in ends {
        assert_eq!(s["metadata"]["tenant"], "acme", "{s}");
    }
    // Off by default.
    let (tracer, rec) = recording_tracer();
    run_reference(&tracer, cfg(&tracer)).await;
    assert!(rec
        .of("span_end")
        .iter()
        .all(|s| s.get("metadata").is_none()));
}

#[tokio::test]
async fn disabled_tracing_records_nothing() {
    let (tracer, rec) = recording_tracer();
    let mut c = cfg(&tracer);
    c.tracing_disabled = true;
    let r = run_reference(&tracer, c).await;
    assert!(rec.all().is_empty());
    assert_eq!(r.trace_id.as_deref(), None);
    tracer.set_disabled(true);
    run_reference(&tracer, cfg(&tracer)).await;
    assert!(rec.all().is_empty());
}

#[test]
fn a_panicking_processor_does_not_stop_the_others() {
    struct Boom;
    impl TraceProcessor for Boom {
        fn on_trace_start(&self, _: &trace::Trace) {
            panic!("boom");
        }
        fn on_trace_end(&self, _: &trace::Trace) {}
        fn on_span_start(&self, _: &trace::Span) {
            panic!("boom");
        }
        fn on_span_end(&self, _: &trace::Span) {}
    }
    let t = Tracer::new();
    t.set_disabled(false);
    let rec = Arc::new(Recorder::default());
    t.add_processor(Arc::new(Boom));
    t.add_processor(rec.clone());
    let tr = t.start_trace(TraceOptions::default());
    let s = tr.span(
        SpanData::Custom {
            name: "x".into(),
            data: json!({}),
        },
        None,
    );
    s.finish();
    tr.finish();
    assert_eq!(rec.all().len(), 4);
}

// ------------------------------------------------------------------------------------------
// The tracing actor.

/// Collects everything it is given.
#[derive(Default)]
struct Collect {
    items: Mutex<Vec<ExportItem>>,
    batches: AtomicUsize,
}

#[async_trait]
impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
}

impl Collect {
    fn count(&self, kind: ItemKind) -> usize {
        self.items
            .lock()
            .unwrap()
            .iter()
            .filter(|i| i.kind == kind)
            .count()
    }
}

#[test]
fn ten_thousand_spans_queued_then_shutdown_all_reach_the_sink() {
    let sink = Arc::new(Collect::default());
    let (tracer, p) = pipeline(
        vec![sink.clone()],
        BatchConfig {
            // Room for the whole burst; the schedule never fires during the test.
            max_queue_size: 16_384,
            ..quick_batches()
        },
    );
    let tr = tracer.start_trace(TraceOptions::default());
    for i in 0..10_000u32 {
        tr.span(
            SpanData::Custom {
                name: format!("s{i}"),
                data: json!({}),
            },
            None,
        )
        .finish();
    }
    tr.finish();
    assert!(p.shutdown_blocking(), "shutdown finished in time");
    assert_eq!(sink.count(ItemKind::Span), 10_000);
    assert_eq!(sink.count(ItemKind::Trace), 1);
    assert_eq!(sink.count(ItemKind::TraceEnd), 1);
    // Batches of at most 128.
    assert!(sink.batches.load(Ordering::Relaxed) >= 10_002 / 128);
    let st = p.stats().snapshot();
    assert_eq!(st.queued, 10_002);
    assert_eq!(st.dropped_total(), 0);
    assert_eq!(st.exported(), 10_002);
    // After shutdown, items are dropped and counted, never blocking.
    let late = tracer.start_trace(TraceOptions::default());
    late.finish();
    assert_eq!(p.stats().snapshot().dropped, 2);
}

#[tokio::test]
async fn trigger_ratio_exports_without_waiting_for_the_timer() {
    let sink = Arc::new(Collect::default());
    let (tracer, p) = pipeline(
        vec![sink.clone()],
        BatchConfig {
            max_queue_size: 100,
            max_batch_size: 10,
            export_trigger_ratio: 0.5,
            ..quick_batches()
        },
    );
    let tr = tracer.start_trace(TraceOptions::default());
    for _ in 0..49 {
        tr.span(
            SpanData::Custom {
                name: "x".into(),
                data: json!({}),
            },
            None,
        )
        .finish();
    }
    // 50 items (trace + 49 spans) reach the trigger of 50.
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.count(ItemKind::Span) < 49 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sink.count(ItemKind::Span), 49);
    assert_eq!(sink.batches.load(Ordering::Relaxed), 5);
    tr.finish();
    assert!(p.flush().await);
    assert_eq!(sink.count(ItemKind::TraceEnd), 1);
}

#[tokio::test]
async fn the_schedule_delay_flushes_on_a_timer() {
    let sink = Arc::new(Collect::default());
    let (tracer, _p) = pipeline(
        vec![sink.clone()],
        BatchConfig {
            schedule_delay_ms: 50,
            ..quick_batches()
        },
    );
    let tr = tracer.start_trace(TraceOptions::default());
    tr.finish();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.count(ItemKind::TraceEnd) < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.count(ItemKind::Trace), 1);
    assert_eq!(sink.count(ItemKind::TraceEnd), 1);
}

#[tokio::test]
async fn a_finished_run_is_exported_soon_without_the_timer() {
    let sink = Arc::new(Collect::default());
    let (tracer, _p) = pipeline(
        vec![sink.clone()],
        BatchConfig {
            export_delay_ms: 100,
            ..quick_batches()
        },
    );
    run_reference(&tracer, cfg(&tracer)).await;
    // The timer is a minute away and the queue far from its trigger: the export delay
    // sends it on.
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.count(ItemKind::TraceEnd) < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.count(ItemKind::TraceEnd), 1);
    assert_eq!(sink.count(ItemKind::Span), 12);
}

#[tokio::test]
async fn traces_ending_together_share_one_export() {
    let sink = Arc::new(Collect::default());
    let (tracer, p) = pipeline(
        vec![sink.clone()],
        BatchConfig {
            export_delay_ms: 2_000,
            ..quick_batches()
        },
    );
    for _ in 0..300 {
        let tr = tracer.start_trace(TraceOptions::default());
        tr.span(
            SpanData::Custom {
                name: "x".into(),
                data: json!({}),
            },
            None,
        )
        .finish();
        tr.finish();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.count(ItemKind::TraceEnd) < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.count(ItemKind::TraceEnd), 300);
    // 900 items in batches of 128: one export per trace end would make 300 batches.
    let batches = sink.batches.load(Ordering::Relaxed);
    assert!(batches < 50, "{batches} batches");
    assert!(p.flush().await);
}

struct Misbehaving {
    name: &'static str,
    how: &'static str,
    calls: AtomicUsize,
}

#[async_trait]
impl Sink for Misbehaving {
    fn name(&self) -> &str {
        self.name
    }
    async fn export(&self, _batch: &[ExportItem]) -> Result<(), SinkError> {
        match self.how {
            // Panics on its first three batches (panic reports with backtraces are slow to
            // print, so not on every one), then works.
            "panic" if self.calls.fetch_add(1, Ordering::Relaxed) < 3 => panic!("sink panics"),
            "panic" => Ok(()),
            "error" => Err(SinkError::Other("backend down".into())),
            // Never answers: the worker's timeout abandons the call.
            "hang" => std::future::pending().await,
            // Blocks its thread: only its own worker stalls and its queue overflows.
            _ => {
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_sinks_leave_runs_and_other_sinks_alone() {
    let good = Arc::new(Collect::default());
    let sinks: Vec<Arc<dyn Sink>> = vec![
        Arc::new(Misbehaving {
            name: "panics",
            how: "panic",
            calls: AtomicUsize::new(0),
        }),
        Arc::new(Misbehaving {
            name: "errors",
            how: "error",
            calls: AtomicUsize::new(0),
        }),
        Arc::new(Misbehaving {
            name: "hangs",
            how: "hang",
            calls: AtomicUsize::new(0),
        }),
        Arc::new(Misbehaving {
            name: "blocks",
            how: "block",
            calls: AtomicUsize::new(0),
        }),
        good.clone(),
    ];
    let (tracer, p) = pipeline(
        sinks,
        BatchConfig {
            max_queue_size: 64,
            max_batch_size: 8,
            export_trigger_ratio: 0.1,
            export_timeout_ms: 100,
            shutdown_timeout_ms: 1_000,
            ..quick_batches()
        },
    );
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = run_reference(&tracer, cfg(&tracer)).await;
        assert_eq!(r.final_output_text(), Some("It is sunny in Oslo."));
    }
    let run_time = started.elapsed();
    assert!(
        run_time < Duration::from_secs(10),
        "runs were held up: {run_time:?}"
    );
    // The flush waits for every sink; the blocked one cannot answer, so it times out.
    assert!(!p.flush().await, "a hung sink makes the flush time out");
    let per_run = 1 + 12 + 1; // trace, 12 spans, trace end
                              // The flush gave up on the stuck sink only; the others finish their queues (panic
                              // reports are slow to print under load, so wait for them).
    let want = (20 * per_run) as u64;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = p.stats().snapshot();
        let done = st
            .sinks
            .iter()
            .filter(|s| ["collect", "panics", "errors"].contains(&s.0.as_str()))
            .all(|s| s.1 + s.2 + s.3 == want);
        if done || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(good.items.lock().unwrap().len(), 20 * per_run);
    let st = p.stats().snapshot();
    let sink = |n: &str| st.sinks.iter().find(|s| s.0 == n).unwrap().clone();
    assert_eq!(sink("collect").1, (20 * per_run) as u64);
    let panics = sink("panics");
    assert!(panics.3 > 0, "panics count as failed: {st:?}");
    assert_eq!(
        panics.1 + panics.2 + panics.3,
        want,
        "and the sink goes on after them"
    );
    let errors = sink("errors");
    assert_eq!(errors.1, 0);
    assert!(errors.3 > 0);
    assert_eq!(
        errors.2 + errors.3,
        want,
        "errors count as failed (or dropped)"
    );
    assert!(sink("hangs").3 > 0, "timeouts count as failed: {st:?}");
    assert!(
        sink("blocks").2 > 0,
        "a stuck sink's overflow is dropped and counted: {st:?}"
    );
    assert_eq!(st.dropped, 0, "the shared queue never overflowed");
    assert!(st
        .prometheus()
        .contains("callboard_trace_items_dropped_total{sink=\"blocks\"}"));
}

// ------------------------------------------------------------------------------------------
// Sinks.

#[tokio::test]
async fn jsonl_store_and_console_sinks_get_the_run() {
    let dir = std::env::temp_dir().join(format!("callboard-trace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("traces.jsonl");
    let _ = std::fs::remove_file(&path);
    let store = TraceStore::open_in_memory().unwrap();
    let console_buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sinks: Vec<Arc<dyn Sink>> = vec![
        Arc::new(JsonlSink::open(&path).unwrap()),
        Arc::new(StoreSink::new(store.clone())),
        Arc::new(ConsoleSink::to_writer(Box::new(Buf(console_buf.clone())))),
    ];
    let (tracer, p) = pipeline(sinks, quick_batches());
    let mut c = cfg(&tracer);
    c.workflow_name = "Weather flow".into();
    c.group_id = Some("conv-1".into());
    let r = run_reference(&tracer, c).await;
    let trace_id = r.trace_id.as_deref().unwrap().to_owned();
    assert!(p.flush().await);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1 + 12);
    assert_eq!(lines[0]["object"], "trace");
    assert_eq!(lines[0]["workflow_name"], "Weather flow");
    assert!(lines[1..].iter().all(|l| l["object"] == "trace.span"));

    let listed = store
        .list_traces(&TraceQuery {
            workflow_name: Some("Weather flow".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, trace_id);
    assert_eq!(listed[0].group_id.as_deref(), Some("conv-1"));
    assert_eq!(listed[0].span_count, 12);
    assert!(listed[0].ended_at.is_some());
    let (t, spans) = store.get_trace(&trace_id, None).unwrap().unwrap();
    assert_eq!(t["id"], trace_id.as_str());
    assert_eq!(spans.len(), 12);
    assert_eq!(label(&spans[0]), "custom:task");

    let out = String::from_utf8(console_buf.lock().unwrap().clone()).unwrap();
    assert!(
        out.contains(&format!("trace {trace_id} \"Weather flow\"")),
        "{out}"
    );
    assert!(
        out.contains("agent A tools=[get_weather] handoffs=[B]"),
        "{out}"
    );
    assert!(out.contains("handoff A -> B"), "{out}");
    assert!(out.contains("function get_weather"), "{out}");
    assert!(p.shutdown_async().await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn openai_sink_posts_the_sdk_ingest_body_with_its_headers() {
    let rx = Receiver::default();
    let addr = rx.start("/v1/traces/ingest").await;
    let sink = OpenAiSink::with_api_key(
        &OpenAiSinkConfig {
            base_url: format!("http://{addr}/v1"),
            base_delay_ms: 10,
            ..Default::default()
        },
        "sk-test",
    )
    .unwrap();
    let (tracer, p) = pipeline(vec![Arc::new(sink)], quick_batches());
    let r = run_reference(&tracer, cfg(&tracer)).await;
    assert!(p.flush().await);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "one batch");
    let (h, body) = &reqs[0];
    assert_eq!(h["authorization"], "Bearer sk-test");
    assert_eq!(h["openai-beta"], "traces=v1");
    assert_eq!(h["content-type"], "application/json");
    let body: Value = serde_json::from_slice(body).unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        13,
        "the trace and its 12 spans; no trace-end item"
    );
    assert_eq!(data[0]["object"], "trace");
    assert_eq!(data[0]["id"], r.trace_id.as_deref().unwrap());
    assert!(data[1..].iter().all(|d| d["object"] == "trace.span"));
    assert_eq!(p.stats().snapshot().sinks[0].1, 14);
}

#[tokio::test]
async fn openai_sink_retries_5xx_and_drops_4xx() {
    // Two server errors, then success: three attempts.
    let rx = Receiver::default();
    rx.statuses.lock().unwrap().extend([500, 503]);
    let addr = rx.start("/v1/traces/ingest").await;
    let cfg5 = OpenAiSinkConfig {
        base_url: format!("http://{addr}/v1"),
        base_delay_ms: 10,
        max_delay_ms: 40,
        ..Default::default()
    };
    let sink = OpenAiSink::with_api_key(&cfg5, "k").unwrap();
    let item = ExportItem::from_values(vec![
        json!({"object":"trace","id":"trace_1","workflow_name":"w","group_id":null,"metadata":null}),
    ]);
    tokio::time::timeout(WAIT, sink.export(&item))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.requests().len(), 3);

    // A client error is not retried.
    let rx = Receiver::default();
    rx.statuses.lock().unwrap().extend([400, 400, 400]);
    let addr = rx.start("/v1/traces/ingest").await;
    let sink = OpenAiSink::with_api_key(
        &OpenAiSinkConfig {
            base_url: format!("http://{addr}/v1"),
            base_delay_ms: 10,
            ..Default::default()
        },
        "k",
    )
    .unwrap();
    let err = tokio::time::timeout(WAIT, sink.export(&item))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert_eq!(rx.requests().len(), 1);

    // Nobody listening: network errors, retried, then given up.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let sink = OpenAiSink::with_api_key(
        &OpenAiSinkConfig {
            base_url: format!("http://{dead_addr}/v1"),
            base_delay_ms: 5,
            ..Default::default()
        },
        "k",
    )
    .unwrap();
    let err = tokio::time::timeout(WAIT, sink.export(&item))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Unreachable { attempts: 3, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn openai_sink_truncates_large_inputs_and_outputs() {
    let rx = Receiver::default();
    let addr = rx.start("/v1/traces/ingest").await;
    let sink = OpenAiSink::with_api_key(
        &OpenAiSinkConfig {
            base_url: format!("http://{addr}/v1"),
            ..Default::default()
        },
        "k",
    )
    .unwrap();
    let big = "x".repeat(300_000);
    let items = ExportItem::from_values(vec![
        json!({"object":"trace.span","id":"span_1","trace_id":"trace_1","parent_id":null,"started_at":null,"ended_at":null,"span_data":{"type":"function","name":"f","input":big,"output":"small","mcp_data":null},"error":null}),
    ]);
    sink.export(&items).await.unwrap();
    let (_, body) = &rx.requests()[0];
    let body: Value = serde_json::from_slice(body).unwrap();
    let input = body["data"][0]["span_data"]["input"].as_str().unwrap();
    assert!(input.ends_with("... [truncated]"));
    assert!(input.len() <= 100_000);
    assert_eq!(body["data"][0]["span_data"]["output"], "small");
}

#[tokio::test]
async fn otlp_sink_sends_genai_spans_over_otlp_http() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    let rx = Receiver::default();
    let addr = rx.start("/v1/traces").await;
    let sink = OtlpSink::new(&OtlpSinkConfig {
        endpoint: format!("http://{addr}/v1/traces"),
        service_name: "callboard-test".into(),
        headers: [("x-api-key".to_owned(), "secret".to_owned())].into(),
        ..Default::default()
    })
    .unwrap();
    let (tracer, p) = pipeline(vec![Arc::new(sink)], quick_batches());
    let mut c = cfg(&tracer);
    c.group_id = Some("conv-9".into());
    let r = run_reference(&tracer, c).await;
    assert!(p.flush().await);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let (h, body) = &reqs[0];
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["x-api-key"], "secret");
    let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
    let rs = &req.resource_spans[0];
    let svc = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(svc.key, "service.name");
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 12);
    let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| -> Option<String> {
        s.attributes.iter().find(|a| a.key == k).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(v) => Some(v.clone()),
                any_value::Value::IntValue(i) => Some(i.to_string()),
                _ => None,
            }
        })
    };
    let named = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n}"))
    };
    let agent = named("invoke_agent A");
    assert_eq!(
        attr(agent, "gen_ai.operation.name").as_deref(),
        Some("invoke_agent")
    );
    assert_eq!(attr(agent, "gen_ai.agent.name").as_deref(), Some("A"));
    assert_eq!(
        attr(agent, "gen_ai.conversation.id").as_deref(),
        Some("conv-9")
    );
    let tool = named("execute_tool get_weather");
    assert_eq!(
        attr(tool, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(
        attr(tool, "gen_ai.tool.name").as_deref(),
        Some("get_weather")
    );
    let chats: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat"))
        .collect();
    assert_eq!(chats.len(), 3);
    let model = attr(chats[0], "gen_ai.request.model").expect("the model is named");
    assert_eq!(chats[0].name, format!("chat {model}"));
    assert_eq!(attr(chats[0], "llm.model_name"), Some(model));
    for (name, kind) in [
        ("turn 1", "CHAIN"),
        ("invoke_agent A", "AGENT"),
        ("execute_tool get_weather", "TOOL"),
    ] {
        assert_eq!(
            attr(named(name), "openinference.span.kind").as_deref(),
            Some(kind)
        );
    }
    assert!(spans
        .iter()
        .all(|s| attr(s, "openinference.span.kind").is_some()));
    assert_eq!(
        attr(chats[0], "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert!(attr(chats[0], "gen_ai.usage.input_tokens").is_some());
    assert!(attr(chats[0], "gen_ai.usage.output_tokens").is_some());
    // Ids and parent links carry over; times are real.
    let tid = r.trace_id.as_deref().unwrap();
    let want: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&tid[6 + 2 * i..8 + 2 * i], 16).unwrap())
        .collect();
    assert!(spans.iter().all(|s| s.trace_id == want));
    let task = named("workflow Agent workflow");
    assert!(task.parent_span_id.is_empty());
    assert_eq!(agent.parent_span_id, task.span_id);
    assert!(spans
        .iter()
        .all(|s| s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0));
}

#[tokio::test]
async fn config_builds_a_pipeline_that_feeds_the_store() {
    let c: callboard::trace::TracingConfig = toml::from_str(
        "sinks = [\"store\"]\nmetadata_on_spans = true\n[store]\npath = \":memory:\"\n[batch]\nschedule_delay_ms = 60000",
    )
    .unwrap();
    let tracer = Tracer::new();
    tracer.set_disabled(false);
    let setup = c.install(&tracer).unwrap();
    let store = setup.store.clone().unwrap();
    let r = run_reference(&tracer, cfg(&tracer)).await;
    assert!(setup.shutdown().await);
    let got = store
        .get_trace_json(r.trace_id.as_deref().unwrap(), None)
        .unwrap()
        .unwrap();
    assert_eq!(got["spans"].as_array().unwrap().len(), 12);
    // Ingest of an SDK app's body.
    let sum = store
        .ingest(vec![
            json!({"object":"trace","id":"trace_0000000000000000000000000000abcd","workflow_name":"py","group_id":null,"metadata":null}),
            json!({"object":"trace.span","id":"span_000000000000000000000001","trace_id":"trace_0000000000000000000000000000abcd","parent_id":null,"started_at":"2026-01-01T00:00:00+00:00","ended_at":"2026-01-01T00:00:01+00:00","span_data":{"type":"custom","name":"x","data":{}},"error":null}),
        ])
        .unwrap();
    assert_eq!((sum.traces, sum.spans), (1, 1));
    assert_eq!(store.list_traces(&TraceQuery::default()).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_quick_when_idle_and_after_runs() {
    let store = TraceStore::open_in_memory().unwrap();
    let (tracer, p) = pipeline(vec![Arc::new(StoreSink::new(store))], quick_batches());
    let t0 = std::time::Instant::now();
    assert!(p.flush().await);
    let idle = t0.elapsed();
    run_reference(&tracer, cfg(&tracer)).await;
    let t1 = std::time::Instant::now();
    assert!(p.flush().await);
    let busy = t1.elapsed();
    assert!(idle < Duration::from_secs(1), "idle flush took {idle:?}");
    assert!(busy < Duration::from_secs(1), "flush took {busy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_on_one_runner_traced_then_not() {
    let store = TraceStore::open_in_memory().unwrap();
    let (tracer, p) = pipeline(vec![Arc::new(StoreSink::new(store))], quick_batches());
    let runner: Runner = Runner::new();
    let agent = reference_cast();
    for i in 0..600 {
        let c = RunConfig::default()
            .tracer(tracer.clone())
            .tracing_disabled(i % 2 == 1);
        tokio::time::timeout(WAIT, runner.request(&agent, "weather?").config(c).run())
            .await
            .unwrap_or_else(|_| panic!("run {i} timed out"))
            .unwrap();
    }
    assert!(p.flush().await);
}

#[tokio::test]
async fn dropping_the_last_processor_delivers_and_stops_its_pipeline() {
    struct Watch(Arc<Collect>, Arc<AtomicUsize>);
    #[async_trait]
    impl Sink for Watch {
        fn name(&self) -> &str {
            "watch"
        }
        async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
            self.0.export(batch).await
        }
        async fn shutdown(&self) -> Result<(), SinkError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
    let got = Arc::new(Collect::default());
    let shut = Arc::new(AtomicUsize::new(0));
    let (tracer, p) = pipeline(
        vec![Arc::new(Watch(got.clone(), shut.clone()))],
        // Queued items hold the tracer (and so the processor) until the next export.
        BatchConfig {
            schedule_delay_ms: 50,
            ..quick_batches()
        },
    );
    let t = tracer.start_trace(TraceOptions::default());
    t.finish();
    drop(t);
    drop(tracer);
    drop(p);
    let deadline = std::time::Instant::now() + WAIT;
    while shut.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shut.load(Ordering::Relaxed), 1);
    assert_eq!(got.count(ItemKind::Trace), 1);
    assert_eq!(got.count(ItemKind::TraceEnd), 1);
}

#[tokio::test]
async fn span_errors_are_the_sdks() {
    let find = |rec: &Recorder, l: &str| -> Value {
        rec.of("span_end")
            .into_iter()
            .find(|s| label(s) == l)
            .unwrap_or_else(|| panic!("no {l}"))
    };
    // A tool that fails: non-fatal error on its function span; the run goes on.
    let (tracer, rec) = recording_tracer();
    let model = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::call("boom", json!({"city": "x"})),
        ScriptedTurn::message("ok", 1),
    ]));
    let tool = FunctionTool::new(
        "boom",
        "Fails.",
        |_ctx: ToolContext<()>, _a: CityArgs| async move { Err::<String, _>("kaput") },
    );
    let agent: Agent = Agent::new("A").model_instance(model).tool(tool);
    let runner: Runner = Runner::new();
    tokio::time::timeout(WAIT, runner.request(&agent, "x").config(cfg(&tracer)).run())
        .await
        .unwrap()
        .unwrap();
    let f = find(&rec, "function:boom");
    assert_eq!(f["error"]["message"], "Error running tool (non-fatal)");
    assert_eq!(f["error"]["data"]["tool_name"], "boom");
    assert!(find(&rec, "agent:A")["error"].is_null());

    // Max turns: the agent span says so, with max_turns.
    let (tracer, rec) = recording_tracer();
    let model = Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::call(
            "get_weather",
            json!({"city": "x"}),
        )])
        .repeat_last(),
    );
    let tool = FunctionTool::new(
        "get_weather",
        "w",
        |_ctx: ToolContext<()>, _a: CityArgs| async move { Ok::<_, String>("sun".to_owned()) },
    );
    let agent: Agent = Agent::new("A").model_instance(model).tool(tool);
    let err = tokio::time::timeout(
        WAIT,
        runner
            .request(&agent, "x")
            .config(cfg(&tracer).max_turns(3))
            .run(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.to_string(), "Max turns (3) exceeded");
    let a = find(&rec, "agent:A");
    assert_eq!(a["error"]["message"], "Max turns exceeded");
    assert_eq!(a["error"]["data"], json!({"max_turns": 3}));

    // A tool the agent does not have: on the turn span, and the agent span's run error.
    let (tracer, rec) = recording_tracer();
    let model = Arc::new(ScriptedModel::new(vec![ScriptedTurn::call(
        "nope",
        json!({}),
    )]));
    let agent: Agent = Agent::new("A").model_instance(model);
    tokio::time::timeout(WAIT, runner.request(&agent, "x").config(cfg(&tracer)).run())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        find(&rec, "custom:turn")["error"]["message"],
        "Tool not found"
    );
    assert_eq!(
        find(&rec, "agent:A")["error"]["message"],
        "Error in agent run"
    );
}

#[tokio::test]
async fn guardrail_and_multiple_handoff_spans() {
    use callboard::{GuardrailFunctionOutput, InputGuardrail};
    let find_all = |rec: &Recorder, l: &str| -> Vec<Value> {
        rec.of("span_end")
            .into_iter()
            .filter(|s| label(s) == l)
            .collect()
    };
    // Two handoffs in one turn: the first wins; the span records both.
    let (tracer, rec) = recording_tracer();
    let model = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn::new().with_handoff("B").with_handoff("C"),
        ScriptedTurn::message("from B", 1),
    ]));
    let b = Agent::new("B").model_instance(model.clone());
    let c = Agent::new("C").model_instance(model.clone());
    let a: Agent = Agent::new("A")
        .model_instance(model)
        .handoff(&b)
        .handoff(&c)
        .input_guardrail(InputGuardrail::new("polite", |_c, _a, _i| async {
            GuardrailFunctionOutput::pass(json!({}))
        }));
    let runner: Runner = Runner::new();
    let r = tokio::time::timeout(WAIT, runner.request(&a, "x").config(cfg(&tracer)).run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.last_agent, "B");
    let h = &find_all(&rec, "handoff")[0];
    assert_eq!(h["span_data"]["to_agent"], "B");
    assert_eq!(h["error"]["message"], "Multiple handoffs requested");
    assert_eq!(h["error"]["data"]["requested_agents"], json!(["B", "C"]));
    let g = &find_all(&rec, "guardrail")[0];
    assert_eq!(g["span_data"]["name"], "polite");
    assert_eq!(g["span_data"]["triggered"], false);
    let agent_a = &find_all(&rec, "agent:A")[0];
    assert_eq!(
        g["parent_id"], agent_a["id"],
        "guardrails sit under the agent span"
    );

    // A tripped input guardrail: triggered on its span, the SDK's error on the agent span.
    let (tracer, rec) = recording_tracer();
    let model = Arc::new(ScriptedModel::new(vec![ScriptedTurn::message("hi", 1)]));
    let a: Agent = Agent::new("A")
        .model_instance(model)
        .input_guardrail(InputGuardrail::new("strict", |_c, _a, _i| async {
            GuardrailFunctionOutput::trip(json!({"why": "no"}))
        }));
    let err = tokio::time::timeout(WAIT, runner.request(&a, "x").config(cfg(&tracer)).run())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("triggered tripwire"), "{err}");
    assert_eq!(
        find_all(&rec, "guardrail")[0]["span_data"]["triggered"],
        true
    );
    assert_eq!(
        find_all(&rec, "agent:A")[0]["error"]["message"],
        "Guardrail tripwire triggered"
    );
}
