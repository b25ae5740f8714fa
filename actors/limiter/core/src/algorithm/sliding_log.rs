//! Sliding window log: the exact algorithm. One `(timestamp, cost)` entry per admission.
//!
//! An entry at `s` counts at `now` iff `now − s < W`. Admit `cost` iff the live sum plus `cost`
//! is at most `limit`. Promise: every half-open interval `[a, a+W)` admits at most `limit`
//! (the last admission in it, at `t < a+W`, saw every earlier one in it as live, since
//! `t − s < W` for all `s >= a`). It is also never stricter than that promise requires, which
//! makes it the reference the lab compares the other algorithms against.
//!
//! Memory bound: each live entry has cost >= 1 and the live sum never exceeds `limit`, and
//! expired entries are dropped on every `check`, so a key holds at most `limit` entries of 16
//! bytes (entries with the same timestamp are merged). [`super::SLIDING_LOG_LIMIT_MAX`] caps
//! `limit` at 100 000, i.e. 1.6 MB per key at worst.

use std::collections::VecDeque;

use super::{AlgorithmState, LimitParams};
use crate::decision::{Decision, RETRY_NEVER};

/// Sliding log state for one key.
#[derive(Debug, Clone)]
pub struct SlidingLogState {
    /// Admissions in time order; may hold expired entries until the next `check` prunes them.
    entries: VecDeque<(u64, u64)>,
    /// Sum of costs in `entries`.
    sum: u64,
    last_ns: u64,
}

impl SlidingLogState {
    /// Number of stored entries (for memory accounting and tests).
    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }

    fn is_live(p: &LimitParams, now: u64, ts: u64) -> bool {
        now - ts < p.window_ns()
    }

    /// Sum of costs that expired by `now` (a prefix of the log).
    fn expired_sum(&self, p: &LimitParams, now: u64) -> u64 {
        self.entries.iter().take_while(|(ts, _)| !Self::is_live(p, now, *ts)).map(|(_, c)| c).sum()
    }

    fn decide(&self, p: &LimitParams, now: u64, live: u64, cost: u64) -> Decision {
        let limit = p.limit();
        let w = p.window_ns();
        let allowed = live.saturating_add(cost) <= limit;
        let used = if allowed { live + cost } else { live };
        let newest = if allowed && cost > 0 {
            Some(now)
        } else {
            self.entries.back().map(|(ts, _)| *ts).filter(|ts| Self::is_live(p, now, *ts))
        };
        let reset_after_ns = newest.map_or(0, |ts| ts + w - now);
        let retry_after_ns = if allowed {
            0
        } else if cost > limit {
            RETRY_NEVER
        } else {
            // Walk the live entries oldest first until enough has expired for `cost` to fit.
            let mut still = live;
            let mut at = RETRY_NEVER;
            for (ts, c) in self.entries.iter().filter(|(ts, _)| Self::is_live(p, now, *ts)) {
                still -= c;
                if still + cost <= limit {
                    at = ts + w - now;
                    break;
                }
            }
            at
        };
        Decision { allowed, limit, remaining: limit - used, reset_after_ns, retry_after_ns }
    }
}

impl AlgorithmState for SlidingLogState {
    fn new(_: &LimitParams) -> Self {
        SlidingLogState { entries: VecDeque::new(), sum: 0, last_ns: 0 }
    }

    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let now = now_ns.max(self.last_ns);
        while let Some(&(ts, c)) = self.entries.front() {
            if Self::is_live(p, now, ts) {
                break;
            }
            self.entries.pop_front();
            self.sum -= c;
        }
        let d = self.decide(p, now, self.sum, cost);
        if d.allowed && cost > 0 {
            match self.entries.back_mut() {
                Some((ts, c)) if *ts == now => *c += cost,
                _ => self.entries.push_back((now, cost)),
            }
            self.sum += cost;
        }
        self.last_ns = now;
        d
    }

    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        let now = now_ns.max(self.last_ns);
        let live = self.sum - self.expired_sum(p, now);
        self.decide(p, now, live, cost)
    }

    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        match self.entries.back() {
            Some((ts, _)) => ts.saturating_add(p.window_ns()),
            None => self.last_ns,
        }
    }

    fn refund(&mut self, _: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        // Exact: remove the cost from the admission's own entry (same-time admissions share one).
        // Recent admissions are at the back, where the search starts.
        if let Some(i) = self.entries.iter().rposition(|(ts, _)| *ts == admitted_at_ns) {
            let take = cost.min(self.entries[i].1);
            self.entries[i].1 -= take;
            self.sum -= take;
            if self.entries[i].1 == 0 {
                self.entries.remove(i);
            }
        }
        self.last_ns = now_ns.max(self.last_ns);
    }
}

impl SlidingLogState {
    /// The log's `(timestamp, cost)` entries and time high-water mark, for snapshots.
    pub(crate) fn parts(&self) -> (Vec<(u64, u64)>, u64) {
        (self.entries.iter().copied().collect(), self.last_ns)
    }
    /// Rebuilds a log from snapshot parts, or `None` if they break its invariants (timestamps
    /// ascending and not after `last_ns`, costs >= 1, sum <= limit).
    pub(crate) fn from_parts(p: &LimitParams, entries: Vec<(u64, u64)>, last_ns: u64) -> Option<Self> {
        let mut sum = 0u64;
        let mut prev = 0u64;
        for &(ts, c) in &entries {
            if c == 0 || ts < prev || ts > last_ns {
                return None;
            }
            prev = ts;
            sum = sum.checked_add(c)?;
        }
        (sum <= p.limit()).then(|| SlidingLogState { entries: entries.into(), sum, last_ns })
    }
}
