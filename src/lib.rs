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
//! ## Cargo features
//!
//! All on by default (the binary needs them). With `default-features = false` the crate is
//! the engine alone: agents, tools, handoffs, guardrails, the runner and its actors, the bus,
//! the scripted model, memory sessions, tracing with the console and jsonl sinks.
//! - `server`: [`server`], [`hub`], [`cli`], [`loadtest`], [`service`], [`config`], [`cluster`] (axum,
//!   clap); turns on `sqlite` and `openai`.
//! - `sqlite`: the SQLite session store and trace store (rusqlite).
//! - `openai`: the OpenAI providers and the OpenAI trace sink (reqwest).
//! - `otlp`: the OpenTelemetry trace sink (opentelemetry-proto, prost).
//! - `mcp`, `postgres`, `nats`: MCP tool sources, the PostgreSQL store, the cluster.
//!
//! ## Layout
//!
//! One module per concept, named in the order a request meets them; each file opens with a
//! line saying its role. `docs/architecture.md` follows one WebSocket run through them in
//! eight steps and gives the import rules.
//!
//! Transports, what a client talks to:
//! - [`server`]: the HTTP API on axum (`app()` builds the router that `serve` runs and the
//!   tests use): auth, runs as JSON or SSE, sessions, health, traces, the AI SDK and AG-UI
//!   endpoints, the WebSocket upgrade, graceful shutdown.
//! - [`hub`]: the WebSocket protocol: client frames, and one loop per connection (a reader,
//!   one forwarder per followed session, a writer draining the bounded outbound queue).
//! - [`cli`]: the `callboard` command line (`serve`, `run`, `check-config`, `traces`,
//!   `loadtest`).
//! - [`loadtest`]: WebSocket load clients, frame checks and the load report (`callboard
//!   loadtest` and the load harness).
//!
//! The service, between the transports and the engine:
//! - [`service`]: `Core`, shared by every transport: session owners, runs from request to
//!   settlement, approvals, limits, the one `ApiError`, metrics and telemetry events, the cast
//!   built from config, `http` and `client` tools.
//! - [`wire`]: the wire formats, each an encoding of the bus's typed frames (SDK JSON, chat
//!   relay, AI SDK UI message stream, AG-UI).
//! - [`config`]: the server's TOML config and its validation.
//! - [`logging`]: the service's own logs (`[logging]`, text or JSON) and the `run` span that
//!   gives every line inside a run its ids.
//!
//! The engine, a run turn by turn:
//! - [`run`]: the `Runner`, `RunConfig`, results, the baton and its serialisable state
//!   (`RunState`), agents as tools, and the one engine (model call, items, tools, handoffs,
//!   guardrails, approvals, finish).
//! - [`actor`]: agent actors with bounded mailboxes and admission, and the `Stage` that holds
//!   them; what they drive (a run's baton) is the engine's, behind [`actor::Work`].
//! - [`runtime`]: the actix system the library hosts on its own thread (agents, tracing and
//!   MCP actors share it) and the fallback tokio runtime.
//! - [`bus`]: session topics: typed frames with a gapless `seq`, bounded history, a live ring,
//!   `lagged` for subscribers that fall behind.
//! - [`session`]: conversation memory (the SDK's `Session`), the `Store` trait, run records,
//!   the memory store, the SQLite store and the PostgreSQL store (the `postgres` feature).
//!
//! What agents are made of:
//! - [`agent`]: `Agent` and its parts (instructions, output type, tool-use behaviour).
//! - [`tool`]: function tools with schemas derived from their argument types, timeouts and
//!   concurrency limits.
//! - [`handoff`]: `transfer_to_<agent>` handoffs and input filters; [`names`], the tool name
//!   the SDK derives for a handoff.
//! - [`guardrail`]: input and output guardrails.
//! - [`hooks`]: run and agent lifecycle hooks.
//! - [`context`]: the run context handed to tools, guardrails and hooks.
//! - [`items`]: conversation items and the SDK's run items.
//! - [`events`]: the three stream event kinds.
//! - [`usage`], [`error`]: token usage and the SDK's errors.
//! - [`demo`]: the demo cast used by the examples and the server's defaults.
//!
//! Outside the run:
//! - [`model`]: the `Model` trait, the Responses-API event types, and the providers
//!   (`openai_responses`, `openai_chat_completions`, `scripted`) with their HTTP plumbing.
//! - [`mcp`]: MCP servers as tool sources (`rmcp`; the `mcp` feature), each owned by an actor.
//! - [`trace`]: traces and spans in the SDK's shape, processors, the tracing actor
//!   (`trace::batch`), the sinks (`trace::sinks`: console, jsonl, store, openai, otlp) and the
//!   `[tracing]` config.

pub mod actor;
pub mod agent;
pub mod bus;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
pub mod context;
pub mod demo;
pub mod error;
pub mod events;
pub mod guardrail;
pub mod handoff;
pub mod hooks;
#[cfg(feature = "server")]
pub mod hub;
pub mod items;
#[cfg(feature = "server")]
pub mod loadtest;
pub mod logging;
pub mod mcp;
pub mod model;
pub mod names;
pub mod run;
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
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
