//! Property tests of the five algorithms: each promise, peek/check agreement, exact retry and
//! remaining values, token bucket ≡ GCRA, clamped backwards time, and cost edge cases.

use proptest::prelude::*;
use troupe_limiter::algorithm::{FixedWindow, SlidingCounter};
use troupe_limiter::{Algorithm, AlgorithmKind, LimitParams, Limiter, RETRY_NEVER};

const W: u64 = 1_000; // a small window (ns) keeps traces dense

/// A step: time delta (may be negative: a clock stepping back) and cost.
fn steps() -> impl Strategy<Value = Vec<(i64, u64)>> {
    prop::collection::vec((prop_oneof![4 => 0i64..300, 1 => -400i64..0, 1 => 0i64..3000], 0u64..6), 1..200)
}

fn params_for(kind: AlgorithmKind, limit: u64, burst_extra: u64) -> LimitParams {
    let burst = if kind.uses_burst() { limit + burst_extra } else { limit };
    LimitParams::new(kind, limit, W, burst).expect("valid params")
}

/// Runs the trace; returns admitted (clamped time, cost) and checks peek == check on the way.
fn drive(params: LimitParams, steps: &[(i64, u64)]) -> Vec<(u64, u64)> {
    let mut lim = Limiter::new(params);
    let (mut raw, mut clamped) = (10_000i64, 0u64);
    let mut admitted = Vec::new();
    for &(dt, cost) in steps {
        raw = (raw + dt).max(0);
        let now = raw as u64;
        clamped = clamped.max(now);
        let peeked = lim.peek(now, cost);
        let d = lim.check(now, cost);
        assert_eq!(peeked, d, "peek must predict check");
        assert!(d.remaining <= d.limit);
        assert_eq!(d.allowed, d.retry_after_ns == 0);
        if d.allowed && cost > 0 {
            admitted.push((clamped, cost));
        }
    }
    admitted
}

