//! The `console` sink: a readable tree per finished trace, written when the trace ends.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{Sink, SinkError};
use crate::trace::batch::{ExportItem, ItemKind};

/// Most traces held open at once; past it the oldest is printed as it stands.
const MAX_OPEN_TRACES: usize = 10_000;

#[derive(Default)]
struct Pending {
    trace: Option<Value>,
    spans: Vec<Value>,
    seq: u64,
}

/// Prints each trace as a tree once it ends (to stdout, or to any writer).
pub struct ConsoleSink {
    out: Mutex<Box<dyn Write + Send>>,
    open: Mutex<(HashMap<String, Pending>, u64)>,
}

impl Default for ConsoleSink {
    fn default() -> Self {
        Self::stdout()
    }
}

impl ConsoleSink {
    /// Writes to standard output.
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Writes to `w` (a file, a buffer in a test).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            out: Mutex::new(w),
            open: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn emit(&self, p: Pending) {
        let text = render_tree(p.trace.as_ref(), &p.spans);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

fn millis_between(a: Option<&str>, b: Option<&str>) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(a?).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b?).ok()?;
    Some((b - a).num_microseconds()? as f64 / 1000.0)
}

fn describe(span: &Value, details: bool) -> String {
    let d = &span["span_data"];
    let ty = d["type"].as_str().unwrap_or("?");
    let mut s = match ty {
        "agent" => {
            let mut s = format!("agent {}", d["name"].as_str().unwrap_or("?"));
            let list = |k: &str| {
                d[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            let (tools, handoffs) = (list("tools"), list("handoffs"));
            if !tools.is_empty() {
                s.push_str(&format!(" tools=[{tools}]"));
            }
            if !handoffs.is_empty() {
                s.push_str(&format!(" handoffs=[{handoffs}]"));
            }
            s
        }
        "function" => format!("function {}", d["name"].as_str().unwrap_or("?")),
        "handoff" => format!(
            "handoff {} -> {}",
            d["from_agent"].as_str().unwrap_or("?"),
            d["to_agent"].as_str().unwrap_or("?")
        ),
        "guardrail" => format!(
            "guardrail {} triggered={}",
            d["name"].as_str().unwrap_or("?"),
            d["triggered"].as_bool().unwrap_or(false)
        ),
        "response" => format!("response {}", d["response_id"].as_str().unwrap_or("")),
        "generation" => format!("generation {}", d["model"].as_str().unwrap_or("")),
        "custom" => match d["data"]["sdk_span_type"].as_str() {
            Some("turn") => format!(
                "turn {} ({})",
                d["data"]["turn"],
                d["data"]["agent_name"].as_str().unwrap_or("?")
            ),
            Some("task") => format!("task {}", d["data"]["name"].as_str().unwrap_or("")),
            _ => format!("custom {}", d["name"].as_str().unwrap_or("?")),
        },
        other => other.to_owned(),
    };
    if let Some(ms) = millis_between(span["started_at"].as_str(), span["ended_at"].as_str()) {
        s.push_str(&format!("  {ms:.1}ms"));
    }
    if let Some(msg) = span["error"]["message"].as_str() {
        s.push_str(&format!("  ERROR: {msg}"));
        let data = &span["error"]["data"];
        if details && !data.is_null() {
            let mut text = data.to_string();
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("...");
            }
            s.push_str(&format!(" {text}"));
        }
    }
    s
}

/// The tree of one trace as text: a header line, then one line per span, children indented
/// under their parent in start order.
pub fn render_tree(trace: Option<&Value>, spans: &[Value]) -> String {
    render_tree_with(trace, spans, false)
}

/// [`render_tree`], with each error's data after its message when `details`.
pub fn render_tree_with(trace: Option<&Value>, spans: &[Value], details: bool) -> String {
    let mut out = String::new();
    let (id, name) = match trace {
        Some(t) => (
            t["id"].as_str().unwrap_or("?").to_owned(),
            t["workflow_name"].as_str().unwrap_or("").to_owned(),
        ),
        None => (
            spans
                .first()
                .and_then(|s| s["trace_id"].as_str())
                .unwrap_or("?")
                .to_owned(),
            String::new(),
        ),
    };
    out.push_str(&format!("trace {id} \"{name}\""));
    if let Some(g) = trace.and_then(|t| t["group_id"].as_str()) {
        out.push_str(&format!(" group={g}"));
    }
    out.push('\n');
    let ids: std::collections::HashSet<&str> =
        spans.iter().filter_map(|s| s["id"].as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Value>> = HashMap::new();
    for s in spans {
        let parent = s["parent_id"].as_str().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
    }
    fn walk(
        out: &mut String,
        children: &HashMap<Option<&str>, Vec<&Value>>,
        parent: Option<&str>,
        prefix: &str,
        details: bool,
    ) {
        let Some(kids) = children.get(&parent) else {
            return;
        };
        for (i, s) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            out.push_str(prefix);
            out.push_str(if last { "└─ " } else { "├─ " });
            out.push_str(&describe(s, details));
            out.push('\n');
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(out, children, s["id"].as_str(), &next, details);
        }
    }
    walk(&mut out, &children, None, "", details);
    out
}

#[async_trait]
impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        "console"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        let mut done = Vec::new();
        {
            let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let (open, seq) = &mut *g;
            for item in batch {
                match item.kind {
                    ItemKind::Trace => {
                        *seq += 1;
                        let s = *seq;
                        let p = open.entry(item.trace_id.clone()).or_default();
                        p.trace = Some(item.value());
                        p.seq = s;
                    }
                    ItemKind::Span => {
                        open.entry(item.trace_id.clone())
                            .or_default()
                            .spans
                            .push(item.value());
                    }
                    ItemKind::TraceEnd => {
                        if let Some(p) = open.remove(&item.trace_id) {
                            done.push(p);
                        }
                    }
                }
            }
            while open.len() > MAX_OPEN_TRACES {
                let oldest = open
                    .iter()
                    .min_by_key(|(_, p)| p.seq)
                    .map(|(k, _)| k.clone());
                match oldest.and_then(|k| open.remove(&k)) {
                    Some(p) => done.push(p),
                    None => break,
                }
            }
        }
        for p in done {
            self.emit(p);
        }
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), SinkError> {
        let rest: Vec<Pending> = {
            let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<Pending> = g.0.drain().map(|(_, p)| p).collect();
            v.sort_by_key(|p| p.seq);
            v
        };
        for p in rest {
            self.emit(p);
        }
        Ok(())
    }
}
