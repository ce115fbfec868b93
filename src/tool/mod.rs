//! Function tools: async Rust functions the model can call, with a strict JSON schema derived
//! from the argument type, and the SDK's error handling (a failing or panicking tool becomes
//! a message to the model, never a dead run). Also what every tool may have: a timeout with
//! the SDK's `timeout_behavior`, a concurrency limit, progress reports, and tool sources
//! (MCP servers) that offer tools listed at run time.

mod policy;

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use policy::{timeout_message, NeedsApproval, ToolPolicy, ToolTimeoutBehavior};

use futures::future::BoxFuture;
use futures::FutureExt;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::context::RunContext;

/// The message the model receives when a tool fails, as SDK 0.24 sends it.
pub const DEFAULT_TOOL_ERROR_MESSAGE: &str =
    "An error occurred while running the tool. Please try again.";

/// One progress report of a running tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolProgress {
    /// How far along (any unit; with `total`, out of `total`).
    pub progress: f64,
    /// The total, when known.
    pub total: Option<f64>,
    /// A line for people.
    pub message: Option<String>,
}

/// Where a tool call's progress and nested runs go: the engine gives each call one.
/// Implemented by the engine; tools use it through [`ToolContext`].
pub trait CallScope: Send + Sync + 'static {
    /// Publishes a progress report of call `call_id` of tool `tool`.
    fn progress(&self, call_id: &Arc<str>, tool: &Arc<str>, report: ToolProgress);
    /// The engine's own state behind the scope (agent tools start nested runs from it).
    fn as_any(&self) -> &dyn Any;
}

/// What a tool call knows: the run context, the tool's name and the call id.
pub struct ToolContext<C> {
    /// The run context.
    pub run: RunContext<C>,
    /// The tool's name.
    pub tool_name: Arc<str>,
    /// The model's call id.
    pub call_id: Arc<str>,
    /// Where progress goes; none when the context was made outside a run.
    pub(crate) scope: Option<Arc<dyn CallScope>>,
}

impl<C> Clone for ToolContext<C> {
    fn clone(&self) -> Self {
        ToolContext {
            run: self.run.clone(),
            tool_name: self.tool_name.clone(),
            call_id: self.call_id.clone(),
            scope: self.scope.clone(),
        }
    }
}

impl<C> ToolContext<C> {
    /// A context for calling a tool outside a run (tests, direct calls): progress reports
    /// go nowhere and agent tools cannot start nested runs from it.
    pub fn new(
        run: RunContext<C>,
        tool_name: impl Into<Arc<str>>,
        call_id: impl Into<Arc<str>>,
    ) -> Self {
        ToolContext {
            run,
            tool_name: tool_name.into(),
            call_id: call_id.into(),
            scope: None,
        }
    }

    /// Reports progress of this call: subscribers get a `tool.progress` frame
    /// (`progress`, `total`, `message`) at once.
    ///
    /// ```
    /// # use callboard::{FunctionTool, ToolContext};
    /// # #[derive(serde::Deserialize, schemars::JsonSchema)] struct Args { n: u32 }
    /// let t: FunctionTool<()> = FunctionTool::new("count", "Counts.", |ctx: ToolContext<()>, a: Args| async move {
    ///     for i in 1..=a.n {
    ///         ctx.progress(i as f64, Some(a.n as f64), Some(format!("step {i}")));
    ///     }
    ///     Ok::<_, String>("done")
    /// });
    /// ```
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        if let Some(s) = &self.scope {
            s.progress(
                &self.call_id,
                &self.tool_name,
                ToolProgress {
                    progress,
                    total,
                    message,
                },
            );
        }
    }

    /// The engine's scope of this call, when called inside a run.
    pub(crate) fn scope(&self) -> Option<&Arc<dyn CallScope>> {
        self.scope.as_ref()
    }
}

impl<C> std::ops::Deref for ToolContext<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.run.context()
    }
}

/// Why a tool call failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// The arguments were not valid JSON for the tool's argument type.
    #[error("Invalid JSON input for tool {tool}: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What the parser said.
        message: String,
    },
    /// The tool returned an error.
    #[error("{0}")]
    Failed(String),
    /// The tool panicked.
    #[error("the tool panicked: {0}")]
    Panicked(String),
    /// The tool took too long.
    #[error("{}", timeout_message(tool, *seconds))]
    Timeout {
        /// The tool.
        tool: String,
        /// The limit.
        seconds: f64,
    },
}

/// A tool the model can call. Implement it for tools that are not plain functions (the
/// server's HTTP and client tools do).
pub trait Tool<C>: Send + Sync + 'static {
    /// The tool's name as the model sees it.
    fn name(&self) -> &str;
    /// What the tool does.
    fn description(&self) -> &str;
    /// JSON schema of the arguments.
    fn parameters(&self) -> &Value;
    /// Whether the schema is strict.
    fn strict(&self) -> bool {
        true
    }
    /// Runs the tool with the model's arguments (a JSON string).
    fn invoke(
        &self,
        ctx: ToolContext<C>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>>;
    /// The message the model receives when the tool fails; the SDK's default unless replaced.
    fn error_message(&self, _ctx: &ToolContext<C>, _error: &ToolError) -> String {
        DEFAULT_TOOL_ERROR_MESSAGE.to_owned()
    }
    /// Timeout and concurrency limit of the tool's calls (none by default).
    fn policy(&self) -> Option<&ToolPolicy> {
        None
    }
    /// The MCP server the tool comes from, for the function span's `mcp_data`.
    fn mcp_server(&self) -> Option<&str> {
        None
    }
}

