//! Lab (b): each algorithm against the exact sliding log on the same trace. Two measures:
//!
//! - **Misjudged** (Cloudflare's measure): at each decision, what the exact log would have
//!   said given the algorithm's *own* admitted history. A misjudged admit pushed the trailing
//!   window over the limit; a misjudged deny refused a request that fitted. This isolates the
//!   algorithm's per-decision error.
//! - **Disagreement**: decision by decision against an independent exact log run on the same
//!   trace. Once two limiters disagree their states differ, so one error causes later ones;
//!   this is the drift from the exact policy as a client would see it.

use super::{Arrival, max_in_any_window, poisson_trace, run};
use crate::algorithm::{AlgorithmKind, LimitParams, ParamError};

/// Inputs of lab (b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccuracyConfig {
    /// Trace seed.
    pub seed: u64,
    /// Limit per window (also the bucket size for token bucket and GCRA).
    pub limit: u64,
    /// Window, ns.
    pub window_ns: u64,
    /// Windows simulated.
    pub windows: u64,
    /// Offered load relative to the limit (default 0.8: a client just under its limit, where
    /// the windows of bursts cross it and the algorithms differ; far below, all agree).
    pub load: f64,
}

impl Default for AccuracyConfig {
    fn default() -> Self {
        AccuracyConfig { seed: 11, limit: 100, window_ns: 1_000_000_000, windows: 200, load: 0.8 }
    }
}

/// One algorithm's agreement with the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccuracyRow {
    /// Algorithm.
    pub kind: AlgorithmKind,
    /// Requests admitted.
    pub admitted: u64,
    /// Admitted although, given this algorithm's own history, the trailing window then exceeded
    /// the limit.
    pub misjudged_admits: u64,
    /// Denied although, given this algorithm's own history, the request fitted.
    pub misjudged_denies: u64,
    /// `(misjudged_admits + misjudged_denies) / offered`.
    pub misjudged_rate: f64,
    /// Admitted here, denied by the independent log run.
    pub false_admits: u64,
    /// Denied here, admitted by the log.
    pub false_denies: u64,
    /// `false_admits / offered`.
    pub false_admit_rate: f64,
    /// `false_denies / offered`.
    pub false_deny_rate: f64,
    /// Most admitted in any rolling window (the log's promise is `<= limit`).
    pub max_in_any_window: u64,
}

/// Output of lab (b).
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyReport {
    /// Inputs.
    pub config: AccuracyConfig,
    /// Requests offered.
    pub offered: u64,
    /// One row per algorithm, in [`AlgorithmKind::ALL`] order (the log's row is all zeros).
    pub rows: Vec<AccuracyRow>,
}

/// Runs lab (b) on a Poisson trace.
pub fn run_accuracy(cfg: &AccuracyConfig) -> Result<AccuracyReport, ParamError> {
    let trace = poisson_trace(cfg.seed, cfg.limit as f64 * cfg.load, cfg.window_ns, cfg.windows);
    accuracy_on(cfg, &trace)
}

/// Runs lab (b) on a given trace (sorted by time).
pub fn accuracy_on(cfg: &AccuracyConfig, trace: &[Arrival]) -> Result<AccuracyReport, ParamError> {
    let log = LimitParams::simple(AlgorithmKind::SlidingLog, cfg.limit, cfg.window_ns)?;
    let (_, reference) = run(log, trace);
    let offered = trace.len() as u64;
    let mut rows = Vec::new();
    for kind in AlgorithmKind::ALL {
        let (admitted, verdicts) = run(LimitParams::simple(kind, cfg.limit, cfg.window_ns)?, trace);
        let false_admits = verdicts.iter().zip(&reference).filter(|(a, r)| **a && !**r).count() as u64;
        let false_denies = verdicts.iter().zip(&reference).filter(|(a, r)| !**a && **r).count() as u64;
        let rate = |n: u64| if offered == 0 { 0.0 } else { n as f64 / offered as f64 };
        let (misjudged_admits, misjudged_denies) = misjudged(trace, &verdicts, cfg.limit, cfg.window_ns);
        rows.push(AccuracyRow {
            kind,
            admitted: admitted.len() as u64,
            misjudged_admits,
            misjudged_denies,
            misjudged_rate: rate(misjudged_admits + misjudged_denies),
            false_admits,
            false_denies,
            false_admit_rate: rate(false_admits),
            false_deny_rate: rate(false_denies),
            max_in_any_window: max_in_any_window(&admitted, cfg.window_ns),
        });
    }
    Ok(AccuracyReport { config: *cfg, offered, rows })
}

/// Counts decisions that the exact log, run on the same admitted history, would have reversed.
fn misjudged(trace: &[Arrival], verdicts: &[bool], limit: u64, window_ns: u64) -> (u64, u64) {
    let mut live: std::collections::VecDeque<Arrival> = std::collections::VecDeque::new();
    let (mut sum, mut bad_admits, mut bad_denies) = (0u64, 0u64, 0u64);
    for (a, &ok) in trace.iter().zip(verdicts) {
        while live.front().is_some_and(|f| a.t_ns - f.t_ns >= window_ns) {
            sum -= live.pop_front().map_or(0, |f| f.cost);
        }
        let fits = sum + a.cost <= limit;
        match (ok, fits) {
            (true, false) => bad_admits += 1,
            (false, true) => bad_denies += 1,
            _ => {}
        }
        if ok {
            sum += a.cost;
            live.push_back(*a);
        }
    }
    (bad_admits, bad_denies)
}
