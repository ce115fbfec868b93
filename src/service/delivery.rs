//! `callboard_frame_delivery_seconds`: how long a frame takes from its publishing on the
//! session bus to the completed write of it to a client's socket, per transport (`ws`,
//! `sse`). Lock-free (atomic buckets, fine below 2 ms), observed in batches by the writers,
//! exported as a Prometheus histogram on `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implied).
pub const BUCKETS_US: [u64; 20] = [
    25, 50, 100, 200, 300, 400, 500, 750, 1_000, 1_250, 1_500, 2_000, 3_000, 5_000, 10_000, 25_000,
    50_000, 100_000, 250_000, 1_000_000,
];

const SLOTS: usize = BUCKETS_US.len() + 1;

/// The bucket of `d`.
fn slot(d: Duration) -> usize {
    let us = d.as_micros().min(u64::MAX as u128) as u64;
    BUCKETS_US.partition_point(|b| *b < us)
}

/// One transport's histogram.
#[derive(Debug)]
pub struct DeliveryHistogram {
    buckets: [AtomicU64; SLOTS],
    sum_ns: AtomicU64,
}

impl Default for DeliveryHistogram {
    fn default() -> Self {
        DeliveryHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl DeliveryHistogram {
    /// Adds what a writer gathered over one write.
    pub fn add(&self, batch: &Batch) {
        if batch.count == 0 {
            return;
        }
        for (i, n) in batch.buckets.iter().enumerate() {
            if *n > 0 {
                self.buckets[i].fetch_add(u64::from(*n), Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add(batch.sum_ns, Ordering::Relaxed);
    }

    /// Frames observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The histogram as it is now, for `GET /metrics`.
    pub fn snapshot(&self) -> DeliverySnapshot {
        let mut buckets = Vec::with_capacity(SLOTS);
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let upper = BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            buckets.push((upper, n));
        }
        DeliverySnapshot {
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
            buckets,
        }
    }
}

/// What one write delivered: kept on the writer's stack, added to the shared histogram once
/// per write (not once per frame).
#[derive(Debug, Default)]
pub struct Batch {
    buckets: [u32; SLOTS],
    sum_ns: u64,
    count: u32,
}

impl Batch {
    /// A frame published at `published`, written at `written`.
    pub fn frame(&mut self, published: Instant, written: Instant) {
        let d = written.saturating_duration_since(published);
        self.buckets[slot(d)] += 1;
        self.sum_ns += d.as_nanos().min(u64::MAX as u128) as u64;
        self.count += 1;
    }

    /// Whether nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A histogram's values at one moment (per-bucket counts; the encoder accumulates them).
#[derive(Debug)]
pub struct DeliverySnapshot {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for DeliverySnapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DeliverySnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `ws` or `sse`.
    pub transport: &'static str,
}

/// The histograms of both transports.
#[derive(Debug, Default)]
pub struct Delivery {
    /// WebSocket writes.
    pub ws: DeliveryHistogram,
    /// SSE writes (observed when the frame's bytes are handed to the HTTP body, which hyper
    /// writes at once: it asks the body for more only when the socket took what it had).
    pub sse: DeliveryHistogram,
}

impl Delivery {
    /// Both histograms, labelled by `transport`, as they are now.
    pub fn snapshot(&self) -> DeliveryFamily {
        DeliveryFamily(vec![
            (TransportLabel { transport: "ws" }, self.ws.snapshot()),
            (TransportLabel { transport: "sse" }, self.sse.snapshot()),
        ])
    }
}

/// The histograms by transport, for `GET /metrics`.
#[derive(Debug)]
pub struct DeliveryFamily(Vec<(TransportLabel, DeliverySnapshot)>);

impl TypedMetric for DeliveryFamily {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DeliveryFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (label, h) in &self.0 {
            h.encode(encoder.encode_family(label)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_land_in_their_buckets_and_are_counted() {
        let h = DeliveryHistogram::default();
        let t0 = Instant::now();
        let mut b = Batch::default();
        for us in [10u64, 25, 26, 1_900, 2_000, 2_001, 5_000_000] {
            b.frame(t0, t0 + Duration::from_micros(us));
        }
        h.add(&b);
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        assert_eq!(h.count(), 7);
        let at = |le: f64| s.buckets.iter().find(|(u, _)| *u == le).map(|x| x.1);
        assert_eq!(at(0.000025), Some(2));
        assert_eq!(at(0.00005), Some(1));
        assert_eq!(at(0.002), Some(2));
        assert_eq!(at(0.003), Some(1));
        assert_eq!(at(f64::INFINITY), Some(1));
        // A write stamped before its publish (clock skew between threads) counts as 0.
        let mut b = Batch::default();
        b.frame(t0 + Duration::from_millis(1), t0);
        h.add(&b);
        assert_eq!(h.snapshot().buckets[0].1, 3);
    }
}