/// Tools as a source lists them.
pub type ToolList<C> = Vec<Arc<dyn Tool<C>>>;

/// Tools an agent gets at run time from somewhere else (an MCP server): listed at each turn,
/// as the SDK lists an agent's MCP servers' tools.
pub trait ToolSource<C>: Send + Sync + 'static {
    /// The source's name (the MCP server's name).
    fn name(&self) -> &str;
    /// The tools on offer now. A source that cannot list its tools says why; the run goes
    /// on without them.
    fn list_tools(&self) -> BoxFuture<'_, Result<ToolList<C>, ToolError>>;
}

type InvokeFn<C> =
    dyn Fn(ToolContext<C>, String) -> BoxFuture<'static, Result<String, ToolError>> + Send + Sync;
type ErrorFn<C> = dyn Fn(&ToolContext<C>, &ToolError) -> String + Send + Sync;

/// A tool made from an async function (the SDK's `@function_tool`).
pub struct FunctionTool<C> {
    name: String,
    description: String,
    parameters: Value,
    strict: bool,
    invoke: Arc<InvokeFn<C>>,
    on_error: Option<Arc<ErrorFn<C>>>,
    policy: Option<ToolPolicy>,
}

impl<C: Send + Sync + 'static> FunctionTool<C> {
    /// A tool named `name` running `f(ctx, args)`; the argument type's JSON schema (made
    /// strict) is what the model sees. The output is given to the model as text.
    pub fn new<A, F, Fut, O, E>(
        name: impl Into<String>,
        description: impl Into<String>,
        f: F,
    ) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(ToolContext<C>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: Display,
        E: Display,
    {
        let name = name.into();
        let tool_name = name.clone();
        let f = Arc::new(f);
        let invoke = move |ctx: ToolContext<C>,
                           args: String|
              -> BoxFuture<'static, Result<String, ToolError>> {
            let args = if args.trim().is_empty() {
                "{}".to_owned()
            } else {
                args
            };
            match serde_json::from_str::<A>(&args) {
                Err(e) => {
                    let err = ToolError::InvalidArguments {
                        tool: tool_name.clone(),
                        message: e.to_string(),
                    };
                    async move { Err(err) }.boxed()
                }
                Ok(a) => {
                    let fut = f(ctx, a);
                    async move {
                        fut.await
                            .map(|o| o.to_string())
                            .map_err(|e| ToolError::Failed(e.to_string()))
                    }
                    .boxed()
                }
            }
        };
        FunctionTool {
            name,
            description: description.into(),
            parameters: strict_schema_for::<A>(),
            strict: true,
            invoke: Arc::new(invoke),
            on_error: None,
            policy: None,
        }
    }

    /// A tool with a hand-written JSON schema whose function receives the raw arguments.
    pub fn from_json_schema<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        strict: bool,
        f: F,
    ) -> Self
    where
        F: Fn(ToolContext<C>, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, ToolError>> + Send + 'static,
    {
        FunctionTool {
            name: name.into(),
            description: description.into(),
            parameters: if strict {
                ensure_strict(parameters)
            } else {
                parameters
            },
            strict,
            invoke: Arc::new(move |ctx, args| f(ctx, args).boxed()),
            on_error: None,
            policy: None,
        }
    }

    /// Replaces the message the model gets when this tool fails (the SDK's
    /// `failure_error_function`).
    pub fn with_error_message(
        mut self,
        f: impl Fn(&ToolContext<C>, &ToolError) -> String + Send + Sync + 'static,
    ) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Turns strict schema mode off (the model may send arguments outside the schema).
    pub fn non_strict(mut self) -> Self {
        self.strict = false;
        self
    }

    /// A timeout for each call (the SDK's `timeout_seconds` and `timeout_behavior`).
    pub fn timeout(mut self, timeout: Duration, behavior: ToolTimeoutBehavior) -> Self {
        let p = self.policy.take().unwrap_or_default();
        self.policy = Some(ToolPolicy {
            timeout: Some(timeout),
            timeout_behavior: behavior,
            ..p
        });
        self
    }

    /// At most `n` calls of this tool at once, over all runs that use it; more wait.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.policy = Some(self.policy.take().unwrap_or_default().max_concurrency(n));
        self
    }

    /// Every call waits for a person's approval first (the SDK's `needs_approval=True`):
    /// the run pauses with the call in `interruptions` until it is approved or rejected.
    pub fn needs_approval(mut self, yes: bool) -> Self {
        self.policy = Some(self.policy.take().unwrap_or_default().needs_approval(yes));
        self
    }

    /// Calls whose parsed arguments `predicate` picks wait for approval (the SDK's
    /// `needs_approval` callable); arguments that are not a JSON object always do.
    pub fn needs_approval_when(
        mut self,
        predicate: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(
            self.policy
                .take()
                .unwrap_or_default()
                .needs_approval_when(predicate),
        );
        self
    }

    /// A call no one decided on within `timeout` is rejected (the model reads the SDK's
    /// rejection message).
    pub fn approval_timeout(mut self, timeout: Duration) -> Self {
        self.policy = Some(
            self.policy
                .take()
                .unwrap_or_default()
                .approval_timeout(timeout),
        );
        self
    }

    /// Running a call twice does no harm: a run whose process died while this tool ran
    /// runs it again on restart instead of ending `interrupted`.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.policy = Some(self.policy.take().unwrap_or_default().idempotent(yes));
        self
    }
}

