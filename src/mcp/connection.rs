//! One connection to an MCP server, as a task on the tokio runtime: start the transport (a
//! child process, or a streamable HTTP session), do the handshake, list the tools, then
//! follow the connection (tool-list changes, its end) and report to the server's actor.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::mcp::actor::{
    ConnectFailed, Connected, Connection, Core, Disconnected, McpActor, ToolsListed,
};
use crate::mcp::client::{ConnectionEvents, Handler as McpHandler};
use crate::mcp::config::{McpServerConfig, McpTransport};

/// How long a closing connection may take to end before it is dropped (which kills a child).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Longest stderr line of a child kept for the log.
const STDERR_LINE_MAX: usize = 4096;

type Service = RunningService<RoleClient, McpHandler>;

/// Starts the transport and does the MCP handshake.
async fn open(
    cfg: &McpServerConfig,
    events: Arc<ConnectionEvents>,
) -> Result<(Service, Option<u32>), String> {
    let handler = McpHandler { events };
    match cfg.transport {
        McpTransport::Stdio => {
            let program = cfg.command.as_deref().unwrap_or_default();
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(&cfg.args).envs(&cfg.env);
            if let Some(d) = &cfg.cwd {
                cmd.current_dir(d);
            }
            let (proc, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("could not start `{program}`: {e}"))?;
            let pid = proc.id();
            if let Some(err) = stderr {
                let name = cfg.name.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(err).lines();
                    while let Ok(Some(mut line)) = lines.next_line().await {
                        line.truncate(STDERR_LINE_MAX);
                        tracing::debug!(server = %name, "{line}");
                    }
                });
            }
            let service = handler
                .serve(proc)
                .await
                .map_err(|e| format!("the MCP handshake with `{program}` failed: {e}"))?;
            Ok((service, pid))
        }
        McpTransport::StreamableHttp => {
            crate::mcp::ensure_tls_provider();
            let url = cfg.url.as_deref().unwrap_or_default();
            let mut headers = HashMap::new();
            for (k, v) in &cfg.headers {
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header {k:?}: {e}"))?;
                let value = reqwest::header::HeaderValue::from_str(v)
                    .map_err(|e| format!("header {k:?}: {e}"))?;
                headers.insert(name, value);
            }
            let transport = StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers),
            );
            let service = handler
                .serve(transport)
                .await
                .map_err(|e| format!("the MCP handshake with {url} failed: {e}"))?;
            Ok((service, None))
        }
    }
}

/// One connection's life: open, list, report, follow tool-list changes, notice the end.
pub(crate) async fn run_connection(
    core: Arc<Core>,
    generation: u64,
    stop: CancellationToken,
    addr: actix::Addr<McpActor>,
) {
    let events = Arc::new(ConnectionEvents::default());
    let limit = Duration::from_millis(core.config.connect_timeout_ms);
    let opening = async {
        let (service, pid) = open(&core.config, events.clone()).await?;
        match service.peer().list_all_tools().await {
            Ok(tools) => Ok((service, pid, tools)),
            Err(e) => {
                let mut service = service;
                let _ = service.close_with_timeout(CLOSE_GRACE).await;
                Err(format!("listing the tools failed: {e}"))
            }
        }
    };
    let opened = tokio::select! {
        _ = stop.cancelled() => return,
        r = tokio::time::timeout(limit, opening) => r,
    };
    let (service, pid, tools) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(error)) => {
            let _ = addr.send(ConnectFailed { generation, error }).await;
            return;
        }
        Err(_) => {
            let error = format!(
                "connecting took longer than connect_timeout_ms ({})",
                core.config.connect_timeout_ms
            );
            let _ = addr.send(ConnectFailed { generation, error }).await;
            return;
        }
    };
    let peer = service.peer().clone();
    let conn = Arc::new(Connection {
        peer: peer.clone(),
        events: events.clone(),
        generation,
    });
    let closer = service.cancellation_token();
    let waiting = service.waiting();
    tokio::pin!(waiting);
    if addr
        .send(Connected {
            generation,
            conn,
            tools,
            pid,
        })
        .await
        .is_err()
    {
        closer.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut waiting).await;
        return;
    }
    loop {
        tokio::select! {
            end = &mut waiting => {
                let reason = match end {
                    Ok(r) => format!("the connection ended ({r:?})"),
                    Err(e) => format!("the connection's task failed: {e}"),
                };
                let _ = addr.send(Disconnected { generation, reason }).await;
                return;
            }
            _ = events.tools_changed.notified() => {
                match peer.list_all_tools().await {
                    Ok(tools) => {
                        let _ = addr.send(ToolsListed { generation, tools }).await;
                    }
                    Err(e) => tracing::warn!(server = %core.name, error = %e, "listing the changed tools failed"),
                }
            }
            _ = stop.cancelled() => {
                closer.cancel();
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut waiting).await;
                return;
            }
        }
    }
}
