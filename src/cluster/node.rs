//! A node's place in the cluster: its NATS connection, the names of the shared stream and
//! bucket, its heartbeat (a key per node in a JetStream key-value bucket whose entries expire
//! after `node_timeout_ms`) and the live nodes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;

/// The cluster could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS did not answer.
    #[error("cannot reach NATS at {url}: {reason}; check that nats-server runs there with JetStream on (-js)")]
    Connect {
        /// The URL.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// JetStream refused or failed a call.
    #[error("NATS JetStream failed to {what}: {reason}")]
    JetStream {
        /// What was being done.
        what: String,
        /// What the server said.
        reason: String,
    },
}

fn js_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// A node as its heartbeat describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub node_id: String,
    /// The address it serves on.
    pub addr: String,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// Its last heartbeat (Unix ms).
    pub heartbeat_at: i64,
    /// Runs executing on it at its last heartbeat.
    pub runs: usize,
}

/// This node's handle on the cluster. Cheap to share (`Arc`).
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// The config it was made from.
    pub config: ClusterConfig,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) bus: stream::Stream,
    nodes: kv::Store,
    nodes_stream: stream::Stream,
    addr: String,
    started_at: i64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl Cluster {
    /// Connects to NATS and makes (or opens) the bus stream and the nodes bucket.
    pub async fn connect(
        config: &ClusterConfig,
        node_id: String,
        addr: String,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let url = config.nats_url.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("callboard {node_id}"))
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let (bus, nodes_stream) = make_streams(&js, config).await?;
        let nodes = js
            .get_key_value(format!("{}_nodes", config.prefix))
            .await
            .map_err(|e| js_err("open the nodes bucket", e))?;
        Ok(Arc::new(Cluster {
            node_id,
            config: config.clone(),
            client,
            js,
            bus,
            nodes,
            nodes_stream,
            addr,
            started_at: crate::session::records::now_ms(),
        }))
    }

    /// `Ok` while the connection to NATS is up; else why not.
    pub fn ready(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(format!(
                "not connected to NATS at {} ({other:?})",
                self.config.nats_url
            )),
        }
    }

    /// Writes this node's heartbeat now.
    pub async fn beat(&self, runs: usize) -> Result<(), ClusterError> {
        let now = crate::session::records::now_ms();
        let info = NodeInfo {
            node_id: self.node_id.clone(),
            addr: self.addr.clone(),
            started_at: self.started_at,
            heartbeat_at: now,
            runs,
        };
        let body = serde_json::to_vec(&info).map_err(|e| js_err("encode a heartbeat", e))?;
        if let Err(e) = self.nodes.put(&self.node_id, body.clone().into()).await {
            // A NATS restarted without its memory streams: make them again, then beat.
            tracing::debug!(error = %e, "heartbeat failed; making the cluster's streams again");
            make_streams(&self.js, &self.config).await?;
            self.nodes
                .put(&self.node_id, body.into())
                .await
                .map_err(|e| js_err("write the heartbeat", e))?;
        }
        Ok(())
    }

    /// Removes this node's heartbeat (a clean stop: its runs are not taken over, they ended).
    pub async fn leave(&self) {
        let _ = self.nodes.purge(&self.node_id).await;
    }

    /// Beats every `heartbeat_ms` until `stop`; `runs` says how many runs execute here.
    pub fn spawn_heartbeats(
        self: &Arc<Self>,
        runs: impl Fn() -> usize + Send + 'static,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(me.config.heartbeat_ms.max(1));
            loop {
                if let Err(e) = me.beat(runs()).await {
                    tracing::warn!(error = %e, "could not write this node's heartbeat");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    /// The nodes whose heartbeat is fresh (within `node_timeout_ms`), by id; at most
    /// [`MAX_NODES`] are read.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        let now = crate::session::records::now_ms();
        let timeout = i64::try_from(self.config.node_timeout_ms).unwrap_or(i64::MAX);
        // The last heartbeat of each node, read once (a pull that ends when the bucket has
        // nothing more), rather than a watch that waits for a quiet bucket.
        let consumer = self
            .nodes_stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::LastPerSubject,
                filter_subject: format!("$KV.{}_nodes.>", self.config.prefix),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("list the nodes", e))?;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::new();
        let listed = async {
            let mut batch = consumer
                .fetch()
                .max_messages(MAX_NODES)
                .messages()
                .await
                .map_err(|e| js_err("list the nodes", e))?;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| js_err("list the nodes", e))?;
                if m.payload.is_empty() {
                    // A node that left (its key purged).
                    continue;
                }
                match serde_json::from_slice::<NodeInfo>(&m.payload) {
                    Ok(n) if now - n.heartbeat_at <= timeout => out.push(n),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, "a heartbeat that does not parse: {e}")
                    }
                }
            }
            Ok::<(), ClusterError>(())
        }
        .await;
        let _ = self.nodes_stream.delete_consumer(&name).await;
        listed?;
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }
}

/// Makes (or opens) the bus stream and the nodes bucket's stream. The bucket's stream is
/// made here as a key-value bucket's: `create_key_value` first asks for account details that
/// older servers (2.9) answer in another shape.
async fn make_streams(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<(stream::Stream, stream::Stream), ClusterError> {
    let bus = js
        .get_or_create_stream(stream::Config {
            name: format!("{}_bus", config.prefix),
            subjects: vec![format!("{}.bus.>", config.prefix)],
            max_age: Duration::from_secs(config.bus_max_age_s.max(1)),
            max_bytes: config.bus_max_bytes,
            max_messages_per_subject: config.bus_max_per_session,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("create the bus stream", e))?;
    let bucket = format!("{}_nodes", config.prefix);
    let nodes = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: Duration::from_millis(config.node_timeout_ms.max(1)),
            storage: stream::StorageType::Memory,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("create the nodes bucket", e))?;
    if config.mailboxes {
        Cluster::make_mailboxes(js, config).await?;
    }
    Ok((bus, nodes))
}

/// The most nodes [`Cluster::live_nodes`] reads.
pub const MAX_NODES: usize = 256;