impl<C: Send + Sync + 'static> Tool<C> for FunctionTool<C> {
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
        self.strict
    }
    fn invoke(
        &self,
        ctx: ToolContext<C>,
        arguments: String,
    ) -> BoxFuture<'static, Result<String, ToolError>> {
        (self.invoke)(ctx, arguments)
    }
    fn error_message(&self, ctx: &ToolContext<C>, error: &ToolError) -> String {
        match &self.on_error {
            Some(f) => f(ctx, error),
            None => DEFAULT_TOOL_ERROR_MESSAGE.to_owned(),
        }
    }
    fn policy(&self) -> Option<&ToolPolicy> {
        self.policy.as_ref()
    }
}

/// The JSON schema of `T`, made strict (every object closed, every property required).
pub fn strict_schema_for<T: JsonSchema>() -> Value {
    let schema = schemars::schema_for!(T);
    ensure_strict(schema.to_value())
}

/// String formats the OpenAI strict mode accepts; others (`uint32`, `double`...) are dropped.
const ALLOWED_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

/// Makes a schema strict in the SDK's way: objects get `additionalProperties: false` and all
/// their properties required; `$schema` and the root `title` go; unsupported formats go.
pub fn ensure_strict(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        if o.is_empty() {
            o.insert("type".into(), "object".into());
        }
    }
    strictify(&mut schema);
    schema
}

fn strictify(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(f)) = o.get("format") {
                if !ALLOWED_FORMATS.contains(&f.as_str()) {
                    o.remove("format");
                }
            }
            let is_object = o.get("type").and_then(Value::as_str) == Some("object")
                || o.contains_key("properties");
            if is_object {
                o.insert("additionalProperties".into(), Value::Bool(false));
                let props: Vec<Value> = o
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(|k| Value::String(k.clone())).collect())
                    .unwrap_or_default();
                if !o.contains_key("properties") {
                    o.insert("properties".into(), Value::Object(Map::new()));
                }
                o.insert("required".into(), Value::Array(props));
            }
            for (_, child) in o.iter_mut() {
                strictify(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strictify),
        _ => {}
    }
}

/// Runs a tool, turning a panic into [`ToolError::Panicked`].
pub(crate) async fn invoke_caught<C: 'static>(
    tool: &dyn Tool<C>,
    ctx: ToolContext<C>,
    arguments: String,
) -> Result<String, ToolError> {
    let fut = std::panic::AssertUnwindSafe(async move { tool.invoke(ctx, arguments).await });
    match fut.catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ToolError::Panicked(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Args {
        city: String,
        days: Option<u32>,
        inner: Inner,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        x: f64,
    }

    #[test]
    fn derived_schemas_are_strict() {
        let s = strict_schema_for::<Args>();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        let req: Vec<_> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(req.contains(&"city") && req.contains(&"days") && req.contains(&"inner"));
        assert!(s.get("$schema").is_none());
        assert!(s.to_string().find("uint32").is_none());
        let inner = &s["$defs"]["Inner"];
        assert_eq!(inner["additionalProperties"], false);
    }

    #[test]
    fn empty_schema_becomes_empty_object() {
        let s = ensure_strict(serde_json::json!({}));
        assert_eq!(
            s,
            serde_json::json!({"type":"object","additionalProperties":false,"properties":{},"required":[]})
        );
    }

    #[tokio::test]
    async fn bad_arguments_and_panics_are_tool_errors() {
        let t: FunctionTool<()> = FunctionTool::new("w", "d", |_ctx, a: Args| async move {
            if a.city == "boom" {
                panic!("kaboom");
            }
            Ok::<_, String>(a.city)
        });
        let ctx = ToolContext::new(RunContext::new(Arc::new(()), "run_1".into()), "w", "c");
        let r = invoke_caught(&t, ctx.clone(), "{nope".into()).await;
        assert!(matches!(r, Err(ToolError::InvalidArguments { .. })));
        let r = invoke_caught(
            &t,
            ctx.clone(),
            r#"{"city":"boom","days":null,"inner":{"x":1}}"#.into(),
        )
        .await;
        assert_eq!(r, Err(ToolError::Panicked("kaboom".into())));
        let r = invoke_caught(
            &t,
            ctx,
            r#"{"city":"Oslo","days":null,"inner":{"x":1}}"#.into(),
        )
        .await;
        assert_eq!(r, Ok("Oslo".into()));
    }
}
