//! Running agents: the [`Runner`] (the SDK's `Runner.run` / `Runner.run_streamed`), run
//! configuration, results, and the engine behind them.

pub(crate) mod baton;
pub mod config;
pub(crate) mod engine;
pub mod observer;
pub mod result;
pub mod settle;
pub mod state;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use baton::RunOutcome;
pub use config::{RunConfig, DEFAULT_MAX_TURNS};
pub use engine::MULTIPLE_HANDOFFS_MESSAGE;
pub use observer::{ModelCallStats, RunObserver, ToolCallStats};
pub use result::{RunCanceller, RunResult, RunResultStreaming};
pub use settle::{RunEnded, RunSettle};
pub use state::{RunState, ToolApproval};

use crate::actor::Stage;
use crate::agent::Agent;
use crate::bus::{Bus, BusLimits, Topic};
use crate::context::RunContext;
use crate::error::AgentsError;
use crate::guardrail::{InputGuardrail, OutputGuardrail};
use crate::hooks::RunHooks;
use crate::items::RunInput;
use crate::model::{ModelProvider, ModelTable};
use crate::session::Session;
use crate::trace::{self, Span, SpanData, TraceOptions};
use baton::{Baton, RunEnv, RunShared};

/// A new run id: `run_` and 32 hex digits.
pub fn gen_run_id() -> String {
    let t = trace::gen_trace_id();
    format!("run_{}", &t["trace_".len()..])
}

/// Runs agents. Holds the stage of agent actors, the session bus and the model provider;
/// share one runner (it is cheap to clone) across the program.
pub struct Runner<C: Send + Sync + 'static = ()> {
    stage: Stage<C>,
    bus: Bus,
    provider: Arc<dyn ModelProvider>,
    observer: Option<Arc<dyn RunObserver>>,
}

impl<C: Send + Sync + 'static> Clone for Runner<C> {
    fn clone(&self) -> Self {
        Runner {
            stage: self.stage.clone(),
            bus: self.bus.clone(),
            provider: self.provider.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<C: Send + Sync + 'static> Default for Runner<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Send + Sync + 'static> Runner<C> {
    /// A runner with an empty model provider (agents bring their models) and default limits.
    pub fn new() -> Self {
        Runner {
            stage: Stage::new(),
            bus: Bus::new(BusLimits::default()),
            provider: Arc::new(ModelTable::new()),
            observer: None,
        }
    }

    /// Reports every model and tool call of this runner's runs to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Uses `provider` to resolve agents' model names.
    pub fn with_provider(mut self, provider: Arc<dyn ModelProvider>) -> Self {
        self.provider = provider;
        self
    }

    /// Uses `stage` (e.g. one with other mailbox or concurrency limits).
    pub fn with_stage(mut self, stage: Stage<C>) -> Self {
        self.stage = stage;
        self
    }

    /// Uses `bus` for session topics.
    pub fn with_bus(mut self, bus: Bus) -> Self {
        self.bus = bus;
        self
    }

    /// The stage of agent actors.
    pub fn stage(&self) -> &Stage<C> {
        &self.stage
    }

    /// The session bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The model provider.
    pub fn provider(&self) -> &Arc<dyn ModelProvider> {
        &self.provider
    }

    /// Registers an agent (and those it hands off to) so handoffs by name find it.
    pub fn register(&self, agent: &Agent<C>) {
        self.stage.register(agent);
    }

    /// A run of `agent` on `input` with the caller's context value, to configure and start.
    pub fn request_with(
        &self,
        agent: &Agent<C>,
        input: impl Into<RunInput>,
        context: C,
    ) -> RunRequest<'_, C> {
        RunRequest {
            runner: self,
            agent: agent.clone(),
            input: input.into(),
            context: Arc::new(context),
            config: RunConfig::default(),
            hooks: None,
            session: None,
            topic: None,
            run_id: None,
            input_guardrails: Vec::new(),
            output_guardrails: Vec::new(),
            settle: None,
            listen: true,
        }
    }
}

impl<C: Send + Sync + Default + 'static> Runner<C> {
    /// A run of `agent` on `input` with a default context value, to configure and start.
    pub fn request(&self, agent: &Agent<C>, input: impl Into<RunInput>) -> RunRequest<'_, C> {
        self.request_with(agent, input, C::default())
    }

    /// Runs `agent` to the end (the SDK's `Runner.run`).
    pub async fn run(
        &self,
        agent: &Agent<C>,
        input: impl Into<RunInput>,
    ) -> Result<RunResult, AgentsError> {
        self.request(agent, input).run().await
    }

    /// Starts a streamed run (the SDK's `Runner.run_streamed`).
    pub fn run_streamed(
        &self,
        agent: &Agent<C>,
        input: impl Into<RunInput>,
    ) -> Result<RunResultStreaming<C>, AgentsError> {
        self.request(agent, input).start()
    }
}

