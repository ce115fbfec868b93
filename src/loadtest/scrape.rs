//! What the server says of a load, from its `GET /metrics` read before and after it: its own
//! delivery latency (`callboard_frame_delivery_seconds`, publish to the completed socket
//! write; the quantiles of what was observed in between) and its session store writer's
//! transactions (how many writes each carried).

use std::time::Duration;

use crate::loadtest::client::Target;

/// One transport's histogram as scraped: cumulative counts by upper bound (seconds), the
/// last one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

/// The metric's bucket series.
const METRIC: &str = "callboard_frame_delivery_seconds_bucket";

impl Buckets {
    /// The buckets of `transport` (`ws` or `sse`) in a Prometheus text exposition; empty when
    /// the server does not export the metric (an older build).
    pub fn parse(text: &str, transport: &str) -> Buckets {
        let want = format!("transport=\"{transport}\"");
        let mut v: Vec<(f64, u64)> = text
            .lines()
            .filter(|l| l.starts_with(METRIC) && l.contains(&want))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let n = l.rsplit(' ').next()?.trim().parse::<f64>().ok()?;
                Some((le, n as u64))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(v)
    }

    /// Frames observed.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// What was observed after `before` (same buckets).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, n)| {
                    let b = before.0.iter().find(|x| x.0 == *le).map_or(0, |x| x.1);
                    (*le, n.saturating_sub(b))
                })
                .collect(),
        )
    }

    /// The `q` quantile (0..1) in seconds, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` without observations. A quantile in the
    /// `+Inf` bucket is reported as the last finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut lower = (0.0, 0u64);
        for (le, n) in &self.0 {
            if *n as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let inside = (*n - lower.1) as f64;
                let frac = if inside > 0.0 {
                    (rank - lower.1 as f64) / inside
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac.clamp(0.0, 1.0));
            }
            lower = (*le, *n);
        }
        Some(lower.0)
    }
}

/// The server's figures at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerMetrics {
    /// The WebSocket delivery histogram.
    pub ws: Buckets,
    /// `callboard_session_store_commits` (0 when the store exports none: memory, PostgreSQL).
    pub store_commits: u64,
    /// `callboard_session_store_writes`.
    pub store_writes: u64,
}

impl ServerMetrics {
    /// The figures in a Prometheus text exposition.
    pub fn parse(text: &str) -> ServerMetrics {
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(name)?;
                    let rest = rest.strip_prefix("_total").unwrap_or(rest);
                    rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
                })
                .map_or(0, |v| v as u64)
        };
        ServerMetrics {
            ws: Buckets::parse(text, "ws"),
            store_commits: counter("callboard_session_store_commits"),
            store_writes: counter("callboard_session_store_writes"),
        }
    }

    /// What happened after `before`.
    pub fn since(&self, before: &ServerMetrics) -> ServerMetrics {
        ServerMetrics {
            ws: self.ws.since(&before.ws),
            store_commits: self.store_commits.saturating_sub(before.store_commits),
            store_writes: self.store_writes.saturating_sub(before.store_writes),
        }
    }
}

/// Puts the server-side figures into a scenario: delivery frames observed and p50 / p99 in
/// microseconds; the store's transactions and writes per transaction.
pub fn add_figures(sc: &mut crate::loadtest::report::Scenario, m: &ServerMetrics) {
    if m.store_commits > 0 {
        sc.figures
            .insert("server_store_commits".into(), m.store_commits as f64);
        sc.figures.insert(
            "server_store_writes_per_commit".into(),
            m.store_writes as f64 / m.store_commits as f64,
        );
    }
    let d = &m.ws;
    if d.count() == 0 {
        return;
    }
    sc.figures
        .insert("server_delivery_frames".into(), d.count() as f64);
    for (name, q) in [
        ("server_delivery_p50_us", 0.5),
        ("server_delivery_p99_us", 0.99),
    ] {
        if let Some(v) = d.quantile(q) {
            sc.figures.insert(name.into(), v * 1e6);
        }
    }
}

/// The server's figures from `GET /metrics` (with the target's key, which must be an admin
/// key when the server has keys).
pub async fn server(target: &Target) -> Result<ServerMetrics, String> {
    let url = metrics_url(&target.url)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.get(&url);
    if let Some(k) = &target.key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!(
            "GET {url}: {} (the server's delivery latency needs an admin key)",
            r.status()
        ));
    }
    let text = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    Ok(ServerMetrics::parse(&text))
}

/// `http://host:port/metrics` from the WebSocket URL `ws://host:port/...`.
fn metrics_url(ws: &str) -> Result<String, String> {
    let rest = ws
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{ws:?} is not a ws:// URL"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(format!("http://{host}/metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE callboard_frame_delivery_seconds histogram\n\
callboard_frame_delivery_seconds_sum{transport=\"ws\"} 0.5\n\
callboard_frame_delivery_seconds_count{transport=\"ws\"} 100\n\
callboard_frame_delivery_seconds_bucket{le=\"0.001\",transport=\"ws\"} 50\n\
callboard_frame_delivery_seconds_bucket{le=\"0.002\",transport=\"ws\"} 90\n\
callboard_frame_delivery_seconds_bucket{le=\"+Inf\",transport=\"ws\"} 100\n\
callboard_frame_delivery_seconds_bucket{le=\"0.001\",transport=\"sse\"} 3\n\
callboard_frame_delivery_seconds_bucket{le=\"+Inf\",transport=\"sse\"} 3\n";

    #[test]
    fn buckets_parse_subtract_and_give_quantiles() {
        let b = Buckets::parse(TEXT, "ws");
        assert_eq!(b.count(), 100);
        assert_eq!(Buckets::parse(TEXT, "sse").count(), 3);
        let q = |x: f64| b.quantile(x).unwrap();
        assert!((q(0.5) - 0.001).abs() < 1e-12);
        assert!((q(0.25) - 0.0005).abs() < 1e-12);
        assert!((q(0.7) - 0.0015).abs() < 1e-12);
        // In the +Inf bucket: the last finite bound.
        assert!((q(0.99) - 0.002).abs() < 1e-12);
        let before = Buckets(vec![(0.001, 40), (0.002, 40), (f64::INFINITY, 40)]);
        let d = b.since(&before);
        assert_eq!(d.count(), 60);
        assert_eq!(d.0[0], (0.001, 10));
        assert_eq!(Buckets::default().quantile(0.5), None);
        let m = ServerMetrics::parse(&format!(
            "{TEXT}callboard_session_store_commits_total 10\ncallboard_session_store_writes_total 45\n"
        ));
        assert_eq!(
            (m.store_commits, m.store_writes, m.ws.count()),
            (10, 45, 100)
        );
        let d = m.since(&ServerMetrics {
            store_commits: 4,
            store_writes: 15,
            ..Default::default()
        });
        assert_eq!((d.store_commits, d.store_writes), (6, 30));
        assert_eq!(ServerMetrics::parse(TEXT).store_commits, 0);
        assert_eq!(
            metrics_url("ws://127.0.0.1:7/v1/ws").unwrap(),
            "http://127.0.0.1:7/metrics"
        );
    }
}
