//! `[cluster]`: more than one node (PROTOCOL.md 6.6). Parsed in every build; only a build
//! with the `nats` feature can run it.

use serde::Deserialize;

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server (with JetStream) the nodes share: `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name (letters, digits, `-`, `_`); default: host name and port.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The prefix of the JetStream stream and bucket names (`callboard` makes
    /// `callboard_bus` and `callboard_nodes`); clusters sharing one NATS use different ones.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How often a node writes its heartbeat (milliseconds). Default 1000.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// A node whose heartbeat is older than this is gone: its runs are taken over by the
    /// others (milliseconds). Default 5000.
    #[serde(default = "default_node_timeout")]
    pub node_timeout_ms: u64,
    /// How long a session's frames stay on the bus stream (seconds). Default 3600.
    #[serde(default = "default_bus_max_age")]
    pub bus_max_age_s: u64,
    /// The most bytes the bus stream keeps (oldest frames go first). Default 1 GiB.
    #[serde(default = "default_bus_max_bytes")]
    pub bus_max_bytes: i64,
    /// The most frames the bus stream keeps per session (oldest go first). Default 4096.
    #[serde(default = "default_bus_per_session")]
    pub bus_max_per_session: i64,
    /// Frames a session may have waiting for the bus stream; past it the session's frames
    /// stop going to other nodes (their followers get `lagged`, then `history_truncated`)
    /// until the session is next activated. Default 8192.
    #[serde(default = "default_bus_queue")]
    pub bus_queue: usize,
    /// How long a node waits for NATS during a short outage before a publish fails
    /// (milliseconds). Default 10000.
    #[serde(default = "default_outage_wait")]
    pub outage_wait_ms: u64,
    /// Whether runs go through the agents' mailboxes on JetStream (executed by whichever
    /// node takes the baton); `false` executes each run on the node that accepted it.
    /// Default true.
    #[serde(default = "default_true")]
    pub mailboxes: bool,
    /// The most batons waiting in (or being worked from) all mailboxes together; past it
    /// a new run is refused with `overloaded`. Default 10000.
    #[serde(default = "default_mailbox_max_msgs")]
    pub mailbox_max_msgs: i64,
    /// How long a node may work a baton without telling JetStream it is still on it before
    /// the baton is delivered again (milliseconds; the working node says so every third of
    /// it). Default 30000.
    #[serde(default = "default_mailbox_ack_wait")]
    pub mailbox_ack_wait_ms: u64,
    /// How many times a baton is delivered (nodes dying while they work it) before its run
    /// ends failed (`mailbox_redelivery_limit`). Default 5.
    #[serde(default = "default_mailbox_max_deliver")]
    pub mailbox_max_deliver: i64,
    /// The most batons taken and not yet acknowledged, over all nodes. Default 10000.
    #[serde(default = "default_mailbox_max_msgs")]
    pub mailbox_max_ack_pending: i64,
    /// The most batons one node works at once; it takes more only as runs end, so load
    /// goes to the nodes that are free. Default 1024.
    #[serde(default = "default_mailbox_node_runs")]
    pub mailbox_node_runs: usize,
    /// Whether this node takes batons (executes runs); `false` makes it a gateway that
    /// accepts runs and follows them while other nodes execute them. Default true.
    #[serde(default = "default_true")]
    pub take_batons: bool,
}

fn default_prefix() -> String {
    "callboard".into()
}
fn default_heartbeat() -> u64 {
    1000
}
fn default_node_timeout() -> u64 {
    5000
}
fn default_bus_max_age() -> u64 {
    3600
}
fn default_bus_max_bytes() -> i64 {
    1 << 30
}
fn default_bus_per_session() -> i64 {
    4096
}
fn default_bus_queue() -> usize {
    8192
}
fn default_outage_wait() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_mailbox_max_msgs() -> i64 {
    10_000
}
fn default_mailbox_ack_wait() -> u64 {
    30_000
}
fn default_mailbox_max_deliver() -> i64 {
    5
}
fn default_mailbox_node_runs() -> usize {
    1024
}

/// Whether `s` is a plain name: letters, digits, `-` and `_`, 1 to 64 of them.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ClusterConfig {
    /// The problems of this section, as `(key, message)`.
    pub fn issues(&self, store: Option<&str>) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if !self.nats_url.starts_with("nats://") && !self.nats_url.starts_with("tls://") {
            v.push((
                "cluster.nats_url".into(),
                format!(
                    "`{}` is not a NATS URL such as nats://127.0.0.1:4222",
                    self.nats_url
                ),
            ));
        }
        if let Some(id) = &self.node_id {
            if !plain_name(id) {
                v.push((
                    "cluster.node_id".into(),
                    "must be 1 to 64 letters, digits, `-` or `_`".into(),
                ));
            }
        }
        if !plain_name(&self.prefix) {
            v.push((
                "cluster.prefix".into(),
                "must be 1 to 64 letters, digits, `-` or `_`".into(),
            ));
        }
        if self.heartbeat_ms == 0 || self.node_timeout_ms < 2 * self.heartbeat_ms {
            v.push((
                "cluster.node_timeout_ms".into(),
                "must be at least twice cluster.heartbeat_ms (and the heartbeat above 0)".into(),
            ));
        }
        if self.bus_queue == 0 || self.bus_max_per_session <= 0 || self.bus_max_bytes <= 0 {
            v.push((
                "cluster.bus_queue".into(),
                "bus_queue, bus_max_per_session and bus_max_bytes must be above 0".into(),
            ));
        }
        if self.mailbox_max_msgs <= 0
            || self.mailbox_max_ack_pending <= 0
            || self.mailbox_max_deliver <= 0
            || self.mailbox_node_runs == 0
        {
            v.push((
                "cluster.mailbox_max_msgs".into(),
                "mailbox_max_msgs, mailbox_max_ack_pending, mailbox_max_deliver and mailbox_node_runs must be above 0".into(),
            ));
        }
        if self.mailbox_ack_wait_ms < 300 {
            v.push((
                "cluster.mailbox_ack_wait_ms".into(),
                "must be at least 300 (a working node renews its hold every third of it)".into(),
            ));
        }
        let shared =
            store.is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"));
        if !shared {
            v.push((
                "sessions.store".into(),
                "[cluster] needs a store every node shares: set sessions.store = \"postgres://...\"".into(),
            ));
        }
        v
    }

    /// `mailbox_ack_wait_ms` as a duration.
    pub fn ack_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.mailbox_ack_wait_ms.max(1))
    }

    /// This node's id: `node_id`, or the host name and the port it listens on.
    pub fn node_id(&self, port: u16) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| plain_name(h))
            .unwrap_or_else(|| "node".into());
        format!("{host}-{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> ClusterConfig {
        toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_and_checks() {
        let c = cfg("nats_url = \"nats://127.0.0.1:4222\"");
        assert_eq!(c.prefix, "callboard");
        assert!(c.issues(Some("postgres://h/db")).is_empty());
        let keys: Vec<String> = c
            .issues(Some("sqlite://x.db"))
            .into_iter()
            .map(|i| i.0)
            .collect();
        assert_eq!(keys, ["sessions.store"]);
        assert!(c.mailboxes);
        assert_eq!(c.mailbox_max_deliver, 5);
        let bad = cfg("nats_url = \"nats://x\"\nmailbox_max_msgs = 0\nmailbox_ack_wait_ms = 10");
        let keys: Vec<String> = bad
            .issues(Some("postgres://h/db"))
            .into_iter()
            .map(|i| i.0)
            .collect();
        assert_eq!(
            keys,
            ["cluster.mailbox_max_msgs", "cluster.mailbox_ack_wait_ms"]
        );
        let c = cfg("nats_url = \"http://x\"\nnode_id = \"a.b\"\nheartbeat_ms = 1000\nnode_timeout_ms = 1500");
        let keys: Vec<String> = c
            .issues(Some("postgres://h/db"))
            .into_iter()
            .map(|i| i.0)
            .collect();
        assert_eq!(
            keys,
            [
                "cluster.nats_url",
                "cluster.node_id",
                "cluster.node_timeout_ms"
            ]
        );
        assert_eq!(
            cfg("nats_url = \"nats://x\"\nnode_id = \"n1\"").node_id(7),
            "n1"
        );
    }
}
