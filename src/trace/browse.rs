//! Stored traces for the terminal (`callboard traces list` and `callboard traces show`):
//! read from a trace store file or from a running server's HTTP API, and printed as a table
//! or as an indented span tree with durations.

use std::path::PathBuf;

use serde_json::Value;

use super::sinks::console::render_tree_with;
use super::sinks::store::{TraceQuery, TraceStore};

/// Where traces are read from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A trace store file (`[tracing.store] path`). Read-only use; a server may have it
    /// open at the same time (SQLite WAL).
    File(PathBuf),
    /// A running server: `GET {url}/v1/traces...` with `key` as the bearer token.
    Server {
        /// Its base URL, e.g. `http://127.0.0.1:7700`.
        url: String,
        /// An API key (its tenant's traces are the ones shown).
        key: Option<String>,
    },
}

/// Why traces could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The store file could not be opened or read.
    #[error("cannot read the trace store {path}: {message}; check the path ([tracing.store] path in the config)")]
    Store {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The server could not be reached or answered with an error.
    #[error("{url}: {message}")]
    Server {
        /// What was asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// No such trace (or another tenant's).
    #[error("no trace {0}; `callboard traces list` shows the ones there are")]
    NotFound(String),
}

/// Filters of `callboard traces list`.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Traces of this session (group id).
    pub session: Option<String>,
    /// Only traces with errors.
    pub errors: bool,
    /// Traces in which this agent ran.
    pub agent: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

fn http_client() -> Result<reqwest::Client, BrowseError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| BrowseError::Server {
            url: String::new(),
            message: e.to_string(),
        })
}

async fn get_json(url: &str, key: Option<&str>) -> Result<Option<Value>, BrowseError> {
    let err = |m: String| BrowseError::Server {
        url: url.to_owned(),
        message: m,
    };
    let mut req = http_client()?.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req
        .send()
        .await
        .map_err(|e| err(format!("{e}; is the server running there?")))?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| err(e.to_string()))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        let msg = body["error"]["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_owned);
        return Err(err(msg));
    }
    Ok(Some(body))
}

fn open(path: &PathBuf) -> Result<TraceStore, BrowseError> {
    let store_err = |m: String| BrowseError::Store {
        path: path.display().to_string(),
        message: m,
    };
    if !path.exists() {
        return Err(store_err("no such file".into()));
    }
    TraceStore::open(path).map_err(|e| store_err(e.to_string()))
}

