//! The service's side of the agents' mailboxes (`[cluster] mailboxes`, the default in a
//! cluster): a run accepted here is recorded, its session claimed here, and its baton put in
//! its agent's mailbox; whichever node takes the baton executes the run in its local actor
//! and acknowledges the baton once the run is settled. Meanwhile this node's session topic
//! is fed from the bus stream (the frames the executing node numbers), so every transport
//! here reads the run as if it ran here; its end frame releases the session here.
//!
//! A baton delivered again (its node died before the acknowledgement) resumes the run from
//! its last stored turn, its frames numbered on from the session's last frame on the bus
//! (`work`: taking batons, starting their runs, answering control requests).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod work;
use tokio_util::sync::CancellationToken;

use crate::bus::FrameBody;
use crate::cluster::bus::RemoteDelivery;
use crate::cluster::mailbox::{Baton, Holding, MailboxError};
use crate::cluster::Cluster;
use crate::error::AgentsError;
use crate::service::error::ApiError;
use crate::service::sessions::SessionOwner;
use crate::service::Core;
use crate::session::{RunEnd, RunStatus};

/// The error type of a run whose baton was delivered more than `mailbox_max_deliver` times.
pub const REDELIVERY_LIMIT: &str = "MailboxRedeliveryLimit";

/// This node's mailbox work: the batons it holds, by run id.
pub struct Mailboxes {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) held: DashMap<String, Held>,
    room: Arc<Semaphore>,
}

/// A baton this node works: released (acknowledged, its place freed, its control subject
/// closed) once its run is settled.
pub(crate) struct Held {
    pub(crate) holding: Holding,
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) control: Option<tokio::task::JoinHandle<()>>,
}

impl Mailboxes {
    /// Mailbox work for `cluster`'s node, at most `mailbox_node_runs` batons at once.
    pub fn new(cluster: Arc<Cluster>) -> Arc<Mailboxes> {
        let room = Arc::new(Semaphore::new(cluster.config.mailbox_node_runs.max(1)));
        Arc::new(Mailboxes {
            cluster,
            held: DashMap::new(),
            room,
        })
    }

    /// Batons this node works now.
    pub fn working(&self) -> usize {
        self.held.len()
    }
}

impl Core {
    /// The mailboxes, when this node is in a cluster that runs through them.
    pub fn mailboxes(&self) -> Option<&Arc<Mailboxes>> {
        self.mailboxes.get()
    }

    /// Starts taking batons from the agents' mailboxes (once, after joining the cluster),
    /// until `stop`.
    pub fn take_batons(self: &Arc<Self>, stop: CancellationToken) {
        let Some(m) = self.mailboxes().cloned() else {
            return;
        };
        let core = Arc::downgrade(self);
        m.cluster.spawn_takers(
            m.room.clone(),
            move |taken, permit| {
                if let Some(core) = core.upgrade() {
                    tokio::spawn(async move { core.work_baton(taken, permit).await });
                }
            },
            stop,
        );
    }

