//! The tracing actor and its processor: [`BatchTraceProcessor`] stages new traces and
//! finished spans for an actix actor without ever blocking a run (a short lock and a push;
//! when the queue is full the item is dropped and counted). The actor takes them in batches
//! (the SDK's `BatchTraceProcessor` knobs and defaults: on the trigger ratio, which wakes it
//! with one `try_send`, on its timer, on flush and on shutdown) and feeds every [`Sink`]
//! through a worker of its own, so a sink that panics, fails or hangs never touches a run or
//! another sink.
//!
//! ```text
//!  run ──push──► staging queue ◄──take── TraceActor (actix) ──batch──► sink worker ──► Sink
//!   (drop + count   (max_queue_size)       wakes: trigger ratio,       (own thread,   (console,
//!    when full)                            timer, flush, shutdown       timeouts,      jsonl, store,
//!                                                                       panics caught) openai, otlp)
//! ```
//!
//! Why staging and not one actor message per span: a message per span costs a cross-thread
//! wake-up of the actor's thread most of the time (measured: about 7 µs of CPU per span on
//! this machine); the staging queue batches the hand-over itself.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::mpsc;

pub use super::item::{ExportItem, ItemFacts, ItemKind};
use super::processor::TraceProcessor;
use super::sinks::Sink;
pub use super::stats::{SinkCounters, TraceStats, TraceStatsSnapshot};
use super::{Span, Trace};

/// Mailbox of the tracing actor: only wake-ups, flushes and shutdowns travel through it.
const CONTROL_MAILBOX: usize = 64;

/// Batching knobs, with the SDK's defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Items (traces and spans) held before new ones are dropped and counted (8192).
    pub max_queue_size: usize,
    /// Items per batch handed to a sink (128).
    pub max_batch_size: usize,
    /// Milliseconds between scheduled exports (5000).
    pub schedule_delay_ms: u64,
    /// Fill ratio of the queue that triggers an export at once (0.7).
    pub export_trigger_ratio: f64,
    /// Milliseconds one sink call (export, flush, shutdown) may take before it counts as
    /// failed (30000).
    pub export_timeout_ms: u64,
    /// Milliseconds `force_flush` and `shutdown` wait for the sinks before giving up (30000).
    pub shutdown_timeout_ms: u64,
    /// Milliseconds from a new item (a trace starting or ending, a span ending) to the
    /// export that takes it (100), so runs show in the sinks as they start, grow and end,
    /// rather than at the next scheduled export. One export takes everything staged
    /// meanwhile, so batches stay large under load. 0: no such export (the SDK's behaviour:
    /// the timer and the trigger ratio only).
    pub export_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_size: 8192,
            max_batch_size: 128,
            schedule_delay_ms: 5000,
            export_trigger_ratio: 0.7,
            export_timeout_ms: 30_000,
            shutdown_timeout_ms: 30_000,
            export_delay_ms: 100,
        }
    }
}

impl BatchConfig {
    /// Problems with the values, one message each (empty when fine).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_queue_size == 0 {
            out.push("max_queue_size must be at least 1".to_owned());
        }
        if self.max_batch_size == 0 {
            out.push("max_batch_size must be at least 1".to_owned());
        }
        if self.schedule_delay_ms == 0 {
            out.push("schedule_delay_ms must be at least 1".to_owned());
        }
        if !(self.export_trigger_ratio > 0.0 && self.export_trigger_ratio <= 1.0) {
            out.push("export_trigger_ratio must be in (0, 1]".to_owned());
        }
        out
    }

    fn trigger_size(&self) -> usize {
        ((self.max_queue_size as f64 * self.export_trigger_ratio) as usize).max(1)
    }

    /// Batches a sink may have waiting before further ones are dropped for it.
    fn sink_queue_batches(&self) -> usize {
        (self.max_queue_size / self.max_batch_size.max(1)).max(1) * 2
    }
}

// ---------------------------------------------------------------------------------------
// Messages of the tracing actor.

/// What a run hands over: cheap handles (and when a trace started or ended), exported to
/// JSON on the actor's side.
enum TraceEvent {
    TraceStart(Trace, String),
    TraceEnd(Trace, String),
    SpanEnd(Span),
}

impl TraceEvent {
    fn export(&self) -> Option<ExportItem> {
        match self {
            TraceEvent::TraceStart(t, at) => ExportItem::from_trace(t, ItemKind::Trace, Some(at)),
            TraceEvent::TraceEnd(t, at) => ExportItem::from_trace(t, ItemKind::TraceEnd, Some(at)),
            TraceEvent::SpanEnd(s) => ExportItem::from_span(s),
        }
    }
}

/// The staging queue reached the export trigger: export now rather than on the timer.
struct Wake;

impl Message for Wake {
    type Result = ();
}

