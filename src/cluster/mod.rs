//! More than one node (PROTOCOL.md 6.6, `[cluster]`): the nodes share a PostgreSQL store
//! and a NATS server with JetStream, and write no cluster protocol of their own.
//!
//! - [`config`]: the `[cluster]` section (parsed in every build).
//! - [`node`]: the connection, the stream and bucket names, heartbeats in a JetStream
//!   key-value bucket and the list of live nodes (`GET /v1/cluster`), readiness.
//! - [`bus`]: every session's frames on a JetStream stream (a subject per tenant and
//!   session), written by the node running the session's run with an
//!   expected-last-subject-sequence guard, and followed from any node.
//! - [`mailbox`]: the agents' mailboxes, a JetStream work queue of batons (a subject per
//!   tenant and agent) that every node pulls from as long as it has room, with the control
//!   subjects that reach the node executing a run.
//! - [`relay`]: a frame read from the bus stream made a typed frame again, for the session
//!   topic of the node that accepted a run executing elsewhere.
//!
//! A baton whose node dies is delivered again to another node (`[cluster] mailboxes`, the
//! default); without mailboxes, runs of a node whose heartbeat stops are taken over by the
//! others from their last stored turn (`Core::take_over_runs`).

pub mod config;

#[cfg(feature = "nats")]
pub mod bus;
#[cfg(feature = "nats")]
pub mod mailbox;
#[cfg(feature = "nats")]
pub mod node;
#[cfg(feature = "nats")]
pub mod relay;

#[cfg(feature = "nats")]
pub use node::{Cluster, ClusterError, NodeInfo};
