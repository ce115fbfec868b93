//! Run results: [`RunResult`] for a finished run and [`RunResultStreaming`], the live handle
//! of a streamed run (events, usage so far, cancel).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::Stream;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::bus::{CancelMode, Frame};
use crate::context::RunContext;
use crate::error::AgentsError;
use crate::events::StreamEvent;
use crate::guardrail::GuardrailResult;
use crate::items::{Item, RunItem};
use crate::model::ResponseObject;
use crate::run::baton::{RunOutcome, RunShared};
use crate::usage::Usage;

/// A finished run (the SDK's `RunResult`).
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The run's id.
    pub run_id: String,
    /// The input the run started from (session history included).
    pub input: Vec<Item>,
    /// Items the run produced.
    pub new_items: Vec<RunItem>,
    /// Every model response.
    pub raw_responses: Vec<ResponseObject>,
    /// The final output: text as a JSON string, structured output as JSON.
    pub final_output: Value,
    /// The agent that produced it.
    pub last_agent: String,
    /// Usage over the run.
    pub usage: Usage,
    /// Input guardrail results.
    pub input_guardrail_results: Vec<GuardrailResult>,
    /// Output guardrail results.
    pub output_guardrail_results: Vec<GuardrailResult>,
    /// The trace id, when traced.
    pub trace_id: Option<String>,
    /// Tool calls waiting for a person's decision, when the run paused.
    pub interruptions: Vec<crate::run::state::ToolApproval>,
    /// The paused run's state (decide with `approve` / `reject`, then `Runner::resume`).
    pub state: Option<crate::run::state::RunState>,
}

impl RunResult {
    /// The tool calls waiting for a decision (the SDK's `interruptions`).
    pub fn interruptions(&self) -> &[crate::run::state::ToolApproval] {
        &self.interruptions
    }

    /// The paused run's state (the SDK's `to_state`).
    pub fn to_state(&self) -> Option<crate::run::state::RunState> {
        self.state.clone()
    }

    /// The input plus the new items, ready for the next run (the SDK's `to_input_list`).
    pub fn to_input_list(&self) -> Vec<Item> {
        let mut v = self.input.clone();
        v.extend(self.new_items.iter().map(RunItem::to_input_item));
        v
    }

    /// The final output as text, when it is text.
    pub fn final_output_text(&self) -> Option<&str> {
        self.final_output.as_str()
    }

    /// The final output parsed into `T` (the SDK's `final_output_as`).
    pub fn final_output_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.final_output.clone())
    }
}

/// A streamed run in progress (the SDK's `RunResultStreaming`).
///
/// Read its events with [`stream_events`](Self::stream_events); the stream always ends,
/// also on errors and cancellation, and [`error`](Self::error) then tells what went wrong.
///
/// The events wait in a bounded buffer ([`EVENT_BUFFER`](crate::run::EVENT_BUFFER)) until
/// they are read: a reader that falls a whole buffer behind pauses the run until it catches
/// up (cancelling still works), so memory stays bounded however fast the model streams.
/// [`wait`](Self::wait) and [`done`](Self::done) give up the stream, so the run never waits
/// for a reader that will not come.
pub struct RunResultStreaming<C> {
    pub(crate) shared: Arc<RunShared>,
    pub(crate) ctx: RunContext<C>,
    pub(crate) rx: Mutex<Option<mpsc::Receiver<Arc<Frame>>>>,
    pub(crate) max_turns: u64,
}

