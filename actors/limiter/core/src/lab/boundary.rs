//! Lab (a): the fixed window's boundary burst against the sliding counter (and the exact log)
//! on the same adversarial trace: a client that sends a full limit just before each boundary
//! and another just after, over Poisson background traffic.

use super::{Arrival, max_in_any_window, poisson_trace, run, trailing_counts};
use crate::algorithm::{AlgorithmKind, LimitParams, ParamError};
use crate::rng::SplitMix64;

/// Inputs of lab (a).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundaryConfig {
    /// Seed of the trace.
    pub seed: u64,
    /// Limit per window.
    pub limit: u64,
    /// Window, ns.
    pub window_ns: u64,
    /// Windows simulated.
    pub windows: u64,
    /// Background load as a fraction of the limit (0.5 = half the limit per window).
    pub background_load: f64,
    /// Samples of the trailing-window count per window, for the plot.
    pub samples_per_window: u64,
}

impl Default for BoundaryConfig {
    fn default() -> Self {
        BoundaryConfig {
            seed: 7,
            limit: 100,
            window_ns: 1_000_000_000,
            windows: 12,
            background_load: 0.3,
            samples_per_window: 50,
        }
    }
}

/// One algorithm's result in lab (a).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundarySeries {
    /// Algorithm.
    pub kind: AlgorithmKind,
    /// Cost admitted over the whole trace.
    pub admitted: u64,
    /// Most cost admitted in any rolling window of length W (the headline number).
    pub max_in_any_window: u64,
    /// Trailing-window admitted count at each sample time.
    pub trailing: Vec<u64>,
}

/// Output of lab (a).
#[derive(Debug, Clone, PartialEq)]
pub struct BoundaryReport {
    /// Inputs.
    pub config: BoundaryConfig,
    /// Requests offered.
    pub offered: u64,
    /// Sample times, ns.
    pub samples_ns: Vec<u64>,
    /// Fixed window, sliding counter and sliding log, in that order.
    pub series: Vec<BoundarySeries>,
}

/// The adversarial trace: Poisson background plus, at every other boundary, `limit` requests
/// in the last 1% of the window and `limit` more in the first 1% of the next.
pub fn boundary_trace(cfg: &BoundaryConfig) -> Vec<Arrival> {
    let mut trace = poisson_trace(cfg.seed, cfg.limit as f64 * cfg.background_load, cfg.window_ns, cfg.windows);
    let mut rng = SplitMix64::new(cfg.seed ^ 0xB0B);
    let edge = (cfg.window_ns / 100).max(1);
    for k in (1..cfg.windows).step_by(2) {
        let boundary = k * cfg.window_ns;
        for _ in 0..cfg.limit {
            trace.push(Arrival { t_ns: boundary - 1 - rng.below(edge), cost: 1 });
            trace.push(Arrival { t_ns: boundary + rng.below(edge), cost: 1 });
        }
    }
    trace.sort_by_key(|a| a.t_ns);
    trace
}

/// Runs lab (a).
pub fn run_boundary(cfg: &BoundaryConfig) -> Result<BoundaryReport, ParamError> {
    let trace = boundary_trace(cfg);
    let step = (cfg.window_ns / cfg.samples_per_window.max(1)).max(1);
    let samples_ns: Vec<u64> = (1..=cfg.windows * cfg.samples_per_window.max(1)).map(|i| i * step).collect();
    let mut series = Vec::new();
    for kind in [AlgorithmKind::FixedWindow, AlgorithmKind::SlidingCounter, AlgorithmKind::SlidingLog] {
        let params = LimitParams::simple(kind, cfg.limit, cfg.window_ns)?;
        let (admitted, _) = run(params, &trace);
        series.push(BoundarySeries {
            kind,
            admitted: admitted.iter().map(|a| a.cost).sum(),
            max_in_any_window: max_in_any_window(&admitted, cfg.window_ns),
            trailing: trailing_counts(&admitted, cfg.window_ns, &samples_ns),
        });
    }
    Ok(BoundaryReport { config: *cfg, offered: trace.len() as u64, samples_ns, series })
}
