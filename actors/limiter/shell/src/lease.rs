//! The node side of global rules: one [`QuotaLease`] per global rule, admitting locally, with
//! refills from the quota singleton off the request path.
//!
//! A check that fits the local slice costs no round trip. One that does not fit waits (at most
//! `owner_timeout_ms`) for the refill already asked for, or asks for one: so a cold node or a
//! burst above the slice pays one round trip, and a window whose quota is used up cluster-wide
//! is denied at once, locally, until the next window.
//!
//! Invariants: a lease is used only within the validity the core computes (anchored at the
//! request's send time); a lease the owner wrote off (this node was reported down) is
//! discarded, never used again, and replaced by a new incarnation with a new id; lease ids are
//! unique per process, so a re-created lease can never be mistaken for an old one by the owner.

use super::state::NodeLimiter;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use troupe_limiter::proto::{self, LimiterQuota, Mode, QuotaMsg, QuotaReply};
use troupe_limiter::{Decision, FailMode, LeaseConfig, LeaseRequest, NodeId, QuotaLease, Rule};
use troupe_runtime::{ActorPath, KindSpec};

/// Lease incarnations in this process (makes every lease id unique).
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One global rule's lease on this node.
pub struct LeaseSlot {
    rule: String,
    fingerprint: u64,
    inner: Mutex<LeaseInner>,
    /// Bumped after every answer to a refill, to wake checks waiting for it.
    answered: watch::Sender<u64>,
}

struct LeaseInner {
    lease: QuotaLease,
    generation: u64,
}

/// The leases of this node, by rule name.
#[derive(Default)]
pub struct Leases {
    slots: Mutex<HashMap<String, Arc<LeaseSlot>>>,
}

