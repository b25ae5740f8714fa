//! Lab (d): the accuracy / round-trip trade-off of leasing a global limit, by slice size.
//!
//! `nodes` nodes share one global limit `L` per window. Demand moves between them (as a load
//! balancer shifts traffic): in each phase one node is busy (`busy_demand`·L per window) and the
//! others idle along (`idle_demand`·L). Each node admits from its [`QuotaLease`]; refills go to
//! one [`QuotaOwner`] over a network with a fixed one-way delay. A refill asks for the node's
//! recent demand (about one round trip's worth), which the owner raises to `slice_min`: that
//! floor is the knob. A check that does not fit the local slice is denied (and asks for a
//! refill). Steady demand would strand nothing; moving demand strands what the previously
//! busy node still holds, which is the price of big slices.
//! For each `slice_max` (percent of `L`) the run reports how much of the limit the cluster
//! used while demand exceeded it (accuracy), how many owner round trips a window took (owner
//! load and latency exposure), and the most admitted in any owner window (safety: `<= L`).
//!
//! Deterministic: a discrete-event simulation on one seeded clock, no I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::poisson_trace;
use crate::lease::{LeaseConfig, LeaseGrant, LeaseRequest, QuotaConfig, QuotaLease, QuotaOwner};

/// Inputs of lab (d).
#[derive(Debug, Clone, PartialEq)]
pub struct LeasingConfig {
    /// Trace seed.
    pub seed: u64,
    /// Global limit per window.
    pub limit: u64,
    /// Window, ns.
    pub window_ns: u64,
    /// Windows simulated.
    pub windows: u64,
    /// Nodes.
    pub nodes: usize,
    /// Demand of the busy node, as a fraction of the limit per window (above 1: the limit binds).
    pub busy_demand: f64,
    /// Demand of each idle node, as a fraction of the limit per window.
    pub idle_demand: f64,
    /// How long one node stays the busy one, ns.
    pub phase_ns: u64,
    /// Demand one refill asks to cover, ns.
    pub horizon_ns: u64,
    /// One-way network delay node ↔ owner, ns.
    pub one_way_ns: u64,
    /// Smallest slices to compare, percent of the limit (0 = one unit).
    pub slice_min_percent: Vec<u64>,
    /// Largest slice, percent of the limit.
    pub slice_max_percent: u64,
    /// Refill when the slice falls to this percent of the limit.
    pub low_watermark_percent: u64,
}

impl Default for LeasingConfig {
    fn default() -> Self {
        LeasingConfig {
            seed: 31,
            limit: 1_000,
            window_ns: 1_000_000_000,
            windows: 30,
            nodes: 8,
            busy_demand: 1.2,
            idle_demand: 0.01,
            phase_ns: 125_000_000,
            horizon_ns: 500_000_000,
            one_way_ns: 1_000_000,
            slice_min_percent: vec![0, 1, 2, 5, 10, 20],
            slice_max_percent: 40,
            low_watermark_percent: 2,
        }
    }
}

/// One slice size's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeasingRow {
    /// `slice_min`, percent of the limit (0 = one unit).
    pub slice_min_percent: u64,
    /// Admitted over the run.
    pub admitted: u64,
    /// Offered over the run.
    pub offered: u64,
    /// `admitted / Σ min(offered, L)` per window: 1.0 is a perfect global limit.
    pub utilization: f64,
    /// Lease requests the owner answered, per window.
    pub requests_per_window: f64,
    /// Most admitted in one owner window (must be `<= limit`).
    pub max_per_window: u64,
}

/// Output of lab (d).
#[derive(Debug, Clone, PartialEq)]
pub struct LeasingReport {
    /// Inputs.
    pub config: LeasingConfig,
    /// One row per slice size.
    pub rows: Vec<LeasingRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Order matters at equal times: deliver grants before arrivals, so a refill that lands
    /// exactly when a request arrives is usable (as it would be on a real node).
    Grant(usize),
    Request(usize),
    Arrival(usize),
}

/// Runs lab (d).
pub fn run_leasing(cfg: &LeasingConfig) -> LeasingReport {
    let rows = cfg.slice_min_percent.iter().map(|&pct| run_one(cfg, pct)).collect();
    LeasingReport { config: cfg.clone(), rows }
}

