//! Sliding window counter (Cloudflare's): the count of the current aligned window plus the
//! previous window's count weighted by how much of it the rolling window still overlaps.
//!
//! At offset `e` into the current window, `estimate = prev·(W−e)/W + curr`; admit `cost` iff
//! `estimate + cost <= limit`. Compared exactly as `prev·(W−e) + (curr+cost)·W <= limit·W`.
//!
//! Error bound (derivation in docs/rate-limiter-core.md): the true count of the last `W`
//! nanoseconds is `curr + p_tail`, where `p_tail` is the part of `prev` that fell in the last
//! `W−e` ns of the previous window, `0 <= p_tail <= prev`. So
//! `true − estimate = p_tail − prev·(W−e)/W ∈ [−prev·(W−e)/W, prev·e/W]`.
//! Since admission keeps `estimate <= limit`, any check sees at most `limit + prev·e/W < 2·limit`
//! in its trailing window, and each aligned window at most `limit` (`curr <= estimate`). When
//! the previous window's traffic was spread evenly the error is near 0, which is the assumption
//! that made it misjudge 0.003% of requests at Cloudflare.

use super::{AlgorithmState, LimitParams};
use crate::decision::{Decision, RETRY_NEVER};
use crate::time::{div_u128, sat_u64};

/// Sliding counter state for one key: two counts and the time seen (16 bytes). Counts fit in
/// `u32` because `limit <= LIMIT_MAX = u32::MAX` and a window never holds more than `limit`.
#[derive(Debug, Clone)]
pub struct SlidingCounterState {
    /// Cost admitted in the window of `last_ns`.
    curr: u32,
    /// Cost admitted in the window before it.
    prev: u32,
    /// High-water mark of time seen; its window is the current one (no index stored).
    last_ns: u64,
}

/// Counts rolled forward to the clamped time.
#[derive(Clone, Copy)]
struct View {
    now: u64,
    /// Offset into the current window, `0 <= e < W`.
    e: u64,
    prev: u64,
    curr: u64,
}

impl SlidingCounterState {
    #[inline]
    fn view(&self, p: &LimitParams, now_ns: u64) -> View {
        let now = now_ns.max(self.last_ns);
        let w = p.window_ns();
        let idx = now / w;
        let (prev, curr) = match idx - self.last_ns / w {
            0 => (u64::from(self.prev), u64::from(self.curr)),
            1 => (u64::from(self.curr), 0),
            _ => (0, 0),
        };
        View { now, e: now - idx * w, prev, curr }
    }

    /// `estimate·W` for the view.
    fn weighted(p: &LimitParams, v: &View) -> u128 {
        let w = u128::from(p.window_ns());
        u128::from(v.prev) * (w - u128::from(v.e)) + u128::from(v.curr) * w
    }

    fn reset_after(p: &LimitParams, v: &View, curr: u64) -> u64 {
        let w = p.window_ns();
        if curr > 0 {
            (w - v.e).saturating_add(w)
        } else if v.prev > 0 {
            w - v.e
        } else {
            0
        }
    }

    /// Nanoseconds until `cost` fits, for a denied `cost <= limit`.
    fn retry_after(p: &LimitParams, v: &View, cost: u64) -> u64 {
        let w = u128::from(p.window_ns());
        let limit = u128::from(p.limit());
        let (prev, curr, cost) = (u128::from(v.prev), u128::from(v.curr), u128::from(cost));
        if curr + cost <= limit && prev > 0 {
            // Wait in this window for the previous one's weight to decay:
            // prev·(W−e') <= (limit−curr−cost)·W  ⇔  e' >= W − floor((limit−curr−cost)·W / prev).
            let e_min = w.saturating_sub((limit - curr - cost) * w / prev);
            return sat_u64(e_min.saturating_sub(u128::from(v.e)).max(1));
        }
        // Wait for the next window, where prev' = curr:  curr·(W−e'') + cost·W <= limit·W.
        let to_next = w - u128::from(v.e);
        let e_next = ((limit - cost) * w).checked_div(curr).map_or(0, |fits| w.saturating_sub(fits));
        sat_u64(to_next + e_next)
    }

