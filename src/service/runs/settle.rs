//! A server run's end settled before its end frame goes out: the record, the registry, the
//! tenant's place, then the session's claim.

use super::*;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;

use crate::bus::{CancelMode, FrameBody};
use crate::run::{RunEnded, RunOutcome, RunSettle};
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::RunEnd;

/// Settles a server run's end before its end frame goes out: the run record, the registry,
/// the tenant's place, then the session's claim with the end frame (see
/// [`SessionOwner::end_run`]).
pub(super) struct RunSettler {
    pub(super) core: Arc<Core>,
    pub(super) tenant: Arc<str>,
    pub(super) owner: Arc<SessionOwner>,
    pub(super) slot: std::sync::Mutex<Option<TenantSlot>>,
}

#[async_trait]
impl RunSettle for RunSettler {
    async fn settle(&self, ended: RunEnded) {
        let core = &self.core;
        let rid = ended.run_id.clone();
        if let RunOutcome::Interrupted(_) = &ended.outcome {
            // Paused: its state is saved (status awaiting_approval); it keeps the session as
            // stored state only, and holds no task, no place, no memory here.
            core.runs.remove(&*rid);
            core.calls.finish_run(&rid);
            drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
            let frame = self.owner.pause_run(ended);
            core.after_end(&self.tenant, &self.owner, &rid, (frame, None));
            #[cfg(feature = "nats")]
            core.baton_settled(&rid);
            return;
        }
        if let RunOutcome::Failed(e) = &ended.outcome {
            tracing::info!(run_id = %rid, error = %e, "run failed");
        }
        let store = core.sessions.store();
        if matches!(ended.outcome, RunOutcome::Cancelled(CancelMode::RolledBack)) {
            // Rolled back by a new message: the run's items leave the conversation first.
            if let Err(e) = store
                .delete_run_items(&self.tenant, self.owner.session_id(), &rid)
                .await
            {
                tracing::error!(run_id = %rid, error = %e, "could not remove a rolled-back run's items");
            }
        }
        let mut end = RunEnd::from_outcome(&ended.outcome, &ended.last_agent, ended.usage.clone());
        end.by_run_id = match ended.frame() {
            Some(FrameBody::RunCancelled { by_run_id, .. }) => {
                by_run_id.as_deref().map(str::to_owned)
            }
            _ => None,
        };
        end.seq_safe = Some((self.owner.epoch(), ended.topic().last_seq() + 1));
        if let Err(e) = store.record_run_end(&self.tenant, &rid, end).await {
            tracing::error!(run_id = %rid, error = %e, "could not record the run's end");
        }
        core.runs.remove(&*rid);
        core.calls.finish_run(&rid);
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        core.metrics.runs_finished.fetch_add(1, Ordering::Relaxed);
        core.metrics.run_ends.count(&ended.outcome);
        let done = self.owner.end_run(ended);
        core.after_end(&self.tenant, &self.owner, &rid, done);
        #[cfg(feature = "nats")]
        core.baton_settled(&rid);
    }
}