fn lease_id(node: &str, epoch: u64, generation: u64) -> NodeId {
    let mut h = proto::route_hash(troupe_limiter::Dimension::Global, node);
    for v in [epoch, generation] {
        h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn new_lease(st: &NodeLimiter, rule: &Rule) -> LeaseInner {
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let a = &st.cfg.agent;
    let limit = rule.params().limit();
    let (_, slice_max) = st.cfg.quota.slices(limit);
    let ms = |v: u64| v.saturating_mul(1_000_000);
    let cfg = LeaseConfig {
        node: lease_id(st.node.name(), st.node.epoch(), generation),
        low_watermark: (u128::from(limit) * u128::from(a.lease_low_watermark_percent) / 100) as u64,
        horizon_ns: ms(a.lease_horizon_ms),
        request_timeout_ns: ms(a.lease_request_timeout_ms),
        want_max: slice_max,
        drift_margin_ns: ms(a.lease_drift_margin_ms),
    };
    LeaseInner { lease: QuotaLease::new(cfg), generation }
}

impl Leases {
    fn slot(&self, st: &NodeLimiter, rule: &Rule) -> Arc<LeaseSlot> {
        let fp = rule.params().fingerprint();
        let mut slots = self.slots.lock();
        match slots.get(rule.name()) {
            Some(s) if s.fingerprint == fp => s.clone(),
            // New rule, or its parameters changed: a fresh lease (the old slice is dropped,
            // which only strands quota).
            _ => {
                let s = Arc::new(LeaseSlot {
                    rule: rule.name().to_string(),
                    fingerprint: fp,
                    inner: Mutex::new(new_lease(st, rule)),
                    answered: watch::channel(0).0,
                });
                slots.insert(rule.name().to_string(), s.clone());
                s
            }
        }
    }
}

/// Checks `cost` against global rule `rule` from this node's lease. Returns the decision and
/// how it was reached; waits at most `owner_timeout_ms` for quota.
pub async fn check_global(st: &Arc<NodeLimiter>, rule: &Rule, cost: u64) -> (Decision, Mode) {
    let slot = st.leases.slot(st, rule);
    let deadline = Instant::now() + st.owner_timeout();
    let limit = rule.params().limit();
    loop {
        let mut answered = {
            let mut g = slot.inner.lock();
            let now = st.clock.now_ns();
            let c = g.lease.check(now, cost);
            let until_expiry = g.lease.expires_at_ns().saturating_sub(now);
            if c.admitted {
                if c.should_refill {
                    refill(st, &slot, &mut g, now);
                }
                let d = Decision {
                    allowed: true,
                    limit,
                    remaining: c.remaining,
                    reset_after_ns: until_expiry,
                    retry_after_ns: 0,
                };
                return (d, Mode::Enforced);
            }
            if g.lease.exhausted(now) {
                // The owner said this window is used up cluster-wide: deny locally.
                let wait = until_expiry.max(1);
                let d = Decision { allowed: false, limit, remaining: 0, reset_after_ns: wait, retry_after_ns: wait };
                return (d, Mode::Enforced);
            }
            if !g.lease.refill_in_flight() {
                refill(st, &slot, &mut g, now);
            }
            slot.answered.subscribe()
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, answered.changed()).await.is_err() {
            return unreachable(st, rule);
        }
    }
}

/// The rule's fail mode when no quota could be had in time.
fn unreachable(st: &NodeLimiter, rule: &Rule) -> (Decision, Mode) {
    let retry = st.cfg.agent.fail_closed_retry_ms.saturating_mul(1_000_000);
    let d = rule.fail_mode().unreachable_decision(rule.params().limit(), retry);
    let mode = match rule.fail_mode() {
        FailMode::Open => Mode::FailOpen,
        FailMode::Closed => Mode::FailClosed,
    };
    (d, mode)
}

/// Sends a refill request if the lease has one due, answered in the background.
fn refill(st: &Arc<NodeLimiter>, slot: &Arc<LeaseSlot>, g: &mut LeaseInner, now: u64) {
    let Some(req) = g.lease.poll_refill(now) else { return };
    let (st, slot, generation) = (st.clone(), slot.clone(), g.generation);
    tokio::spawn(async move { answer(&st, &slot, generation, req).await });
}

async fn answer(st: &Arc<NodeLimiter>, slot: &Arc<LeaseSlot>, generation: u64, req: LeaseRequest) {
    let timeout = Duration::from_millis(st.cfg.agent.lease_request_timeout_ms);
    let reply = match ActorPath::new(proto::SYSTEM, proto::KIND_QUOTA, KindSpec::singleton_key()) {
        Ok(path) => {
            let msg = QuotaMsg::Lease {
                rule: slot.rule.clone(),
                node: st.node.name().to_string(),
                epoch: st.node.epoch(),
                req,
            };
            st.node.handle::<LimiterQuota>(path).ask_timeout(msg, timeout).await
        }
        Err(e) => Err(troupe_runtime::RemoteError::Invalid(e.to_string())),
    };
    {
        let mut g = slot.inner.lock();
        if g.generation != generation {
            return; // the lease was re-created meanwhile; this answer is for a dead one
        }
        match reply {
            Ok(QuotaReply::Grant(grant)) => {
                if g.lease.on_grant(&grant, st.clock.now_ns()) {
                    st.metrics.rule(&slot.rule).lease_refills.inc();
                }
            }
            Ok(QuotaReply::WrittenOff) => {
                // The owner heard this node was down (a false suspicion, or we are a zombie):
                // whatever we held is written off, so discard it and start over as a new id.
                tracing::warn!(rule = %slot.rule, "lease written off by the quota owner; starting a new one");
                if let Some(rule) = st.rules().get(&slot.rule) {
                    *g = new_lease(st, rule);
                }
            }
            Ok(other) => {
                tracing::debug!(rule = %slot.rule, answer = ?other, "lease request refused");
                g.lease.cancel_refill();
            }
            Err(e) => {
                tracing::debug!(rule = %slot.rule, error = %e, "lease request failed");
                g.lease.cancel_refill();
            }
        }
    }
    slot.answered.send_modify(|v| *v += 1);
}
