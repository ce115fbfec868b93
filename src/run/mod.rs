//! Running agents: the [`Runner`] (the SDK's `Runner.run` / `Runner.run_streamed`), run
//! configuration, results, and the engine behind them.

pub(crate) mod baton;
pub mod config;
pub(crate) mod engine;
pub mod nested;
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
pub use nested::{AgentTool, MAX_NESTING_DEPTH};
pub use observer::{ModelCallStats, RunObserver, ToolCallStats};
pub use result::{RunCanceller, RunResult, RunResultStreaming};
pub use settle::{RunEnded, RunSettle};
pub use state::{RunState, ToolApproval};

impl<C: Send + Sync + Default + 'static> Runner<C> {
    /// Continues a paused or interrupted run from its state (the SDK's
    /// `Runner.run_streamed(agent, state)` after `state.approve(...)`): `agent` is the run's
    /// starting agent; give the run's session with [`RunRequest::session`] when it had one.
    pub fn resume(
        &self,
        agent: &Agent<C>,
        state: RunState,
    ) -> Result<RunResultStreaming<C>, AgentsError> {
        self.request(agent, RunInput::Items(Vec::new()))
            .resume_from(state)
            .start()
    }
}

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
use baton::{Baton, NestSpec, RunEnv, RunShared};

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
            keep_state: false,
            resume: None,
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
    keep_state: bool,
    resume: Option<RunState>,
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

    /// Saves the run's state with every turn's items (for approvals, restarts, other
    /// nodes); the server's runs do. Without it the state is still saved when the run pauses
    /// for approval.
    pub fn keep_state(mut self, keep: bool) -> Self {
        self.keep_state = keep;
        self
    }

    /// Continues a run from its state (the SDK's `Runner.run_streamed(agent, state)`): the
    /// decided calls of its paused turn run (or give the model the rejection message), then
    /// its turns go on. The request's agent must be the run's starting agent (or any agent
    /// registered with the runner: the state names the agent whose turn is next), its input
    /// is ignored, and its session must be the run's.
    pub fn resume_from(mut self, state: RunState) -> Self {
        self.run_id = Some(state.run_id.clone());
        self.config.max_turns = state.max_turns;
        if state.trace.trace_id.is_some() {
            self.config.trace_id = state.trace.trace_id.clone();
        }
        if let Some(w) = &state.trace.workflow_name {
            self.config.workflow_name = w.clone();
        }
        if state.trace.group_id.is_some() {
            self.config.group_id = state.trace.group_id.clone();
        }
        if state.trace.metadata.is_some() {
            self.config.trace_metadata = state.trace.metadata.clone();
        }
        self.resume = Some(state);
        self
    }

    /// Starts the run and returns its live handle.
    pub fn start(self) -> Result<RunResultStreaming<C>, AgentsError> {
        let runner = self.runner;
        runner.stage.register(&self.agent);
        let run_id: Arc<str> = self.run_id.unwrap_or_else(gen_run_id).into();
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
        let ctx = RunContext::new(self.context, run_id);
        let max_turns = self.config.max_turns;
        let shared = launch(Launch {
            stage: runner.stage.clone(),
            provider: runner.provider.clone(),
            agent: self.agent,
            input: self.input,
            ctx: ctx.clone(),
            config: self.config,
            hooks: self.hooks,
            session: self.session,
            topic,
            input_guardrails: self.input_guardrails,
            output_guardrails: self.output_guardrails,
            settle: self.settle,
            listener,
            cancel: CancellationToken::new(),
            nest: None,
            keep_state: self.keep_state,
            resume: self.resume,
            observer: runner.observer.clone(),
        })?;
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

/// Everything a run starts from (a top run's request, or a nested run's tool call).
pub(crate) struct Launch<C: Send + Sync + 'static> {
    pub stage: Stage<C>,
    pub provider: Arc<dyn ModelProvider>,
    pub agent: Agent<C>,
    pub input: RunInput,
    pub ctx: RunContext<C>,
    pub config: RunConfig,
    pub hooks: Option<Arc<dyn RunHooks<C>>>,
    pub session: Option<Arc<dyn Session>>,
    pub topic: Arc<Topic>,
    pub input_guardrails: Vec<InputGuardrail<C>>,
    pub output_guardrails: Vec<OutputGuardrail<C>>,
    pub settle: Option<Arc<dyn RunSettle>>,
    pub listener: Option<tokio::sync::mpsc::Sender<Arc<crate::bus::Frame>>>,
    pub cancel: CancellationToken,
    pub nest: Option<NestSpec>,
    pub keep_state: bool,
    pub resume: Option<RunState>,
    pub observer: Option<Arc<dyn RunObserver>>,
}

