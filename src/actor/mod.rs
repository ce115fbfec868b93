//! Agents as actors: each agent is an actix actor with a bounded mailbox, held in a
//! [`Stage`] (a registry keyed by agent name). The actor owns what belongs to the agent across
//! runs:
//!
//! - **admission**: at most `max_runs_per_agent` runs held at once; more new runs wait in the
//!   actor's bounded queue (real backpressure: they start, in order, as places free up), and a
//!   new run finding the queue full is refused `overloaded` at once;
//! - **its counters**: runs held and running, runs waiting (the mailbox depth), read by
//!   `/metrics` through [`AgentStats`].
//!
//! A run arrives with `Start` (a new run, subject to admission) or `Arrive` (a handoff: the
//! baton moves to this agent's mailbox and is always admitted, so a run in progress never
//! fails for load); it leaves with `Left` (ended or handed off), which lets the next waiting
//! run in. The actor drives each admitted baton as its own task on the tokio runtime, so a long
//! model stream never blocks its mailbox; turns on the same agent follow each other in that
//! task without another hop.
//!
//! The actors live on one actix `System` that the library hosts on its own thread, so a plain
//! `#[tokio::main]` program needs nothing set up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use actix::dev::SendError;
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use dashmap::DashMap;
use tokio::runtime::Handle;

use crate::agent::Agent;
use crate::error::AgentsError;

/// Default mailbox size of an agent actor.
pub const DEFAULT_MAILBOX: usize = 1024;
/// Default limit on runs held by one agent at once.
pub const DEFAULT_MAX_RUNS_PER_AGENT: usize = 100_000;
/// Default number of new runs that may wait for a place at a busy agent.
pub const DEFAULT_AGENT_QUEUE: usize = 1024;

// ---------------------------------------------------------------------------------------
// What an actor drives

/// What an agent actor admits and drives: a run's baton. The engine defines it
/// (`run::baton::Baton`); an actor knows only this much of it, so agents depend on the
/// engine's trait, never the engine on a concrete actor type nor the actor on the engine.
pub(crate) trait Work<C: Send + Sync + 'static>: Send + 'static {
    /// The agent it is for (whose mailbox it goes to).
    fn agent(&self) -> &Agent<C>;
    /// Takes its place at the agent (released when dropped: the run ended or handed off).
    fn admitted(&mut self, slot: AgentSlot);
    /// Drives it, as a task of its own, until it ends or is handed to another agent's
    /// mailbox through `stage`.
    fn drive(self: Box<Self>, stage: Stage<C>) -> futures::future::BoxFuture<'static, ()>;
    /// It was refused (`Overloaded`) before it started: it ends without announcing anything.
    fn refused(self: Box<Self>);
}

/// A run on its way to an agent.
type Baton<C> = Box<dyn Work<C>>;

// ---------------------------------------------------------------------------------------
// Messages

/// A new run for this agent: admitted now, queued, or (checked before sending) refused.
pub(crate) struct Start<C: Send + Sync + 'static>(pub Baton<C>);

impl<C: Send + Sync + 'static> Message for Start<C> {
    type Result = ();
}

/// A run handed off to this agent: always admitted.
pub(crate) struct Arrive<C: Send + Sync + 'static>(pub Baton<C>);

impl<C: Send + Sync + 'static> Message for Arrive<C> {
    type Result = ();
}

/// A run left this agent (it ended or handed off): its place is free.
pub(crate) struct Left;

impl Message for Left {
    type Result = ();
}

// ---------------------------------------------------------------------------------------
// The actor

/// An agent's counters, shared with the stage (for admission) and with metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Runs held by the agent: running, or waiting for a place.
    held: AtomicUsize,
    /// Runs running at the agent now.
    running: AtomicUsize,
    /// Runs waiting (in the mailbox or the actor's queue).
    waiting: AtomicUsize,
}

impl AgentStats {
    /// Runs running at the agent now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
    /// Runs waiting for a place (the mailbox depth).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// The actor of one agent.
pub struct AgentActor<C: Send + Sync + 'static> {
    name: Arc<str>,
    stage: Weak<StageInner<C>>,
    mailbox: usize,
    stats: Arc<AgentStats>,
    running: usize,
    queue: VecDeque<Baton<C>>,
}

impl<C: Send + Sync + 'static> Actor for AgentActor<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
        tracing::debug!(agent = %self.name, "agent actor started");
    }
}

impl<C: Send + Sync + 'static> AgentActor<C> {
    /// Drives an admitted baton as a task of its own; the mailbox is free again at once.
    fn run(&mut self, mut baton: Baton<C>, ctx: &Context<Self>) {
        let Some(stage) = self.stage.upgrade().map(Stage) else {
            // The runner is gone; dropping the baton fails the run cleanly.
            return;
        };
        self.running += 1;
        self.stats.running.store(self.running, Ordering::Relaxed);
        baton.admitted(AgentSlot {
            stats: self.stats.clone(),
            actor: Some(ctx.address().recipient()),
        });
        stage.0.rt.spawn(baton.drive(stage.clone()));
    }

    /// Lets waiting runs in while there are places.
    fn admit_waiting(&mut self, ctx: &Context<Self>) {
        while self.running < self.max_running() {
            let Some(b) = self.queue.pop_front() else {
                break;
            };
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.run(b, ctx);
        }
    }

    fn max_running(&self) -> usize {
        self.stage
            .upgrade()
            .map_or(usize::MAX, |s| s.limits.max_runs_per_agent)
    }
}

