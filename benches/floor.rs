//! The floor: what each piece of one 3-turn run over WebSocket costs alone on this machine,
//! so that the load harness's CPU per run is judged against the physical limit. The run is
//! the load harness's (benches/load): a tool call, a handoff, a 20-delta answer, on the
//! harness's fake model server (Chat Completions API), here in-process.
//!
//! - `http_3_requests`: three bare reqwest POSTs over loopback to a server answering each
//!   with a fixed SSE body of the same bytes as the fake model's three answers.
//! - `sse_decode_3_bodies`: those three bodies (in 1,400-byte chunks) parsed into the typed
//!   Responses-API events by the Chat Completions provider's decoder.
//! - `encode_frames`: the run's frames (46, made once by the real engine on the fake model)
//!   encoded in the `sdk` wire format, fresh frames each time.
//! - `ws_write_frames`: those encoded frames written to one loopback WebSocket and read by
//!   the client at the other end.
//! - `actor_hop`: one message from a tokio task to an actix actor on its own thread and the
//!   answer back (a turn hops there and back).
//!
//! `cargo bench --bench floor` (docs/performance.md has the table).

#[path = "load/model.rs"]
#[allow(dead_code)]
mod model;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callboard::bus::{Bus, BusLimits, Delivery, Frame, FrameBody};
use callboard::model::config::ProviderConfig;
use callboard::model::http::events_from_sse;
use callboard::model::openai_chat::ChatTranslator;
use callboard::run::Runner;
use callboard::tool::{FunctionTool, ToolContext};
use callboard::wire::sdk;
use callboard::Agent;
use criterion::{criterion_group, Criterion, Throughput};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Deltas in the answer (the load harness's default).
const TOKENS: usize = 20;
/// Bytes per body chunk handed to the parser.
const CHUNK: usize = 1400;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Serves `app` on a loopback port from a runtime of its own; returns the address.
fn serve(app: axum::Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(l.local_addr().expect("address"));
            let _ = axum::serve(l, app).await;
        });
    });
    rx.recv().expect("the server starts")
}

/// The fake model's three request bodies of one run (what decides its answers).
fn turn_requests() -> [serde_json::Value; 3] {
    let user =
        json!({"role": "user", "content": format!("weather in Oslo please tokens={TOKENS}")});
    let tools = json!([{"type": "function", "function": {"name": "get_weather"}},
                       {"type": "function", "function": {"name": "transfer_to_writer"}}]);
    [
        json!({"model": "fake", "stream": true, "messages": [user], "tools": tools}),
        json!({"model": "fake", "stream": true, "tools": tools, "messages": [user,
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}),
        json!({"model": "fake", "stream": true, "messages": [user]}),
    ]
}

/// The fake model's three SSE answers of one run.
fn bodies(rt: &tokio::runtime::Runtime, fake: SocketAddr) -> Vec<Bytes> {
    let client = reqwest::Client::new();
    rt.block_on(async {
        let mut v = Vec::new();
        for req in turn_requests() {
            let res = client
                .post(format!("http://{fake}/v1/chat/completions"))
                .json(&req)
                .send()
                .await
                .expect("the fake model answers");
            v.push(res.bytes().await.expect("its body"));
        }
        v
    })
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct City {
    city: String,
}

/// The frame bodies of one run of the harness's cast on the fake model.
fn run_frames(rt: &tokio::runtime::Runtime, fake: SocketAddr) -> Vec<FrameBody> {
    let cfg: ProviderConfig = toml::from_str(&format!(
        "provider = \"openai_chat_completions\"\nbase_url = \"http://{fake}/v1\"\nmodel = \"fake\"\n"
    ))
    .expect("provider config");
    let model = cfg.build().expect("the provider");
    let writer = Agent::new("Writer")
        .instructions("Write the answer.")
        .handoff_description("Writes the answer.")
        .model_instance(model.clone());
    let triage: Agent = Agent::new("Triage")
        .instructions("Get the weather, then hand off to Writer.")
        .model_instance(model)
        .tool(FunctionTool::new(
            "get_weather",
            "Weather for a city.",
            |_ctx: ToolContext<()>, a: City| async move {
                Ok::<_, String>(format!("sunny in {}, 12°C", a.city))
            },
        ))
        .handoff(&writer);
    rt.block_on(async {
        let bus = Bus::new(BusLimits::default());
        let runner: Runner = Runner::new().with_bus(bus.clone());
        let topic = bus.topic("floor");
        let mut sub = topic.subscribe(Some(0)).expect("a new topic");
        let _run = runner
            .request(&triage, format!("weather in Oslo please tokens={TOKENS}"))
            .topic(topic.clone())
            .run_id("run_floor")
            .start()
            .expect("the run starts");
        let mut v = Vec::new();
        while let Some(Delivery::Frame(f)) = sub.recv().await {
            v.push(f.body.clone());
            if f.body.is_terminal() {
                break;
            }
        }
        v
    })
}

fn fresh(bodies: &[FrameBody]) -> Vec<Frame> {
    let (s, r): (Arc<str>, Arc<str>) = ("floor".into(), "run_floor".into());
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Frame::new(s.clone(), i as u64 + 1, r.clone(), b.clone()))
        .collect()
}

/// A connected WebSocket pair over loopback: (server side, client side).
async fn ws_pair() -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    callboard::loadtest::client::Ws,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("address");
    let accept = tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        tokio_tungstenite::accept_async(s).await.expect("handshake")
    });
    let (client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("connect");
    (accept.await.expect("the accept task"), client)
}

