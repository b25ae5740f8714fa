//! The node side of a global limit: admits locally from its slice, asks for more when it runs
//! low, and never uses a slice past the end of the owner window it came from.

use serde::{Deserialize, Serialize};

use super::{LeaseGrant, LeaseRequest, NodeId};

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
        let now = self.clamp(now_ns);
        if self.demand_units == 0 {
            // Demand is measured from its first unit after the last request, not from whenever
            // the last request was, so an idle gap does not dilute the rate.
            self.demand_since_ns = now;
        }
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
    /// was demand since the last request, and none is in flight. `want` is the demand seen since
    /// the last request, per `horizon_ns` (the owner clamps it to its slice bounds).
    pub fn poll_refill(&mut self, now_ns: u64) -> Option<LeaseRequest> {
        let now = self.clamp(now_ns);
        if self.in_flight.is_some()
            || self.remaining > self.cfg.low_watermark
            || self.demand_units == 0
            || now < self.exhausted_until_ns
        {
            return None;
        }
        // Demand per `horizon_ns`: what was seen over the last stretch, scaled down when that
        // stretch was longer than the horizon. A stretch shorter than the horizon is not scaled
        // up: one request seen in 1 µs says nothing about the next second.
        let elapsed = now.saturating_sub(self.demand_since_ns).max(self.cfg.horizon_ns).max(1);
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

    /// True when the owner said this window is used up and asking again before `now_ns` reaches
    /// the next window cannot help: a check that does not fit should be denied, not wait.
    pub fn exhausted(&self, now_ns: u64) -> bool {
        now_ns.max(self.last_ns) < self.exhausted_until_ns
    }

    /// Gives up on the request in flight (its answer failed or was refused): a late grant for it
    /// is then ignored, which only strands quota, never double-spends it (as after
    /// `request_timeout_ns`). The next check may ask again.
    pub fn cancel_refill(&mut self) {
        self.in_flight = None;
    }

    /// True while a refill request is awaiting its grant.
    pub fn refill_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Local time until which the current slice is usable (0 before the first grant).
    pub fn expires_at_ns(&self) -> u64 {
        self.expires_at_ns
    }
}