/// Something was staged: export after `export_delay_ms`, together with whatever else is
/// staged meanwhile.
struct Soon;

impl Message for Soon {
    type Result = ();
}

/// Export everything buffered, then have every sink flush (or shut down); the ack is
/// released when every sink is done.
struct Flush {
    ack: Arc<Ack>,
    shutdown: bool,
}

impl Message for Flush {
    type Result = ();
}

/// Dropped by the last holder: the waiter of a flush is told then. A sink worker that
/// hangs keeps its clone, and the waiter times out instead.
struct Ack(std::sync::mpsc::SyncSender<()>);

impl Drop for Ack {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

enum WorkerMsg {
    Batch(Arc<Vec<ExportItem>>),
    Flush(#[allow(dead_code)] Arc<Ack>),
    Shutdown(#[allow(dead_code)] Arc<Ack>),
}

struct SinkHandle {
    tx: mpsc::UnboundedSender<WorkerMsg>,
    /// Batches waiting for this sink; bounded by us since the channel is not.
    waiting: Arc<AtomicUsize>,
    index: usize,
}

// ---------------------------------------------------------------------------------------
// The actor.

/// What runs and the actor share: the staging queue runs append to (one short lock per
/// item, no message), and whether a wake-up is already on its way.
struct Staging {
    events: Mutex<Vec<TraceEvent>>,
    wake_pending: AtomicBool,
    /// An export after `export_delay_ms` is scheduled.
    soon_pending: AtomicBool,
}

/// The tracing actor: takes what runs staged and hands batches to the sink workers.
struct TraceActor {
    cfg: BatchConfig,
    staging: Arc<Staging>,
    sinks: Vec<SinkHandle>,
    stats: Arc<TraceStats>,
}

impl Actor for TraceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_millis(self.cfg.schedule_delay_ms.max(1));
        ctx.run_interval(every, |act, _| act.export_all(false));
    }
}

impl TraceActor {
    /// Takes everything staged and hands it to every sink in batches of `max_batch_size`. A
    /// sink whose queue is full loses the batch (counted), except when `force` (flush,
    /// shutdown).
    fn export_all(&mut self, force: bool) {
        self.staging.wake_pending.store(false, Ordering::Release);
        let events = {
            let mut g = self
                .staging
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if g.is_empty() {
                return;
            }
            std::mem::replace(&mut *g, Vec::with_capacity(64))
        };
        if self.sinks.is_empty() {
            return;
        }
        let items: Vec<ExportItem> = events.iter().filter_map(TraceEvent::export).collect();
        drop(events);
        let limit = self.cfg.sink_queue_batches();
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let batch: Arc<Vec<ExportItem>> =
                Arc::new(rest.by_ref().take(self.cfg.max_batch_size).collect());
            for s in &self.sinks {
                let counters = &self.stats.sinks[s.index].1;
                if !force && s.waiting.load(Ordering::Acquire) >= limit {
                    counters
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    continue;
                }
                s.waiting.fetch_add(1, Ordering::AcqRel);
                if s.tx.send(WorkerMsg::Batch(batch.clone())).is_err() {
                    s.waiting.fetch_sub(1, Ordering::AcqRel);
                    counters
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Handler<Wake> for TraceActor {
    type Result = ();

    /// The staging queue reached the trigger size: export now.
    fn handle(&mut self, _msg: Wake, _ctx: &mut Self::Context) {
        self.export_all(false);
    }
}

impl Handler<Soon> for TraceActor {
    type Result = ();

    /// Something was staged: export after the delay (what is staged meanwhile rides along).
    fn handle(&mut self, _msg: Soon, ctx: &mut Self::Context) {
        let delay = Duration::from_millis(self.cfg.export_delay_ms);
        ctx.run_later(delay, |act, _| {
            act.staging.soon_pending.store(false, Ordering::Release);
            act.export_all(false);
        });
    }
}

impl Handler<Flush> for TraceActor {
    type Result = ();

    /// Exports everything buffered and passes the flush (or shutdown) on to every sink.
    fn handle(&mut self, msg: Flush, ctx: &mut Self::Context) {
        self.export_all(true);
        for s in &self.sinks {
            let m = if msg.shutdown {
                WorkerMsg::Shutdown(msg.ack.clone())
            } else {
                WorkerMsg::Flush(msg.ack.clone())
            };
            let _ = s.tx.send(m);
        }
        if msg.shutdown {
            use actix::ActorContext;
            ctx.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sink workers.

/// Runs one sink on a thread of its own (with its own small tokio runtime), so a sink that
/// blocks its thread or hangs stalls nothing else; every call has a timeout and panics are
/// caught.
fn spawn_worker(
    sink: Arc<dyn Sink>,
    index: usize,
    stats: Arc<TraceStats>,
    timeout: Duration,
) -> SinkHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkerMsg>();
    let waiting = Arc::new(AtomicUsize::new(0));
    let w = waiting.clone();
    let name = sink.name().to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("callboard-sink-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "could not start the trace sink's runtime; its items are dropped");
                    return;
                }
            };
            rt.block_on(async move {
                let counters = &stats.sinks[index].1;
                while let Some(msg) = rx.recv().await {
                    match msg {
                        WorkerMsg::Batch(batch) => {
                            w.fetch_sub(1, Ordering::AcqRel);
                            let n = batch.len() as u64;
                            let call = AssertUnwindSafe(sink.export(&batch)).catch_unwind();
                            match tokio::time::timeout(timeout, call).await {
                                Ok(Ok(Ok(()))) => {
                                    counters.exported.fetch_add(n, Ordering::Relaxed);
                                }
                                Ok(Ok(Err(e))) => {
                                    counters.failed.fetch_add(n, Ordering::Relaxed);
                                    tracing::warn!(sink = %name, items = n, error = %e, "[non-fatal] trace sink failed; batch dropped");
                                }
                                Ok(Err(_)) => {
                                    counters.failed.fetch_add(n, Ordering::Relaxed);
                                    tracing::error!(sink = %name, items = n, "[non-fatal] trace sink panicked; batch dropped");
                                }
                                Err(_) => {
                                    counters.failed.fetch_add(n, Ordering::Relaxed);
                                    tracing::warn!(sink = %name, items = n, timeout_ms = timeout.as_millis() as u64, "[non-fatal] trace sink timed out; batch dropped");
                                }
                            }
                        }
                        WorkerMsg::Flush(ack) => {
                            let call = AssertUnwindSafe(sink.flush()).catch_unwind();
                            if !matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(Ok(())))) {
                                tracing::warn!(sink = %name, "[non-fatal] trace sink flush failed or timed out");
                            }
                            drop(ack);
                        }
                        WorkerMsg::Shutdown(ack) => {
                            let call = AssertUnwindSafe(sink.shutdown()).catch_unwind();
                            if !matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(Ok(())))) {
                                tracing::warn!(sink = %name, "[non-fatal] trace sink shutdown failed or timed out");
                            }
                            drop(ack);
                            break;
                        }
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start a trace sink thread; its items are dropped");
    }
    SinkHandle { tx, waiting, index }
}

// ---------------------------------------------------------------------------------------
// The processor.

/// A [`TraceProcessor`] that queues new traces and finished spans to the tracing actor
/// (the SDK's `BatchTraceProcessor`): it never blocks a run; when the queue is full the item
/// is dropped and counted. Cheap to clone.
#[derive(Clone)]
pub struct BatchTraceProcessor {
    addr: Addr<TraceActor>,
    cfg: BatchConfig,
    staging: Arc<Staging>,
    stats: Arc<TraceStats>,
    shut: Arc<AtomicBool>,
    _stop: Arc<StopOnDrop>,
}

/// Held by every clone of the processor: when the last one goes, the actor exports what is
/// left, shuts the sinks down and stops, so no thread outlives its pipeline. (Queued items
/// hold their tracer, and so the processor, until the export that takes them.)
struct StopOnDrop {
    addr: Addr<TraceActor>,
    shut: Arc<AtomicBool>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.shut.swap(true, Ordering::AcqRel) {
            let (tx, _rx) = std::sync::mpsc::sync_channel(1);
            self.addr.do_send(Flush {
                ack: Arc::new(Ack(tx)),
                shutdown: true,
            });
        }
    }
}

impl std::fmt::Debug for BatchTraceProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchTraceProcessor")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl BatchTraceProcessor {
    /// Starts the tracing actor (on the library's actix system) and one worker per sink.
    pub fn new(sinks: Vec<Arc<dyn Sink>>, cfg: BatchConfig) -> Self {
        let mut cfg = cfg;
        cfg.max_queue_size = cfg.max_queue_size.max(1);
        cfg.max_batch_size = cfg.max_batch_size.max(1);
        let stats = Arc::new(TraceStats {
            sinks: sinks
                .iter()
                .map(|s| (s.name().to_owned(), SinkCounters::default()))
                .collect(),
            ..Default::default()
        });
        let timeout = Duration::from_millis(cfg.export_timeout_ms.max(1));
        let handles: Vec<SinkHandle> = sinks
            .into_iter()
            .enumerate()
            .map(|(i, s)| spawn_worker(s, i, stats.clone(), timeout))
            .collect();
        let staging = Arc::new(Staging {
            events: Mutex::new(Vec::with_capacity(64)),
            wake_pending: AtomicBool::new(false),
            soon_pending: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let actor_cfg = cfg.clone();
        let (q, st) = (staging.clone(), stats.clone());
        let addr = TraceActor::start_in_arbiter(crate::runtime::actor_arbiter(), move |ctx| {
            ctx.set_mailbox_capacity(CONTROL_MAILBOX);
            let _ = ready_tx.send(());
            TraceActor {
                cfg: actor_cfg,
                staging: q,
                sinks: handles,
                stats: st,
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::error!("the tracing actor did not start in 10s; trace items may be dropped");
        }
        let shut = Arc::new(AtomicBool::new(false));
        BatchTraceProcessor {
            _stop: Arc::new(StopOnDrop {
                addr: addr.clone(),
                shut: shut.clone(),
            }),
            addr,
            cfg,
            staging,
            stats,
            shut,
        }
    }

    /// The counters (shared; read them any time).
    pub fn stats(&self) -> &Arc<TraceStats> {
        &self.stats
    }

    /// The batching knobs in force.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Stages one event for the actor: a short lock and a push, no message, so a run pays
    /// next to nothing; the actor is woken (one `try_send`) only when the queue reaches the
    /// export trigger, and otherwise exports on its timer, as the SDK's processor does.
    fn enqueue(&self, ev: TraceEvent) {
        if self.shut.load(Ordering::Relaxed) {
            self.drop_one();
            return;
        }
        let n = {
            let mut g = self
                .staging
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if g.len() >= self.cfg.max_queue_size {
                drop(g);
                self.drop_one();
                return;
            }
            g.push(ev);
            g.len()
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if n >= self.cfg.trigger_size() && !self.staging.wake_pending.swap(true, Ordering::AcqRel) {
            // A full mailbox means a wake-up is already queued; nothing is lost.
            if self.addr.try_send(Wake).is_err() {
                self.staging.wake_pending.store(false, Ordering::Release);
            }
        }
        // One export per `export_delay_ms` at most: a load and, rarely, a swap per item.
        if self.cfg.export_delay_ms > 0
            && !self.staging.soon_pending.load(Ordering::Acquire)
            && !self.staging.soon_pending.swap(true, Ordering::AcqRel)
            && self.addr.try_send(Soon).is_err()
        {
            self.staging.soon_pending.store(false, Ordering::Release);
        }
    }

    fn drop_one(&self) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        // Say so once, then every 1000th time, so a storm does not flood the log.
        if n.is_multiple_of(1000) {
            tracing::warn!(dropped = n + 1, "trace queue is full; dropping trace items");
        }
    }

    fn request(&self, shutdown: bool) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // A control message is rare and must not be lost to a full mailbox, so it bypasses
        // the mailbox limit (do_send) on purpose.
        self.addr.do_send(Flush {
            ack: Arc::new(Ack(tx)),
            shutdown,
        });
        rx
    }

    fn wait_done(&self, rx: std::sync::mpsc::Receiver<()>, what: &str) -> bool {
        let limit = Duration::from_millis(self.cfg.shutdown_timeout_ms);
        match rx.recv_timeout(limit) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => true,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.cfg.shutdown_timeout_ms,
                    "[non-fatal] tracing {what} timed out; a sink is slow or hung"
                );
                false
            }
        }
    }

    /// Exports everything queued and waits (up to `shutdown_timeout_ms`) until every sink
    /// has it; true when every sink finished in time. Blocks the calling thread.
    pub fn flush_blocking(&self) -> bool {
        let rx = self.request(false);
        self.wait_done(rx, "flush")
    }

    /// [`flush_blocking`](Self::flush_blocking) for async callers.
    pub async fn flush(&self) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.flush_blocking())
            .await
            .unwrap_or(false)
    }

