//! The baton: everything a run carries from turn to turn and from agent to agent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::actor::{AgentSlot, Stage};
use crate::agent::Agent;
use crate::bus::{CancelMode, Frame, FrameBody, Nesting, Topic};
use crate::context::RunContext;
use crate::error::AgentsError;
use crate::events::StreamEvent;
use crate::guardrail::{GuardrailResult, InputGuardrail, OutputGuardrail};
use crate::hooks::RunHooks;
use crate::items::{Item, RunItem};
use crate::model::{ModelProvider, ResponseObject};
use crate::run::config::RunConfig;
use crate::run::settle::{RunEnded, RunSettle};
use crate::session::Session;
use crate::tool::{CallScope, Tool, ToolProgress};
use crate::trace::{Span, Trace};

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// A final output.
    Completed {
        /// The final output.
        final_output: Value,
        /// The agent that produced it.
        last_agent: String,
    },
    /// An error.
    Failed(AgentsError),
    /// Cancelled.
    Cancelled(CancelMode),
    /// Paused: these tool calls wait for a person's decision; the run's state holds the
    /// rest (resume it with `Runner::resume`).
    Interrupted(Vec<crate::run::state::ToolApproval>),
}

/// State of a run shared between the baton and the caller's result handle.
pub(crate) struct RunShared {
    pub run_id: Arc<str>,
    pub topic: Arc<Topic>,
    pub cancel: CancellationToken,
    pub cancel_after_turn: AtomicBool,
    pub current_turn: AtomicU64,
    pub current_agent: Mutex<String>,
    /// The agent the run started with.
    pub starting_agent: String,
    /// The state the run paused with (for `to_state`).
    pub state: Mutex<Option<crate::run::state::RunState>>,
    pub input: Mutex<Vec<Item>>,
    pub new_items: Mutex<Vec<RunItem>>,
    pub raw_responses: Mutex<Vec<ResponseObject>>,
    pub input_guardrail_results: Mutex<Vec<GuardrailResult>>,
    pub output_guardrail_results: Mutex<Vec<GuardrailResult>>,
    pub outcome: Mutex<Option<RunOutcome>>,
    pub done: watch::Sender<bool>,
    pub trace_id: Option<String>,
    pub finished: AtomicBool,
    /// The `run` log span ([`crate::logging::run_span`]) the run's work happens in.
    pub log_span: tracing::Span,
    /// The run's own event stream (the library's `stream_events`), bounded: when its reader
    /// falls behind by the whole buffer, the run waits for it (as the SDK's stream does when
    /// its consumer is slow), unless cancelled.
    pub listener: Option<mpsc::Sender<Arc<Frame>>>,
    /// Turn-level backpressure with a reader of `stream_events` (see [`TurnSync`]).
    pub turn_sync: TurnSync,
    /// Why the run was cancelled, once it was.
    pub cancelled_as: Mutex<Option<(CancelMode, Option<Arc<str>>)>>,
    /// Set for a nested run (an agent called as a tool): where it sits.
    pub nest: Option<NestSpec>,
    /// The nesting its frames carry now (the path ends at its current agent).
    pub nesting: Mutex<Option<Arc<Nesting>>>,
}

/// Where a nested run sits: the agents above it, its depth, the call that started it.
#[derive(Clone, Debug)]
pub(crate) struct NestSpec {
    pub ancestors: Arc<[Arc<str>]>,
    pub depth: u32,
    pub parent_call_id: Arc<str>,
}

/// Turn-level backpressure, as the SDK's streamed runs have it: before the next turn starts,
/// the run waits until the reader of `stream_events` has asked for the event after the last
/// one of this turn, i.e. has handled every event of the turn. A reader that reacts to an
/// event (say, cancels after this turn) is always heard before the next turn begins.
#[derive(Debug, Default)]
pub(crate) struct TurnSync {
    /// Events sent to the run's own stream.
    pub sent: AtomicU64,
    /// Events the reader has handled (it asked for the next one).
    pub handled: AtomicU64,
    /// Whether a `stream_events` reader is attached.
    pub reading: AtomicBool,
    pub changed: tokio::sync::Notify,
}

