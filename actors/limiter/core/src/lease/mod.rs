//! Global limits without a round trip per request: the owner of a global limit hands out
//! slices of each window's quota (leases) to nodes, which admit locally while a slice lasts.
//!
//! Protocol (all messages are plain structs; the shells carry them):
//! 1. A node's [`QuotaLease`] admits locally. When its slice runs low it emits a
//!    [`LeaseRequest`] sized by its recent demand ([`QuotaLease::poll_refill`]).
//! 2. The [`QuotaOwner`] answers with a [`LeaseGrant`]: at most what is left of the current
//!    window's global limit, clamped to `[slice_min, slice_max]`, valid until the window ends.
//! 3. The node anchors the grant's validity at the time it *sent* the request, not when the
//!    reply arrived, so on the owner's timeline the slice always expires by the end of the
//!    window it was granted in, whatever the delay and whatever the clocks' offsets.
//!
//! Safety invariant: the owner's grants in one window sum to at most `limit`, and a node admits
//! at most what it was granted, within that window. So the cluster admits at most `limit` per
//! window, even when a node dies mid-window: what it held is written off for the rest of the
//! window (it may have been spent before the crash and nobody can know), never granted again.
//! Quota is only credited back when a live node explicitly returns it ([`QuotaLease::release`]),
//! and requests carry a per-node sequence number, so a duplicated message cannot credit twice.
//!
//! The price is under-admission: slices held but unused (by slow or dead nodes) are stranded
//! until the window ends. See the accuracy/latency trade-off in the crate docs.

use serde::{Deserialize, Serialize};

/// A node incarnation (name + boot epoch, hashed by the shell). A restarted node is a new id.
pub type NodeId = u64;

/// Bounds and sizes of one global limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaConfig {
    /// Cost units per window, cluster-wide.
    pub limit: u64,
    /// Window length in ns; windows are aligned on the owner's clock.
    pub window_ns: u64,
    /// Smallest slice granted when quota is left (amortises round trips for bursty nodes).
    pub slice_min: u64,
    /// Largest slice one grant may carry (bounds what one node can strand or lose).
    pub slice_max: u64,
    /// Most nodes tracked at once.
    pub nodes_max: usize,
}

/// A lease request from a node to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The requesting node incarnation.
    pub node: NodeId,
    /// Strictly increasing per node; the owner ignores anything not newer than the last seen.
    pub seq: u64,
    /// Units wanted (from recent demand); 0 for a pure return.
    pub want: u64,
    /// Unused units the node has discarded and gives back.
    pub returned: u64,
    /// Window the returned units were granted in; credited only if it is still current.
    pub returned_window: u64,
}

/// The owner's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The node it is for.
    pub node: NodeId,
    /// Echo of the request's `seq`.
    pub seq: u64,
    /// The owner's window the units belong to.
    pub window_id: u64,
    /// Units granted (may be 0 when the window's quota is exhausted).
    pub amount: u64,
    /// Nanoseconds from the owner's grant time to the end of the window.
    pub valid_for_ns: u64,
}

/// Why the owner refused a request or a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Bad [`QuotaConfig`].
    #[error("invalid quota config: {0}")]
    Config(&'static str),
    /// The node was reported down; a restarted node must use its new incarnation id.
    #[error("node {node} was reported down in this window; rejoin with a new incarnation")]
    NodeDown { node: NodeId },
    /// A duplicate or reordered request.
    #[error("request seq {seq} from node {node} is not newer than {last}; ignored")]
    StaleSeq { node: NodeId, seq: u64, last: u64 },
    /// More nodes than `nodes_max`.
    #[error("quota owner tracks at most {max} nodes")]
    TooManyNodes { max: usize },
}

mod node;
mod owner;

pub use node::{LeaseCheck, LeaseConfig, QuotaLease};
pub use owner::QuotaOwner;