/// Starts a run: its trace (or the current one, for a run inside a traced one) and task
/// span, its shared state, and its first turn at the starting agent (which may refuse it:
/// `Overloaded`).
pub(crate) fn launch<C: Send + Sync + 'static>(
    l: Launch<C>,
) -> Result<Arc<RunShared>, AgentsError> {
    let cfg = l.config;
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
    // Every log line inside the run carries its ids (`[logging]`).
    let log_span = crate::logging::run_span(
        l.ctx.run_id(),
        trace_id.as_deref(),
        l.agent.name(),
        meta("tenant"),
        meta("session_id").or(Some(l.topic.session_id())),
    );
    let input_items = l.input.to_items();
    let (done, _) = watch::channel(false);
    let shared = Arc::new(RunShared {
        run_id: l.ctx.run_id().into(),
        topic: l.topic,
        cancel: l.cancel,
        cancel_after_turn: AtomicBool::new(false),
        current_turn: AtomicU64::new(0),
        current_agent: Mutex::new(l.agent.name().to_owned()),
        state: Mutex::new(None),
        starting_agent: match &l.resume {
            Some(st) => st.starting_agent.name.clone(),
            None => l.agent.name().to_owned(),
        },
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
        listener: l.listener,
        turn_sync: Default::default(),
        cancelled_as: Mutex::new(None),
        nest: l.nest,
        nesting: Mutex::new(None),
    });
    shared.set_agent(l.agent.name());
    let env = Arc::new(RunEnv {
        stage: l.stage.clone(),
        config: cfg,
        provider: l.provider,
        hooks: l.hooks,
        session: l.session,
        input_guardrails: l.input_guardrails,
        output_guardrails: l.output_guardrails,
        include_sensitive,
        settle: l.settle,
        keep_state: l.keep_state,
        observer: l.observer,
    });
    // A resumed run continues at its state's agent, turn, items, usage and decisions.
    let mut agent = l.agent;
    let mut original_input = input_items;
    let mut generated = Vec::new();
    let mut turn = 0;
    let mut approvals = state::Approvals::default();
    let mut resume_turn = None;
    let mut resuming = None;
    let mut agents_used_tools = std::collections::HashSet::new();
    let mut handoff_from = None;
    if let Some(st) = l.resume {
        if st.current_agent.name != agent.name() {
            agent = l.stage.get(&st.current_agent.name).ok_or_else(|| {
                AgentsError::UserError(format!(
                    "the run's state continues at agent {}, which is not registered with the runner",
                    st.current_agent.name
                ))
            })?;
        }
        shared.set_agent(agent.name());
        original_input = st.original_input;
        *shared.input.lock().unwrap_or_else(|e| e.into_inner()) = original_input.clone();
        *shared.new_items.lock().unwrap_or_else(|e| e.into_inner()) = st.generated_items.clone();
        generated = st.generated_items;
        turn = st.current_turn;
        shared
            .current_turn
            .store(turn, std::sync::atomic::Ordering::Release);
        l.ctx.with_usage(|u| *u = st.context.usage.clone());
        approvals = st.context.approvals;
        resume_turn = st.pending_turn;
        resuming = Some(st.session_items);
        agents_used_tools = st.tool_use_tracker.into_iter().collect();
        handoff_from = st.handoff_from;
    }
    let baton = Baton {
        shared: shared.clone(),
        env,
        ctx: l.ctx,
        agent,
        original_input,
        generated,
        turn,
        agent_started: false,
        trace,
        owns_trace,
        task_span,
        agent_span: Span::disabled(),
        agents_used_tools,
        handoff_from,
        slot: None,
        turn_tools: None,
        approvals,
        resume_turn,
        resuming,
        history_len: None,
    };
    l.stage.start(Box::new(baton))?;
    Ok(shared)
}
