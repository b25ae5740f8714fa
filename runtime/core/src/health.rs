//! Local health awareness, after Lifeguard (Dadgar et al., 2018): a node that is
//! itself slow — its event loop wakes late because its CPU is starved, or its
//! packets crawl — must not accuse healthy peers. foca has no such logic, so troupe
//! adds it where it owns the clock. Two symptoms raise a local health score:
//! timers that fire late, and suspicions this node raised that the accused member
//! refuted (it was alive: our probes were the unreliable part — Lifeguard's
//! "nack" signal). Each calm probe period lowers the score. SWIM's probe interval,
//! probe timeout and suspicion timeout are stretched by `1 + score`.
//!
//! Pure: time comes in as arguments.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LocalHealth {
    score: u32,
    max: u32,
    /// Lateness that counts as a symptom, in milliseconds.
    lag_threshold_ms: u64,
    /// Late timers seen in the current probe period.
    late_this_period: u32,
}

impl LocalHealth {
    pub fn new(max: u32, probe_rtt_ms: u64) -> Self {
        // A timer a quarter of the probe timeout late means acks from healthy peers
        // may be read after their deadline.
        Self { score: 0, max, lag_threshold_ms: (probe_rtt_ms / 4).max(5), late_this_period: 0 }
    }

    /// A timer due at `due_ms` ran at `ran_ms`.
    pub fn on_timer(&mut self, due_ms: u64, ran_ms: u64) {
        if ran_ms.saturating_sub(due_ms) > self.lag_threshold_ms {
            self.late_this_period += 1;
            if self.late_this_period == 1 {
                self.score = (self.score + 1).min(self.max);
            }
        }
    }

    /// A member this node suspected refuted it (came back alive).
    pub fn on_refuted(&mut self) {
        self.late_this_period += 1;
        self.score = (self.score + 1).min(self.max);
    }

    /// End of a probe period: a period without symptoms heals one step.
    pub fn on_period(&mut self) {
        if self.late_this_period == 0 {
            self.score = self.score.saturating_sub(1);
        }
        self.late_this_period = 0;
    }

    pub fn score(&self) -> u32 {
        self.score
    }

    pub fn stretch(&self, d: Duration) -> Duration {
        d * (1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_with_lag_and_heals_when_calm() {
        let mut h = LocalHealth::new(3, 400);
        h.on_timer(1000, 1010);
        h.on_period();
        assert_eq!(h.score(), 0, "10 ms late is normal jitter");
        for p in 0..5 {
            h.on_timer(p * 1000, p * 1000 + 300);
            h.on_timer(p * 1000 + 500, p * 1000 + 900);
            h.on_period();
        }
        assert_eq!(h.score(), 3, "capped at max, one step per bad period");
        assert_eq!(h.stretch(Duration::from_millis(100)), Duration::from_millis(400));
        for _ in 0..3 {
            h.on_period();
        }
        assert_eq!(h.score(), 0);
    }
}