impl TurnSync {
    /// The reader asks for its next event: every event before it is handled.
    pub fn handled(&self, n: u64) {
        self.handled.store(n, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The reader is gone.
    pub fn detach(&self) {
        self.reading.store(false, Ordering::Release);
        self.changed.notify_waiters();
    }
}

impl RunShared {
    /// Publishes an event on the run's topic and to its own event stream.
    pub async fn publish_event(&self, event: StreamEvent, tool: Option<Arc<str>>) {
        let frame = self.publish(FrameBody::Event { event, tool });
        if let Some(tx) = &self.listener {
            let sent = match tx.try_send(frame) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(f)) => tokio::select! {
                    r = tx.send(f) => r.is_ok(),
                    _ = self.cancel.cancelled() => false,
                },
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
            if sent {
                self.turn_sync.sent.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Waits, before another turn, until a `stream_events` reader has handled every event so
    /// far (turn-level backpressure); returns at once without such a reader or on cancel.
    pub async fn drain_turn(&self) {
        let sync = &self.turn_sync;
        loop {
            let changed = sync.changed.notified();
            if !sync.reading.load(Ordering::Acquire)
                || sync.handled.load(Ordering::Acquire) >= sync.sent.load(Ordering::Acquire)
                || self.cancel.is_cancelled()
            {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// Publishes a frame on the run's topic only (with its nesting, when nested).
    pub fn publish(&self, body: FrameBody) -> Arc<Frame> {
        let nesting = match &self.nest {
            None => None,
            Some(_) => self
                .nesting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        self.topic.publish_nested(&self.run_id, body, nesting)
    }

    /// Notes that `agent` now runs the run (its nested frames' path ends there).
    /// The agent the run started with.
    pub fn starting_agent(&self) -> &String {
        &self.starting_agent
    }

    pub fn set_agent(&self, agent: &str) {
        *self.current_agent.lock().unwrap_or_else(|e| e.into_inner()) = agent.to_owned();
        if let Some(spec) = &self.nest {
            let mut path: Vec<Arc<str>> = spec.ancestors.to_vec();
            path.push(agent.into());
            *self.nesting.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Nesting {
                path: path.into(),
                depth: spec.depth,
                parent_call_id: spec.parent_call_id.clone(),
            }));
        }
    }

    /// The path of agents down to this run's current one (just it for a top run).
    pub fn path(&self) -> Arc<[Arc<str>]> {
        if let Some(n) = self
            .nesting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return n.path.clone();
        }
        let agent: Arc<str> = self
            .current_agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_str()
            .into();
        Arc::from(vec![agent])
    }

    /// The run's nesting depth (0 for a top run).
    pub fn depth(&self) -> u32 {
        self.nest.as_ref().map_or(0, |n| n.depth)
    }

    pub fn is_complete(&self) -> bool {
        *self.done.borrow()
    }

    /// Cancels the run: now, or after the current turn.
    pub fn cancel(&self, mode: CancelMode) {
        self.cancel_by(mode, None);
    }

    /// Cancels the run, recording the mode and the run whose arrival caused it (double-
    /// texting); the first cancellation's reason is the one reported.
    pub fn cancel_by(&self, mode: CancelMode, by_run_id: Option<Arc<str>>) {
        {
            let mut why = self.cancelled_as.lock().unwrap_or_else(|e| e.into_inner());
            if why.is_none() || mode != CancelMode::AfterTurn {
                *why = Some((mode, by_run_id));
            }
        }
        match mode {
            CancelMode::AfterTurn => self.cancel_after_turn.store(true, Ordering::Release),
            _ => self.cancel.cancel(),
        }
    }

    /// How an immediate cancellation is reported: its mode (`immediate` unless a new
    /// message interrupted the run) and the run that caused it.
    pub fn cancel_reason(&self) -> (CancelMode, Option<Arc<str>>) {
        match &*self.cancelled_as.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((CancelMode::AfterTurn, _)) | None => (CancelMode::Immediate, None),
            Some((m, by)) => (*m, by.clone()),
        }
    }

    /// Waits until the run has ended.
    pub async fn wait_done(&self) {
        let mut done = self.done.subscribe();
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
    }
}

/// Everything fixed for the length of a run.
pub(crate) struct RunEnv<C: Send + Sync + 'static> {
    pub stage: Stage<C>,
    pub config: RunConfig,
    pub provider: Arc<dyn ModelProvider>,
    pub hooks: Option<Arc<dyn RunHooks<C>>>,
    pub session: Option<Arc<dyn Session>>,
    pub input_guardrails: Vec<InputGuardrail<C>>,
    pub output_guardrails: Vec<OutputGuardrail<C>>,
    pub include_sensitive: bool,
    /// Reports model and tool calls (metrics).
    pub observer: Option<Arc<dyn crate::run::RunObserver>>,
    pub settle: Option<Arc<dyn RunSettle>>,
    /// Save the run's state with every turn (the server's runs, for approvals, restarts
    /// and other nodes).
    pub keep_state: bool,
}

/// What a tool call may reach of its run: progress goes onto the run's topic (with its
/// nesting), and agent tools start nested runs from the run's stage, provider and config.
/// One per turn, shared by the turn's calls.
pub(crate) struct CallEnv<C: Send + Sync + 'static> {
    pub shared: Arc<RunShared>,
    pub env: Arc<RunEnv<C>>,
}

impl<C: Send + Sync + 'static> CallScope for CallEnv<C> {
    fn progress(&self, call_id: &Arc<str>, tool: &Arc<str>, report: ToolProgress) {
        self.shared.publish(FrameBody::ToolProgress {
            call_id: call_id.clone(),
            tool: tool.clone(),
            progress: report.progress,
            total: report.total,
            message: report.message,
        });
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The baton: the run's state, handed from turn to turn and agent to agent.
pub(crate) struct Baton<C: Send + Sync + 'static> {
    pub shared: Arc<RunShared>,
    pub env: Arc<RunEnv<C>>,
    pub ctx: RunContext<C>,
    pub agent: Agent<C>,
    pub original_input: Vec<Item>,
    pub generated: Vec<RunItem>,
    pub turn: u64,
    pub agent_started: bool,
    pub trace: Trace,
    pub owns_trace: bool,
    pub task_span: Span,
    pub agent_span: Span,
    pub agents_used_tools: HashSet<String>,
    pub handoff_from: Option<String>,
    pub slot: Option<AgentSlot>,
    /// This turn's tools when the agent has tool sources (its own plus the listed ones);
    /// `None`: just the agent's own.
    pub turn_tools: Option<Vec<Arc<dyn Tool<C>>>>,
    /// Decisions on tool calls that need approval.
    pub approvals: crate::run::state::Approvals,
    /// A turn to finish instead of calling the model (a resumed run).
    pub resume_turn: Option<crate::run::state::PendingTurn>,
    /// A resumed run still to set up at its first turn: the session items before its own
    /// input to read back (`Some(n)`: the first n), and whether to announce its agent.
    pub resuming: Option<Option<usize>>,
    /// Session items before the run's own input (with a session).
    pub history_len: Option<usize>,
}

impl<C: Send + Sync + 'static> Baton<C> {
    /// The tools of this turn.
    pub fn tools(&self) -> &[Arc<dyn Tool<C>>] {
        match &self.turn_tools {
            Some(t) => t,
            None => self.agent.tools(),
        }
    }

    /// The end of the run, to settle and announce; `None` for a nested run, which announces
    /// no end (its parent's `tool_output` ends it, as the SDK's nested stream simply ends).
    pub(crate) fn ended(&self, outcome: RunOutcome, frame: FrameBody) -> Option<RunEnded> {
        if self.shared.nest.is_some() {
            return None;
        }
        Some(RunEnded::new(
            self.shared.run_id.clone(),
            outcome,
            self.agent.name().to_owned(),
            self.ctx.usage(),
            self.turn,
            frame,
            self.shared.topic.clone(),
            self.shared.listener.clone(),
        ))
    }
}

impl<C: Send + Sync + 'static> Drop for Baton<C> {
    /// A baton dropped before its run finished (a panic in a turn, a runtime shutting down)
    /// still ends the run, so no consumer is left waiting.
    fn drop(&mut self) {
        if !self.shared.finished.swap(true, Ordering::AcqRel) {
            const MESSAGE: &str = "the run was stopped unexpectedly (its turn task panicked or its runtime shut down)";
            let err = AgentsError::UserError(MESSAGE.into());
            self.agent_span.set_error("Error in agent run", None);
            self.agent_span.finish();
            self.task_span.finish();
            if self.owns_trace {
                self.trace.finish();
            }
            let outcome = RunOutcome::Failed(err);
            *self
                .shared
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(outcome.clone());
            let _ = self.shared.done.send_replace(true);
            let ended = self.ended(
                outcome,
                FrameBody::RunFailed {
                    error_type: "UserError".into(),
                    message: MESSAGE.into(),
                },
            );
            match (
                ended,
                &self.env.settle,
                tokio::runtime::Handle::try_current(),
            ) {
                (None, _, _) => {}
                (Some(ended), Some(settle), Ok(rt)) => {
                    let settle = settle.clone();
                    rt.spawn(async move { settle.settle(ended).await });
                }
                // No settler, or no runtime to settle on: announce it now.
                (Some(ended), _, _) => drop(ended),
            }
        }
    }
}

