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

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
struct NodeSlot {
    last_seq: u64,
    /// Granted to this node in the current window.
    granted: u64,
    /// Of which returned.
    returned: u64,
    down: bool,
}

/// The owner of one global limit (runs inside the singleton or shard actor that owns it).
#[derive(Debug, Clone)]
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

/// Node-side settings of a [`QuotaLease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseConfig {
    /// This node's incarnation id.
    pub node: NodeId,
    /// Ask for more when the slice falls to this many units (cover demand × round trip).
    pub low_watermark: u64,
    /// A refill should last about this long at the recent demand rate.
    pub horizon_ns: u64,
    /// Give up on an unanswered request after this long (a late grant is then ignored, which
    /// only strands quota, never double-spends it).
    pub request_timeout_ns: u64,
    /// Upper bound on one request's `want`.
    pub want_max: u64,
    /// Subtracted from every grant's validity to cover clock *rate* drift between node and
    /// owner over one window (offsets need no margin: validity is relative).
    pub drift_margin_ns: u64,
}

/// The node-side cache of a global limit's lease.
#[derive(Debug, Clone)]
pub struct QuotaLease {
    cfg: LeaseConfig,
    seq: u64,
    remaining: u64,
    /// Local time at which `remaining` stops being usable.
    expires_at_ns: u64,
    window_id: Option<u64>,
    /// (seq, local send time) of the request awaiting a grant.
    in_flight: Option<(u64, u64)>,
    /// After an empty grant (window exhausted), no request before this local time: asking
    /// again before the owner's window ends cannot succeed.
    exhausted_until_ns: u64,
    /// Demand (admitted + denied units) since `demand_since_ns`.
    demand_units: u64,
    demand_since_ns: u64,
    last_ns: u64,
}

/// Result of a local check against the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCheck {
    /// Admitted from the local slice.
    pub admitted: bool,
    /// Units left in the slice.
    pub remaining: u64,
    /// The caller should call [`QuotaLease::poll_refill`] and send the request.
    pub should_refill: bool,
}

impl QuotaLease {
    /// A node with no slice yet.
    pub fn new(cfg: LeaseConfig) -> Self {
        QuotaLease {
            cfg,
            seq: 0,
            remaining: 0,
            expires_at_ns: 0,
            window_id: None,
            in_flight: None,
            exhausted_until_ns: 0,
            demand_units: 0,
            demand_since_ns: 0,
            last_ns: 0,
        }
    }

    fn clamp(&mut self, now_ns: u64) -> u64 {
        let now = now_ns.max(self.last_ns);
        self.last_ns = now;
        if now >= self.expires_at_ns {
            self.remaining = 0;
        }
        if let Some((_, sent)) = self.in_flight
            && now.saturating_sub(sent) > self.cfg.request_timeout_ns
        {
            self.in_flight = None;
        }
        now
    }

    /// Admits `cost` from the local slice if it lasts; never talks to the owner.
    pub fn check(&mut self, now_ns: u64, cost: u64) -> LeaseCheck {
        self.clamp(now_ns);
        self.demand_units = self.demand_units.saturating_add(cost);
        let admitted = cost <= self.remaining;
        if admitted {
            self.remaining -= cost;
        }
        let should_refill = self.in_flight.is_none()
            && self.remaining <= self.cfg.low_watermark
            && self.last_ns >= self.exhausted_until_ns;
        LeaseCheck { admitted, remaining: self.remaining, should_refill }
    }

    /// The request to send now, if one is due: the slice is at or below the watermark, there
    /// was demand since the last request, and none is in flight. `want` is the recent demand
    /// rate times `horizon_ns`.
    pub fn poll_refill(&mut self, now_ns: u64) -> Option<LeaseRequest> {
        let now = self.clamp(now_ns);
        if self.in_flight.is_some()
            || self.remaining > self.cfg.low_watermark
            || self.demand_units == 0
            || now < self.exhausted_until_ns
        {
            return None;
        }
        let elapsed = now.saturating_sub(self.demand_since_ns).max(1);
        let want = u128::from(self.demand_units) * u128::from(self.cfg.horizon_ns) / u128::from(elapsed);
        let want = crate::time::sat_u64(want).clamp(1, self.cfg.want_max.max(1));
        self.seq += 1;
        self.in_flight = Some((self.seq, now));
        self.demand_units = 0;
        self.demand_since_ns = now;
        Some(LeaseRequest { node: self.cfg.node, seq: self.seq, want, returned: 0, returned_window: 0 })
    }

    /// Takes a grant. Returns false (and ignores it) unless it answers the request in flight.
    pub fn on_grant(&mut self, grant: &LeaseGrant, now_ns: u64) -> bool {
        self.clamp(now_ns);
        let Some((seq, sent_at)) = self.in_flight else { return false };
        if grant.seq != seq || grant.node != self.cfg.node {
            return false;
        }
        self.in_flight = None;
        // Anchored at the send time: on the owner's clock the request left before the grant
        // was made, so `sent_at + valid_for` is no later than the end of the grant's window.
        let expires = sent_at.saturating_add(grant.valid_for_ns.saturating_sub(self.cfg.drift_margin_ns));
        if grant.amount == 0 {
            // The window is exhausted; the earliest useful request is in the next one.
            self.exhausted_until_ns = sent_at.saturating_add(grant.valid_for_ns);
        }
        if self.window_id == Some(grant.window_id) {
            self.remaining += grant.amount;
            self.expires_at_ns = self.expires_at_ns.max(expires);
        } else {
            self.window_id = Some(grant.window_id);
            self.remaining = grant.amount;
            self.expires_at_ns = expires;
        }
        if self.last_ns >= self.expires_at_ns {
            self.remaining = 0;
        }
        true
    }

    /// Gives back the unused slice (graceful shutdown, or demand gone). The units are discarded
    /// locally before the request is built, so crediting them to others cannot double-spend.
    pub fn release(&mut self, now_ns: u64) -> Option<LeaseRequest> {
        self.clamp(now_ns);
        let window = self.window_id?;
        if self.remaining == 0 {
            return None;
        }
        let returned = std::mem::take(&mut self.remaining);
        self.seq += 1;
        Some(LeaseRequest { node: self.cfg.node, seq: self.seq, want: 0, returned, returned_window: window })
    }

    /// Units usable right now.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}
