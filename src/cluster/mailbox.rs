//! Agent mailboxes on JetStream: one work-queue stream (`{prefix}_mbox`) with a subject per
//! tenant and agent (`{prefix}.mbox.<hex tenant>.<hex agent>`). Starting a run publishes its
//! baton there; every node pulls from one shared durable consumer as long as it has room
//! (`mailbox_node_runs`), works the baton (telling JetStream it is still on it every third
//! of `mailbox_ack_wait_ms`) and acknowledges it once the run is settled. A baton whose node
//! dies is delivered again, to whichever node pulls next, up to `mailbox_max_deliver` times.
//!
//! A baton names its run (tenant, session, agent, run id); what the run needs (its request,
//! its last stored turn) is in the store, so a baton stays small whatever the run holds.
//!
//! Each executing run also answers on a control subject (`{prefix}.ctl.<hex run id>`), so a
//! cancel sent to any node reaches the node executing it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{stream, AckKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;
use super::node::{Cluster, ClusterError};

/// What a mailbox holds: a run to execute (or go on with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baton {
    /// The run.
    pub run_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its session.
    pub session_id: String,
    /// The agent whose mailbox it is in.
    pub agent: String,
    /// The node that accepted the run.
    pub accepted_by: String,
    /// The run goes on after a pause for approval (its decisions are in its stored state):
    /// the taking node announces `run.resumed` first.
    #[serde(default)]
    pub resume: bool,
}

/// A baton could not be put in its mailbox.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The mailboxes hold `mailbox_max_msgs` batons already.
    #[error("the agents' mailboxes are full ({0} batons wait; cluster.mailbox_max_msgs); try again once runs have ended")]
    Full(i64),
    /// NATS refused or did not answer.
    #[error("could not put the run's baton in its mailbox: {0}")]
    Nats(String),
}

/// Hex of `s` (subject tokens may not hold `.`, `*`, `>` or spaces).
fn token(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The mailbox stream's config.
pub(crate) fn stream_config(config: &ClusterConfig) -> stream::Config {
    stream::Config {
        name: format!("{}_mbox", config.prefix),
        subjects: vec![format!("{}.mbox.>", config.prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages: config.mailbox_max_msgs,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

fn consumer_config(config: &ClusterConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(format!("{}_mbox_nodes", config.prefix)),
        filter_subject: format!("{}.mbox.>", config.prefix),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait(),
        // One delivery more than the limit: the node that gets it ends the run, clearly.
        max_deliver: config.mailbox_max_deliver.saturating_add(1),
        max_ack_pending: config.mailbox_max_ack_pending,
        ..Default::default()
    }
}

impl Cluster {
    /// The mailbox subject of `tenant`'s agent `agent`.
    pub fn mailbox_subject(&self, tenant: &str, agent: &str) -> String {
        format!(
            "{}.mbox.{}.{}",
            self.config.prefix,
            token(tenant),
            token(agent)
        )
    }

    /// The control subject of run `run_id` (answered by the node executing it).
    pub fn control_subject(&self, run_id: &str) -> String {
        format!("{}.ctl.{}", self.config.prefix, token(run_id))
    }

    /// Puts `baton` in its agent's mailbox; `step` tells apart the batons of one run (a
    /// publish retried with the same step is stored once).
    pub async fn send_baton(&self, baton: &Baton, step: u32) -> Result<(), MailboxError> {
        let body = serde_json::to_vec(baton).map_err(|e| MailboxError::Nats(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}:{step}", baton.run_id).as_str());
        let subject = self.mailbox_subject(&baton.tenant, &baton.agent);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.outage_wait_ms.max(1));
        loop {
            let acked = match self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(_) => return Ok(()),
                Err(e) if is_full(&e) => {
                    return Err(MailboxError::Full(self.config.mailbox_max_msgs))
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for NATS to take a baton");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        let _ = self
                            .js
                            .get_or_create_stream(stream_config(&self.config))
                            .await;
                    }
                }
                Err(e) => return Err(MailboxError::Nats(e.to_string())),
            }
        }
    }

    /// Pulls batons while `stop` is not cancelled, never holding more than `room` allows:
    /// each baton goes to `work` with a place of `room`, released when the work drops it.
    pub fn spawn_takers(
        self: &Arc<Self>,
        room: Arc<Semaphore>,
        work: impl Fn(Taken, OwnedSemaphorePermit) + Send + Sync + 'static,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut consumer: Option<PullConsumer> = None;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                let c = match &consumer {
                    Some(c) => c.clone(),
                    None => match me.mailbox_consumer().await {
                        Ok(c) => {
                            consumer = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the agents' mailboxes yet");
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            }
                            continue;
                        }
                    },
                };
                // Wait for room, then ask for as many batons as there is room for.
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = room.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                };
                let mut permits = vec![first];
                while permits.len() < 64 {
                    match room.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                let batch = c
                    .batch()
                    .max_messages(permits.len())
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await;
                let mut batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!(error = %e, "a mailbox pull failed; asking again");
                        consumer = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = batch.next() => n,
                    };
                    let m = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "a mailbox pull ended");
                            break;
                        }
                        None => break,
                    };
                    let delivered = m.info().map_or(1, |i| i.delivered);
                    let (msg, acker) = m.split();
                    let baton = match serde_json::from_slice::<Baton>(&msg.payload) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(subject = %msg.subject, "a baton that does not parse is dropped: {e}");
                            let _ = acker.ack_with(AckKind::Term).await;
                            continue;
                        }
                    };
                    let Some(permit) = permits.pop() else {
                        // More than asked for (cannot happen): give it back for later.
                        let _ = acker.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    work(
                        Taken {
                            baton,
                            delivered,
                            acker: Arc::new(acker),
                            ack_wait: me.config.ack_wait(),
                        },
                        permit,
                    );
                }
            }
        })
    }

    async fn mailbox_consumer(&self) -> Result<PullConsumer, ClusterError> {
        let err = |e: &dyn std::fmt::Display| ClusterError::JetStream {
            what: "open the agents' mailboxes".into(),
            reason: e.to_string(),
        };
        let stream = self
            .js
            .get_or_create_stream(stream_config(&self.config))
            .await
            .map_err(|e| err(&e))?;
        let cfg = consumer_config(&self.config);
        let name = cfg.durable_name.clone().unwrap_or_default();
        stream
            .get_or_create_consumer(&name, cfg)
            .await
            .map_err(|e| err(&e))
    }

    /// Makes (or opens) the mailbox stream.
    pub(crate) async fn make_mailboxes(
        js: &async_nats::jetstream::Context,
        config: &ClusterConfig,
    ) -> Result<(), ClusterError> {
        js.get_or_create_stream(stream_config(config))
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::JetStream {
                what: "create the mailbox stream".into(),
                reason: e.to_string(),
            })
    }

    /// Asks the node executing run `run_id` to do `request` (see [`Control`]); `None` when
    /// no node answers (no node executes it).
    pub async fn control(&self, run_id: &str, request: &Control) -> Option<ControlAnswer> {
        let body = serde_json::to_vec(request).ok()?;
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            self.client
                .request(self.control_subject(run_id), body.into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&answer.payload).ok()
    }

    /// Answers the control requests of run `run_id` with `handle` until the returned
    /// subscription's task is aborted.
    pub async fn serve_control(
        self: &Arc<Self>,
        run_id: &str,
        handle: impl Fn(Control) -> ControlAnswer + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut sub = self
            .client
            .subscribe(self.control_subject(run_id))
            .await
            .ok()?;
        let client = self.client.clone();
        Some(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let answer = match serde_json::from_slice::<Control>(&m.payload) {
                    Ok(c) => handle(c),
                    Err(e) => ControlAnswer {
                        ok: false,
                        error: Some(format!("a control request that does not parse: {e}")),
                    },
                };
                if let (Some(reply), Ok(body)) = (m.reply, serde_json::to_vec(&answer)) {
                    let _ = client.publish(reply, body.into()).await;
                }
            }
        }))
    }
}