/// A run's outcome as its record's end: the engine knows its outcome types, the stores do not.
impl crate::session::RunEnd {
    /// The record of a finished run from its outcome (what the server has at `run.completed`,
    /// `run.failed` or `run.cancelled`), the agent it was on and its usage.
    pub fn from_outcome(
        outcome: &RunOutcome,
        current_agent: &str,
        usage: crate::usage::Usage,
    ) -> Self {
        match outcome {
            RunOutcome::Completed {
                final_output,
                last_agent,
            } => Self::completed(final_output.clone(), last_agent.clone(), usage),
            RunOutcome::Failed(e) => Self::failed(e, Some(current_agent.to_owned()), Some(usage)),
            RunOutcome::Cancelled(mode) => {
                let mut end = Self::cancelled(Some(current_agent.to_owned()), Some(usage));
                end.cancel_mode = Some(mode.as_str().to_owned());
                end
            }
            // Not an end: the run waits for a decision (its state says which).
            RunOutcome::Interrupted(_) => Self {
                status: crate::session::RunStatus::AwaitingApproval,
                last_agent: Some(current_agent.to_owned()),
                final_output: None,
                usage: Some(usage),
                error: None,
                cancel_mode: None,
                by_run_id: None,
                seq_safe: None,
            },
        }
    }
}