    /// Exports everything queued, shuts every sink down and stops the actor; waits up to
    /// `shutdown_timeout_ms`. Later items are dropped and counted. Blocks the calling thread.
    pub fn shutdown_blocking(&self) -> bool {
        if self.shut.swap(true, Ordering::AcqRel) {
            return true;
        }
        let rx = self.request(true);
        self.wait_done(rx, "shutdown")
    }

    /// [`shutdown_blocking`](Self::shutdown_blocking) for async callers.
    pub async fn shutdown_async(&self) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.shutdown_blocking())
            .await
            .unwrap_or(false)
    }
}

impl TraceProcessor for BatchTraceProcessor {
    fn on_trace_start(&self, trace: &Trace) {
        self.enqueue(TraceEvent::TraceStart(trace.clone(), super::time_iso()));
    }

    fn on_trace_end(&self, trace: &Trace) {
        self.enqueue(TraceEvent::TraceEnd(trace.clone(), super::time_iso()));
    }

    /// Nothing: spans are sent when they end, as in the SDK.
    fn on_span_start(&self, _span: &Span) {}

    fn on_span_end(&self, span: &Span) {
        self.enqueue(TraceEvent::SpanEnd(span.clone()));
    }

    fn force_flush(&self) {
        self.flush_blocking();
    }

    fn shutdown(&self) {
        self.shutdown_blocking();
    }
}
