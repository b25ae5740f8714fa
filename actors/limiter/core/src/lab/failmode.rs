//! Lab (c): fail-open vs fail-closed while a key's shard owner is unavailable.
//!
//! The owner is unreachable during `[outage_start, outage_end)`: fail-open admits everything
//! offered then, fail-closed denies everything. After the outage the key is re-homed and its
//! state starts fresh (the pessimistic case: limiter state is not replicated). The ideal is the
//! same limiter with an owner that never went away.

use super::{Arrival, max_in_any_window, poisson_trace, trailing_counts};
use crate::algorithm::{Algorithm, AlgorithmKind, LimitParams, Limiter, ParamError};
use crate::rules::FailMode;

/// Inputs of lab (c).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailModeConfig {
    /// Trace seed.
    pub seed: u64,
    /// Algorithm of the rule.
    pub kind: AlgorithmKind,
    /// Limit per window.
    pub limit: u64,
    /// Window, ns.
    pub window_ns: u64,
    /// Windows simulated.
    pub windows: u64,
    /// Offered load relative to the limit.
    pub load: f64,
    /// Owner unreachable from here (ns)...
    pub outage_start_ns: u64,
    /// ...until here (ns).
    pub outage_end_ns: u64,
}

impl Default for FailModeConfig {
    fn default() -> Self {
        FailModeConfig {
            seed: 23,
            kind: AlgorithmKind::SlidingCounter,
            limit: 100,
            window_ns: 1_000_000_000,
            windows: 30,
            load: 2.0,
            outage_start_ns: 10_000_000_000,
            outage_end_ns: 15_000_000_000,
        }
    }
}

/// One policy's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailModeRow {
    /// `None` for the ideal (owner always reachable).
    pub mode: Option<FailMode>,
    /// Requests admitted over the whole run.
    pub admitted: u64,
    /// Requests denied over the whole run.
    pub denied: u64,
    /// Admitted during the outage.
    pub admitted_in_outage: u64,
    /// Denied during the outage.
    pub denied_in_outage: u64,
    /// Most admitted in any rolling window (ideal: `<= limit` for the exact log).
    pub max_in_any_window: u64,
}

/// Output of lab (c).
#[derive(Debug, Clone, PartialEq)]
pub struct FailModeReport {
    /// Inputs.
    pub config: FailModeConfig,
    /// Requests offered, total and during the outage.
    pub offered: u64,
    /// Offered during the outage.
    pub offered_in_outage: u64,
    /// Ideal, fail-open, fail-closed.
    pub rows: Vec<FailModeRow>,
}

fn simulate(params: LimitParams, trace: &[Arrival], cfg: &FailModeConfig, mode: Option<FailMode>) -> FailModeRow {
    simulate_admitted(params, trace, cfg, mode).0
}

fn simulate_admitted(
    params: LimitParams,
    trace: &[Arrival],
    cfg: &FailModeConfig,
    mode: Option<FailMode>,
) -> (FailModeRow, Vec<Arrival>) {
    let mut lim = Limiter::new(params);
    let mut rehomed = false;
    let mut admitted = Vec::new();
    let mut row =
        FailModeRow { mode, admitted: 0, denied: 0, admitted_in_outage: 0, denied_in_outage: 0, max_in_any_window: 0 };
    for a in trace {
        let in_outage = (cfg.outage_start_ns..cfg.outage_end_ns).contains(&a.t_ns);
        let ok = match (mode, in_outage) {
            (Some(FailMode::Open), true) => true,
            (Some(FailMode::Closed), true) => false,
            (Some(_), false) => {
                if a.t_ns >= cfg.outage_end_ns && !rehomed {
                    rehomed = true;
                    lim = Limiter::new(params);
                }
                lim.check(a.t_ns, a.cost).allowed
            }
            (None, _) => lim.check(a.t_ns, a.cost).allowed,
        };
        if ok {
            admitted.push(*a);
            row.admitted += 1;
            row.admitted_in_outage += u64::from(in_outage);
        } else {
            row.denied += 1;
            row.denied_in_outage += u64::from(in_outage);
        }
    }
    row.max_in_any_window = max_in_any_window(&admitted, cfg.window_ns);
    (row, admitted)
}

/// Lab (c) over time, for a plot: the admitted count in the trailing window at
/// `samples_per_window` points per window, for the ideal, fail-open and fail-closed policies.
#[derive(Debug, Clone, PartialEq)]
pub struct FailModeSeries {
    /// Sample times, ns.
    pub samples_ns: Vec<u64>,
    /// `(policy, trailing counts)`; `None` is the ideal.
    pub series: Vec<(Option<FailMode>, Vec<u64>)>,
}

/// Runs lab (c) and samples the trailing-window counts.
pub fn run_failmode_series(cfg: &FailModeConfig, samples_per_window: u64) -> Result<FailModeSeries, ParamError> {
    let params = LimitParams::simple(cfg.kind, cfg.limit, cfg.window_ns)?;
    let trace = poisson_trace(cfg.seed, cfg.limit as f64 * cfg.load, cfg.window_ns, cfg.windows);
    let step = (cfg.window_ns / samples_per_window.max(1)).max(1);
    let end = cfg.window_ns.saturating_mul(cfg.windows);
    let samples_ns: Vec<u64> = (1..).map(|i| i * step).take_while(|t| *t <= end).collect();
    let series = [None, Some(FailMode::Open), Some(FailMode::Closed)]
        .into_iter()
        .map(|m| {
            let (_, admitted) = simulate_admitted(params, &trace, cfg, m);
            (m, trailing_counts(&admitted, cfg.window_ns, &samples_ns))
        })
        .collect();
    Ok(FailModeSeries { samples_ns, series })
}

/// Runs lab (c).
pub fn run_failmode(cfg: &FailModeConfig) -> Result<FailModeReport, ParamError> {
    let params = LimitParams::simple(cfg.kind, cfg.limit, cfg.window_ns)?;
    let trace = poisson_trace(cfg.seed, cfg.limit as f64 * cfg.load, cfg.window_ns, cfg.windows);
    let offered_in_outage =
        trace.iter().filter(|a| (cfg.outage_start_ns..cfg.outage_end_ns).contains(&a.t_ns)).count() as u64;
    let rows = [None, Some(FailMode::Open), Some(FailMode::Closed)]
        .into_iter()
        .map(|m| simulate(params, &trace, cfg, m))
        .collect();
    Ok(FailModeReport { config: *cfg, offered: trace.len() as u64, offered_in_outage, rows })
}
