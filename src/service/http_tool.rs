//! `http` tools: POST the model's arguments as JSON to a URL; the response body is the output.
//!
//! A tool that takes a while may answer `Content-Type: application/x-ndjson` and stream one
//! JSON object per line: progress lines first, then the result, each becoming a
//! `tool.progress` frame as it arrives:
//!
//! ```text
//! {"progress": 1, "total": 3, "message": "fetching"}
//! {"progress": 2, "total": 3}
//! {"output": "the result (a string, or any JSON, given to the model as its text)"}
//! ```
//!
//! or `{"error": "what went wrong"}` instead of `output` (a tool error the model reads).
//! `total` and `message` are optional. A stream that ends without `output` or `error` is a
//! tool error. Lines are at most [`MAX_LINE`] bytes, the whole answer [`MAX_BODY`].

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;

use crate::tool::{Tool, ToolContext, ToolError, ToolPolicy};

/// Longest NDJSON line accepted.
pub const MAX_LINE: usize = 1024 * 1024;
/// Largest answer accepted (plain or NDJSON).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A tool that POSTs its arguments as JSON to a URL and returns the response body.
pub struct HttpTool {
    name: String,
    description: String,
    parameters: Value,
    url: String,
    policy: ToolPolicy,
    client: reqwest::Client,
}

impl HttpTool {
    /// A tool POSTing to `url` with one shared (pooled) HTTP client; `policy` bounds its
    /// calls (the engine applies the timeout).
    pub fn new(
        name: String,
        description: String,
        parameters: Value,
        url: String,
        policy: ToolPolicy,
        client: reqwest::Client,
    ) -> Self {
        HttpTool {
            name,
            description,
            parameters,
            url,
            policy,
            client,
        }
    }
}

/// One line of an NDJSON answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    total: Option<f64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

/// What one line says: progress reported (`None`), or the end.
fn take_line<C>(ctx: &ToolContext<C>, line: &[u8]) -> Option<Result<String, ToolError>> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let l: Line = match serde_json::from_str(text) {
        Ok(l) => l,
        Err(e) => {
            return Some(Err(ToolError::Failed(format!(
                "the tool's NDJSON answer has a bad line ({e})"
            ))))
        }
    };
    if let Some(err) = l.error {
        return Some(Err(ToolError::Failed(err)));
    }
    if let Some(out) = l.output {
        return Some(Ok(match out {
            Value::String(s) => s,
            other => other.to_string(),
        }));
    }
    match l.progress {
        Some(p) => {
            ctx.progress(p, l.total, l.message);
            None
        }
        None => Some(Err(ToolError::Failed(
            "the tool's NDJSON answer has a line with neither progress, output nor error".into(),
        ))),
    }
}

/// Reads an NDJSON answer, reporting progress lines as they come.
async fn read_ndjson<C>(
    ctx: &ToolContext<C>,
    resp: reqwest::Response,
) -> Result<String, ToolError> {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ToolError::Failed(format!("reading the tool's answer failed: {e}")))?;
        total += chunk.len();
        if total > MAX_BODY {
            return Err(ToolError::Failed(format!(
                "the tool's answer is larger than {MAX_BODY} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(nl + 1);
            let line = std::mem::replace(&mut buf, rest);
            if let Some(end) = take_line(ctx, &line) {
                return end;
            }
        }
        if buf.len() > MAX_LINE {
            return Err(ToolError::Failed(format!(
                "a line of the tool's NDJSON answer is longer than {MAX_LINE} bytes"
            )));
        }
    }
    match take_line(ctx, &buf) {
        Some(end) => end,
        None => Err(ToolError::Failed(
            "the tool's NDJSON answer ended without an output or error line".into(),
        )),
    }
}

impl Tool<()> for HttpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> &Value {
        &self.parameters
    }
    fn strict(&self) -> bool {
        false
    }
    fn policy(&self) -> Option<&ToolPolicy> {
        Some(&self.policy)
    }
    fn invoke(
        &self,
        ctx: ToolContext<()>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let body = if arguments.trim().is_empty() {
            "{}".to_owned()
        } else {
            arguments
        };
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header(
                "accept",
                "application/json, application/x-ndjson, text/plain",
            )
            .body(body);
        // The tool's function span is current here: the service can nest its own spans
        // under it (W3C traceparent, and the SDK ids for the ingest endpoint).
        for (name, value) in crate::trace::context::current_headers() {
            req = req.header(name, value);
        }
        async move {
            let failed = |e: reqwest::Error| {
                ToolError::Failed(format!("the request to the tool failed: {e}"))
            };
            let resp = req.send().await.map_err(failed)?;
            let status = resp.status();
            let ndjson = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-ndjson"));
            if status.is_success() && ndjson {
                return read_ndjson(&ctx, resp).await;
            }
            if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
                return Err(ToolError::Failed(format!(
                    "the tool's answer is larger than {MAX_BODY} bytes"
                )));
            }
            let text = resp.text().await.map_err(failed)?;
            if status.is_success() {
                Ok(text)
            } else {
                let snippet: String = text.chars().take(500).collect();
                Err(ToolError::Failed(format!("HTTP {status}: {snippet}")))
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::RunContext;
    use std::sync::Arc;

    #[test]
    fn ndjson_lines_are_progress_then_an_end() {
        let ctx: ToolContext<()> =
            ToolContext::new(RunContext::new(Arc::new(()), "r".into()), "t", "c");
        assert!(take_line(&ctx, br#"{"progress": 1, "total": 2}"#).is_none());
        assert!(take_line(&ctx, b"  \n").is_none());
        assert_eq!(
            take_line(&ctx, br#"{"output": "done"}"#),
            Some(Ok("done".into()))
        );
        assert_eq!(
            take_line(&ctx, br#"{"output": {"n": 1}}"#),
            Some(Ok(r#"{"n":1}"#.into()))
        );
        assert_eq!(
            take_line(&ctx, br#"{"error": "no"}"#),
            Some(Err(ToolError::Failed("no".into())))
        );
        assert!(matches!(take_line(&ctx, br#"{"what": 1}"#), Some(Err(_))));
        assert!(matches!(take_line(&ctx, b"{nope"), Some(Err(_))));
    }
}