fn max_in_window(admitted: &[(u64, u64)], w: u64) -> u64 {
    admitted
        .iter()
        .map(|&(t, _)| admitted.iter().filter(|(s, _)| *s >= t && *s < t + w).map(|(_, c)| c).sum::<u64>())
        .max()
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Token bucket and GCRA: any interval [a, b] admits at most burst + limit·(b−a)/W.
    #[test]
    fn bucket_promise(limit in 1u64..12, extra in 0u64..6, s in steps(), gcra in any::<bool>()) {
        let kind = if gcra { AlgorithmKind::Gcra } else { AlgorithmKind::TokenBucket };
        let p = params_for(kind, limit, extra);
        let adm = drive(p, &s);
        for i in 0..adm.len() {
            let mut sum = 0u128;
            for j in i..adm.len() {
                sum += u128::from(adm[j].1);
                let span = u128::from(adm[j].0 - adm[i].0);
                prop_assert!(sum * u128::from(W) <= u128::from(p.burst()) * u128::from(W) + u128::from(limit) * span,
                    "{} admitted {} in {} ns", kind.as_str(), sum, span);
            }
        }
    }

    /// Sliding log: every half-open window of length W admits at most limit.
    #[test]
    fn sliding_log_promise(limit in 1u64..12, s in steps()) {
        let adm = drive(params_for(AlgorithmKind::SlidingLog, limit, 0), &s);
        prop_assert!(max_in_window(&adm, W) <= limit);
    }

    /// Fixed window: every aligned window admits at most limit.
    #[test]
    fn fixed_window_promise(limit in 1u64..12, s in steps()) {
        let adm = drive(params_for(AlgorithmKind::FixedWindow, limit, 0), &s);
        let mut per = std::collections::BTreeMap::<u64, u64>::new();
        for (t, c) in adm { *per.entry(t / W).or_default() += c; }
        prop_assert!(per.values().all(|&n| n <= limit));
    }

    /// Sliding counter: each aligned window <= limit; at each admission at offset e, the
    /// trailing (t−W, t] holds at most limit + P·e/W (P = previous aligned window's count),
    /// hence always < 2·limit.
    #[test]
    fn sliding_counter_bound(limit in 1u64..12, s in steps()) {
        let adm = drive(params_for(AlgorithmKind::SlidingCounter, limit, 0), &s);
        let mut per = std::collections::BTreeMap::<u64, u64>::new();
        for &(t, c) in &adm { *per.entry(t / W).or_default() += c; }
        prop_assert!(per.values().all(|&n| n <= limit));
        for (i, &(t, _)) in adm.iter().enumerate() {
            let trailing: u64 = adm[..=i].iter().filter(|(s, _)| s + W > t).map(|(_, c)| c).sum();
            let k = t / W;
            let prev = if k == 0 { 0 } else { per.get(&(k - 1)).copied().unwrap_or(0) };
            let e = t - k * W;
            prop_assert!(u128::from(trailing) * u128::from(W) <= u128::from(limit) * u128::from(W) + u128::from(prev) * u128::from(e));
            prop_assert!(trailing < 2 * limit);
        }
    }

    /// GCRA is the token bucket stored differently: identical decisions on any trace.
    #[test]
    fn gcra_equals_token_bucket(limit in 1u64..20, extra in 0u64..8, s in steps()) {
        let mut tb = Limiter::new(params_for(AlgorithmKind::TokenBucket, limit, extra));
        let mut g = Limiter::new(params_for(AlgorithmKind::Gcra, limit, extra));
        let mut raw = 5_000i64;
        for (dt, cost) in s {
            raw = (raw + dt).max(0);
            prop_assert_eq!(tb.check(raw as u64, cost), g.check(raw as u64, cost));
        }
    }

    /// A clock stepping back is clamped: decisions equal those on the running-max clock, so
    /// it neither panics nor mints quota.
    #[test]
    fn backwards_time_is_clamped(limit in 1u64..12, s in steps(), k in 0usize..5) {
        let kind = AlgorithmKind::ALL[k];
        let p = params_for(kind, limit, 2);
        let (mut a, mut b) = (Limiter::new(p), Limiter::new(p));
        let (mut raw, mut hi) = (10_000i64, 0u64);
        for (dt, cost) in s {
            raw = (raw + dt).max(0);
            hi = hi.max(raw as u64);
            prop_assert_eq!(a.check(raw as u64, cost), b.check(hi, cost));
        }
    }

    /// `retry_after` is exact: the same cost is admitted then, and not one ns earlier.
    /// `remaining` is exact: that much fits now, one more does not.
    #[test]
    fn retry_and_remaining_are_exact(limit in 1u64..12, s in steps(), k in 0usize..5, probe in 1u64..14) {
        let kind = AlgorithmKind::ALL[k];
        let p = params_for(kind, limit, 3);
        let mut lim = Limiter::new(p);
        let mut now = 10_000u64;
        for (dt, cost) in s {
            now = now.saturating_add_signed(dt.max(0));
            let d = lim.check(now, cost);
            let q = lim.peek(now, probe);
            if !q.allowed && q.retry_after_ns != RETRY_NEVER {
                prop_assert!(lim.peek(now + q.retry_after_ns, probe).allowed, "{}: not allowed at retry", kind.as_str());
                prop_assert!(!lim.peek(now + q.retry_after_ns - 1, probe).allowed, "{}: retry not minimal", kind.as_str());
            }
            if d.remaining > 0 {
                prop_assert!(lim.peek(now, d.remaining).allowed);
            }
            if d.remaining < p.capacity() {
                prop_assert!(!lim.peek(now, d.remaining + 1).allowed, "{}: remaining too low", kind.as_str());
            }
        }
    }

    /// Cost 0 is a probe: always allowed, and interleaving probes changes no other decision.
    #[test]
    fn cost_zero_is_a_probe(limit in 1u64..12, s in steps(), k in 0usize..5) {
        let p = params_for(AlgorithmKind::ALL[k], limit, 1);
        let (mut a, mut b) = (Limiter::new(p), Limiter::new(p));
        let mut now = 10_000u64;
        for (dt, cost) in s {
            now = now.saturating_add_signed(dt.max(0));
            prop_assert!(b.check(now, 0).allowed);
            prop_assert_eq!(a.check(now, cost), b.check(now, cost));
        }
    }
}

