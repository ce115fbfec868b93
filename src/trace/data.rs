//! Span data in the SDK's shape: one variant per span type, and the export JSON of spans and
//! traces (the SDK's field names and nesting).

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::*;
use crate::usage::Usage;

/// The data of a span, one variant per SDK span type.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanData {
    /// One agent's stretch of a run.
    Agent {
        /// Agent name.
        name: String,
        /// Handoff target names (filled at the end).
        handoffs: Vec<String>,
        /// Tool names (filled at the end).
        tools: Vec<String>,
        /// The output type's name, if any.
        output_type: Option<String>,
    },
    /// The whole run (exported as a custom span named `task`).
    Task {
        /// Workflow name ("Agent workflow" unless set).
        name: String,
        /// Usage totals, at the end.
        usage: Option<Value>,
    },
    /// One turn (exported as a custom span named `turn`).
    Turn {
        /// Turn number from 1.
        turn: u64,
        /// The agent of the turn.
        agent_name: String,
        /// Usage of the turn, at the end.
        usage: Option<Value>,
    },
    /// A Responses-API model call.
    Response {
        /// The provider's response id.
        response_id: Option<String>,
        /// Usage of the call.
        usage: Option<Value>,
        /// The model called. Not in the SDK's export JSON (its response span has none);
        /// sinks get it from [`ItemFacts::model`](batch::ItemFacts::model).
        model: Option<String>,
    },
    /// A Chat-Completions model call.
    Generation {
        /// Input messages (sensitive).
        input: Option<Value>,
        /// Output messages (sensitive).
        output: Option<Value>,
        /// Model name.
        model: Option<String>,
        /// Model settings.
        model_config: Option<Value>,
        /// Usage of the call.
        usage: Option<Value>,
    },
    /// A function tool call.
    Function {
        /// Tool name.
        name: String,
        /// Arguments (sensitive).
        input: Option<String>,
        /// Output (sensitive).
        output: Option<String>,
        /// MCP data.
        mcp_data: Option<Value>,
    },
    /// A handoff.
    Handoff {
        /// The agent handing off.
        from_agent: Option<String>,
        /// The target (set at the end).
        to_agent: Option<String>,
    },
    /// A guardrail check.
    Guardrail {
        /// Guardrail name.
        name: String,
        /// Whether the tripwire fired.
        triggered: bool,
    },
    /// A user-defined span.
    Custom {
        /// Span name.
        name: String,
        /// Free-form data.
        data: Value,
    },
    /// Listing an MCP server's tools.
    McpTools {
        /// The server.
        server: String,
        /// The tool names listed.
        result: Option<Vec<String>>,
    },
}

