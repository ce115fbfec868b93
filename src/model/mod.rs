//! Models: the [`Model`] trait every provider implements, the request it receives, and the
//! providers themselves (`scripted` here; OpenAI Responses and Chat Completions beside it).

#[cfg(feature = "openai")]
pub mod config;
pub mod events;
#[cfg(feature = "openai")]
pub mod http;
#[cfg(feature = "openai")]
pub mod openai_chat;
#[cfg(feature = "openai")]
pub mod openai_responses;
pub mod scripted;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use events::{RawEvent, ResponseEvent, ResponseObject};

use crate::items::Item;

/// Which wire API a model speaks; decides whether its span is `response` or `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelApi {
    /// The Responses API (`response` spans).
    Responses,
    /// Chat Completions (`generation` spans).
    ChatCompletions,
}

/// The SDK's `ModelSettings`: sampling and tool options sent with each request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Maximum output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// `auto`, `required`, `none` or a tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<String>,
    /// Whether the model may call several tools in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Reasoning effort for reasoning models (`minimal`, `low`, `medium`, `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Extra HTTP headers sent with each request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_headers: BTreeMap<String, String>,
    /// Extra top-level fields merged into the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_body: Option<Value>,
}

impl ModelSettings {
    /// `self` with every field that `over` sets taken from `over` (the SDK's `resolve`).
    pub fn resolve(&self, over: &ModelSettings) -> ModelSettings {
        let mut extra_headers = self.extra_headers.clone();
        extra_headers.extend(over.extra_headers.clone());
        ModelSettings {
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            max_tokens: over.max_tokens.or(self.max_tokens),
            tool_choice: over
                .tool_choice
                .clone()
                .or_else(|| self.tool_choice.clone()),
            parallel_tool_calls: over.parallel_tool_calls.or(self.parallel_tool_calls),
            reasoning_effort: over
                .reasoning_effort
                .clone()
                .or_else(|| self.reasoning_effort.clone()),
            extra_headers,
            extra_body: over.extra_body.clone().or_else(|| self.extra_body.clone()),
        }
    }

    /// The settings as span `model_config` JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A function tool as the model sees it (handoffs are sent as function tools too).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// JSON schema of the arguments.
    pub parameters: Value,
    /// Whether the schema is strict (structured outputs).
    pub strict: bool,
}

/// A structured-output request: the final answer must fit this JSON schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputSchema {
    /// The schema's name (`final_output` as the SDK names it).
    pub name: String,
    /// The JSON schema.
    pub schema: Value,
    /// Strict mode.
    pub strict: bool,
}

/// Everything a model needs for one turn.
#[derive(Clone, Debug)]
pub struct ModelRequest {
    /// System instructions of the current agent.
    pub system_instructions: Option<String>,
    /// The conversation so far.
    pub input: Vec<Item>,
    /// Function tools, then handoff tools.
    pub tools: Vec<ToolSpec>,
    /// Structured output, when the agent has an output type.
    pub output_schema: Option<OutputSchema>,
    /// Resolved model settings.
    pub settings: ModelSettings,
}

/// What went wrong talking to a model. `kind` says how the run reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelError {
    /// The class of failure.
    pub kind: ModelErrorKind,
    /// What was wrong and what to do.
    pub message: String,
}

/// Classes of model failure, named after the OpenAI client's exceptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelErrorKind {
    /// The model's output broke the protocol (malformed event, dropped stream, failed response).
    Behavior,
    /// 401: bad or missing API key.
    Authentication,
    /// 403.
    PermissionDenied,
    /// 400 and other 4xx: the request was refused.
    BadRequest,
    /// 429 after the retries.
    RateLimit,
    /// 5xx after the retries.
    InternalServer,
    /// Could not connect, or the connection broke before a response.
    Connection,
    /// A connect, request or idle timeout.
    Timeout,
}

