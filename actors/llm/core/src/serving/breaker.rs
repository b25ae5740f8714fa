//! A circuit breaker per worker pool (pure core: time passed in as milliseconds).
//!
//! - **Closed:** requests flow. Each failure is remembered for `window_ms`; when
//!   `failure_threshold` failures fall inside the window, the breaker opens.
//! - **Open:** every request fails fast (the gateway answers 503 with `Retry-After`)
//!   until `open_ms` have passed; then the next request is let through as a probe and
//!   the breaker is half-open.
//! - **Half-open:** at most `half_open_probes` requests are in flight at once; after
//!   `close_after` successes it closes (and forgets old failures); any failure reopens
//!   it, for twice as long as last time, up to `open_max_ms`.
//!
//! What counts as a failure is the caller's business: the gateway reports worker and
//! transport failures, never client errors, rate limits or client disconnects.
//!
//! Guarantees (tested below): while open, nothing is allowed before the timer expires;
//! half-open never has more than `half_open_probes` probes in flight; the breaker never
//! opens without `failure_threshold` failures inside one window (or a failed probe);
//! it closes only after `close_after` successful probes; memory is bounded by the
//! threshold.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures inside `window_ms` that open the breaker.
    pub failure_threshold: u32,
    /// Milliseconds a failure counts for.
    pub window_ms: u64,
    /// Milliseconds the breaker stays open the first time.
    pub open_ms: u64,
    /// Longest open period after repeated failed probes, milliseconds.
    pub open_max_ms: u64,
    /// Probes in flight at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close it.
    pub close_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until_ms: u64 },
    HalfOpen { in_flight: u32, successes: u32 },
}

impl State {
    /// 0 closed, 1 open, 2 half-open (the metric's value).
    pub fn code(&self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen { .. } => 2.0,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// A request let through; report its outcome with [`Breaker::on_success`] or
/// [`Breaker::on_failure`], passing the permit back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Whether this request is a half-open probe.
    pub probe: bool,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    failures: VecDeque<u64>,
    open_for_ms: u64,
    /// Times the state changed (for metrics).
    pub transitions: u64,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let cfg = BreakerConfig {
            failure_threshold: cfg.failure_threshold.max(1),
            half_open_probes: cfg.half_open_probes.max(1),
            close_after: cfg.close_after.max(1),
            open_max_ms: cfg.open_max_ms.max(cfg.open_ms),
            ..cfg
        };
        Breaker { state: State::Closed, failures: VecDeque::new(), open_for_ms: cfg.open_ms, cfg, transitions: 0 }
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn set(&mut self, s: State) {
        if std::mem::discriminant(&s) != std::mem::discriminant(&self.state) {
            self.transitions += 1;
        }
        self.state = s;
    }

    /// May a request go to the pool now? `Err(retry_after_ms)` when failing fast.
    pub fn allow(&mut self, now_ms: u64) -> Result<Permit, u64> {
        match self.state {
            State::Closed => Ok(Permit { probe: false }),
            State::Open { until_ms } if now_ms < until_ms => Err(until_ms - now_ms),
            State::Open { .. } => {
                self.set(State::HalfOpen { in_flight: 1, successes: 0 });
                Ok(Permit { probe: true })
            }
            State::HalfOpen { in_flight, successes } => {
                if in_flight >= self.cfg.half_open_probes {
                    // Probes are out: tell the client to come back shortly.
                    Err(self.cfg.open_ms.min(1000))
                } else {
                    self.state = State::HalfOpen { in_flight: in_flight + 1, successes };
                    Ok(Permit { probe: true })
                }
            }
        }
    }

    pub fn on_success(&mut self, permit: Permit, _now_ms: u64) {
        if let State::HalfOpen { in_flight, successes } = self.state
            && permit.probe
        {
            let successes = successes + 1;
            if successes >= self.cfg.close_after {
                self.failures.clear();
                self.open_for_ms = self.cfg.open_ms;
                self.set(State::Closed);
            } else {
                self.state = State::HalfOpen { in_flight: in_flight.saturating_sub(1), successes };
            }
        }
    }

    pub fn on_failure(&mut self, permit: Permit, now_ms: u64) {
        match self.state {
            State::HalfOpen { .. } if permit.probe => {
                self.open_for_ms = (self.open_for_ms.saturating_mul(2)).min(self.cfg.open_max_ms);
                self.set(State::Open { until_ms: now_ms + self.open_for_ms });
            }
            State::Closed => {
                self.failures.push_back(now_ms);
                while self.failures.front().is_some_and(|&t| t + self.cfg.window_ms <= now_ms) {
                    self.failures.pop_front();
                }
                while self.failures.len() > self.cfg.failure_threshold as usize {
                    self.failures.pop_front();
                }
                if self.failures.len() >= self.cfg.failure_threshold as usize {
                    self.failures.clear();
                    self.open_for_ms = self.cfg.open_ms;
                    self.set(State::Open { until_ms: now_ms + self.open_for_ms });
                }
            }
            // A failure of a request let through before the breaker opened: already open.
            _ => {}
        }
    }

    /// A permit whose request ended without telling anything about the pool's health
    /// (client cancelled, rate-limited): frees its probe slot.
    pub fn on_neutral(&mut self, permit: Permit) {
        if let State::HalfOpen { in_flight, successes } = self.state
            && permit.probe
        {
            self.state = State::HalfOpen { in_flight: in_flight.saturating_sub(1), successes };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window_ms: 1000,
            open_ms: 500,
            open_max_ms: 4000,
            half_open_probes: 1,
            close_after: 2,
        }
    }

    #[test]
    fn opens_fails_fast_probes_and_closes() {
        let mut b = Breaker::new(cfg());
        for t in [0, 10, 20] {
            let p = b.allow(t).expect("closed");
            b.on_failure(p, t);
        }
        assert_eq!(b.state(), State::Open { until_ms: 520 });
        assert_eq!(b.allow(100), Err(420));
        let p1 = b.allow(520).expect("probe");
        assert!(p1.probe);
        assert!(b.allow(521).is_err(), "one probe at a time");
        b.on_success(p1, 600);
        let p2 = b.allow(601).expect("second probe");
        b.on_success(p2, 700);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.transitions, 3);
    }

