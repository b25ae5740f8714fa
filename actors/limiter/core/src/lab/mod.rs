//! Lab simulations for `troupe lab rate-limiter`: deterministic (seeded), pure, and returning
//! plain structs of numbers. The CLI prints them; the `plot` module (feature `plot`) draws (a).
//!
//! (a) [`boundary`]: fixed window's boundary burst vs the sliding counter on one trace.
//! (b) [`accuracy`]: every algorithm against the exact sliding log on one trace.
//! (c) [`failmode`]: fail-open vs fail-closed while a shard owner is unavailable.
//! (d) [`leasing`]: a global limit leased to nodes — accuracy and owner round trips by slice
//!     size.

pub mod accuracy;
pub mod boundary;
pub mod failmode;
pub mod leasing;
#[cfg(feature = "plot")]
pub mod plot;

use crate::algorithm::{Algorithm, LimitParams, Limiter};
use crate::rng::SplitMix64;

/// Most requests a generated trace may hold (bounds lab memory and run time).
pub const TRACE_REQUESTS_MAX: usize = 5_000_000;

/// One offered request: arrival time on the owner's clock and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Arrival time, ns.
    pub t_ns: u64,
    /// Cost units.
    pub cost: u64,
}

/// A Poisson arrival process: `per_window` requests per `window_ns` on average, for `windows`
/// windows, each of cost 1. Truncated at [`TRACE_REQUESTS_MAX`].
pub fn poisson_trace(seed: u64, per_window: f64, window_ns: u64, windows: u64) -> Vec<Arrival> {
    let mut rng = SplitMix64::new(seed);
    let end = window_ns.saturating_mul(windows);
    let mean = window_ns as f64 / per_window.max(1e-9);
    let mut t = 0u64;
    let mut out = Vec::new();
    while out.len() < TRACE_REQUESTS_MAX {
        t = t.saturating_add(rng.exp_ns(mean));
        if t >= end {
            break;
        }
        out.push(Arrival { t_ns: t, cost: 1 });
    }
    out
}

/// Runs one fresh limiter over a trace; returns the admitted arrivals' times and costs and the
/// per-arrival verdicts.
pub fn run(params: LimitParams, trace: &[Arrival]) -> (Vec<Arrival>, Vec<bool>) {
    let mut lim = Limiter::new(params);
    let mut admitted = Vec::new();
    let mut verdicts = Vec::with_capacity(trace.len());
    for a in trace {
        let ok = lim.check(a.t_ns, a.cost).allowed;
        if ok {
            admitted.push(*a);
        }
        verdicts.push(ok);
    }
    (admitted, verdicts)
}

/// The most cost admitted in any half-open interval `[t, t + window_ns)`; `admitted` sorted.
pub fn max_in_any_window(admitted: &[Arrival], window_ns: u64) -> u64 {
    let (mut lo, mut sum, mut best) = (0usize, 0u64, 0u64);
    for a in admitted {
        sum += a.cost;
        while admitted[lo].t_ns.saturating_add(window_ns) <= a.t_ns {
            sum -= admitted[lo].cost;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

/// Cost admitted in the trailing window `(t − window_ns, t]` at each sample time; both sorted.
pub fn trailing_counts(admitted: &[Arrival], window_ns: u64, samples_ns: &[u64]) -> Vec<u64> {
    let (mut lo, mut hi, mut sum) = (0usize, 0usize, 0u64);
    samples_ns
        .iter()
        .map(|&t| {
            while hi < admitted.len() && admitted[hi].t_ns <= t {
                sum += admitted[hi].cost;
                hi += 1;
            }
            while lo < hi && admitted[lo].t_ns.saturating_add(window_ns) <= t {
                sum -= admitted[lo].cost;
                lo += 1;
            }
            sum
        })
        .collect()
}