fn actor_hop(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    struct Echo;
    impl actix::Actor for Echo {
        type Context = actix::Context<Self>;
    }
    struct Ping(u64);
    impl actix::Message for Ping {
        type Result = u64;
    }
    impl actix::Handler<Ping> for Echo {
        type Result = u64;
        fn handle(&mut self, m: Ping, _: &mut Self::Context) -> u64 {
            m.0 + 1
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix::System::new();
        sys.block_on(async {
            use actix::Actor;
            let _ = tx.send(Echo.start());
        });
        let _ = sys.run();
    });
    let addr = rx.recv().expect("the actor starts");
    let mut g = c.benchmark_group("floor");
    g.bench_function("actor_hop", |b| {
        b.iter(|| rt.block_on(async { addr.send(Ping(1)).await.expect("answered") }))
    });
    g.finish();
}

fn floor(c: &mut Criterion) {
    let rt = runtime();
    let fake = serve(model::router(model::ModelOpts {
        tokens: TOKENS,
        delay_ms: 0,
    }));
    let bodies = bodies(&rt, fake);
    let sizes: Vec<usize> = bodies.iter().map(|b| b.len()).collect();
    let frames = run_frames(&rt, fake);
    eprintln!(
        "floor: SSE bodies of {sizes:?} bytes ({} in all); {} frames per run",
        sizes.iter().sum::<usize>(),
        frames.len()
    );

    // A bare server answering each turn with its fixed body.
    let fixed = Arc::new(bodies.clone());
    let app = axum::Router::new().route(
        "/turn/{i}",
        axum::routing::post(move |axum::extract::Path(i): axum::extract::Path<usize>| {
            let b = fixed.get(i).cloned().unwrap_or_default();
            async move {
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(axum::body::Body::from(b))
                    .unwrap_or_default()
            }
        }),
    );
    let bare = serve(app);
    let client = reqwest::Client::new();
    let mut g = c.benchmark_group("floor");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("http_3_requests", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..3 {
                    let res = client
                        .post(format!("http://{bare}/turn/{i}"))
                        .body("{}")
                        .send()
                        .await
                        .expect("answered");
                    let mut s = res.bytes_stream();
                    while let Some(c) = s.next().await {
                        std::hint::black_box(c.expect("body"));
                    }
                }
            })
        })
    });

    let chunked: Vec<Vec<Bytes>> = bodies
        .iter()
        .map(|b| b.chunks(CHUNK).map(Bytes::copy_from_slice).collect())
        .collect();
    g.bench_function("sse_decode_3_bodies", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut n = 0;
                for body in &chunked {
                    let src = futures::stream::iter(body.clone()).map(Ok::<_, std::io::Error>);
                    let mut s =
                        events_from_sse(src, ChatTranslator::new("fake", "floor"), "floor").boxed();
                    while let Some(ev) = s.next().await {
                        std::hint::black_box(ev.expect("well formed"));
                        n += 1;
                    }
                }
                n
            })
        })
    });

    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("encode_frames", |b| {
        b.iter_batched(
            || fresh(&frames),
            |fs| {
                for f in &fs {
                    std::hint::black_box(sdk::bytes(f));
                }
                fs
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let encoded: Vec<Bytes> = fresh(&frames)
        .iter()
        .map(|f| sdk::bytes(f).clone())
        .collect();
    let (mut server, mut client_ws) = rt.block_on(ws_pair());
    g.bench_function("ws_write_frames", |b| {
        b.iter(|| {
            rt.block_on(async {
                for e in &encoded {
                    let text = Utf8Bytes::try_from(e.clone()).expect("JSON is UTF-8");
                    server.feed(Message::Text(text)).await.expect("written");
                }
                server.flush().await.expect("flushed");
                for _ in 0..encoded.len() {
                    std::hint::black_box(client_ws.next().await);
                }
            })
        })
    });
    g.finish();
    actor_hop(c, &rt);
}

criterion_group!(benches, floor);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