    #[test]
    fn old_failures_expire_and_failed_probes_back_off() {
        let mut b = Breaker::new(cfg());
        for t in [0, 600, 1100, 1700, 2200] {
            let p = b.allow(t).expect("closed");
            b.on_failure(p, t);
        }
        assert_eq!(b.state(), State::Closed, "never 3 failures inside 1 s");
        for t in [5000, 5001, 5002] {
            let p = b.allow(t).expect("closed");
            b.on_failure(p, t);
        }
        assert_eq!(b.state(), State::Open { until_ms: 5502 });
        let p = b.allow(5502).expect("probe");
        b.on_failure(p, 5502);
        assert_eq!(b.state(), State::Open { until_ms: 6502 }, "twice as long");
        let p = b.allow(6502).expect("probe");
        b.on_neutral(p);
        assert!(b.allow(6503).expect("slot freed").probe);
    }

    proptest! {
        /// Random outcomes: the breaker never lets a request through while open before
        /// its timer, never has more probes out than allowed, only opens after enough
        /// failures in a window or a failed probe, and only closes after enough
        /// successful probes.
        #[test]
        fn invariants_hold(events in prop::collection::vec((0u64..300, 0u8..4), 1..400)) {
            let c = cfg();
            let mut b = Breaker::new(c);
            let mut now = 0;
            let mut out: Vec<Permit> = Vec::new();
            let mut recent_failures: Vec<u64> = Vec::new();
            let mut probe_successes = 0;
            for (gap, what) in events {
                now += gap;
                let before = b.state();
                match what {
                    0 | 1 => match b.allow(now) {
                        Ok(p) => {
                            if let State::Open { until_ms } = before {
                                prop_assert!(now >= until_ms);
                            }
                            out.push(p);
                        }
                        Err(wait) => prop_assert!(wait > 0),
                    },
                    2 => if let Some(p) = out.pop() {
                        b.on_success(p, now);
                        if p.probe { probe_successes += 1; }
                    },
                    _ => if let Some(p) = out.pop() {
                        b.on_failure(p, now);
                        if !p.probe { recent_failures.push(now); }
                    },
                }
                let after = b.state();
                if let State::HalfOpen { in_flight, .. } = after {
                    prop_assert!(in_flight <= c.half_open_probes);
                }
                if matches!(before, State::Closed) && matches!(after, State::Open { .. }) {
                    let n = recent_failures.iter().filter(|&&t| t + c.window_ms > now).count();
                    prop_assert!(n >= c.failure_threshold as usize);
                    recent_failures.clear();
                }
                if matches!(before, State::HalfOpen { .. }) && matches!(after, State::Closed) {
                    prop_assert!(probe_successes >= c.close_after);
                }
                if !matches!(after, State::HalfOpen { .. }) {
                    probe_successes = 0;
                }
                if matches!(after, State::Closed) && !matches!(before, State::Closed) {
                    recent_failures.clear();
                }
            }
        }
    }
}
