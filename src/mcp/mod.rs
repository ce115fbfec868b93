//! MCP servers as tool sources, with the official Rust SDK (`rmcp`).
//!
//! A [`McpServer`] is a handle on one server, owned by an actor (`actor`) that keeps it
//! connected: started at once, restarted with backoff when it dies, its tool list cached and
//! refreshed on `notifications/tools/list_changed`. Any number of agents and runs share one
//! server. An agent gets its tools at each turn (`Agent::mcp_server`); a call carries an MCP
//! progress token and its progress notifications reach subscribers as `tool.progress`.
//!
//! - `config`: the `[[mcp_servers]]` entry (parsed also without the `mcp` feature).
//! - `actor`: the actor owning a server's connection, its state and its restarts.
//! - `connection`: one connection's life (transport, handshake, listing, its end).
//! - `client`: the `rmcp` client handler: progress routing, tool-list changes.
//! - `tool`: one listed tool as an agent's tool.

pub mod config;

#[cfg(feature = "mcp")]
pub(crate) mod actor;
#[cfg(feature = "mcp")]
pub(crate) mod client;
#[cfg(feature = "mcp")]
pub(crate) mod connection;
#[cfg(feature = "mcp")]
pub mod tool;

pub use config::{McpServerConfig, McpTransport};

#[cfg(feature = "mcp")]
pub use actor::Phase;
#[cfg(feature = "mcp")]
pub use running::{McpError, McpServer, McpServerStatus};
#[cfg(feature = "mcp")]
pub use tool::McpTool;

/// An `[[mcp_servers]]` entry this build cannot start: the config key and what is wrong
/// (the config names its file).
#[cfg(feature = "server")]
#[derive(Clone, Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct McpConfigError {
    /// The dotted key (`mcp_servers[0]`).
    pub key: String,
    /// What is wrong, and what to do.
    pub message: String,
}

/// The MCP servers of a config, by name: started by the server and `callboard run`, not by
/// `check-config`. Without the `mcp` feature a config that has any is refused.
#[cfg(feature = "server")]
#[derive(Clone, Default)]
pub struct McpServers {
    #[cfg(feature = "mcp")]
    servers: std::collections::BTreeMap<String, McpServer>,
}

#[cfg(feature = "server")]
impl McpServers {
    /// Starts every `[[mcp_servers]]` entry (each connects in the background).
    pub fn start(configs: &[McpServerConfig]) -> Result<McpServers, McpConfigError> {
        #[cfg(feature = "mcp")]
        {
            let mut servers = std::collections::BTreeMap::new();
            for (i, c) in configs.iter().enumerate() {
                let s = McpServer::start(c.clone()).map_err(|e| McpConfigError {
                    key: format!("mcp_servers[{i}]"),
                    message: e.to_string(),
                })?;
                servers.insert(c.name.clone(), s);
            }
            Ok(McpServers { servers })
        }
        #[cfg(not(feature = "mcp"))]
        {
            Self::check(configs).map(|()| McpServers::default())
        }
    }

    /// Checks that this build can run the entries (without starting them).
    pub fn check(configs: &[McpServerConfig]) -> Result<(), McpConfigError> {
        if cfg!(feature = "mcp") || configs.is_empty() {
            return Ok(());
        }
        Err(McpConfigError {
            key: "mcp_servers".into(),
            message: "this callboard was built without the `mcp` feature; rebuild with it (it is on by default)".into(),
        })
    }

    /// Gives `agent` the tools of the servers named in `names` (unknown names, or servers not
    /// started, are skipped: the config was validated).
    pub fn attach(&self, agent: crate::agent::Agent, names: &[String]) -> crate::agent::Agent {
        #[cfg(feature = "mcp")]
        {
            let mut agent = agent;
            for n in names {
                if let Some(s) = self.servers.get(n) {
                    agent = agent.mcp_server(s);
                }
            }
            agent
        }
        #[cfg(not(feature = "mcp"))]
        {
            let _ = names;
            agent
        }
    }

