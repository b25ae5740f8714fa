//! Fixed window: one counter per aligned window `[k·W, (k+1)·W)` of the owner's clock.
//!
//! Promise: each aligned window admits at most `limit`. Not promised, by design: a rolling
//! window of length `W` that straddles a boundary can hold `2·limit` (all of window `k` at its
//! end, all of window `k+1` at its start). That is the classic boundary burst; the test
//! `fixed_window_admits_2x_across_a_boundary` shows it and the lab measures it.

use super::{AlgorithmState, LimitParams};
use crate::decision::{Decision, RETRY_NEVER};

/// Fixed window state for one key (16 bytes).
#[derive(Debug, Clone)]
pub struct FixedWindowState {
    /// Cost admitted in the window of `last_ns`; invariant `count <= limit`.
    count: u64,
    /// High-water mark of time seen. Its window is the one `count` belongs to, so no separate
    /// window index is stored.
    last_ns: u64,
}

impl FixedWindowState {
    /// (clamped now, window index, count in that window)
    #[inline]
    fn current(&self, p: &LimitParams, now_ns: u64) -> (u64, u64, u64) {
        let now = now_ns.max(self.last_ns);
        let idx = now / p.window_ns();
        let count = if idx == self.last_ns / p.window_ns() { self.count } else { 0 };
        (now, idx, count)
    }

    #[inline]
    fn decide(p: &LimitParams, now: u64, idx: u64, count: u64, cost: u64) -> Decision {
        let limit = p.limit();
        let window_end = (u128::from(idx) + 1) * u128::from(p.window_ns());
        let to_end = crate::time::sat_u64(window_end - u128::from(now));
        let allowed = count.saturating_add(cost) <= limit;
        let used = if allowed { count + cost } else { count };
        Decision {
            allowed,
            limit,
            remaining: limit - used,
            reset_after_ns: to_end,
            retry_after_ns: if allowed {
                0
            } else if cost > limit {
                RETRY_NEVER
            } else {
                to_end
            },
        }
    }
}

impl AlgorithmState for FixedWindowState {
    fn new(_: &LimitParams) -> Self {
        FixedWindowState { count: 0, last_ns: 0 }
    }

    #[inline]
    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let (now, idx, count) = self.current(p, now_ns);
        let d = Self::decide(p, now, idx, count, cost);
        self.count = if d.allowed { count + cost } else { count };
        self.last_ns = now;
        d
    }

    #[inline]
    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let (now, idx, count) = self.current(p, now_ns);
        Self::decide(p, now, idx, count, cost)
    }

    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        if self.count == 0 {
            return self.last_ns;
        }
        let end = (u128::from(self.last_ns / p.window_ns()) + 1) * u128::from(p.window_ns());
        crate::time::sat_u64(end)
    }

    fn refund(&mut self, p: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        let (now, idx, count) = self.current(p, now_ns);
        // Counts are additive, so subtracting from the window the admission was counted in is
        // exact; once that window is over the admission no longer matters.
        if admitted_at_ns / p.window_ns() == idx {
            self.count = count - cost.min(count);
            self.last_ns = now;
        }
    }
}

impl FixedWindowState {
    pub(crate) fn to_words(&self) -> [u64; 3] {
        [self.count, self.last_ns, 0]
    }
    pub(crate) fn from_words(w: [u64; 3]) -> Self {
        FixedWindowState { count: w[0], last_ns: w[1] }
    }
    /// Words from an untrusted snapshot, brought within the invariant (`count <= limit`).
    pub(crate) fn sanitized(w: [u64; 3], p: &LimitParams) -> [u64; 3] {
        let s = Self::from_words(w);
        FixedWindowState { count: s.count.min(p.limit()), last_ns: s.last_ns }.to_words()
    }
}
