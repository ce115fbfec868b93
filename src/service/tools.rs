//! `client` tools defined in the config: sent to the session's clients as `tool.call`,
//! answered by a `tool.result` frame (`http` tools: [`http_tool`](super::http_tool)).
//! Failures and timeouts are tool errors the model reads, never a dead run; the engine
//! applies the tool's timeout.

use std::sync::Arc;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::oneshot;

pub use super::http_tool::HttpTool;
use crate::bus::{FrameBody, Topic};
use crate::tool::{Tool, ToolContext, ToolError, ToolPolicy};

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
    policy: ToolPolicy,
    calls: Arc<ClientCalls>,
}

impl ClientTool {
    /// A client tool answered through `calls`; `policy` bounds its calls (the engine applies
    /// the timeout).
    pub fn new(
        name: String,
        description: String,
        parameters: Value,
        policy: ToolPolicy,
        calls: Arc<ClientCalls>,
    ) -> Self {
        ClientTool {
            name,
            description,
            parameters,
            policy,
            calls,
        }
    }
}

/// Forgets a waiting call when its caller stops waiting (answered, timed out, cancelled).
struct Waiting<'a> {
    calls: &'a ClientCalls,
    key: (String, String),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.calls.pending.remove(&self.key);
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
    fn policy(&self) -> Option<&ToolPolicy> {
        Some(&self.policy)
    }
    fn invoke(
        &self,
        ctx: ToolContext<()>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        let calls = self.calls.clone();
        let name = self.name.clone();
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
            let _waiting = Waiting { calls: &calls, key };
            topic.publish(
                &run_arc,
                FrameBody::ToolCall {
                    call_id,
                    name: name.clone(),
                    arguments,
                },
            );
            rx.await
                .map_err(|_| ToolError::Failed("the run ended before a client answered".into()))
        }
        .boxed()
    }
}