    #[inline]
    fn decide(p: &LimitParams, v: &View, cost: u64) -> Decision {
        let limit = p.limit();
        let w = u128::from(p.window_ns());
        let weighted = Self::weighted(p, v);
        let budget = u128::from(limit) * w;
        let remaining_of = |weighted: u128| sat_u64(div_u128(budget.saturating_sub(weighted), w));
        if cost > limit {
            return Decision {
                allowed: false,
                limit,
                remaining: remaining_of(weighted),
                reset_after_ns: Self::reset_after(p, v, v.curr),
                retry_after_ns: RETRY_NEVER,
            };
        }
        let after = weighted + u128::from(cost) * w;
        if after <= budget {
            let curr_after = v.curr + cost;
            Decision {
                allowed: true,
                limit,
                remaining: remaining_of(after),
                reset_after_ns: Self::reset_after(p, v, curr_after),
                retry_after_ns: 0,
            }
        } else {
            Decision {
                allowed: false,
                limit,
                remaining: remaining_of(weighted),
                reset_after_ns: Self::reset_after(p, v, v.curr),
                retry_after_ns: Self::retry_after(p, v, cost),
            }
        }
    }

    /// `(estimate·W, previous window's count, offset e into the current window)` at `now_ns`:
    /// the estimate of the trailing window's count as an exact rational. For the lab and the
    /// error-bound tests.
    pub fn weighted_estimate(&self, p: &LimitParams, now_ns: u64) -> (u128, u64, u64) {
        let v = self.view(p, now_ns);
        (Self::weighted(p, &v), v.prev, v.e)
    }
}

impl AlgorithmState for SlidingCounterState {
    fn new(_: &LimitParams) -> Self {
        SlidingCounterState { curr: 0, prev: 0, last_ns: 0 }
    }

    #[inline]
    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let v = self.view(p, now_ns);
        let d = Self::decide(p, &v, cost);
        let curr = if d.allowed { v.curr + cost } else { v.curr };
        // Both are <= limit <= u32::MAX (admission keeps the estimate, which bounds them, under
        // the limit); saturating is only a guard.
        self.prev = u32::try_from(v.prev).unwrap_or(u32::MAX);
        self.curr = u32::try_from(curr).unwrap_or(u32::MAX);
        self.last_ns = v.now;
        d
    }

    #[inline]
    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let v = self.view(p, now_ns);
        Self::decide(p, &v, cost)
    }

    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        let w = u128::from(p.window_ns());
        let idx = u128::from(self.last_ns / p.window_ns());
        let at = if self.curr > 0 {
            (idx + 2) * w
        } else if self.prev > 0 {
            (idx + 1) * w
        } else {
            return self.last_ns;
        };
        sat_u64(at).max(self.last_ns)
    }

    fn refund(&mut self, p: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        let v = self.view(p, now_ns);
        let (at_idx, idx) = (admitted_at_ns / p.window_ns(), v.now / p.window_ns());
        // Exact: the admission was counted in one aligned window; take it out of that count.
        let (mut prev, mut curr) = (v.prev, v.curr);
        if at_idx == idx {
            curr -= cost.min(curr);
        } else if at_idx + 1 == idx {
            prev -= cost.min(prev);
        } else {
            return;
        }
        self.prev = u32::try_from(prev).unwrap_or(u32::MAX);
        self.curr = u32::try_from(curr).unwrap_or(u32::MAX);
        self.last_ns = v.now;
    }
}

impl SlidingCounterState {
    pub(crate) fn to_words(&self) -> [u64; 3] {
        [u64::from(self.curr) | (u64::from(self.prev) << 32), self.last_ns, 0]
    }
    pub(crate) fn from_words(w: [u64; 3]) -> Self {
        SlidingCounterState { curr: w[0] as u32, prev: (w[0] >> 32) as u32, last_ns: w[1] }
    }
    /// Words from an untrusted snapshot, brought within the invariant (each count `<= limit`).
    pub(crate) fn sanitized(w: [u64; 3], p: &LimitParams) -> [u64; 3] {
        let s = Self::from_words(w);
        let cap = u32::try_from(p.limit()).unwrap_or(u32::MAX);
        SlidingCounterState { curr: s.curr.min(cap), prev: s.prev.min(cap), last_ns: s.last_ns }.to_words()
    }
}