fn run_one(cfg: &LeasingConfig, slice_pct: u64) -> LeasingRow {
    let pct = |p: u64| (cfg.limit * p / 100).clamp(1, cfg.limit.max(1));
    let slice_min = pct(slice_pct);
    let slice_max = pct(cfg.slice_max_percent).max(slice_min);
    let qcfg =
        QuotaConfig { limit: cfg.limit, window_ns: cfg.window_ns, slice_min, slice_max, nodes_max: cfg.nodes.max(1) };
    let Ok(mut owner) = QuotaOwner::new(qcfg) else {
        return LeasingRow {
            slice_min_percent: slice_pct,
            admitted: 0,
            offered: 0,
            utilization: 0.0,
            requests_per_window: 0.0,
            max_per_window: 0,
        };
    };
    let mut leases: Vec<QuotaLease> = (0..cfg.nodes)
        .map(|i| {
            QuotaLease::new(LeaseConfig {
                node: i as u64 + 1,
                low_watermark: cfg.limit * cfg.low_watermark_percent / 100,
                horizon_ns: cfg.horizon_ns,
                request_timeout_ns: cfg.window_ns,
                want_max: slice_max,
                drift_margin_ns: 0,
            })
        })
        .collect();
    // Every node's arrivals, merged in time order.
    let mut events: BinaryHeap<Reverse<(u64, Event)>> = BinaryHeap::new();
    let mut offered = 0u64;
    let n = cfg.nodes.max(1);
    for i in 0..n {
        let seed = cfg.seed.wrapping_add(i as u64);
        let busy = poisson_trace(seed, cfg.limit as f64 * cfg.busy_demand, cfg.window_ns, cfg.windows);
        let idle = poisson_trace(seed ^ 0x5555, cfg.limit as f64 * cfg.idle_demand, cfg.window_ns, cfg.windows);
        let mine = |t: u64| (t / cfg.phase_ns.max(1)) as usize % n == i;
        for a in busy.iter().filter(|a| mine(a.t_ns)).chain(idle.iter().filter(|a| !mine(a.t_ns))) {
            events.push(Reverse((a.t_ns, Event::Arrival(i))));
            offered += 1;
        }
    }
    let mut requests: Vec<Option<LeaseRequest>> = vec![None; n];
    let mut grants: Vec<Option<LeaseGrant>> = vec![None; n];
    let windows = cfg.windows as usize;
    let (mut admitted_w, mut offered_w) = (vec![0u64; windows], vec![0u64; windows]);
    let mut answered = 0u64;
    let send =
        |lease: &mut QuotaLease, t: u64, i: usize, events: &mut BinaryHeap<_>, slot: &mut Option<LeaseRequest>| {
            if let Some(req) = lease.poll_refill(t) {
                *slot = Some(req);
                events.push(Reverse((t + cfg.one_way_ns, Event::Request(i))));
            }
        };
    while let Some(Reverse((t, ev))) = events.pop() {
        match ev {
            Event::Arrival(i) => {
                let w = ((t / cfg.window_ns) as usize).min(windows - 1);
                offered_w[w] += 1;
                let c = leases[i].check(t, 1);
                if c.admitted {
                    admitted_w[w] += 1;
                }
                if c.should_refill || !c.admitted {
                    send(&mut leases[i], t, i, &mut events, &mut requests[i]);
                }
            }
            Event::Request(i) => {
                if let Some(req) = requests[i].take()
                    && let Ok(g) = owner.handle_request(&req, t)
                {
                    answered += 1;
                    grants[i] = Some(g);
                    events.push(Reverse((t + cfg.one_way_ns, Event::Grant(i))));
                }
            }
            Event::Grant(i) => {
                if let Some(g) = grants[i].take() {
                    leases[i].on_grant(&g, t);
                }
            }
        }
    }
    let admitted: u64 = admitted_w.iter().sum();
    let ideal: u64 = offered_w.iter().map(|o| (*o).min(cfg.limit)).sum();
    LeasingRow {
        slice_min_percent: slice_pct,
        admitted,
        offered,
        utilization: if ideal == 0 { 0.0 } else { admitted as f64 / ideal as f64 },
        requests_per_window: answered as f64 / cfg.windows.max(1) as f64,
        max_per_window: admitted_w.iter().copied().max().unwrap_or(0),
    }
}