    /// Where each server is (`GET /v1/mcp_servers`).
    pub fn statuses(&self) -> Vec<serde_json::Value> {
        #[cfg(feature = "mcp")]
        {
            self.servers
                .values()
                .filter_map(|s| serde_json::to_value(s.status()).ok())
                .collect()
        }
        #[cfg(not(feature = "mcp"))]
        {
            Vec::new()
        }
    }

    /// The server named `name`.
    #[cfg(feature = "mcp")]
    pub fn get(&self, name: &str) -> Option<&McpServer> {
        self.servers.get(name)
    }

    /// Closes every server (children are asked to exit, then killed).
    pub fn shutdown(&self) {
        #[cfg(feature = "mcp")]
        for s in self.servers.values() {
            s.shutdown();
        }
    }
}

/// Installs rustls' ring provider for the HTTP transport's TLS, once (the transport's own
/// HTTP client takes the process's default provider).
#[cfg(feature = "mcp")]
pub(crate) fn ensure_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the program may have installed one already; that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(feature = "mcp")]
mod running {
    use std::sync::Arc;
    use std::time::Duration;

    use actix::Actor;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use serde::Serialize;
    use tokio::runtime::Handle;

    use super::actor::{Core, McpActor, Phase, Shutdown};
    use super::config::McpServerConfig;
    use crate::agent::Agent;
    use crate::tool::{Tool, ToolError, ToolList, ToolSource};

