//! Agents as actors: each agent is an actix actor with a bounded mailbox, held in a
//! [`Stage`] (a registry keyed by agent name). A turn is a [`Turn`] message carrying the
//! baton; the actor drives each baton as its own task on the tokio runtime, so a long model
//! stream never blocks its mailbox. A handoff sends the baton to the target actor's mailbox.
//!
//! The actors live on one actix `System` that the library hosts on its own thread, so a
//! plain `#[tokio::main]` program needs nothing set up. Admission is counted per agent: a new
//! run past the agent's limit is answered `overloaded` instead of queueing without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use actix::dev::SendError;
use actix::{Actor, Addr, ArbiterHandle, Context, Handler, Message};
use dashmap::DashMap;
use tokio::runtime::Handle;

use crate::agent::Agent;
use crate::error::AgentsError;
use crate::run::baton::Baton;
use crate::run::engine;

/// Default mailbox size of an agent actor.
pub const DEFAULT_MAILBOX: usize = 1024;
/// Default limit on runs held by one agent at once.
pub const DEFAULT_MAX_RUNS_PER_AGENT: usize = 100_000;

/// The arbiter of the library's actix `System`, started on its own thread on first use.
pub(crate) fn actor_arbiter() -> &'static ArbiterHandle {
    static HOST: OnceLock<ArbiterHandle> = OnceLock::new();
    HOST.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("callboard-actors".into())
            .spawn(move || {
                let sys = actix::System::new();
                sys.block_on(async {
                    let _ = tx.send(actix::Arbiter::current());
                });
                let _ = sys.run();
            });
        match spawned.ok().and_then(|_| rx.recv().ok()) {
            Some(h) => h,
            None => panic!("callboard: could not start the actor system thread"),
        }
    })
}

/// The library's own tokio runtime, for work started outside any runtime.
pub(crate) fn library_runtime() -> Handle {
    fallback_runtime()
}

fn fallback_runtime() -> Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("callboard-runs")
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("callboard: could not start a tokio runtime: {e}"),
        }
    })
    .handle()
    .clone()
}

/// One turn of a run, sent to the agent whose turn it is.
pub(crate) struct Turn<C: Send + Sync + 'static>(pub Baton<C>);

impl<C: Send + Sync + 'static> Message for Turn<C> {
    type Result = ();
}

/// The actor of one agent.
pub struct AgentActor<C: Send + Sync + 'static> {
    name: Arc<str>,
    stage: Weak<StageInner<C>>,
    mailbox: usize,
}

impl<C: Send + Sync + 'static> Actor for AgentActor<C> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
        tracing::debug!(agent = %self.name, "agent actor started");
    }
}

impl<C: Send + Sync + 'static> Handler<Turn<C>> for AgentActor<C> {
    type Result = ();

    /// Admits the baton and drives its turn as a task of its own; the mailbox is free again
    /// at once.
    fn handle(&mut self, msg: Turn<C>, _ctx: &mut Self::Context) {
        let Some(stage) = self.stage.upgrade() else {
            // The runner is gone; dropping the baton fails the run cleanly.
            return;
        };
        let stage = Stage(stage);
        stage.0.rt.spawn(engine::drive(msg.0, stage.clone()));
    }
}

struct StageEntry<C: Send + Sync + 'static> {
    agent: Agent<C>,
    addr: Addr<AgentActor<C>>,
    active: Arc<AtomicUsize>,
}

pub(crate) struct StageInner<C: Send + Sync + 'static> {
    agents: DashMap<String, StageEntry<C>>,
    pub(crate) rt: Handle,
    mailbox: usize,
    max_runs_per_agent: usize,
}

/// The registry of agent actors, keyed by agent name. Cheap to clone.
pub struct Stage<C: Send + Sync + 'static>(pub(crate) Arc<StageInner<C>>);

impl<C: Send + Sync + 'static> Clone for Stage<C> {
    fn clone(&self) -> Self {
        Stage(self.0.clone())
    }
}

/// A run's place at an agent; released when dropped.
pub(crate) struct AgentSlot(Arc<AtomicUsize>);

