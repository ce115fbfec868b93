//! The actor that owns one MCP server: it connects (starting the child process or opening
//! the HTTP session), lists the tools, follows `notifications/tools/list_changed`, notices
//! when the connection dies and reconnects with backoff. Runs never wait on its mailbox:
//! it publishes its state in a `watch` that calls read, and the connection's I/O runs as a
//! task on the tokio runtime, not in the actor.
//!
//! The connection itself (process or HTTP session, handshake, listing, following it) is
//! `crate::mcp::connection`.
//!
//! While a server is restarting its tools stay on offer (from the last listing) and their
//! calls answer tool errors, so a run goes on and its model can try again later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use rmcp::service::RoleClient;
use rmcp::Peer;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::mcp::client::ConnectionEvents;
use crate::mcp::config::McpServerConfig;
use crate::mcp::tool::McpTool;
use crate::tool::ToolPolicy;

/// First wait before reconnecting.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait before reconnecting.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Where a server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Connecting (the first time, or again after a failure).
    Starting,
    /// Connected; calls go through.
    Ready,
    /// The connection failed or died; waiting before the next attempt.
    Restarting,
    /// Shut down.
    Stopped,
}

/// One live connection.
pub(crate) struct Connection {
    pub peer: Peer<RoleClient>,
    pub events: Arc<ConnectionEvents>,
    pub generation: u64,
}

/// What the actor publishes.
pub(crate) struct Snapshot {
    pub phase: Phase,
    pub tools: Arc<[Arc<McpTool>]>,
    pub conn: Option<Arc<Connection>>,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub pid: Option<u32>,
}

/// What the server's handle, its tools and its actor share.
pub(crate) struct Core {
    pub name: Arc<str>,
    pub config: McpServerConfig,
    state: watch::Sender<Arc<Snapshot>>,
    policies: Mutex<HashMap<Arc<str>, ToolPolicy>>,
    actor: Mutex<Option<actix::Addr<McpActor>>>,
}

impl Core {
    pub fn new(config: McpServerConfig) -> Arc<Core> {
        let (state, _) = watch::channel(Arc::new(Snapshot {
            phase: Phase::Starting,
            tools: Arc::from(Vec::new()),
            conn: None,
            restarts: 0,
            last_error: None,
            pid: None,
        }));
        Arc::new(Core {
            name: config.name.as_str().into(),
            config,
            state,
            policies: Mutex::new(HashMap::new()),
            actor: Mutex::new(None),
        })
    }

    /// The state now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.state.subscribe()
    }

    fn publish(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        self.state.send_modify(|s| *s = Arc::new(f(s)));
    }

    /// The connection to call on, or why there is none.
    pub fn connection(&self) -> Result<Arc<Connection>, String> {
        let s = self.snapshot();
        match (&s.phase, &s.conn) {
            (Phase::Ready, Some(c)) => Ok(c.clone()),
            (Phase::Stopped, _) => Err(format!("the MCP server {} was shut down", self.name)),
            _ => Err(format!(
                "the MCP server {} is not available right now ({}); it is being restarted, try again later",
                self.name,
                s.last_error.as_deref().unwrap_or("it is starting")
            )),
        }
    }

    /// A call failed on `conn`: when its transport is closed, the actor is told at once
    /// (a dead child is noticed anyway; an HTTP session that died is noticed here).
    pub fn report_call_failure(&self, conn: &Connection) {
        if !conn.peer.is_transport_closed() {
            return;
        }
        let addr = self.actor.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(a) = addr {
            // A full mailbox already holds news for the actor; this one may go.
            let _ = a.try_send(Disconnected {
                generation: conn.generation,
                reason: "the connection closed".into(),
            });
        }
    }

    /// The policy of the tool `name` (its concurrency slots last across relistings).
    pub fn policy_for(&self, name: &str) -> ToolPolicy {
        let mut p = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = p.get(name) {
            return x.clone();
        }
        let x = self.config.policy();
        p.insert(name.into(), x.clone());
        x
    }

    /// Builds the tools the config offers from a listing.
    pub fn tools_from(self: &Arc<Core>, listed: &[rmcp::model::Tool]) -> Arc<[Arc<McpTool>]> {
        let weak: Weak<Core> = Arc::downgrade(self);
        listed
            .iter()
            .filter(|t| self.config.offers(&t.name))
            .map(|t| {
                Arc::new(McpTool::from_listed(
                    t,
                    &self.name,
                    &self.policy_for(&t.name),
                    weak.clone(),
                ))
            })
            .collect::<Vec<_>>()
            .into()
    }

    pub fn set_actor(&self, addr: actix::Addr<McpActor>) {
        *self.actor.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }
}