    /// Why a server could not be started or used.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum McpError {
        /// The entry is not usable.
        #[error("MCP server {name}: {message}")]
        Config {
            /// The server.
            name: String,
            /// What is wrong.
            message: String,
        },
        /// The server did not become ready in time.
        #[error("MCP server {name} is not ready after {waited_ms} ms: {last_error}")]
        NotReady {
            /// The server.
            name: String,
            /// How long it was waited for.
            waited_ms: u64,
            /// The last failure, if any.
            last_error: String,
        },
    }

    /// Where a server is, as `GET /v1/mcp_servers` shows it.
    #[derive(Clone, Debug, Serialize, PartialEq)]
    pub struct McpServerStatus {
        /// Its name.
        pub name: String,
        /// `stdio` or `streamable_http`.
        pub transport: &'static str,
        /// `starting`, `ready`, `restarting` or `stopped`.
        pub state: Phase,
        /// The tools it offers (after `allow` / `deny`).
        pub tools: Vec<String>,
        /// Times it was restarted after a failure.
        pub restarts: u64,
        /// The last failure.
        pub last_error: Option<String>,
        /// The child's process id (stdio, while running).
        pub pid: Option<u32>,
    }

    struct Life {
        addr: actix::Addr<McpActor>,
    }

    impl Drop for Life {
        /// The last handle gone: the server is closed.
        fn drop(&mut self) {
            if self.addr.try_send(Shutdown).is_err() {
                tracing::debug!("MCP server actor already gone at shutdown");
            }
        }
    }

    /// A shared handle on one MCP server. Cheap to clone; the server is closed when the last
    /// handle is dropped or [`shutdown`](Self::shutdown) is called.
    #[derive(Clone)]
    pub struct McpServer {
        core: Arc<Core>,
        life: Arc<Life>,
    }

    impl std::fmt::Debug for McpServer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("McpServer")
                .field("name", &self.core.name)
                .finish()
        }
    }

    impl McpServer {
        /// Starts the server's actor, which connects at once (in the background: see
        /// [`wait_ready`](Self::wait_ready)). The connection's I/O runs on the current tokio
        /// runtime, or the library's own outside one.
        pub fn start(config: McpServerConfig) -> Result<McpServer, McpError> {
            if let Some((key, message)) = config.problems().into_iter().next() {
                return Err(McpError::Config {
                    name: config.name.clone(),
                    message: format!("{key}: {message}"),
                });
            }
            let rt = Handle::try_current().unwrap_or_else(|_| crate::runtime::fallback_runtime());
            let core = Core::new(config);
            let c = core.clone();
            let addr = McpActor::start_in_arbiter(crate::runtime::actor_arbiter(), move |_| {
                McpActor::new(c, rt)
            });
            core.set_actor(addr.clone());
            Ok(McpServer {
                core,
                life: Arc::new(Life { addr }),
            })
        }

        /// The server's name.
        pub fn name(&self) -> &str {
            &self.core.name
        }

        /// Its config.
        pub fn config(&self) -> &McpServerConfig {
            &self.core.config
        }

        /// Where it is now.
        pub fn status(&self) -> McpServerStatus {
            let s = self.core.snapshot();
            McpServerStatus {
                name: self.core.name.to_string(),
                transport: self.core.config.transport.as_str(),
                state: s.phase,
                tools: s.tools.iter().map(|t| t.name.to_string()).collect(),
                restarts: s.restarts,
                last_error: s.last_error.clone(),
                pid: s.pid,
            }
        }

        /// Waits until the server is connected, at most `limit`.
        pub async fn wait_ready(&self, limit: Duration) -> Result<(), McpError> {
            let mut rx = self.core.watch();
            let r = tokio::time::timeout(limit, rx.wait_for(|s| s.phase == Phase::Ready)).await;
            match r {
                Ok(Ok(_)) => Ok(()),
                _ => Err(McpError::NotReady {
                    name: self.core.name.to_string(),
                    waited_ms: limit.as_millis() as u64,
                    last_error: self
                        .core
                        .snapshot()
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "still starting".into()),
                }),
            }
        }

        /// Waits until the server's state satisfies `f`, at most `limit`; true when it did.
        pub async fn wait_for(
            &self,
            limit: Duration,
            f: impl Fn(&McpServerStatus) -> bool,
        ) -> bool {
            let mut rx = self.core.watch();
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if f(&self.status()) {
                    return true;
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return f(&self.status()),
                }
            }
        }

        /// Closes the server now (a child process is asked to exit, then killed).
        pub fn shutdown(&self) {
            if self.life.addr.try_send(Shutdown).is_err() {
                tracing::debug!(server = %self.core.name, "MCP server actor already gone");
            }
        }

        /// The tools on offer: the cached listing, or (with `cache_tools_list = false` and a
        /// live connection) a fresh one. A server still on its first connection is waited
        /// for, at most its `connect_timeout_ms`.
        pub(crate) async fn current_tools(&self) -> Result<Vec<Arc<super::McpTool>>, ToolError> {
            let mut snap = self.core.snapshot();
            if snap.phase == Phase::Starting && snap.tools.is_empty() && snap.restarts == 0 {
                let mut rx = self.core.watch();
                let limit = Duration::from_millis(self.core.config.connect_timeout_ms);
                let _ =
                    tokio::time::timeout(limit, rx.wait_for(|s| s.phase != Phase::Starting)).await;
                snap = self.core.snapshot();
            }
            if !self.core.config.cache_tools_list {
                if let (Phase::Ready, Some(conn)) = (snap.phase, &snap.conn) {
                    let listed = conn.peer.list_all_tools().await.map_err(|e| {
                        ToolError::Failed(format!(
                            "listing the tools of the MCP server {} failed: {e}",
                            self.core.name
                        ))
                    })?;
                    return Ok(self.core.tools_from(&listed).to_vec());
                }
            }
            if snap.tools.is_empty() && snap.phase != Phase::Ready {
                return Err(ToolError::Failed(
                    self.core.connection().err().unwrap_or_default(),
                ));
            }
            Ok(snap.tools.to_vec())
        }
    }

    impl<C: Send + Sync + 'static> ToolSource<C> for McpServer {
        fn name(&self) -> &str {
            &self.core.name
        }
        fn list_tools(&self) -> BoxFuture<'_, Result<ToolList<C>, ToolError>> {
            async move {
                let tools = self.current_tools().await?;
                Ok(tools.into_iter().map(|t| t as Arc<dyn Tool<C>>).collect())
            }
            .boxed()
        }
    }

    impl<C: Send + Sync + 'static> Agent<C> {
        /// Gives the agent the tools of an MCP server, listed at each turn (the SDK's
        /// `Agent(mcp_servers=[...])`).
        pub fn mcp_server(self, server: &McpServer) -> Self {
            self.tool_source(Arc::new(server.clone()))
        }
    }
}