impl SpanData {
    /// The span type string of the export (`custom` for task and turn).
    pub fn type_name(&self) -> &'static str {
        match self {
            SpanData::Agent { .. } => "agent",
            SpanData::Task { .. } | SpanData::Turn { .. } | SpanData::Custom { .. } => "custom",
            SpanData::Response { .. } => "response",
            SpanData::Generation { .. } => "generation",
            SpanData::Function { .. } => "function",
            SpanData::Handoff { .. } => "handoff",
            SpanData::Guardrail { .. } => "guardrail",
            SpanData::McpTools { .. } => "mcp_tools",
        }
    }

    /// A short name for the span (agent, tool or custom name, or the type).
    pub fn name(&self) -> &str {
        match self {
            SpanData::Agent { name, .. }
            | SpanData::Function { name, .. }
            | SpanData::Guardrail { name, .. }
            | SpanData::Custom { name, .. } => name,
            SpanData::Task { .. } => "task",
            SpanData::Turn { .. } => "turn",
            SpanData::Response { .. } => "response",
            SpanData::Generation { .. } => "generation",
            SpanData::Handoff { .. } => "handoff",
            SpanData::McpTools { server, .. } => server,
        }
    }

    /// The `span_data` object of the SDK's export.
    pub fn export(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    /// A borrowed view that serialises as the SDK's `span_data` (type first, then the
    /// fields in the SDK's order).
    pub(super) fn view(&self) -> DataView<'_> {
        match self {
            SpanData::Agent {
                name,
                handoffs,
                tools,
                output_type,
            } => DataView::Agent {
                name,
                handoffs,
                tools,
                output_type: output_type.as_deref(),
            },
            SpanData::Task { name, usage } => DataView::Custom {
                name: "task",
                data: CustomData::Task {
                    sdk_span_type: "task",
                    name,
                    usage: usage.as_ref(),
                },
            },
            SpanData::Turn {
                turn,
                agent_name,
                usage,
            } => DataView::Custom {
                name: "turn",
                data: CustomData::Turn {
                    sdk_span_type: "turn",
                    turn: *turn,
                    agent_name,
                    usage: usage.as_ref(),
                },
            },
            SpanData::Response {
                response_id, usage, ..
            } => DataView::Response {
                response_id: response_id.as_deref(),
                usage: usage.as_ref(),
            },
            SpanData::Generation {
                input,
                output,
                model,
                model_config,
                usage,
            } => DataView::Generation {
                input: input.as_ref(),
                output: output.as_ref(),
                model: model.as_deref(),
                model_config: model_config.as_ref(),
                usage: usage.as_ref(),
            },
            SpanData::Function {
                name,
                input,
                output,
                mcp_data,
            } => DataView::Function {
                name,
                input: input.as_deref(),
                output: output.as_deref(),
                mcp_data: mcp_data.as_ref(),
            },
            SpanData::Handoff {
                from_agent,
                to_agent,
            } => DataView::Handoff {
                from_agent: from_agent.as_deref(),
                to_agent: to_agent.as_deref(),
            },
            SpanData::Guardrail { name, triggered } => DataView::Guardrail {
                name,
                triggered: *triggered,
            },
            SpanData::Custom { name, data } => DataView::Custom {
                name,
                data: CustomData::Free(data),
            },
            SpanData::McpTools { server, result } => DataView::McpTools {
                server,
                result: result.as_deref(),
            },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum DataView<'a> {
    Agent {
        name: &'a str,
        handoffs: &'a [String],
        tools: &'a [String],
        output_type: Option<&'a str>,
    },
    Response {
        response_id: Option<&'a str>,
        usage: Option<&'a Value>,
    },
    Generation {
        input: Option<&'a Value>,
        output: Option<&'a Value>,
        model: Option<&'a str>,
        model_config: Option<&'a Value>,
        usage: Option<&'a Value>,
    },
    Function {
        name: &'a str,
        input: Option<&'a str>,
        output: Option<&'a str>,
        mcp_data: Option<&'a Value>,
    },
    Handoff {
        from_agent: Option<&'a str>,
        to_agent: Option<&'a str>,
    },
    Guardrail {
        name: &'a str,
        triggered: bool,
    },
    Custom {
        name: &'a str,
        data: CustomData<'a>,
    },
    #[serde(rename = "mcp_tools")]
    McpTools {
        server: &'a str,
        result: Option<&'a [String]>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum CustomData<'a> {
    Task {
        sdk_span_type: &'static str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<&'a Value>,
    },
    Turn {
        sdk_span_type: &'static str,
        turn: u64,
        agent_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<&'a Value>,
    },
    Free(&'a Value),
}

/// The SDK's span export, as a borrowed view for serialisation.
#[derive(Serialize)]
pub(super) struct SpanView<'a> {
    pub(super) object: &'static str,
    pub(super) id: &'a str,
    pub(super) trace_id: &'a str,
    pub(super) parent_id: Option<&'a str>,
    pub(super) started_at: &'a str,
    pub(super) ended_at: Option<&'a str>,
    pub(super) span_data: DataView<'a>,
    pub(super) error: Option<&'a SpanError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<&'a Map<String, Value>>,
}

/// The SDK's trace export, as a borrowed view for serialisation.
#[derive(Serialize)]
pub(super) struct TraceView<'a> {
    pub(super) object: &'static str,
    pub(super) id: &'a str,
    pub(super) workflow_name: &'a str,
    pub(super) group_id: Option<&'a str>,
    pub(super) metadata: Option<&'a Map<String, Value>>,
}

/// Usage of one model call as span data (the SDK's `model_usage_to_span_usage`).
pub fn model_usage_json(u: &crate::usage::RequestUsage) -> Value {
    json!({
        "requests": 1,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "input_tokens_details": {"cached_tokens": u.input_tokens_details.cached_tokens, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": u.output_tokens_details.reasoning_tokens},
    })
}

/// Usage of a turn as span data (the SDK's `turn_usage_to_span_data`).
pub fn turn_usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cached_input_tokens": u.input_tokens_details.cached_tokens,
        "cache_write_input_tokens": 0,
    })
}

/// Usage of a run as task span data (the SDK's `task_usage_to_span_data`).
pub fn task_usage_json(u: &Usage) -> Value {
    let mut v = turn_usage_json(u);
    v["requests"] = json!(u.requests);
    v["total_tokens"] = json!(u.total_tokens);
    v
}
