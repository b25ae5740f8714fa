//! The owner side of a global limit: grants slices of each window's quota, writes off the
//! slices of nodes reported dead. Invariant: `outstanding <= limit` in every window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LeaseError, LeaseGrant, LeaseRequest, NodeId, QuotaConfig};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NodeSlot {
    last_seq: u64,
    /// Granted to this node in the current window.
    granted: u64,
    /// Of which returned.
    returned: u64,
    down: bool,
}

/// The owner of one global limit (runs inside the singleton or shard actor that owns it).
///
/// Serde so its actor can make it durable: a new owner that resumes from the last grant's state
/// cannot grant the same window's quota twice. A deserialised owner is not re-validated beyond
/// its types; it comes from the owner's own replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaOwner {
    cfg: QuotaConfig,
    window_id: u64,
    /// Granted minus returned in the current window; invariant `<= cfg.limit`.
    outstanding: u64,
    nodes: BTreeMap<NodeId, NodeSlot>,
    last_ns: u64,
}

impl QuotaOwner {
    /// An owner with nothing granted.
    pub fn new(cfg: QuotaConfig) -> Result<Self, LeaseError> {
        if cfg.limit == 0 || cfg.window_ns == 0 {
            return Err(LeaseError::Config("limit and window_ns must be at least 1"));
        }
        if cfg.slice_min == 0 || cfg.slice_min > cfg.slice_max || cfg.slice_max > cfg.limit {
            return Err(LeaseError::Config("need 1 <= slice_min <= slice_max <= limit"));
        }
        if cfg.nodes_max == 0 {
            return Err(LeaseError::Config("nodes_max must be at least 1"));
        }
        Ok(QuotaOwner { cfg, window_id: 0, outstanding: 0, nodes: BTreeMap::new(), last_ns: 0 })
    }

    /// Moves to the window of `now` (clamped); a new window starts with the full limit. Nodes
    /// reported down stay marked (so a duplicated old request of theirs is still refused) until
    /// their slot is needed for a new node.
    fn roll(&mut self, now_ns: u64) -> u64 {
        let now = now_ns.max(self.last_ns);
        self.last_ns = now;
        let w = now / self.cfg.window_ns;
        if w != self.window_id {
            self.window_id = w;
            self.outstanding = 0;
            for n in self.nodes.values_mut() {
                n.granted = 0;
                n.returned = 0;
            }
        }
        now
    }

    /// Answers a lease request at `now_ns` on the owner's clock.
    pub fn handle_request(&mut self, req: &LeaseRequest, now_ns: u64) -> Result<LeaseGrant, LeaseError> {
        let now = self.roll(now_ns);
        if !self.nodes.contains_key(&req.node) && self.nodes.len() >= self.cfg.nodes_max {
            // Make room by forgetting one node reported down (its incarnation never returns).
            let Some(dead) = self.nodes.iter().find(|(_, n)| n.down).map(|(id, _)| *id) else {
                return Err(LeaseError::TooManyNodes { max: self.cfg.nodes_max });
            };
            self.nodes.remove(&dead);
        }
        let node = self.nodes.entry(req.node).or_default();
        if node.down {
            return Err(LeaseError::NodeDown { node: req.node });
        }
        if req.seq <= node.last_seq {
            return Err(LeaseError::StaleSeq { node: req.node, seq: req.seq, last: node.last_seq });
        }
        node.last_seq = req.seq;
        if req.returned_window == self.window_id {
            let credit = req.returned.min(node.granted - node.returned);
            node.returned += credit;
            self.outstanding -= credit;
        }
        let left = self.cfg.limit - self.outstanding;
        let amount = if req.want == 0 { 0 } else { req.want.clamp(self.cfg.slice_min, self.cfg.slice_max).min(left) };
        node.granted += amount;
        self.outstanding += amount;
        let window_end = (u128::from(self.window_id) + 1) * u128::from(self.cfg.window_ns);
        let valid_for_ns = crate::time::sat_u64(window_end - u128::from(now));
        Ok(LeaseGrant { node: req.node, seq: req.seq, window_id: self.window_id, amount, valid_for_ns })
    }

    /// Told by membership that `node` died: stops granting to it and writes off what it held in
    /// this window (returned as the count of units lost). The units are not re-granted in this
    /// window because the node may have spent them before it died.
    pub fn node_down(&mut self, node: NodeId, now_ns: u64) -> u64 {
        self.roll(now_ns);
        match self.nodes.get_mut(&node) {
            Some(n) => {
                n.down = true;
                n.granted - n.returned
            }
            None => 0,
        }
    }

    /// Units granted and not returned in the current window (as of the last call).
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }
    /// The configuration.
    pub fn config(&self) -> &QuotaConfig {
        &self.cfg
    }
}