// ---------------------------------------------------------------------------------------
// Handlers

impl<C: Send + Sync + 'static> Handler<Start<C>> for AgentActor<C> {
    type Result = ();

    /// A new run: runs now if the agent has a place, else waits its turn in the queue (the
    /// stage already checked that the queue had room).
    fn handle(&mut self, msg: Start<C>, ctx: &mut Self::Context) {
        if self.running < self.max_running() && self.queue.is_empty() {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.run(msg.0, ctx);
        } else {
            self.queue.push_back(msg.0);
        }
    }
}

impl<C: Send + Sync + 'static> Handler<Arrive<C>> for AgentActor<C> {
    type Result = ();

    /// A handed-off run: always runs at once.
    fn handle(&mut self, msg: Arrive<C>, ctx: &mut Self::Context) {
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        self.run(msg.0, ctx);
    }
}

impl<C: Send + Sync + 'static> Handler<Left> for AgentActor<C> {
    type Result = ();

    /// A run left: the next waiting run takes its place.
    fn handle(&mut self, _msg: Left, ctx: &mut Self::Context) {
        self.running = self.running.saturating_sub(1);
        self.stats.running.store(self.running, Ordering::Relaxed);
        self.admit_waiting(ctx);
    }
}

impl<C: Send + Sync + 'static> Drop for AgentActor<C> {
    fn drop(&mut self) {
        // Runs still waiting when the actor stops end as failed runs (their batons' drop).
        self.queue.clear();
    }
}

/// A run's place at an agent; released when dropped (the run ended or handed off).
pub(crate) struct AgentSlot {
    stats: Arc<AgentStats>,
    actor: Option<actix::Recipient<Left>>,
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        self.stats.held.fetch_sub(1, Ordering::AcqRel);
        if let Some(a) = self.actor.take() {
            // A control message, bounded by the runs held: never refused for a full mailbox.
            a.do_send(Left);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stage

/// Limits of the stage's agents.
#[derive(Clone, Copy, Debug)]
pub struct StageLimits {
    /// Messages an agent's mailbox holds.
    pub mailbox: usize,
    /// Runs an agent runs at once.
    pub max_runs_per_agent: usize,
    /// New runs that may wait for a place at a busy agent; past that, `overloaded`.
    pub queue_per_agent: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        StageLimits {
            mailbox: DEFAULT_MAILBOX,
            max_runs_per_agent: DEFAULT_MAX_RUNS_PER_AGENT,
            queue_per_agent: DEFAULT_AGENT_QUEUE,
        }
    }
}

struct StageEntry<C: Send + Sync + 'static> {
    agent: Agent<C>,
    addr: Addr<AgentActor<C>>,
    stats: Arc<AgentStats>,
}

pub(crate) struct StageInner<C: Send + Sync + 'static> {
    agents: DashMap<String, StageEntry<C>>,
    pub(crate) rt: Handle,
    limits: StageLimits,
}

/// The registry of agent actors, keyed by agent name. Cheap to clone.
pub struct Stage<C: Send + Sync + 'static>(pub(crate) Arc<StageInner<C>>);

impl<C: Send + Sync + 'static> Clone for Stage<C> {
    fn clone(&self) -> Self {
        Stage(self.0.clone())
    }
}

