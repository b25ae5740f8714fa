//! Lab (a): how many clicks analytics loses with 301 instead of 302 redirects.
//!
//! Model: each client visits a link V times, V geometric with mean `visits_per_client_mean`
//! (at least one visit). Every visit is a click the owner would like to count. A 302 is
//! never cached, so the server sees every visit. A 301 is cached by the browser with
//! probability `cache_probability` each time the server serves it (the rest: private
//! windows, cleared caches, cache eviction, clients that ignore caching); once cached, the
//! browser redirects by itself and later visits never reach the server.
//!
//! Closed form, used as a check: with q = 1/mean and p the cache probability,
//! seen/total = q / (q + p - p q), so the loss is p (1 - q) / (q + p - p q).

use super::LabError;
use super::rng::SplitMix64;

/// Most simulated clients per run.
pub const CLIENTS_MAX: u64 = 10_000_000;
// A visit count is capped so one unlucky geometric draw cannot stall a run.
const VISITS_PER_CLIENT_MAX: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RedirectLossParams {
    pub clients: u64,
    pub visits_per_client_mean: f64,
    pub cache_probability: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RedirectLossResult {
    pub params: RedirectLossParams,
    /// Visits made (what a 302 deployment counts).
    pub clicks_total: u64,
    /// Visits that reached the server under 301.
    pub clicks_seen_301: u64,
    /// `1 - clicks_seen_301 / clicks_total`.
    pub loss_fraction_301: f64,
    /// The closed form for the same parameters.
    pub expected_loss_fraction: f64,
}

/// Runs the simulation once.
pub fn redirect_loss(params: RedirectLossParams) -> Result<RedirectLossResult, LabError> {
    let p = params.cache_probability;
    if !(0.0..=1.0).contains(&p) {
        return Err(LabError::BadParams("cache_probability must lie in [0, 1]".into()));
    }
    if !(params.visits_per_client_mean >= 1.0 && params.visits_per_client_mean <= 1e4) {
        return Err(LabError::BadParams("visits_per_client_mean must lie in [1, 10000]".into()));
    }
    if params.clients == 0 || params.clients > CLIENTS_MAX {
        return Err(LabError::BadParams(format!("clients must lie in [1, {CLIENTS_MAX}]")));
    }
    let q = 1.0 / params.visits_per_client_mean;
    let mut rng = SplitMix64::new(params.seed);
    let (mut total, mut seen) = (0u64, 0u64);
    for _ in 0..params.clients {
        let mut visits = 1;
        while visits < VISITS_PER_CLIENT_MAX && !rng.chance(q) {
            visits += 1;
        }
        total += visits;
        for _ in 0..visits {
            seen += 1;
            if rng.chance(p) {
                break; // cached: the rest of this client's visits bypass the server
            }
        }
    }
    let denominator = q + p - p * q;
    let expected = if denominator > 0.0 { p * (1.0 - q) / denominator } else { 0.0 };
    Ok(RedirectLossResult {
        params,
        clicks_total: total,
        clicks_seen_301: seen,
        loss_fraction_301: 1.0 - seen as f64 / total as f64,
        expected_loss_fraction: expected,
    })
}

/// One run per cache probability (same seed each, so curves are smooth).
pub fn redirect_loss_sweep(
    base: RedirectLossParams,
    cache_probabilities: &[f64],
) -> Result<Vec<RedirectLossResult>, LabError> {
    cache_probabilities.iter().map(|&p| redirect_loss(RedirectLossParams { cache_probability: p, ..base })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: f64, mean: f64) -> RedirectLossParams {
        RedirectLossParams { clients: 20_000, visits_per_client_mean: mean, cache_probability: p, seed: 1 }
    }

    #[test]
    fn simulation_matches_closed_form() {
        for (p, mean) in [(0.9, 5.0), (0.5, 3.0), (0.99, 10.0), (0.1, 2.0)] {
            let r = redirect_loss(params(p, mean)).expect("valid params");
            assert!(
                (r.loss_fraction_301 - r.expected_loss_fraction).abs() < 0.02,
                "p={p} mean={mean}: simulated {} vs closed form {}",
                r.loss_fraction_301,
                r.expected_loss_fraction
            );
        }
    }

    #[test]
    fn edge_cases() {
        let never_cached = redirect_loss(params(0.0, 5.0)).expect("valid");
        assert_eq!(never_cached.clicks_seen_301, never_cached.clicks_total, "no caching, no loss");
        let one_visit = redirect_loss(params(1.0, 1.0)).expect("valid");
        assert_eq!(one_visit.loss_fraction_301, 0.0, "a single visit is always seen");
        let always = redirect_loss(params(1.0, 5.0)).expect("valid");
        assert_eq!(always.clicks_seen_301, always.params.clients, "only first visits are seen");
        assert!(redirect_loss(params(1.5, 5.0)).is_err());
        assert!(redirect_loss(params(0.5, 0.5)).is_err());
        assert!(redirect_loss(RedirectLossParams { clients: 0, ..params(0.5, 2.0) }).is_err());
    }

    #[test]
    fn seeded_runs_repeat() {
        assert_eq!(redirect_loss(params(0.7, 4.0)).ok(), redirect_loss(params(0.7, 4.0)).ok());
    }
}