impl<C: Send + Sync + 'static> RunResultStreaming<C> {
    fn take_rx(&self) -> Option<mpsc::Receiver<Arc<Frame>>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The run's events as they happen. Ends when the run ends; call once.
    ///
    /// As in the SDK, the run does not start its next turn until this stream's reader has
    /// handled every event of the current one (asked for the next event), so what the reader
    /// does on an event (cancel after this turn, say) always takes effect in time.
    pub fn stream_events(&mut self) -> impl Stream<Item = StreamEvent> + Send + Unpin + 'static {
        let rx = self.take_rx();
        let reader = rx.as_ref().map(|_| Reader::attach(self.shared.clone()));
        Box::pin(futures::stream::unfold(
            (rx, reader, 0u64),
            |(rx, reader, mut n)| async move {
                let mut rx = rx?;
                if let Some(r) = &reader {
                    // Asking for the next event: every one before it has been handled.
                    r.0.turn_sync.handled(n);
                }
                loop {
                    let frame = rx.recv().await?;
                    if frame.body.is_terminal() {
                        return None;
                    }
                    n += 1;
                    if let Some(ev) = frame.event() {
                        return Some((ev.clone(), (Some(rx), reader, n)));
                    }
                }
            },
        ))
    }

    /// The run's frames as published on its session topic (with `seq`), for relays; the
    /// last one is the run's end frame. Bounded like [`stream_events`](Self::stream_events).
    pub fn frames(&mut self) -> Option<mpsc::Receiver<Arc<Frame>>> {
        self.take_rx()
    }

    /// Cancels the run: now, or after the current turn.
    pub fn cancel(&self, mode: CancelMode) {
        self.shared.cancel(mode);
    }

    /// A handle that can cancel the run from elsewhere.
    pub fn canceller(&self) -> RunCanceller {
        RunCanceller(self.shared.clone())
    }

    /// Whether the run has ended.
    pub fn is_complete(&self) -> bool {
        self.shared.is_complete()
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The trace id, when traced.
    pub fn trace_id(&self) -> Option<&str> {
        self.shared.trace_id.as_deref()
    }

    /// The `run` log span the run's work happens in (its ids as fields); instrument work
    /// done for the run elsewhere with it.
    pub fn log_span(&self) -> &tracing::Span {
        &self.shared.log_span
    }

    /// The turn in progress (from 1).
    pub fn current_turn(&self) -> u64 {
        self.shared.current_turn.load(Ordering::Acquire)
    }

    /// `max_turns` of the run.
    pub fn max_turns(&self) -> u64 {
        self.max_turns
    }

    /// The agent whose turn it is (the last agent once the run ended).
    pub fn current_agent(&self) -> String {
        self.shared
            .current_agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Alias of [`current_agent`](Self::current_agent), as the SDK names it after the run.
    pub fn last_agent(&self) -> String {
        self.current_agent()
    }

    /// Usage so far (live while streaming).
    pub fn usage(&self) -> Usage {
        self.ctx.usage()
    }

    /// Items produced by finished turns so far.
    pub fn new_items(&self) -> Vec<RunItem> {
        self.shared
            .new_items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Model responses so far.
    pub fn raw_responses(&self) -> Vec<ResponseObject> {
        self.shared
            .raw_responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How the run ended, once it has.
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The final output, once the run completed.
    pub fn final_output(&self) -> Option<Value> {
        match self.outcome()? {
            RunOutcome::Completed { final_output, .. } => Some(final_output),
            _ => None,
        }
    }

    /// The error, if the run failed.
    pub fn error(&self) -> Option<AgentsError> {
        match self.outcome()? {
            RunOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// How the run was cancelled, if it was.
    pub fn cancelled(&self) -> Option<CancelMode> {
        match self.outcome()? {
            RunOutcome::Cancelled(m) => Some(m),
            _ => None,
        }
    }

    /// The input plus the items so far (the SDK's `to_input_list`).
    pub fn to_input_list(&self) -> Vec<Item> {
        let mut v = self.input();
        v.extend(self.new_items().iter().map(RunItem::to_input_item));
        v
    }

    /// The input the run started from (session history included once loaded).
    pub fn input(&self) -> Vec<Item> {
        self.shared
            .input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the end of the run without consuming the handle (giving up the event
    /// stream if it was not taken).
    pub async fn done(&self) {
        drop(self.take_rx());
        self.shared.wait_done().await;
    }

    /// Waits for the end of the run and returns its result, or its error. A cancelled run
    /// returns the items it finished with an empty final output.
    pub async fn wait(self) -> Result<RunResult, AgentsError> {
        drop(self.take_rx());
        self.shared.wait_done().await;
        let (final_output, last_agent) = match self.outcome() {
            Some(RunOutcome::Completed {
                final_output,
                last_agent,
            }) => (final_output, last_agent),
            Some(RunOutcome::Failed(e)) => return Err(e),
            Some(RunOutcome::Cancelled(_)) | Some(RunOutcome::Interrupted(_)) | None => {
                (Value::Null, self.current_agent())
            }
        };
        Ok(RunResult {
            run_id: self.shared.run_id.to_string(),
            input: self.input(),
            new_items: self.new_items(),
            raw_responses: self.raw_responses(),
            final_output,
            last_agent,
            usage: self.usage(),
            input_guardrail_results: self
                .shared
                .input_guardrail_results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            output_guardrail_results: self
                .shared
                .output_guardrail_results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            trace_id: self.shared.trace_id.clone(),
            interruptions: self.interruptions(),
            state: self.to_state(),
        })
    }

    /// The tool calls waiting for a person's decision, when the run paused (the SDK's
    /// `interruptions`).
    pub fn interruptions(&self) -> Vec<crate::run::state::ToolApproval> {
        match self.outcome() {
            Some(RunOutcome::Interrupted(i)) => i,
            _ => Vec::new(),
        }
    }

    /// The paused run's state, to decide on and resume (the SDK's `to_state`).
    pub fn to_state(&self) -> Option<crate::run::state::RunState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A `stream_events` reader, attached to its run's turn-level backpressure while it lives.
struct Reader(Arc<RunShared>);

impl Reader {
    fn attach(shared: Arc<RunShared>) -> Reader {
        shared
            .turn_sync
            .reading
            .store(true, std::sync::atomic::Ordering::Release);
        Reader(shared)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.turn_sync.detach();
    }
}

/// Cancels a run from anywhere (the server's `run.cancel` uses it).
#[derive(Clone)]
pub struct RunCanceller(Arc<RunShared>);

impl RunCanceller {
    /// Cancels the run.
    pub fn cancel(&self, mode: CancelMode) {
        self.0.cancel(mode);
    }

    /// Cancels the run on behalf of another (double-texting `interrupt` / `rollback`).
    pub fn cancel_by(&self, mode: CancelMode, by_run_id: Option<Arc<str>>) {
        self.0.cancel_by(mode, by_run_id);
    }

    /// Whether the run has ended.
    pub fn is_complete(&self) -> bool {
        self.0.is_complete()
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.0.run_id
    }
}