impl Drop for AgentSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<C: Send + Sync + 'static> Stage<C> {
    /// A stage whose turns run on the current tokio runtime (or the library's own when
    /// called outside one).
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAILBOX, DEFAULT_MAX_RUNS_PER_AGENT)
    }

    /// A stage with a mailbox size and a per-agent limit on concurrent runs.
    pub fn with_limits(mailbox: usize, max_runs_per_agent: usize) -> Self {
        let rt = Handle::try_current().unwrap_or_else(|_| fallback_runtime());
        Stage(Arc::new(StageInner {
            agents: DashMap::new(),
            rt,
            mailbox: mailbox.max(1),
            max_runs_per_agent: max_runs_per_agent.max(1),
        }))
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

    fn ensure(&self, agent: &Agent<C>) -> (Addr<AgentActor<C>>, Arc<AtomicUsize>) {
        if let Some(mut e) = self.0.agents.get_mut(agent.name()) {
            if !e.agent.same_as(agent) {
                e.agent = agent.clone();
            }
            return (e.addr.clone(), e.active.clone());
        }
        let entry = self
            .0
            .agents
            .entry(agent.name().to_owned())
            .or_insert_with(|| {
                let name: Arc<str> = agent.name().into();
                let stage = Arc::downgrade(&self.0);
                let mailbox = self.0.mailbox;
                let addr = AgentActor::start_in_arbiter(actor_arbiter(), move |_ctx| AgentActor {
                    name,
                    stage,
                    mailbox,
                });
                StageEntry {
                    agent: agent.clone(),
                    addr,
                    active: Arc::new(AtomicUsize::new(0)),
                }
            });
        (entry.addr.clone(), entry.active.clone())
    }

    /// The agent registered under `name`.
    pub fn get(&self, name: &str) -> Option<Agent<C>> {
        self.0.agents.get(name).map(|e| e.agent.clone())
    }

    /// The registered agent names.
    pub fn names(&self) -> Vec<String> {
        self.0.agents.iter().map(|e| e.key().clone()).collect()
    }

    /// Runs currently held by the agent `name`.
    pub fn active_runs(&self, name: &str) -> usize {
        self.0
            .agents
            .get(name)
            .map_or(0, |e| e.active.load(Ordering::Acquire))
    }

    /// Takes a place at `agent` for a new run, or refuses with `Overloaded`.
    pub(crate) fn admit(&self, agent: &Agent<C>) -> Result<AgentSlot, AgentsError> {
        let (_, active) = self.ensure(agent);
        let prev = active.fetch_add(1, Ordering::AcqRel);
        if prev >= self.0.max_runs_per_agent {
            active.fetch_sub(1, Ordering::AcqRel);
            return Err(AgentsError::Overloaded(format!(
                "agent {} already has {} runs in progress (the limit); try again later",
                agent.name(),
                prev
            )));
        }
        Ok(AgentSlot(active))
    }

    /// Takes a place at `agent` for a run arriving by handoff (always admitted, so a run in
    /// progress never fails for load).
    pub(crate) fn admit_handoff(&self, agent: &Agent<C>) -> AgentSlot {
        let (_, active) = self.ensure(agent);
        active.fetch_add(1, Ordering::AcqRel);
        AgentSlot(active)
    }

    /// Sends the baton to the mailbox of the agent whose turn it is. A full mailbox is waited
    /// on (backpressure), never bypassed.
    pub(crate) fn dispatch(&self, baton: Baton<C>) {
        let (addr, _) = self.ensure(&baton.agent);
        match addr.try_send(Turn(baton)) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                self.0.rt.spawn(async move {
                    if let Err(e) = addr.send(msg).await {
                        tracing::error!(error = %e, "agent mailbox closed while waiting");
                    }
                });
            }
            Err(SendError::Closed(msg)) => {
                // The actor is gone: drive the turn here rather than lose the run.
                self.0.rt.spawn(engine::drive(msg.0, self.clone()));
            }
        }
    }
}

impl<C: Send + Sync + 'static> Default for Stage<C> {
    fn default() -> Self {
        Self::new()
    }
}