    /// Hands a recorded run whose session is claimed here to its agent's mailbox, and feeds
    /// this node's session topic from the bus until the run's end frame (holding `slot`, the
    /// tenant's place here, until then). On a full mailbox
    /// the run ends failed (`overloaded` to the caller).
    pub(crate) async fn hand_to_mailbox(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        owner: &Arc<SessionOwner>,
        run_id: &Arc<str>,
        agent: &str,
        resume: bool,
        slot: Option<crate::service::runs::TenantSlot>,
    ) -> Result<(), ApiError> {
        let Some(m) = self.mailboxes().cloned() else {
            return Err(ApiError::Internal);
        };
        // Follow the session's subject first, so no frame of the run is missed.
        self.sync_numbering(owner).await;
        let followed = m
            .cluster
            .follow(tenant, owner.session_id(), None)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not follow a session on the bus stream");
                ApiError::Internal
            });
        let baton = Baton {
            run_id: run_id.to_string(),
            tenant: tenant.to_string(),
            session_id: owner.session_id().to_string(),
            agent: agent.to_owned(),
            accepted_by: m.cluster.node_id.clone(),
            resume,
        };
        // A run's first baton is step 0; a resumed run's, a new step each time.
        let step = if resume {
            (crate::session::records::now_ms() & 0x7fff_ffff) as u32 | 1
        } else {
            0
        };
        let sent = match followed {
            Ok(f) => m.cluster.send_baton(&baton, step).await.map(|_| f),
            Err(e) => Err(MailboxError::Nats(e.to_string())),
        };
        let followed = match sent {
            Ok(f) => f,
            Err(e) => {
                let answer = match &e {
                    MailboxError::Full(_) => ApiError::Overloaded(e.to_string()),
                    MailboxError::Nats(_) => {
                        tracing::error!(run_id = %run_id, error = %e, "a run could not be handed to its mailbox");
                        ApiError::Internal
                    }
                };
                let err = AgentsError::UserError(e.to_string());
                let _ = self
                    .sessions
                    .store()
                    .record_run_end(tenant, run_id, RunEnd::failed(&err, None, None))
                    .await;
                let body = FrameBody::RunFailed {
                    error_type: err.sdk_name().into(),
                    message: err.to_string(),
                };
                let ended = owner.end_paused(run_id, body);
                self.after_end(tenant, owner, run_id, ended);
                return Err(answer);
            }
        };
        owner.set_remote(run_id, true);
        let core = self.clone();
        let (tenant, owner, run_id) = (tenant.clone(), owner.clone(), run_id.clone());
        tokio::spawn(async move {
            // The tenant's place here is held until the run's end reaches this node.
            let _slot = slot;
            core.feed_from_bus(tenant, owner, run_id, followed.follow)
                .await
        });
        Ok(())
    }

    /// Relays the session's frames from the bus into this node's topic until `run_id`'s end
    /// (or pause); then releases the session here and wakes whoever waits for the end.
    async fn feed_from_bus(
        self: Arc<Self>,
        tenant: Arc<str>,
        owner: Arc<SessionOwner>,
        run_id: Arc<str>,
        mut follow: crate::cluster::bus::RemoteFollow,
    ) {
        let session_id = owner.session_id().clone();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), follow.recv()).await;
            let r = match next {
                Ok(Some(RemoteDelivery::Frame(r))) => r,
                Ok(Some(RemoteDelivery::Truncated { .. })) => continue,
                Ok(None) | Err(_) => {
                    // Quiet or unreadable: the run may have ended without its frames
                    // reaching the bus (its node's bus queue overflowed).
                    if self.run_is_over(&tenant, &run_id).await {
                        tracing::warn!(run_id = %run_id, "a run executing elsewhere ended without its end frame on the bus; its session is released here");
                        owner.set_remote(&run_id, false);
                        owner.release(&run_id);
                        self.waiters.remove(&*run_id);
                        return;
                    }
                    continue;
                }
            };
            let Some(frame) = crate::cluster::relay::frame_of(&r, &session_id) else {
                tracing::warn!(
                    seq = r.seq,
                    "a frame from the bus that this node cannot read is skipped"
                );
                continue;
            };
            let ours = *frame.run_id == *run_id && frame.nesting.is_none();
            match &frame.body {
                FrameBody::RunInterrupted { .. } if ours => {
                    let f = owner.relay(frame);
                    owner.set_paused(&run_id, true);
                    owner.set_remote(&run_id, false);
                    self.after_end(&tenant, &owner, &run_id, (f, None));
                    return;
                }
                b if ours && b.is_terminal() => {
                    let ended = owner.end_relayed(&run_id, frame);
                    self.after_end(&tenant, &owner, &run_id, ended);
                    return;
                }
                _ => {
                    owner.relay(frame);
                }
            }
        }
    }

    async fn run_is_over(&self, tenant: &str, run_id: &str) -> bool {
        matches!(
            self.sessions.store().get_run(tenant, run_id).await,
            Ok(Some(r)) if r.status.is_final() || r.status == RunStatus::AwaitingApproval
        ) || matches!(
            self.sessions.store().get_run(tenant, run_id).await,
            Ok(None)
        )
    }

    /// A run executed here is settled: its baton leaves the mailbox.
    pub(crate) fn baton_settled(&self, run_id: &str) {
        let Some(m) = self.mailboxes() else { return };
        if let Some((_, held)) = m.held.remove(run_id) {
            if let Some(c) = &held.control {
                c.abort();
            }
            tokio::spawn(async move { held.holding.done().await });
        }
    }

    /// In a cluster: this node's numbering of the session goes on from the session's last
    /// frame on the bus (another node may have numbered frames since).
    pub(crate) async fn sync_numbering(&self, owner: &SessionOwner) {
        let Some(c) = self.cluster() else { return };
        let subject = c.bus_subject(owner.tenant(), owner.session_id());
        match c.last_on(&subject).await {
            Ok((_, seq, Some(epoch))) if epoch == owner.epoch() => {
                if let Some(t) = owner.topic() {
                    t.continue_after(seq);
                }
            }
            Ok((_, 0, None)) => {
                // Nothing of the session on the bus: no node numbered past the last seq
                // the store knows published.
                if let Some(t) = owner.topic() {
                    t.continue_after_safe();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the session's last frame on the bus; numbering from the store")
            }
        }
    }
}