#[test]
fn cost_above_capacity_is_never_admitted() {
    for kind in AlgorithmKind::ALL {
        let p = params_for(kind, 5, 2);
        let mut lim = Limiter::new(p);
        let d = lim.check(1_000, p.capacity() + 1);
        assert!(!d.allowed, "{}", kind.as_str());
        assert_eq!(d.retry_after_ns, RETRY_NEVER);
        assert!(!d.can_ever_succeed());
        // Nothing was consumed: the full capacity still fits.
        assert!(lim.check(1_000, p.capacity()).allowed, "{}", kind.as_str());
    }
}

/// Documented behaviour, not a bug: a fixed window admits 2·limit across a boundary, in 2 ns.
#[test]
fn fixed_window_admits_2x_across_a_boundary() {
    let limit = 100;
    let mut fw = FixedWindow::new(LimitParams::simple(AlgorithmKind::FixedWindow, limit, W).expect("params"));
    let end_of_first = W - 1;
    let start_of_second = W;
    let mut admitted = 0;
    for _ in 0..limit {
        admitted += u64::from(fw.check(end_of_first, 1).allowed);
    }
    for _ in 0..limit {
        admitted += u64::from(fw.check(start_of_second, 1).allowed);
    }
    assert_eq!(admitted, 2 * limit, "the boundary burst: 2x the limit within 1 ns");
    // The sliding counter refuses the same burst: the previous window still weighs ~100%.
    let mut sc = SlidingCounter::new(LimitParams::simple(AlgorithmKind::SlidingCounter, limit, W).expect("params"));
    let mut admitted = 0;
    for t in [end_of_first, start_of_second] {
        for _ in 0..limit {
            admitted += u64::from(sc.check(t, 1).allowed);
        }
    }
    assert_eq!(admitted, limit);
}

#[test]
fn params_reject_bad_values() {
    use troupe_limiter::ParamError;
    assert!(matches!(LimitParams::simple(AlgorithmKind::Gcra, 0, W), Err(ParamError::Limit { .. })));
    assert!(matches!(LimitParams::simple(AlgorithmKind::Gcra, 1, 0), Err(ParamError::Window { .. })));
    assert!(matches!(
        LimitParams::new(AlgorithmKind::FixedWindow, 10, W, 20),
        Err(ParamError::BurstNotApplicable { .. })
    ));
    assert!(matches!(
        LimitParams::simple(AlgorithmKind::SlidingLog, 1_000_000, W),
        Err(ParamError::LogTooLarge { .. })
    ));
}

#[test]
fn sliding_log_memory_is_bounded_by_limit() {
    let mut log = troupe_limiter::algorithm::SlidingLog::new(
        LimitParams::simple(AlgorithmKind::SlidingLog, 50, 1_000_000).expect("params"),
    );
    for t in 0..100_000u64 {
        log.check(t * 7, 1);
        assert!(log.state().entries_len() <= 50);
    }
}

/// The estimator on unthrottled Poisson traffic: with the previous window's P requests spread
/// uniformly, the part still in the trailing window is Binomial(P, 1−e/W), so the estimate's
/// error has standard deviation at most √P/2. We hold it to 4σ (= 2√P) plus 1 for rounding on
/// fixed seeds, at every arrival.
#[test]
fn sliding_counter_estimate_error_on_poisson_traffic() {
    let w = 1_000_000_000u64;
    for seed in 0..8 {
        let trace = troupe_limiter::lab::poisson_trace(seed, 400.0, w, 40);
        let mut sc =
            SlidingCounter::new(LimitParams::simple(AlgorithmKind::SlidingCounter, 1 << 30, w).expect("params"));
        let mut lo = 0usize;
        let mut worst = 0f64;
        for (i, a) in trace.iter().enumerate() {
            sc.check(a.t_ns, 1);
            while trace[lo].t_ns + w <= a.t_ns {
                lo += 1;
            }
            let exact = (i + 1 - lo) as f64;
            let (weighted, prev, _) = sc.state().weighted_estimate(sc.params(), a.t_ns);
            let est = weighted as f64 / w as f64;
            let err = (est - exact).abs();
            assert!(err <= 2.0 * (prev as f64).sqrt() + 1.0, "seed {seed}: error {err} with P={prev}");
            worst = worst.max(err / (prev as f64).sqrt().max(1.0));
        }
        assert!(worst > 0.0, "the estimate is not exact on random traffic; a zero here means the test is blind");
    }
}
