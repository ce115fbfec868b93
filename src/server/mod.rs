//! The HTTP server: [`app`] builds the router (the same one tests use), [`serve`] runs it on
//! a listener until a shutdown signal, then shuts down gracefully.
//!
//! - [`auth`]: API keys to tenants.
//! - [`error`]: the HTTP status and JSON answer of an `ApiError`.
//! - [`http`]: the HTTP handlers (runs, SSE, sessions, agents, health, metrics, chat page).
//! - [`traces`]: the trace API (`/v1/traces...`) and the trace browser (`/traces`).
//! - [`ws`]: the WebSocket upgrade, handing sockets to the hub ([`crate::hub`]).
//! - [`ai_sdk`], [`ag_ui`]: chat front ends in their own protocols (Vercel AI SDK `useChat`,
//!   AG-UI), on `ui_stream`: a run followed on the bus as SSE in a wire encoder.
//! - [`listener`]: sockets with a write timeout, so no stuck reader holds a connection.
//!
//! The shared state and the rules every transport follows live in the service layer
//! ([`crate::service`]).

pub mod ag_ui;
pub mod ai_sdk;
pub mod auth;
pub mod error;
pub mod http;
pub mod listener;
pub mod traces;
pub(crate) mod ui_stream;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use self::error::ApiError;
pub use crate::service::Core;

/// The state every handler receives.
#[derive(Clone)]
pub struct AppState {
    /// The shared core.
    pub core: Arc<Core>,
}

/// The router: every endpoint of PROTOCOL.md sections 2 and 3, plus the chat page.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(http::chat_page))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/v1/cluster", get(http::cluster))
        .route("/metrics", get(http::metrics))
        .route("/v1/ws", get(ws::ws_upgrade))
        .route("/v1/agents", get(http::agents))
        .route("/v1/mcp_servers", get(http::mcp_servers))
        .route("/v1/agents/{agent}/ai-sdk", post(ai_sdk::chat))
        .route("/v1/agents/{agent}/ai-sdk/{id}/stream", get(ai_sdk::resume))
        .route("/v1/agents/{agent}/ag-ui", post(ag_ui::run))
        .route("/v1/sessions/{session_id}/runs", post(http::create_run))
        .route(
            "/v1/sessions/{session_id}/events",
            get(http::session_events),
        )
        .route("/v1/sessions", get(http::list_sessions))
        .route("/v1/runs", get(http::list_runs))
        .route("/v1/runs/{run_id}", get(http::get_run))
        .route("/v1/runs/{run_id}/state", get(http::run_state))
        .route("/v1/runs/{run_id}/decisions", post(http::run_decision))
        .route("/v1/sessions/{session_id}/items", get(http::session_items))
        .route(
            "/v1/sessions/{session_id}",
            axum::routing::delete(http::delete_session),
        )
        .route("/traces", get(traces::page))
        .route("/v1/traces", get(traces::list))
        .route(
            "/v1/traces/ingest",
            // Ingest bodies may be far larger than a frame: a limit of their own.
            post(traces::ingest).layer(axum::extract::DefaultBodyLimit::max(
                state.core.config.tracing.max_ingest_bytes,
            )),
        )
        .route("/v1/traces/{trace_id}", get(traces::get))
        .fallback(http::not_found)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_http_errors,
        ))
        // Bodies are read up to the frame limit; a larger one is answered frame_too_large.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.core.limits.max_frame_bytes.saturating_add(1),
        ))
        .with_state(state)
}

/// Counts HTTP error answers by code (the code travels in a response extension).
async fn count_http_errors(
    axum::extract::State(st): axum::extract::State<AppState>,
    res: axum::response::Response,
) -> axum::response::Response {
    if let Some(code) = res.extensions().get::<error::ErrorCode>() {
        crate::service::telemetry::ErrorSent {
            code: code.0,
            surface: "http",
            message: "",
        }
        .emit(&st.core.metrics);
    }
    res
}

/// The lines the server prints at start: where it listens, on what, and whether auth is on.
pub fn banner(core: &Core, addr: std::net::SocketAddr) -> Vec<String> {
    let mut v = Vec::new();
    if core.config.embedded {
        v.push("callboard: no config given; running on embedded defaults".to_owned());
    } else {
        v.push(format!("callboard: config {}", core.config.source));
    }
    v.push(format!("callboard: listening on http://{addr} (WebSocket: ws://{addr}/v1/ws, chat page: http://{addr}/)"));
    let names: Vec<&str> = core.agent_infos.iter().map(|a| a.name.as_str()).collect();
    v.push(format!(
        "callboard: agents {} on models: {}",
        names.join(", "),
        core.models_banner
    ));
    v.push(if core.has_durable_store() {
        format!(
            "callboard: sessions and run records: {}",
            core.sessions.store().describe()
        )
    } else {
        "callboard: sessions: in memory (lost at exit)".to_owned()
    });
    let sinks: Vec<String> = core
        .config
        .tracing
        .sinks
        .iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect();
    v.push(if core.config.tracing.disabled || sinks.is_empty() {
        "callboard: tracing off".to_owned()
    } else {
        format!("callboard: tracing to {}", sinks.join(", "))
    });
    if core.auth_enabled() {
        v.push("callboard: auth on (API keys from [[auth.keys]])".to_owned());
    } else {
        v.push("callboard: auth OFF: no [[auth.keys]] configured; allowed because the server listens on loopback only".to_owned());
    }
    v
}

/// Serves `core` on `listener` until `shutdown` resolves, then shuts down gracefully: stop
/// accepting; let running turns finish within the grace period, then cancel them after
/// their turn; flush traces; close sockets with code 1001.
pub async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    core.recover().await;
    let router = app(AppState { core: core.clone() });
    let stop = core.stop_accepting.clone();
    let listener = listener::TimedListener::new(
        listener,
        Duration::from_millis(core.limits.write_timeout_ms.max(1)),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let mut server = server;
    let stop_janitor = tokio_util::sync::CancellationToken::new();
    let janitor = tokio::spawn(core.clone().janitor(stop_janitor.clone()));
    tokio::select! {
        _ = shutdown => {}
        r = &mut server => {
            return r.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        }
    }
    stop_janitor.cancel();
    let _ = janitor.await;
    tracing::info!(
        runs = core.active_runs(),
        "shutting down: no new connections or runs"
    );
    core.begin_shutdown();
    core.drain_runs().await;
    crate::trace::flush_traces();
    core.close_connections().await;
    if let Err(e) = core.sessions.store().close().await {
        tracing::warn!(error = %e, "the session store did not close cleanly");
    }
    match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(_) => {
            server.abort();
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
