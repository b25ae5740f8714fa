//! Introspection records: what a node says about itself. The CLI, `troupe top` and
//! the tests all read these through the node agent at `/troupe/node/<name>`.

use crate::envelope::TraceId;
use crate::protocol::Protocol;
use serde::{Deserialize, Serialize};

/// The node agent's protocol.
pub struct NodeAgent;

impl Protocol for NodeAgent {
    type Msg = NodeRequest;
    type Reply = NodeReply;
    const NAME: &'static str = "troupe.node";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeRequest {
    Health,
    Tree,
    Members,
    Metrics,
    /// Spans this node recorded for one trace id.
    Trace {
        trace: TraceId,
    },
    Chaos(ChaosCommand),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeReply {
    Health(Health),
    Tree(ActorInfo),
    Members(Vec<MemberInfo>),
    Metrics(MetricsSnapshot),
    Trace(Vec<SpanRecord>),
    Chaos(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub node: String,
    pub epoch: u64,
    pub uptime_ms: u64,
    pub systems: Vec<SystemHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemHealth {
    pub name: String,
    /// `running`, or `failed: <why>` once its supervisor gave up.
    pub status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorState {
    Starting,
    Running,
    /// Waiting out a restart backoff.
    Restarting,
    Stopped,
    /// Its supervisor gave up on it.
    Failed,
}

/// One node of a supervision tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    pub path: String,
    pub kind: String,
    pub state: ActorState,
    /// `one_for_one` etc. for supervisors, empty for workers.
    pub strategy: String,
    pub mailbox_len: u64,
    pub mailbox_cap: u64,
    pub handled: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub children: Vec<ActorInfo>,
}

impl ActorInfo {
    /// Every node of the tree, depth first.
    pub fn walk(&self) -> Vec<&ActorInfo> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub addr: String,
    /// Boot epoch of this incarnation (ms since the Unix epoch at start).
    pub epoch: u64,
    pub state: MemberState,
    /// SWIM incarnation counter within this boot.
    pub incarnation: u16,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub help: String,
    /// `counter`, `gauge` or `histogram` (Prometheus types).
    pub kind: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub node: String,
    pub unix_ms: u64,
    pub metrics: Vec<Metric>,
}

impl MetricsSnapshot {
    /// Sum of a metric over all label sets, for quick reads in tests and the TUI.
    pub fn total(&self, name: &str) -> f64 {
        self.metrics.iter().filter(|m| m.name == name).map(|m| m.value).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace: TraceId,
    pub node: String,
    pub name: String,
    pub target: String,
    pub start_unix_us: u64,
    pub duration_us: u64,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChaosCommand {
    /// Drop every frame to and from these nodes.
    Partition {
        nodes: Vec<String>,
        for_ms: Option<u64>,
    },
    /// Delay frames to these nodes.
    Delay {
        nodes: Vec<String>,
        delay_ms: u64,
        for_ms: Option<u64>,
    },
    /// Drop this fraction of frames to these nodes.
    Drop {
        nodes: Vec<String>,
        ratio: f64,
        for_ms: Option<u64>,
    },
    Heal,
}
