//! # callboard
//!
//! An actor-based multi-agent orchestration engine with the OpenAI Agents SDK's programming
//! model: agents, function tools, handoffs, guardrails, `run` / `run_streamed` with the SDK's
//! stream events, and SDK-shaped tracing. Each agent is an actix actor with a bounded
//! mailbox; a run's state (the baton) travels between them turn by turn, and every event is
//! posted on the session bus, where any number of subscribers read it.
//!
//! ```no_run
//! use callboard::{Agent, Runner, model::scripted::{ScriptedModel, ScriptedTurn}};
//! use std::sync::Arc;
//!
//! # async fn demo() -> Result<(), callboard::AgentsError> {
//! let model = Arc::new(ScriptedModel::new(vec![ScriptedTurn::message("Hello!", 3)]));
//! let agent: Agent = Agent::new("Greeter").instructions("Greet.").model_instance(model);
//! let result = Runner::new().run(&agent, "hi").await?;
//! assert_eq!(result.final_output_text(), Some("Hello!"));
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`agent`]: `Agent` and its parts (instructions, output type, tool-use behaviour).
//! - [`tool`]: function tools with schemas derived from their argument types.
//! - [`handoff`]: `transfer_to_<agent>` handoffs and input filters.
//! - [`guardrail`]: input and output guardrails.
//! - [`hooks`]: run and agent lifecycle hooks.
//! - [`context`]: the run context handed to tools, guardrails and hooks.
//! - [`model`]: the `Model` trait, Responses-API raw events, and the providers.
//! - [`items`]: conversation items and the SDK's run items.
//! - [`mcp`]: MCP servers as tool sources (`rmcp`; the `mcp` feature), each owned by an actor.
//! - [`events`]: the three stream event kinds.
//! - [`run`]: the `Runner`, `RunConfig`, results, and the one engine.
//! - [`actor`]: agent actors, their mailboxes, and the stage that holds them.
//! - [`bus`]: session topics with gapless `seq`, history and lag handling.
//! - [`trace`]: traces, spans, processors, the tracing actor (`trace::batch`), the sinks
//!   (`trace::sinks`: console, jsonl, store, openai, otlp) and the `[tracing]` config.
//! - [`session`]: conversation memory.
//! - [`usage`], [`error`]: token usage and the SDK's errors.
//! - [`demo`]: the demo cast used by the example and the server's defaults.
//! - [`config`]: the server's TOML config and its validation.
//! - [`logging`]: the service's own logs (`[logging]`, text or JSON) and the `run` span
//!   that gives every line inside a run its ids.
//! - [`wire`]: the wire formats, each an encoding of the bus's typed frames (SDK JSON,
//!   chat relay, AI SDK UI message stream, AG-UI).
//! - [`service`]: the service layer between the transports and the engine: sessions, runs,
//!   limits, metrics, the cast built from config.
//! - [`server`]: the HTTP API (axum), auth, graceful shutdown.
//! - [`hub`]: the WebSocket hub fanning the bus out to clients.
//! - [`cli`]: the `callboard` command line (`serve`, `run`, `check-config`).

pub mod actor;
pub mod agent;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod demo;
pub mod error;
pub mod events;
pub mod guardrail;
pub mod handoff;
pub mod hooks;
pub mod hub;
pub mod items;
pub mod logging;
pub mod mcp;
pub mod model;
pub mod run;
pub mod server;
pub mod service;
pub mod session;
pub mod tool;
pub mod trace;
pub mod usage;
pub mod wire;

pub use agent::{Agent, OutputType, ToolUseBehavior};
pub use bus::CancelMode;
pub use context::RunContext;
pub use error::AgentsError;
pub use events::StreamEvent;
pub use guardrail::{GuardrailFunctionOutput, InputGuardrail, OutputGuardrail};
pub use handoff::Handoff;
pub use hooks::{AgentHooks, RunHooks};
pub use items::{Item, RunInput, RunItem};
pub use model::{Model, ModelSettings};
pub use run::{AgentTool, RunConfig, RunResult, RunResultStreaming, Runner};
pub use tool::{FunctionTool, Tool, ToolContext, ToolError, ToolPolicy, ToolTimeoutBehavior};
pub use usage::Usage;
