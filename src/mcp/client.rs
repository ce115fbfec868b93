//! The client side of one MCP connection: the `rmcp` handler that receives the server's
//! notifications (progress of our calls, `notifications/tools/list_changed`) and the table
//! routing each call's progress token to that call's subscribers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam, ProgressToken,
    ProtocolVersion,
};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::ClientHandler;
use tokio::sync::Notify;

use crate::tool::{CallScope, ToolProgress};

/// Progress notifications kept for tokens not yet registered (a notification can, rarely,
/// overtake the registration of its call); older ones are dropped.
const EARLY_PROGRESS: usize = 32;

/// Where one call's progress goes.
struct Route {
    scope: Arc<dyn CallScope>,
    call_id: Arc<str>,
    tool: Arc<str>,
}

#[derive(Default)]
struct RouteTable {
    routes: HashMap<ProgressToken, Route>,
    early: VecDeque<ProgressNotificationParam>,
}

/// Progress tokens of the calls in flight on one connection, and what changed on the server.
/// Bounded by the calls in flight plus [`EARLY_PROGRESS`].
#[derive(Default)]
pub(crate) struct ConnectionEvents {
    table: Mutex<RouteTable>,
    /// Signalled on `notifications/tools/list_changed`.
    pub tools_changed: Notify,
}

impl ConnectionEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the progress of the call with `token` to `scope` until the guard is dropped.
    pub fn route(
        self: &Arc<Self>,
        token: ProgressToken,
        scope: Arc<dyn CallScope>,
        call_id: Arc<str>,
        tool: Arc<str>,
    ) -> RouteGuard {
        let early: Vec<ProgressNotificationParam> = {
            let mut t = self.lock();
            let mut early = Vec::new();
            t.early.retain(|p| {
                if p.progress_token == token {
                    early.push(p.clone());
                    false
                } else {
                    true
                }
            });
            t.routes.insert(
                token.clone(),
                Route {
                    scope: scope.clone(),
                    call_id: call_id.clone(),
                    tool: tool.clone(),
                },
            );
            early
        };
        for p in early {
            scope.progress(&call_id, &tool, report(p));
        }
        RouteGuard {
            events: self.clone(),
            token,
        }
    }

    fn deliver(&self, p: ProgressNotificationParam) {
        let target = {
            let mut t = self.lock();
            match t.routes.get(&p.progress_token) {
                Some(r) => Some((r.scope.clone(), r.call_id.clone(), r.tool.clone())),
                None => {
                    if t.early.len() >= EARLY_PROGRESS {
                        t.early.pop_front();
                    }
                    t.early.push_back(p.clone());
                    None
                }
            }
        };
        if let Some((scope, call_id, tool)) = target {
            scope.progress(&call_id, &tool, report(p));
        }
    }

    /// Calls whose progress is being routed (for tests).
    #[cfg(test)]
    pub fn routed(&self) -> usize {
        self.lock().routes.len()
    }
}

fn report(p: ProgressNotificationParam) -> ToolProgress {
    ToolProgress {
        progress: p.progress,
        total: p.total,
        message: p.message,
    }
}

/// Stops routing a call's progress when dropped.
pub(crate) struct RouteGuard {
    events: Arc<ConnectionEvents>,
    token: ProgressToken,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.events.lock().routes.remove(&self.token);
    }
}

/// The `rmcp` client handler of one connection.
pub(crate) struct Handler {
    pub events: Arc<ConnectionEvents>,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.events.deliver(params);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.events.tools_changed.notify_one();
    }

    fn get_info(&self) -> ClientConfig {
        let mut c = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("callboard", env!("CARGO_PKG_VERSION")),
        );
        // The `initialize` handshake: the newest version that still has one.
        c.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;
    use std::any::Any;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, f64)>>);
    impl CallScope for Seen {
        fn progress(&self, call_id: &Arc<str>, _tool: &Arc<str>, r: ToolProgress) {
            self.0
                .lock()
                .unwrap()
                .push((call_id.to_string(), r.progress));
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn note(token: i64, progress: f64) -> ProgressNotificationParam {
        ProgressNotificationParam::new(ProgressToken(NumberOrString::Number(token)), progress)
    }

    #[test]
    fn progress_reaches_its_call_even_when_it_overtakes_the_registration() {
        let events = Arc::new(ConnectionEvents::default());
        let seen = Arc::new(Seen::default());
        events.deliver(note(7, 1.0));
        events.deliver(note(8, 1.0));
        let guard = events.route(
            ProgressToken(NumberOrString::Number(7)),
            seen.clone(),
            "call_a".into(),
            "t".into(),
        );
        events.deliver(note(7, 2.0));
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![("call_a".to_owned(), 1.0), ("call_a".to_owned(), 2.0)]
        );
        assert_eq!(events.routed(), 1);
        drop(guard);
        assert_eq!(events.routed(), 0);
        for i in 0..100 {
            events.deliver(note(1000 + i, 0.0));
        }
        assert!(events.lock().early.len() <= EARLY_PROGRESS);
    }
}
