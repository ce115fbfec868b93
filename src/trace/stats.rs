//! The tracing pipeline's counters ([`TraceStats`]): items queued, dropped (at the queue and
//! per sink), exported and failed, for logs and the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Items the sink took.
    pub exported: AtomicU64,
    /// Items never handed to the sink because its queue was full (it is slow or hung).
    pub dropped: AtomicU64,
    /// Items in batches the sink failed, panicked on, or timed out on.
    pub failed: AtomicU64,
}

/// The tracing pipeline's counters, for logs and the server's `/metrics`.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Items accepted from runs.
    pub queued: AtomicU64,
    /// Items refused because the queue was full or the processor shut down.
    pub dropped: AtomicU64,
    /// Per sink, in configuration order.
    pub sinks: Vec<(String, SinkCounters)>,
}

/// A plain copy of [`TraceStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceStatsSnapshot {
    /// Items accepted from runs.
    pub queued: u64,
    /// Items refused at the queue.
    pub dropped: u64,
    /// Per sink: name, exported, dropped, failed.
    pub sinks: Vec<(String, u64, u64, u64)>,
}

impl TraceStatsSnapshot {
    /// Items exported, summed over the sinks.
    pub fn exported(&self) -> u64 {
        self.sinks.iter().map(|s| s.1).sum()
    }

    /// Items dropped: at the queue, plus each sink's.
    pub fn dropped_total(&self) -> u64 {
        self.dropped + self.sinks.iter().map(|s| s.2).sum::<u64>()
    }

    /// Items whose export failed, summed over the sinks.
    pub fn failed(&self) -> u64 {
        self.sinks.iter().map(|s| s.3).sum()
    }

    /// Registers the counters (`callboard_trace_items_{queued,dropped,exported,failed}_total`,
    /// by `sink`; queue drops under `sink=""`) as they are now in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::{ConstCounter, Counter};
        use prometheus_client::metrics::family::Family;
        type BySink = Family<Vec<(&'static str, String)>, Counter>;
        registry.register(
            "callboard_trace_items_queued",
            "Trace items accepted from runs",
            ConstCounter::new(self.queued),
        );
        let (dropped, exported, failed) = (BySink::default(), BySink::default(), BySink::default());
        dropped
            .get_or_create(&vec![("sink", String::new())])
            .inc_by(self.dropped);
        for (name, e, d, f) in &self.sinks {
            let l = vec![("sink", name.clone())];
            dropped.get_or_create(&l).inc_by(*d);
            exported.get_or_create(&l).inc_by(*e);
            failed.get_or_create(&l).inc_by(*f);
        }
        registry.register(
            "callboard_trace_items_dropped",
            "Trace items dropped (the queue full, sink=\"\"; or a sink's queue full)",
            dropped,
        );
        registry.register(
            "callboard_trace_items_exported",
            "Trace items a sink took",
            exported,
        );
        registry.register(
            "callboard_trace_items_failed",
            "Trace items in batches a sink failed",
            failed,
        );
    }

    /// The counters as Prometheus text (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        self.register(&mut r);
        let mut s = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, &r);
        s
    }
}

impl TraceStats {
    /// A copy of the counters now.
    pub fn snapshot(&self) -> TraceStatsSnapshot {
        TraceStatsSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            sinks: self
                .sinks
                .iter()
                .map(|(n, c)| {
                    (
                        n.clone(),
                        c.exported.load(Ordering::Relaxed),
                        c.dropped.load(Ordering::Relaxed),
                        c.failed.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}
