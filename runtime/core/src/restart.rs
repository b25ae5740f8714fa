//! Restart policy: the pure core of supervision.
//!
//! Given a strategy, a restart intensity (at most `max_restarts` in `within_ms`) and
//! the failure history, decide which children to restart and after what backoff, or
//! that the supervisor must give up and escalate. No clock is read here: `now_ms` is
//! passed in, so tests replay any history exactly.
//!
//! Invariants:
//! - More than `max_restarts` failures inside any `within_ms` window escalates.
//! - The backoff doubles with each restart inside the window, starting at
//!   `backoff_initial_ms`, and never exceeds `backoff_max_ms`.
//! - The children a decision restarts always include the failed one, and follow the
//!   strategy: only it (one-for-one), all (one-for-all), or it and those started after
//!   it (rest-for-one).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

impl Strategy {
    pub const NAMES: [&'static str; 3] = ["one_for_one", "one_for_all", "rest_for_one"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "one_for_one" => Some(Self::OneForOne),
            "one_for_all" => Some(Self::OneForAll),
            "rest_for_one" => Some(Self::RestForOne),
            _ => None,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneForOne => "one_for_one",
            Self::OneForAll => "one_for_all",
            Self::RestForOne => "rest_for_one",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for Intensity {
    /// Erlang/OTP's default intensity (3 in 5 s), with a short backoff.
    fn default() -> Self {
        Self { max_restarts: 3, within_ms: 5_000, backoff_initial_ms: 50, backoff_max_ms: 2_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Restart these children (indices into the start order) after `delay_ms`.
    Restart { children: Vec<usize>, delay_ms: u64 },
    /// Too many restarts: stop every child and fail the supervisor itself.
    Escalate { restarts: u32, within_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    strategy: Strategy,
    intensity: Intensity,
    /// Times of recent restarts, oldest first; never longer than `max_restarts + 1`.
    history: VecDeque<u64>,
}

impl RestartPolicy {
    pub fn new(strategy: Strategy, intensity: Intensity) -> Self {
        Self { strategy, intensity, history: VecDeque::new() }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Child `failed` (index in start order, of `count` children) failed at `now_ms`.
    pub fn on_failure(&mut self, now_ms: u64, failed: usize, count: usize) -> Decision {
        assert!(failed < count, "failed child {failed} out of {count}");
        let window_start = now_ms.saturating_sub(self.intensity.within_ms);
        while self.history.front().is_some_and(|&t| t < window_start) {
            self.history.pop_front();
        }
        self.history.push_back(now_ms);
        let recent = self.history.len() as u32;
        if recent > self.intensity.max_restarts {
            return Decision::Escalate { restarts: recent, within_ms: self.intensity.within_ms };
        }
        let children = match self.strategy {
            Strategy::OneForOne => vec![failed],
            Strategy::OneForAll => (0..count).collect(),
            Strategy::RestForOne => (failed..count).collect(),
        };
        Decision::Restart { children, delay_ms: self.backoff_ms(recent) }
    }

    fn backoff_ms(&self, nth: u32) -> u64 {
        let doublings = nth.saturating_sub(1).min(32);
        self.intensity.backoff_initial_ms.saturating_mul(1u64 << doublings).min(self.intensity.backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    fn intensity(max: u32, within: u64) -> Intensity {
        Intensity { max_restarts: max, within_ms: within, backoff_initial_ms: 10, backoff_max_ms: 100 }
    }

    #[test]
    fn strategies_pick_children() {
        let mut p = RestartPolicy::new(Strategy::OneForOne, intensity(10, 1000));
        assert_eq!(p.on_failure(0, 1, 4), Decision::Restart { children: vec![1], delay_ms: 10 });
        let mut p = RestartPolicy::new(Strategy::OneForAll, intensity(10, 1000));
        assert_eq!(p.on_failure(0, 1, 4), Decision::Restart { children: vec![0, 1, 2, 3], delay_ms: 10 });
        let mut p = RestartPolicy::new(Strategy::RestForOne, intensity(10, 1000));
        assert_eq!(p.on_failure(0, 1, 4), Decision::Restart { children: vec![1, 2, 3], delay_ms: 10 });
    }

    #[test]
    fn backoff_doubles_then_caps_and_resets_after_window() {
        let mut p = RestartPolicy::new(Strategy::OneForOne, intensity(10, 1000));
        let delays: Vec<u64> = (0..6)
            .map(|i| match p.on_failure(i, 0, 1) {
                Decision::Restart { delay_ms, .. } => delay_ms,
                d => panic!("unexpected {d:?}"),
            })
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 100, 100]);
        // Well after the window, the history is forgotten.
        assert_eq!(p.on_failure(10_000, 0, 1), Decision::Restart { children: vec![0], delay_ms: 10 });
    }

    #[test]
    fn escalates_past_the_limit() {
        let mut p = RestartPolicy::new(Strategy::OneForOne, intensity(3, 1000));
        for t in 0..3 {
            assert!(matches!(p.on_failure(t * 100, 0, 1), Decision::Restart { .. }));
        }
        assert_eq!(p.on_failure(300, 0, 1), Decision::Escalate { restarts: 4, within_ms: 1000 });
    }

    proptest! {
        /// Escalation happens exactly when more than max_restarts failures fall in
        /// one window ending at the current failure.
        #[test]
        fn escalation_matches_sliding_window(
            gaps in proptest::collection::vec(0u64..400, 1..40),
            max in 0u32..6,
        ) {
            let within = 1000;
            let mut p = RestartPolicy::new(Strategy::OneForOne, intensity(max, within));
            let mut times: Vec<u64> = Vec::new();
            let mut now = 0;
            for g in gaps {
                now += g;
                times.push(now);
                let in_window = times.iter().filter(|&&t| t + within >= now).count() as u32;
                let d = p.on_failure(now, 0, 1);
                if in_window > max {
                    prop_assert!(matches!(d, Decision::Escalate { .. }), "expected escalation");
                    break;
                } else {
                    match d {
                        Decision::Restart { delay_ms, children } => {
                            prop_assert_eq!(children, vec![0]);
                            prop_assert!((10..=100).contains(&delay_ms));
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
            }
        }

        #[test]
        fn restart_set_always_contains_failed(failed in 0usize..8, extra in 0usize..8, s in 0usize..3) {
            let count = failed + 1 + extra;
            let strategy = [Strategy::OneForOne, Strategy::OneForAll, Strategy::RestForOne][s];
            let mut p = RestartPolicy::new(strategy, intensity(5, 1000));
            if let Decision::Restart { children, .. } = p.on_failure(0, failed, count) {
                prop_assert!(children.contains(&failed));
                prop_assert!(children.iter().all(|&c| c < count));
            }
        }
    }
}