impl ModelError {
    /// A protocol-level failure: reported as `ModelBehaviorError`.
    pub fn behavior(message: impl Into<String>) -> Self {
        ModelError {
            kind: ModelErrorKind::Behavior,
            message: message.into(),
        }
    }

    /// A failure of a given kind.
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> Self {
        ModelError {
            kind,
            message: message.into(),
        }
    }

    /// The exception name a Python SDK user would see for this failure.
    pub fn sdk_name(&self) -> &'static str {
        match self.kind {
            ModelErrorKind::Behavior => "ModelBehaviorError",
            ModelErrorKind::Authentication => "AuthenticationError",
            ModelErrorKind::PermissionDenied => "PermissionDeniedError",
            ModelErrorKind::BadRequest => "BadRequestError",
            ModelErrorKind::RateLimit => "RateLimitError",
            ModelErrorKind::InternalServer => "InternalServerError",
            ModelErrorKind::Connection => "APIConnectionError",
            ModelErrorKind::Timeout => "ModelTimeoutError",
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}

/// The stream of raw events one model call produces.
pub type EventStream = BoxStream<'static, Result<RawEvent, ModelError>>;

/// A language model. Implementations turn a [`ModelRequest`] into a stream of Responses-API
/// events; the stream ends after a terminal event (`response.completed`, `failed`, ...).
///
/// Dropping the stream must release the connection; `cancel` firing should end it promptly.
pub trait Model: Send + Sync + 'static {
    /// Starts one model call.
    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> EventStream;
    /// The model's name, for spans and the response object.
    fn name(&self) -> &str;
    /// The wire API, which decides the span type.
    fn api(&self) -> ModelApi {
        ModelApi::Responses
    }
}

/// Resolves model names (an agent's `model`, the config's `[models.NAME]`) to models.
pub trait ModelProvider: Send + Sync + 'static {
    /// The model for `name`, or the default model when `name` is `None`.
    fn get_model(&self, name: Option<&str>) -> Option<Arc<dyn Model>>;
}

/// A provider backed by a name-to-model table with a default entry.
#[derive(Clone, Default)]
pub struct ModelTable {
    models: BTreeMap<String, Arc<dyn Model>>,
    default: Option<String>,
}

impl ModelTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a model under `name`; the first one added is the default.
    pub fn with(mut self, name: impl Into<String>, model: Arc<dyn Model>) -> Self {
        let name = name.into();
        if self.default.is_none() {
            self.default = Some(name.clone());
        }
        self.models.insert(name, model);
        self
    }

    /// Makes `name` the default.
    pub fn with_default(mut self, name: impl Into<String>) -> Self {
        self.default = Some(name.into());
        self
    }

    /// The names known to the table.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

impl ModelProvider for ModelTable {
    fn get_model(&self, name: Option<&str>) -> Option<Arc<dyn Model>> {
        let name = name.or(self.default.as_deref())?;
        self.models.get(name).cloned()
    }
}

/// A request with every kind of item, tool and output schema, for the providers' unit tests.
#[cfg(all(test, feature = "openai"))]
pub(crate) fn sample_request(assistant_text: &str, assistant_id: &str) -> ModelRequest {
    use crate::items::{FunctionCallItem, FunctionCallOutputItem, MessageItem};
    use serde_json::json;
    ModelRequest {
        system_instructions: Some("Be brief.".into()),
        input: vec![
            Item::Message(MessageItem::user("hi")),
            Item::Message(MessageItem::assistant(assistant_id, assistant_text)),
            Item::FunctionCall(FunctionCallItem {
                id: None,
                call_id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Oslo\"}".into(),
                status: None,
            }),
            Item::FunctionCallOutput(FunctionCallOutputItem {
                call_id: "call_1".into(),
                output: "sunny".into(),
            }),
        ],
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            description: "Weather.".into(),
            parameters: json!({"type": "object"}),
            strict: true,
        }],
        output_schema: Some(OutputSchema {
            name: "final_output".into(),
            schema: json!({"type": "object"}),
            strict: true,
        }),
        settings: ModelSettings::default(),
    }
}
