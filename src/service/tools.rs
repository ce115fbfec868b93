//! Tools defined in the config: `http` tools (POST the arguments as JSON with the trace
//! context headers of [`crate::trace::context`], the body is the output) and `client` tools
//! (sent to the session's clients as `tool.call`, answered by a `tool.result` frame).
//! Failures and timeouts are tool errors the model reads, never a dead run.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::bus::{FrameBody, Topic};
use crate::tool::{Tool, ToolContext, ToolError};

/// The message the model reads when a configured tool fails: the SDK's text plus the cause.
/// A tool that POSTs its arguments as JSON to a URL and returns the response body.
pub struct HttpTool {
    name: String,
    description: String,
    parameters: Value,
    url: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpTool {
    /// A tool POSTing to `url` with one shared (pooled) HTTP client.
    pub fn new(
        name: String,
        description: String,
        parameters: Value,
        url: String,
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        HttpTool {
            name,
            description,
            parameters,
            url,
            timeout,
            client,
        }
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
    fn invoke(
        &self,
        _ctx: ToolContext<()>,
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
            .body(body)
            .timeout(self.timeout);
        // The tool's function span is current here: the service can nest its own spans
        // under it (W3C traceparent, and the SDK ids for the ingest endpoint).
        for (name, value) in crate::trace::context::current_headers() {
            req = req.header(name, value);
        }
        let name = self.name.clone();
        let timeout = self.timeout;
        async move {
            let map_err = |e: reqwest::Error| {
                if e.is_timeout() {
                    ToolError::Timeout {
                        tool: name.clone(),
                        seconds: timeout.as_secs_f64(),
                    }
                } else {
                    ToolError::Failed(format!("the request to the tool failed: {e}"))
                }
            };
            let resp = req.send().await.map_err(map_err)?;
            let status = resp.status();
            let text = resp.text().await.map_err(map_err)?;
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

/// Runs waiting on client-side tool calls: which topic each run publishes on and which calls
/// are waiting for a `tool.result`.
#[derive(Default)]
pub struct ClientCalls {
    runs: DashMap<String, (Arc<str>, Arc<Topic>)>,
    pending: DashMap<(String, String), oneshot::Sender<String>>,
}

impl ClientCalls {
    /// Notes that `run_id` publishes on `topic`.
    pub fn register_run(&self, run_id: Arc<str>, topic: Arc<Topic>) {
        self.runs.insert(run_id.to_string(), (run_id, topic));
    }

    /// Forgets a run and drops its waiting calls.
    pub fn finish_run(&self, run_id: &str) {
        self.runs.remove(run_id);
        self.pending.retain(|(r, _), _| r != run_id);
    }

    /// Answers a waiting call; false when no such call waits.
    pub fn answer(&self, run_id: &str, call_id: &str, output: String) -> bool {
        match self
            .pending
            .remove(&(run_id.to_owned(), call_id.to_owned()))
        {
            Some((_, tx)) => tx.send(output).is_ok(),
            None => false,
        }
    }

    /// Calls waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// A tool run by the session's clients: `tool.call` out, `tool.result` back, with a timeout.
pub struct ClientTool {
    name: String,
    description: String,
    parameters: Value,
    timeout: Duration,
    calls: Arc<ClientCalls>,
}

impl ClientTool {
    /// A client tool answered through `calls`.
    pub fn new(
        name: String,
        description: String,
        parameters: Value,
        timeout: Duration,
        calls: Arc<ClientCalls>,
    ) -> Self {
        ClientTool {
            name,
            description,
            parameters,
            timeout,
            calls,
        }
    }
}

impl Tool<()> for ClientTool {
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
    fn invoke(
        &self,
        ctx: ToolContext<()>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let calls = self.calls.clone();
        let name = self.name.clone();
        let timeout = self.timeout;
        async move {
            let run_id = ctx.run.run_id().to_owned();
            let Some((run_arc, topic)) = calls.runs.get(&run_id).map(|e| e.value().clone()) else {
                return Err(ToolError::Failed(format!(
                    "`{name}` is a client-side tool and this run has no connected clients \
                     (run it through the server's WebSocket hub)"
                )));
            };
            let call_id = ctx.call_id.to_string();
            let key = (run_id.clone(), call_id.clone());
            let (tx, rx) = oneshot::channel();
            calls.pending.insert(key.clone(), tx);
            topic.publish(
                &run_arc,
                FrameBody::ToolCall {
                    call_id,
                    name: name.clone(),
                    arguments,
                },
            );
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(_)) => Err(ToolError::Failed(
                    "the run ended before a client answered".into(),
                )),
                Err(_) => {
                    calls.pending.remove(&key);
                    Err(ToolError::Timeout {
                        tool: name,
                        seconds: timeout.as_secs_f64(),
                    })
                }
            }
        }
        .boxed()
    }
}
