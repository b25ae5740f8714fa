//! Token bucket: `limit` tokens per `window_ns` flow continuously into a bucket of `burst`.
//!
//! State is the level in scaled units (1 token = `window_ns` units) so the refill per elapsed
//! nanosecond is exactly `limit` units: no rounding, no drift. Invariant: `level <= burst·W`.
//! Promise: any interval of length `t` admits at most `burst + limit·t/W` (the level at the
//! start is at most `burst`, and at most `limit·t/W` flows in during the interval).

use super::{AlgorithmState, LimitParams};
use crate::decision::{Decision, RETRY_NEVER};
use crate::time::{Wide, div_ceil_u128, div_u128, sat_u64};

/// Token bucket state for one key (24 bytes; parameters live with the rule).
#[derive(Debug, Clone)]
pub struct TokenBucketState {
    /// Tokens × `window_ns`, as of `last_ns`.
    level: Wide,
    /// High-water mark of time seen; earlier `now_ns` is clamped to it.
    last_ns: u64,
}

fn capacity_units(p: &LimitParams) -> u128 {
    u128::from(p.burst()) * u128::from(p.window_ns())
}

impl TokenBucketState {
    /// Level refilled to `now` (clamped), and the clamped time.
    #[inline]
    fn level_at(&self, p: &LimitParams, now_ns: u64) -> (u128, u64) {
        let now = now_ns.max(self.last_ns);
        let refill = u128::from(now - self.last_ns) * u128::from(p.limit());
        ((self.level.get() + refill).min(capacity_units(p)), now)
    }

    #[inline]
    fn decide(p: &LimitParams, level: u128, cost: u64) -> (Decision, Option<u128>) {
        let w = u128::from(p.window_ns());
        let rate = u128::from(p.limit());
        let cap = capacity_units(p);
        let need = u128::from(cost.min(p.burst())) * w;
        let fits = cost <= p.burst() && level >= need;
        let after = if fits { level - need } else { level };
        let retry_after_ns = if fits {
            0
        } else if cost > p.burst() {
            RETRY_NEVER
        } else {
            sat_u64(div_ceil_u128(need - level, rate))
        };
        let d = Decision {
            allowed: fits,
            limit: p.burst(),
            remaining: sat_u64(div_u128(after, w)),
            reset_after_ns: sat_u64(div_ceil_u128(cap - after, rate)),
            retry_after_ns,
        };
        (d, fits.then_some(after))
    }
}

impl AlgorithmState for TokenBucketState {
    fn new(p: &LimitParams) -> Self {
        TokenBucketState { level: Wide::new(capacity_units(p)), last_ns: 0 }
    }

    #[inline]
    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let (level, now) = self.level_at(p, now_ns);
        let (d, after) = Self::decide(p, level, cost);
        // Recording the refill is state-equivalent, so it is done on deny too: it keeps the
        // high-water mark current, which is what makes a later backwards step harmless.
        self.level = Wide::new(after.unwrap_or(level));
        self.last_ns = now;
        d
    }

    #[inline]
    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let (level, _) = self.level_at(p, now_ns);
        Self::decide(p, level, cost).0
    }

    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        let missing = capacity_units(p) - self.level.get();
        let wait = div_ceil_u128(missing, u128::from(p.limit()));
        sat_u64(u128::from(self.last_ns) + wait)
    }

    fn refund(&mut self, p: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        let (level, now) = self.level_at(p, now_ns);
        let give = u128::from(cost.min(p.burst())) * u128::from(p.window_ns());
        // Without the admission the bucket could have hit its cap since then and lost up to this
        // much refill; giving it back too would be more generous than never admitting.
        let lost = u128::from(now - admitted_at_ns.min(now)) * u128::from(p.limit());
        self.level = Wide::new((level + give.saturating_sub(lost)).min(capacity_units(p)));
        self.last_ns = now;
    }
}

impl TokenBucketState {
    pub(crate) fn to_words(&self) -> [u64; 3] {
        let (lo, hi) = self.level.halves();
        [lo, hi, self.last_ns]
    }
    pub(crate) fn from_words(w: [u64; 3]) -> Self {
        TokenBucketState { level: Wide::from_halves(w[0], w[1]), last_ns: w[2] }
    }
    /// Words from an untrusted snapshot, brought within the invariant (`level <= burst·W`).
    pub(crate) fn sanitized(w: [u64; 3], p: &LimitParams) -> [u64; 3] {
        let s = Self::from_words(w);
        let level = s.level.get().min(capacity_units(p));
        TokenBucketState { level: Wide::new(level), last_ns: s.last_ns }.to_words()
    }
}
