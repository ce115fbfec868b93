//! The service's side of `[cluster]`: this node's id on its run records, the bus mirrors of
//! its sessions, the live nodes (`GET /v1/cluster`), readiness, and taking over the runs of
//! nodes whose heartbeat stopped.

#[cfg(feature = "nats")]
use std::sync::Arc;

#[cfg(feature = "nats")]
use serde_json::json;
use serde_json::Value;

use super::Core;
use crate::service::error::ApiError;

impl Core {
    /// This node's id, with `[cluster]`.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.get().map(String::as_str)
    }

    /// Joins the cluster: run records carry this node's id, sessions' frames go to the bus
    /// stream. Once, before serving.
    #[cfg(feature = "nats")]
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.node_id.set(cluster.node_id.clone());
        self.sessions
            .set_mirrors(Arc::new(crate::cluster::bus::BusMirrors {
                cluster: cluster.clone(),
            }));
        if cluster.config.mailboxes {
            let _ = self
                .mailboxes
                .set(super::mailbox::Mailboxes::new(cluster.clone()));
        }
        let _ = self.cluster.set(cluster);
    }

    /// Whether runs go through the agents' mailboxes (`[cluster] mailboxes`).
    pub fn uses_mailboxes(&self) -> bool {
        #[cfg(feature = "nats")]
        if self.mailboxes.get().is_some() {
            return true;
        }
        false
    }

    /// The cluster, when this node is in one.
    #[cfg(feature = "nats")]
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// `Ok` unless the cluster's NATS is unreachable (always `Ok` without a cluster).
    pub fn cluster_ready(&self) -> Result<(), String> {
        #[cfg(feature = "nats")]
        if let Some(c) = self.cluster.get() {
            return c.ready();
        }
        Ok(())
    }

    /// What `GET /v1/cluster` shows: this node and the live ones.
    pub async fn cluster_status(&self) -> Result<Value, ApiError> {
        #[cfg(feature = "nats")]
        if let Some(c) = self.cluster.get() {
            let nodes = c.live_nodes().await.map_err(|e| {
                tracing::error!(error = %e, "could not list the nodes");
                ApiError::Internal
            })?;
            return Ok(json!({"node_id": c.node_id, "nodes": nodes}));
        }
        Err(ApiError::NotFound(
            "this server runs alone (no [cluster] in its config)".into(),
        ))
    }

    /// At start-up in a cluster: takes up this node's own runs (a restart under the same id)
    /// and those of nodes that are gone, never those of a live node.
    #[cfg(feature = "nats")]
    pub(crate) async fn recover_in_cluster(
        self: &Arc<Self>,
        c: &crate::cluster::Cluster,
    ) -> (usize, usize) {
        let live = match c.live_nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot see the nodes; runs left in flight are left to the other nodes");
                return (0, 0);
            }
        };
        let me = c.node_id.clone();
        let mailboxes = c.config.mailboxes;
        let mine = move |r: &crate::session::RunRecord| {
            if mailboxes && r.status == crate::session::RunStatus::Running {
                // Its baton is in its mailbox until it is settled: delivered again.
                return false;
            }
            match r.node_id.as_deref() {
                Some(n) => n == me || !live.iter().any(|l| l.node_id == n),
                None => true,
            }
        };
        self.recover_where(&mine).await
    }

    /// Follows a session through the cluster's bus stream, whichever node runs it: the
    /// frames after `after_seq`, then live ones. Answers the follow, the session's epoch and
    /// its last seq; `history_truncated` when `epoch` is not the session's numbering.
    #[cfg(feature = "nats")]
    pub async fn follow_remote(
        &self,
        tenant: &Arc<str>,
        session_id: &str,
        after_seq: Option<u64>,
        epoch: Option<&str>,
    ) -> Result<(crate::cluster::bus::Followed, String), ApiError> {
        super::runs::check_session_id(session_id)?;
        let Some(c) = self.cluster.get() else {
            return Err(ApiError::Internal);
        };
        let followed = c.follow(tenant, session_id, after_seq).await.map_err(|e| {
            tracing::error!(error = %e, "could not follow a session on the bus stream");
            ApiError::Internal
        })?;
        let current = match &followed.epoch {
            Some(e) => e.clone(),
            None => self.sessions.owner(tenant, session_id).await?.epoch(),
        };
        if epoch.is_some_and(|e| e != current) {
            return Err(ApiError::HistoryTruncated {
                after_seq: after_seq.unwrap_or(0),
                oldest_seq: 1,
                epoch: Some(current),
            });
        }
        Ok((followed, current))
    }

    /// Takes over the runs of nodes that are gone every heartbeat, until `stop`; a run is
    /// resumed here from its last stored turn by exactly one node. A node counts as gone only
    /// once this node has seen it missing for `node_timeout_ms` while seeing the cluster
    /// itself (after an outage of NATS every node first beats again before any is judged).
    #[cfg(feature = "nats")]
    pub async fn take_over_runs(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        use std::collections::HashMap;
        use std::time::{Duration, Instant};
        let Some(c) = self.cluster.get().cloned() else {
            return;
        };
        let every = Duration::from_millis(c.config.heartbeat_ms.max(1));
        let timeout = Duration::from_millis(c.config.node_timeout_ms);
        let mut seeing_since = Instant::now();
        let mut missing: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let live = match c.live_nodes().await {
                Ok(n) if n.iter().any(|l| l.node_id == c.node_id) => n,
                Ok(_) => {
                    // This node's own heartbeat is missing (an outage): it cannot tell who is gone.
                    seeing_since = Instant::now();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot see the nodes; no runs are taken over meanwhile");
                    seeing_since = Instant::now();
                    continue;
                }
            };
            if seeing_since.elapsed() < timeout {
                continue;
            }
            let in_flight = match self.sessions.store().runs_in_flight().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the runs in flight");
                    continue;
                }
            };
            let now = Instant::now();
            let mut gone = Vec::new();
            for d in &in_flight {
                let Some(n) = d.record.node_id.as_deref() else {
                    continue;
                };
                if n == c.node_id || live.iter().any(|l| l.node_id == n) {
                    missing.remove(n);
                    continue;
                }
                let since = *missing.entry(n.to_owned()).or_insert(now);
                if now.duration_since(since) >= timeout && !gone.iter().any(|g: &String| g == n) {
                    gone.push(n.to_owned());
                }
            }
            missing.retain(|n, _| {
                in_flight
                    .iter()
                    .any(|d| d.record.node_id.as_deref() == Some(n))
            });
            if gone.is_empty() {
                continue;
            }
            let is_gone = move |r: &crate::session::RunRecord| {
                r.node_id
                    .as_deref()
                    .is_some_and(|n| gone.iter().any(|g| g == n))
            };
            let (resumed, interrupted) = self.recover_where(&is_gone).await;
            if resumed + interrupted > 0 {
                tracing::warn!(resumed, interrupted, node = %c.node_id, "took over the runs of nodes that are gone");
            }
        }
    }
}