/// The connection is up and its tools are listed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Connected {
    pub(crate) generation: u64,
    pub(crate) conn: Arc<Connection>,
    pub(crate) tools: Vec<rmcp::model::Tool>,
    pub(crate) pid: Option<u32>,
}

/// Connecting failed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ConnectFailed {
    pub(crate) generation: u64,
    pub(crate) error: String,
}

/// A live connection ended (the child exited, the session closed).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Disconnected {
    pub(crate) generation: u64,
    pub(crate) reason: String,
}

/// The server's tools were listed again after `notifications/tools/list_changed`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ToolsListed {
    pub(crate) generation: u64,
    pub(crate) tools: Vec<rmcp::model::Tool>,
}

/// Stop: close the connection (a child is asked to exit, then killed) and end the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// The actor of one MCP server.
pub(crate) struct McpActor {
    core: Arc<Core>,
    rt: Handle,
    generation: u64,
    backoff: Duration,
    connected_at: Option<Instant>,
    stop: Option<CancellationToken>,
}

impl McpActor {
    pub fn new(core: Arc<Core>, rt: Handle) -> Self {
        McpActor {
            core,
            rt,
            generation: 0,
            backoff: BACKOFF_MIN,
            connected_at: None,
            stop: None,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        if let Some(old) = self.stop.take() {
            old.cancel();
        }
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        self.connected_at = None;
        self.core.publish(|s| Snapshot {
            phase: Phase::Starting,
            tools: s.tools.clone(),
            conn: None,
            restarts: s.restarts,
            last_error: s.last_error.clone(),
            pid: None,
        });
        self.rt.spawn(crate::mcp::connection::run_connection(
            self.core.clone(),
            self.generation,
            stop,
            ctx.address(),
        ));
    }

    fn lost(&mut self, ctx: &mut Context<Self>, error: String) {
        if let Some(old) = self.stop.take() {
            old.cancel();
        }
        if self
            .connected_at
            .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
        {
            self.backoff = BACKOFF_MIN;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tracing::warn!(
            server = %self.core.name,
            error = %error,
            retry_in_ms = wait.as_millis() as u64,
            "MCP server unavailable; restarting it"
        );
        self.core.publish(|s| Snapshot {
            phase: Phase::Restarting,
            tools: s.tools.clone(),
            conn: None,
            restarts: s.restarts + 1,
            last_error: Some(error),
            pid: None,
        });
        ctx.run_later(wait, |a, ctx| a.connect(ctx));
    }
}

impl Actor for McpActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.connect(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }
}

impl Handler<Connected> for McpActor {
    type Result = ();

    /// Publishes the new connection and its tools.
    fn handle(&mut self, msg: Connected, _ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        self.connected_at = Some(Instant::now());
        let tools = self.core.tools_from(&msg.tools);
        tracing::info!(server = %self.core.name, tools = tools.len(), "MCP server ready");
        self.core.publish(|s| Snapshot {
            phase: Phase::Ready,
            tools,
            conn: Some(msg.conn),
            restarts: s.restarts,
            last_error: s.last_error.clone(),
            pid: msg.pid,
        });
    }
}

impl Handler<ConnectFailed> for McpActor {
    type Result = ();

    /// Schedules the next attempt.
    fn handle(&mut self, msg: ConnectFailed, ctx: &mut Self::Context) {
        if msg.generation == self.generation {
            self.lost(ctx, msg.error);
        }
    }
}

impl Handler<Disconnected> for McpActor {
    type Result = ();

    /// Schedules a reconnection; the tools stay on offer meanwhile.
    fn handle(&mut self, msg: Disconnected, ctx: &mut Self::Context) {
        if msg.generation == self.generation && self.connected_at.is_some() {
            self.lost(ctx, msg.reason);
        }
    }
}

impl Handler<ToolsListed> for McpActor {
    type Result = ();

    /// Publishes the new tool list.
    fn handle(&mut self, msg: ToolsListed, _ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        let tools = self.core.tools_from(&msg.tools);
        tracing::info!(server = %self.core.name, tools = tools.len(), "MCP server's tools changed");
        self.core.publish(|s| Snapshot {
            phase: s.phase,
            tools,
            conn: s.conn.clone(),
            restarts: s.restarts,
            last_error: s.last_error.clone(),
            pid: s.pid,
        });
    }
}

impl Handler<Shutdown> for McpActor {
    type Result = ();

    /// Closes the connection and stops.
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.generation += 1;
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
        self.core.publish(|s| Snapshot {
            phase: Phase::Stopped,
            tools: Arc::from(Vec::new()),
            conn: None,
            restarts: s.restarts,
            last_error: s.last_error.clone(),
            pid: None,
        });
        ctx.stop();
    }
}
