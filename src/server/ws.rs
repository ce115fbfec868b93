//! `GET /v1/ws`: authenticates the upgrade and applies the connection limit, then hands the
//! socket to the WebSocket hub ([`crate::hub`]).

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::hub::{connection, READ_BUFFER, WRITE_BUFFER};
use crate::server::auth::Tenant;
use crate::server::error::ApiError;
use crate::server::AppState;

/// `GET /v1/ws`: the key is checked before the upgrade (401 otherwise), then the connection
/// limit (503 `overloaded` when full).
pub async fn ws_upgrade(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    ws: WebSocketUpgrade,
) -> Response {
    let core = st.core.clone();
    if core.is_draining() {
        return ApiError::ShuttingDown.into_response();
    }
    // Counted from here (not only once the socket is up), so a burst of upgrades cannot
    // overshoot the limit; the connection loop holds the place until it ends.
    let slot = match core.connection_slot() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // Messages up to 4x the frame limit are read and answered `frame_too_large`; larger ones
    // close the socket (code 1009), since reading them would cost the server their size.
    let hard_cap = core.limits.max_frame_bytes.saturating_mul(4).max(64 * 1024);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            connection::run(core, tenant, slot, sink, stream).await;
        })
}