impl<C: Send + Sync + 'static> Stage<C> {
    /// A stage whose turns run on the current tokio runtime (or the library's own when
    /// called outside one), with the default limits.
    pub fn new() -> Self {
        Self::with_limits(StageLimits::default())
    }

    /// A stage with these limits.
    pub fn with_limits(limits: StageLimits) -> Self {
        let rt = Handle::try_current().unwrap_or_else(|_| crate::runtime::fallback_runtime());
        Stage(Arc::new(StageInner {
            agents: DashMap::new(),
            rt,
            limits: StageLimits {
                mailbox: limits.mailbox.max(1),
                max_runs_per_agent: limits.max_runs_per_agent.max(1),
                queue_per_agent: limits.queue_per_agent,
            },
        }))
    }

    /// The limits in force.
    pub fn limits(&self) -> StageLimits {
        self.0.limits
    }

    /// Registers `agent` (and, transitively, the agents it hands off to), starting an actor
    /// for each name not yet on the stage. A new definition under a known name replaces the
    /// old one for runs that look it up by name.
    pub fn register(&self, agent: &Agent<C>) {
        let mut pending = vec![agent.clone()];
        while let Some(a) = pending.pop() {
            let known = self
                .0
                .agents
                .get(a.name())
                .is_some_and(|e| e.agent.same_as(&a));
            if known {
                continue;
            }
            for h in a.handoffs() {
                if let crate::handoff::HandoffTarget::Agent(t) = &h.target {
                    pending.push(t.clone());
                }
            }
            self.ensure(&a);
        }
    }

    fn ensure(&self, agent: &Agent<C>) -> (Addr<AgentActor<C>>, Arc<AgentStats>) {
        if let Some(mut e) = self.0.agents.get_mut(agent.name()) {
            if !e.agent.same_as(agent) {
                e.agent = agent.clone();
            }
            return (e.addr.clone(), e.stats.clone());
        }
        let entry = self
            .0
            .agents
            .entry(agent.name().to_owned())
            .or_insert_with(|| {
                let name: Arc<str> = agent.name().into();
                let stage = Arc::downgrade(&self.0);
                let mailbox = self.0.limits.mailbox;
                let stats = Arc::new(AgentStats::default());
                let actor_stats = stats.clone();
                let addr =
                    AgentActor::start_in_arbiter(crate::runtime::actor_arbiter(), move |_ctx| {
                        AgentActor {
                            name,
                            stage,
                            mailbox,
                            stats: actor_stats,
                            running: 0,
                            queue: VecDeque::new(),
                        }
                    });
                StageEntry {
                    agent: agent.clone(),
                    addr,
                    stats,
                }
            });
        (entry.addr.clone(), entry.stats.clone())
    }

    /// The agent registered under `name`.
    pub fn get(&self, name: &str) -> Option<Agent<C>> {
        self.0.agents.get(name).map(|e| e.agent.clone())
    }

    /// The registered agent names.
    pub fn names(&self) -> Vec<String> {
        self.0.agents.iter().map(|e| e.key().clone()).collect()
    }

    /// Runs currently running at the agent `name`.
    pub fn active_runs(&self, name: &str) -> usize {
        self.0.agents.get(name).map_or(0, |e| e.stats.running())
    }

    /// Every agent's counters, by name.
    pub fn stats(&self) -> Vec<(String, Arc<AgentStats>)> {
        self.0
            .agents
            .iter()
            .map(|e| (e.key().clone(), e.stats.clone()))
            .collect()
    }

    /// Whether a new run at `agent` would be admitted now (running or queued).
    pub fn can_admit(&self, agent: &Agent<C>) -> bool {
        let (_, stats) = self.ensure(agent);
        stats.held.load(Ordering::Acquire) < self.capacity()
    }

    fn capacity(&self) -> usize {
        let l = self.0.limits;
        l.max_runs_per_agent.saturating_add(l.queue_per_agent)
    }

    /// Sends a new run to its agent's mailbox, or refuses it with `Overloaded` when the agent
    /// has no place and no room in its queue (the baton is then told, `Work::refused`).
    pub(crate) fn start(&self, baton: Baton<C>) -> Result<(), AgentsError> {
        let (addr, stats) = self.ensure(baton.agent());
        let cap = self.capacity();
        let reserved = stats
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
        if let Err(n) = reserved {
            let msg = format!(
                "agent {} already holds {n} runs ({} running, the rest waiting; the limit); try again later",
                baton.agent().name(),
                stats.running()
            );
            baton.refused();
            return Err(AgentsError::Overloaded(msg));
        }
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        match addr.try_send(Start(baton)) {
            Ok(()) => Ok(()),
            Err(SendError::Full(Start(b))) => {
                stats.held.fetch_sub(1, Ordering::AcqRel);
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                let msg = format!(
                    "agent {}'s mailbox is full; try again later",
                    b.agent().name()
                );
                b.refused();
                Err(AgentsError::Overloaded(msg))
            }
            Err(SendError::Closed(Start(b))) => {
                // The actor is gone: drive the run here rather than lose it.
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                self.drive_here(b, stats);
                Ok(())
            }
        }
    }

    /// Hands a baton to its (new) agent's mailbox: always admitted. A full mailbox is waited
    /// on (backpressure), never bypassed.
    pub(crate) fn arrive(&self, baton: Baton<C>) {
        let (addr, stats) = self.ensure(baton.agent());
        stats.held.fetch_add(1, Ordering::AcqRel);
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        match addr.try_send(Arrive(baton)) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                self.0.rt.spawn(async move {
                    // Only a stopped actor system refuses it; the baton's drop then ends the
                    // run as failed, so no consumer waits for ever.
                    if let Err(e) = addr.send(msg).await {
                        stats.waiting.fetch_sub(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "agent mailbox closed while a handoff waited");
                    }
                });
            }
            Err(SendError::Closed(Arrive(b))) => {
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                self.drive_here(b, stats);
            }
        }
    }

    fn drive_here(&self, mut baton: Baton<C>, stats: Arc<AgentStats>) {
        baton.admitted(AgentSlot { stats, actor: None });
        self.0.rt.spawn(baton.drive(self.clone()));
    }
}

impl<C: Send + Sync + 'static> Default for Stage<C> {
    fn default() -> Self {
        Self::new()
    }
}