/// What another node asks of the node executing a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Cancel it.
    Cancel {
        /// The tenant asking (must be the run's).
        tenant: String,
        /// How.
        mode: crate::bus::CancelMode,
        /// The run whose arrival cancels it (double-texting), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by_run_id: Option<String>,
    },
    /// Whether a node executes it (answered only by that node).
    Ping {
        /// The tenant asking (must be the run's).
        tenant: String,
    },
    /// The result of one of its client-side tool calls.
    ToolResult {
        /// The tenant asking (must be the run's).
        tenant: String,
        /// The call.
        call_id: String,
        /// Its output.
        output: String,
    },
}

/// The executing node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlAnswer {
    /// Whether it was done.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
}

fn is_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("maximum messages") || s.contains("maximum bytes") || s.contains("10077")
}

/// A baton this node took: acknowledge it once its run is settled.
pub struct Taken {
    /// The baton.
    pub baton: Baton,
    /// How many times it was delivered (1 the first time).
    pub delivered: i64,
    acker: Arc<Acker>,
    ack_wait: Duration,
}

impl Taken {
    /// Tells JetStream every third of `mailbox_ack_wait_ms` that this node is still on the
    /// baton, until the returned token is cancelled (or dropped: see [`Holding`]).
    pub fn hold(&self) -> Holding {
        let stop = CancellationToken::new();
        let acker = self.acker.clone();
        let every = self.ack_wait / 3;
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        });
        Holding {
            stop,
            acker: self.acker.clone(),
        }
    }
}

/// A baton held by this node; [`done`](Holding::done) acknowledges it.
pub struct Holding {
    stop: CancellationToken,
    acker: Arc<Acker>,
}

impl Holding {
    /// The run is settled: the baton leaves the mailbox.
    pub async fn done(&self) {
        self.stop.cancel();
        if let Err(e) = self.acker.double_ack().await {
            tracing::warn!(error = %e, "could not acknowledge a baton; it may be delivered again (its run is settled, so that delivery ends at once)");
        }
    }

    /// This node cannot work it now: it goes back to the mailbox for a node after `delay`.
    pub async fn give_back(&self, delay: Duration) {
        self.stop.cancel();
        let _ = self.acker.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batons_round_trip_and_subjects_are_safe() {
        let b = Baton {
            run_id: "run_1".into(),
            tenant: "t.1".into(),
            session_id: "s".into(),
            agent: "A b".into(),
            accepted_by: "a".into(),
            resume: false,
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Baton>(&text).unwrap(), b);
        assert_eq!(token("t.1"), "742e31");
        let c = serde_json::to_string(&Control::Cancel {
            tenant: "t".into(),
            mode: crate::bus::CancelMode::Immediate,
            by_run_id: None,
        })
        .unwrap();
        assert_eq!(c, r#"{"op":"cancel","tenant":"t","mode":"immediate"}"#);
    }
}
