//! GCRA (generic cell rate algorithm), as in governor and redis-cell: one number per key, the
//! theoretical arrival time (TAT) of the next request if traffic were perfectly spaced.
//!
//! Time is kept in units of `1/limit` ns so the emission interval `T = W/limit` is the exact
//! integer `W` and the tolerance is `burst·W`: no rounding. Admit `cost` at `now` iff
//! `max(TAT, now) + cost·T - now <= burst·T`. This is the token bucket with
//! `level = burst - (TAT - now)/T`, so it makes the same decisions (a property test checks
//! that) with one fewer field. Promise: any interval of length `t` admits at most
//! `burst + limit·t/W`.

use super::{AlgorithmState, LimitParams};
use crate::decision::{Decision, RETRY_NEVER};
use crate::time::{Wide, div_ceil_u128, div_u128, sat_u64};

/// GCRA state for one key (24 bytes).
#[derive(Debug, Clone)]
pub struct GcraState {
    /// Theoretical arrival time, in units of `1/limit` ns.
    tat: Wide,
    /// High-water mark of time seen, in ns; earlier `now_ns` is clamped to it.
    last_ns: u64,
}

impl GcraState {
    #[inline]
    fn decide(&self, p: &LimitParams, now_ns: u64, cost: u64) -> (Decision, Option<u128>, u64) {
        let now = now_ns.max(self.last_ns);
        let rate = u128::from(p.limit());
        let t = u128::from(p.window_ns());
        let tolerance = u128::from(p.burst()) * t;
        let now_u = u128::from(now) * rate;
        let tat = self.tat.get().max(now_u);
        let fits_at_all = cost <= p.burst();
        let new_tat = tat + u128::from(cost.min(p.burst())) * t;
        let fits = fits_at_all && new_tat - now_u <= tolerance;
        // Backlog after the decision; <= tolerance by construction.
        let backlog = if fits { new_tat } else { tat } - now_u;
        let retry_after_ns = if fits {
            0
        } else if !fits_at_all {
            RETRY_NEVER
        } else {
            sat_u64(div_ceil_u128(new_tat - now_u - tolerance, rate))
        };
        let d = Decision {
            allowed: fits,
            limit: p.burst(),
            remaining: sat_u64(div_u128(tolerance - backlog.min(tolerance), t)),
            reset_after_ns: sat_u64(div_ceil_u128(backlog, rate)),
            retry_after_ns,
        };
        (d, fits.then_some(new_tat), now)
    }
}

impl AlgorithmState for GcraState {
    fn new(_: &LimitParams) -> Self {
        GcraState { tat: Wide::default(), last_ns: 0 }
    }

    #[inline]
    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let (d, new_tat, now) = self.decide(p, now_ns, cost);
        if let Some(tat) = new_tat {
            self.tat = Wide::new(tat);
        }
        self.last_ns = now;
        d
    }

    #[inline]
    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        self.decide(p, now_ns, cost).0
    }

    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        // The bucket is full once `now·limit >= TAT`.
        let at = div_ceil_u128(self.tat.get(), u128::from(p.limit()));
        sat_u64(at).max(self.last_ns)
    }

    fn refund(&mut self, p: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        let now = now_ns.max(self.last_ns);
        let rate = u128::from(p.limit());
        let give = u128::from(cost.min(p.burst())) * u128::from(p.window_ns());
        // Same bound as the token bucket (GCRA is that bucket): refill lost at the cap since the
        // admission is not given back. In these units refill is `limit` per ns.
        let lost = u128::from(now - admitted_at_ns.min(now)) * rate;
        let tat = self.tat.get().max(u128::from(now) * rate);
        self.tat = Wide::new(tat - give.saturating_sub(lost).min(tat - u128::from(now) * rate));
        self.last_ns = now;
    }
}

impl GcraState {
    pub(crate) fn to_words(&self) -> [u64; 3] {
        let (lo, hi) = self.tat.halves();
        [lo, hi, self.last_ns]
    }
    pub(crate) fn from_words(w: [u64; 3]) -> Self {
        GcraState { tat: Wide::from_halves(w[0], w[1]), last_ns: w[2] }
    }
    /// Words from an untrusted snapshot, brought within the invariant (backlog at the last
    /// check at most the tolerance, so later sums cannot overflow).
    pub(crate) fn sanitized(w: [u64; 3], p: &LimitParams) -> [u64; 3] {
        let s = Self::from_words(w);
        let max = u128::from(s.last_ns) * u128::from(p.limit()) + u128::from(p.burst()) * u128::from(p.window_ns());
        GcraState { tat: Wide::new(s.tat.get().min(max)), last_ns: s.last_ns }.to_words()
    }
}