/// A run being set up: context, config, hooks, session, where it publishes.
pub struct RunRequest<'r, C: Send + Sync + 'static> {
    runner: &'r Runner<C>,
    agent: Agent<C>,
    input: RunInput,
    context: Arc<C>,
    config: RunConfig,
    hooks: Option<Arc<dyn RunHooks<C>>>,
    session: Option<Arc<dyn Session>>,
    topic: Option<Arc<Topic>>,
    run_id: Option<String>,
    input_guardrails: Vec<InputGuardrail<C>>,
    output_guardrails: Vec<OutputGuardrail<C>>,
    settle: Option<Arc<dyn RunSettle>>,
    listen: bool,
}

/// How many events a run's own event stream holds for a reader that falls behind; past that
/// the run waits for the reader (see [`RunResultStreaming::stream_events`]).
pub const EVENT_BUFFER: usize = 1024;

impl<C: Send + Sync + 'static> RunRequest<'_, C> {
    /// Per-run settings.
    pub fn config(mut self, config: RunConfig) -> Self {
        self.config = config;
        self
    }

    /// A shared context value.
    pub fn context_arc(mut self, context: Arc<C>) -> Self {
        self.context = context;
        self
    }

    /// Run-level hooks.
    pub fn hooks(mut self, hooks: Arc<dyn RunHooks<C>>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Conversation memory: the run starts from its items and saves each turn to it.
    pub fn session(mut self, session: Arc<dyn Session>) -> Self {
        self.session = Some(session);
        self
    }

    /// Publishes the run's frames on the runner's bus topic `session_id`, so other
    /// subscribers of that session see the run live.
    pub fn session_id(mut self, session_id: &str) -> Self {
        self.topic = Some(self.runner.bus.topic(session_id));
        self
    }

    /// Publishes the run's frames on this topic.
    pub fn topic(mut self, topic: Arc<Topic>) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Uses this run id.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// An input guardrail for the whole run (the SDK's `RunConfig.input_guardrails`).
    pub fn input_guardrail(mut self, g: InputGuardrail<C>) -> Self {
        self.input_guardrails.push(g);
        self
    }

    /// An output guardrail for the whole run.
    pub fn output_guardrail(mut self, g: OutputGuardrail<C>) -> Self {
        self.output_guardrails.push(g);
        self
    }

    /// Settles the run's end (records, releases) before its end frame is published.
    pub fn settle(mut self, settle: Arc<dyn RunSettle>) -> Self {
        self.settle = Some(settle);
        self
    }

    /// Whether the handle gets the run's own event stream (default true). A server that
    /// reads runs from the session topic turns it off, so no per-run queue exists.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Starts the run and returns its live handle.
    pub fn start(self) -> Result<RunResultStreaming<C>, AgentsError> {
        let runner = self.runner;
        runner.stage.register(&self.agent);
        let run_id: Arc<str> = self.run_id.unwrap_or_else(gen_run_id).into();
        let topic_session = self.topic.as_ref().map(|t| t.session_id().clone());
        let topic = self.topic.unwrap_or_else(|| {
            Topic::new(
                run_id.clone(),
                BusLimits {
                    history: 0,
                    subscriber_queue: 16,
                    budget: None,
                },
            )
        });
        let (listener, rx) = if self.listen {
            let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BUFFER);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let cfg = self.config;
        let tracer = cfg
            .tracer
            .clone()
            .unwrap_or_else(|| trace::global_tracer().clone());
        let include_sensitive = cfg
            .trace_include_sensitive_data
            .unwrap_or_else(|| tracer.include_sensitive_data());
        let (trace, owns_trace) = match trace::current_trace() {
            Some(t) if t.is_enabled() => (t, false),
            Some(_) => (trace::Trace::disabled(), false),
            None if cfg.tracing_disabled => (trace::Trace::disabled(), false),
            None => (
                tracer.start_trace(TraceOptions {
                    workflow_name: Some(cfg.workflow_name.clone()),
                    trace_id: cfg.trace_id.clone(),
                    group_id: cfg.group_id.clone(),
                    metadata: cfg.trace_metadata.clone(),
                    disabled: false,
                }),
                true,
            ),
        };
        let parent = trace::current_span().filter(Span::is_enabled);
        let task_span = trace.span(
            SpanData::Task {
                name: cfg.workflow_name.clone(),
                usage: None,
            },
            parent.as_ref(),
        );
        let trace_id = trace.is_enabled().then(|| trace.trace_id().to_owned());
        let meta = |k: &str| {
            cfg.trace_metadata
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(serde_json::Value::as_str)
        };
        let log_span = crate::logging::run_span(
            &run_id,
            trace_id.as_deref(),
            self.agent.name(),
            meta("tenant"),
            meta("session_id").or(topic_session.as_deref()),
        );
        let input_items = self.input.to_items();
        let (done, _) = watch::channel(false);
        let shared = Arc::new(RunShared {
            run_id: run_id.clone(),
            topic,
            cancel: CancellationToken::new(),
            cancel_after_turn: AtomicBool::new(false),
            current_turn: AtomicU64::new(0),
            current_agent: Mutex::new(self.agent.name().to_owned()),
            input: Mutex::new(input_items.clone()),
            new_items: Mutex::new(Vec::new()),
            raw_responses: Mutex::new(Vec::new()),
            input_guardrail_results: Mutex::new(Vec::new()),
            output_guardrail_results: Mutex::new(Vec::new()),
            outcome: Mutex::new(None),
            done,
            trace_id,
            finished: AtomicBool::new(false),
            log_span,
            listener,
            turn_sync: Default::default(),
            cancelled_as: Mutex::new(None),
        });
        let ctx = RunContext::new(self.context, run_id);
        let max_turns = cfg.max_turns;
        let env = Arc::new(RunEnv {
            stage: runner.stage.clone(),
            config: cfg,
            provider: runner.provider.clone(),
            hooks: self.hooks,
            session: self.session,
            input_guardrails: self.input_guardrails,
            output_guardrails: self.output_guardrails,
            include_sensitive,
            settle: self.settle,
            observer: runner.observer.clone(),
        });
        let baton = Baton {
            shared: shared.clone(),
            env,
            ctx: ctx.clone(),
            agent: self.agent,
            original_input: input_items,
            generated: Vec::new(),
            turn: 0,
            agent_started: false,
            trace,
            owns_trace,
            task_span,
            agent_span: Span::disabled(),
            agents_used_tools: Default::default(),
            handoff_from: None,
            slot: None,
        };
        if let Err(refused) = runner.stage.start(baton) {
            let (refused, e) = *refused;
            // Not a run: nothing to announce or settle.
            refused
                .shared
                .finished
                .store(true, std::sync::atomic::Ordering::Release);
            refused.task_span.finish();
            if refused.owns_trace {
                refused.trace.finish();
            }
            return Err(e);
        }
        Ok(RunResultStreaming {
            shared,
            ctx,
            rx: Mutex::new(rx),
            max_turns,
        })
    }

    /// Runs to the end and returns the result.
    pub async fn run(self) -> Result<RunResult, AgentsError> {
        self.start()?.wait().await
    }
}