/// The trace listing (newest first) as `GET /v1/traces` answers it: `id`, `workflow_name`,
/// `group_id`, `created_at`, `ended_at`, `span_count`, `error_count`, `agents`.
pub async fn list(source: &Source, f: &ListFilter) -> Result<Vec<Value>, BrowseError> {
    let limit = f.limit.clamp(1, 1000);
    match source {
        Source::File(path) => {
            let store = open(path)?;
            let q = TraceQuery {
                group_id: f.session.clone(),
                agent: f.agent.clone(),
                errors_only: f.errors,
                limit: Some(limit),
                ..Default::default()
            };
            let list = store.list_traces(&q).map_err(|e| BrowseError::Store {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            Ok(list
                .into_iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect())
        }
        Source::Server { url, key } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = &f.session {
                q.push(("session_id", s.clone()));
            }
            if let Some(a) = &f.agent {
                q.push(("agent", a.clone()));
            }
            if f.errors {
                q.push(("error", "true".into()));
            }
            let query: String = q
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let url = format!("{}/v1/traces?{query}", url.trim_end_matches('/'));
            let body = get_json(&url, key.as_deref()).await?.unwrap_or(Value::Null);
            Ok(body["traces"].as_array().cloned().unwrap_or_default())
        }
    }
}

/// A trace export and its spans.
pub async fn show(source: &Source, id: &str) -> Result<(Value, Vec<Value>), BrowseError> {
    match source {
        Source::File(path) => {
            let store = open(path)?;
            store
                .get_trace(id, None)
                .map_err(|e| BrowseError::Store {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
                .ok_or_else(|| BrowseError::NotFound(id.to_owned()))
        }
        Source::Server { url, key } => {
            let url = format!("{}/v1/traces/{}", url.trim_end_matches('/'), encode(id));
            let body = get_json(&url, key.as_deref())
                .await?
                .ok_or_else(|| BrowseError::NotFound(id.to_owned()))?;
            let spans = body["spans"].as_array().cloned().unwrap_or_default();
            Ok((body["trace"].clone(), spans))
        }
    }
}

/// Percent-encodes a query or path value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn duration(t: &Value) -> String {
    let at = |k: &str| {
        t[k].as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    match (at("created_at"), at("ended_at")) {
        (Some(a), Some(b)) => {
            let ms = (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            if ms >= 1000.0 {
                format!("{:.2}s", ms / 1000.0)
            } else {
                format!("{ms:.1}ms")
            }
        }
        (Some(_), None) => "running".to_owned(),
        _ => String::new(),
    }
}

/// The listing as a table, one trace a line.
pub fn render_list(traces: &[Value]) -> String {
    if traces.is_empty() {
        return "no traces\n".to_owned();
    }
    let rows: Vec<[String; 7]> = traces
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("").to_owned();
            let agents = t["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let started = s("created_at").chars().take(19).collect::<String>();
            let errors = t["error_count"].as_u64().unwrap_or(0);
            [
                started.replace('T', " "),
                s("id"),
                s("workflow_name"),
                agents,
                t["span_count"].as_u64().unwrap_or(0).to_string(),
                if errors > 0 {
                    format!("{errors} errors")
                } else {
                    String::new()
                },
                duration(t),
            ]
        })
        .collect();
    let head = [
        "started", "trace", "workflow", "agents", "spans", "errors", "took",
    ];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..7).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A trace as an indented span tree with durations, each error with its data.
pub fn render_trace(trace: &Value, spans: &[Value]) -> String {
    render_tree_with((!trace.is_null()).then_some(trace), spans, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_and_trees_read_well() {
        let t = json!({"id": "trace_1", "workflow_name": "W", "agents": ["A", "B"],
            "created_at": "2026-01-01T00:00:00.000000+00:00",
            "ended_at": "2026-01-01T00:00:01.500000+00:00", "span_count": 4, "error_count": 1});
        let running = json!({"id": "trace_2", "workflow_name": "W",
            "created_at": "2026-01-01T00:00:02.000000+00:00", "ended_at": null});
        let text = render_list(&[t, running]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("started"), "{text}");
        assert!(
            lines[1].contains("trace_1") && lines[1].contains("A,B"),
            "{text}"
        );
        assert!(
            lines[1].contains("1 errors") && lines[1].ends_with("1.50s"),
            "{text}"
        );
        assert!(lines[2].ends_with("running"), "{text}");
        assert_eq!(render_list(&[]), "no traces\n");
        let spans = vec![
            json!({"id":"span_a","parent_id":null,"started_at":"2026-01-01T00:00:00+00:00","ended_at":"2026-01-01T00:00:01+00:00","span_data":{"type":"agent","name":"A"},"error":{"message":"Max turns exceeded","data":{"max_turns":5}}}),
            json!({"id":"span_b","parent_id":"span_a","started_at":"2026-01-01T00:00:00.100+00:00","ended_at":"2026-01-01T00:00:00.200+00:00","span_data":{"type":"function","name":"f"},"error":null}),
        ];
        let tree = render_trace(&json!({"id":"trace_1","workflow_name":"W"}), &spans);
        assert!(
            tree.contains("agent A  1000.0ms  ERROR: Max turns exceeded {\"max_turns\":5}"),
            "{tree}"
        );
        assert!(tree.contains("   └─ function f  100.0ms"), "{tree}");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
