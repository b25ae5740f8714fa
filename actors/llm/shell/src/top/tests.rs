//! Percentiles from buckets, hit rates, windows and resets, and the fixture summarized.

use super::fixture;
use super::*;

fn snap(unix_ms: u64, metrics: Vec<Metric>) -> MetricsSnapshot {
    MetricsSnapshot { node: "n1".into(), unix_ms, metrics }
}

const INF: f64 = f64::INFINITY;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn quantile_interpolates_inside_the_bucket() {
    // 10 observations: 4 in (0.1, 0.2], 6 in (0.2, 0.4].
    let b = [(0.1, 0.0), (0.2, 4.0), (0.4, 10.0), (INF, 10.0)];
    assert!(close(histogram_quantile(0.5, &b), 0.2 + 0.2 * (1.0 / 6.0)), "{:?}", histogram_quantile(0.5, &b));
    assert!(close(histogram_quantile(0.2, &b), 0.15));
    assert!(close(histogram_quantile(1.0, &b), 0.4));
}

#[test]
fn quantile_of_the_first_bucket_starts_at_zero() {
    let b = [(0.5, 4.0), (1.0, 4.0), (INF, 4.0)];
    assert!(close(histogram_quantile(0.5, &b), 0.25));
}

#[test]
fn quantile_in_the_inf_bucket_is_the_highest_finite_bound() {
    // 1 fast observation, 9 slower than every bound.
    let b = [(0.1, 1.0), (60.0, 1.0), (INF, 10.0)];
    assert_eq!(histogram_quantile(0.99, &b), Some(60.0));
    assert!(close(histogram_quantile(0.05, &b), 0.05));
    // Only the +Inf bucket: nothing to bound it with.
    assert_eq!(histogram_quantile(0.5, &[(INF, 3.0)]), None);
}

#[test]
fn quantile_without_samples_or_total_is_none() {
    assert_eq!(histogram_quantile(0.5, &[]), None);
    assert_eq!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None, "no observations");
    assert_eq!(histogram_quantile(0.5, &[(0.1, 3.0), (1.0, 5.0)]), None, "no +Inf bucket: total unknown");
}

#[test]
fn quantile_tolerates_unsorted_and_non_monotonic_buckets() {
    let b = [(INF, 10.0), (0.4, 10.0), (0.2, 4.0), (0.1, 5.0)];
    // (0.2, 4) below (0.1, 5) reads as 5, so the rank 5 is reached at 0.1 already.
    assert!(close(histogram_quantile(0.5, &b), 0.1));
    assert!(close(histogram_quantile(0.75, &b), 0.2 + 0.2 * 2.5 / 5.0));
}

#[test]
fn hit_rate_prefers_the_window_then_falls_back() {
    assert_eq!(hit_rate(Some((15.0, 20.0)), (45.0, 60.0)), Some(Windowed { value: 0.75, recent: true }));
    assert_eq!(hit_rate(Some((0.0, 0.0)), (1.0, 4.0)), Some(Windowed { value: 0.25, recent: false }));
    assert_eq!(hit_rate(None, (1.0, 4.0)), Some(Windowed { value: 0.25, recent: false }));
    assert_eq!(hit_rate(Some((0.0, 0.0)), (0.0, 0.0)), None, "no query yet");
}

fn hits(h: f64, q: f64) -> Vec<Metric> {
    let l: Vec<(String, String)> = [("system", SYSTEM), ("model_name", "m"), ("worker", "w"), ("stage", "unified")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let m = |name: &str, v| Metric {
        name: name.into(),
        help: String::new(),
        kind: "counter".into(),
        labels: l.clone(),
        value: v,
    };
    vec![m("troupe_llm_prefix_cache_hits_total", h), m("troupe_llm_prefix_cache_queries_total", q)]
}

#[test]
fn hit_rate_after_a_worker_restart_counts_from_zero() {
    let prev = snap(1000, hits(900.0, 1000.0));
    let now = snap(2000, hits(3.0, 4.0));
    let s = summarize(&now, Some(&prev)).expect("llm metrics");
    assert_eq!(s.models[0].prefix_hit, Some(Windowed { value: 0.75, recent: true }));
}

fn ttft(counts: &[(&str, f64)]) -> Vec<Metric> {
    counts
        .iter()
        .map(|(le, v)| Metric {
            name: TTFT.into(),
            help: String::new(),
            kind: "histogram".into(),
            labels: [("system", SYSTEM), ("model_name", "m"), ("le", le)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: *v,
        })
        .collect()
}

#[test]
fn percentiles_over_the_window_after_a_reset_use_the_new_counts() {
    // Before: 100 slow observations. The gateway restarted, then saw 4 fast ones.
    let prev = snap(1000, ttft(&[("0.1", 0.0), ("1", 100.0), ("+Inf", 100.0)]));
    let now = snap(3000, ttft(&[("0.1", 4.0), ("1", 4.0), ("+Inf", 4.0)]));
    let s = summarize(&now, Some(&prev)).expect("llm metrics");
    let p = s.models[0].ttft.expect("ttft");
    assert!(p.recent);
    assert!((p.value.p50 - 0.05).abs() < 1e-9, "{p:?}");
    assert_eq!(s.window_s, Some(2.0));
}

#[test]
fn percentiles_fall_back_to_since_start_when_the_window_is_empty() {
    let both = ttft(&[("0.1", 0.0), ("1", 10.0), ("+Inf", 10.0)]);
    let s = summarize(&snap(2000, both.clone()), Some(&snap(1000, both.clone()))).expect("llm metrics");
    let p = s.models[0].ttft.expect("ttft");
    assert!(!p.recent);
    assert!((p.value.p50 - 0.55).abs() < 1e-9, "{p:?}");
    assert!(s.any_since_start());
    // One snapshot only: since start too.
    let s = summarize(&snap(2000, both), None).expect("llm metrics");
    assert!(s.models[0].ttft.is_some_and(|p| !p.recent));
    assert_eq!(s.models[0].tokens_per_s, None, "no rate from one snapshot");
}

#[test]
fn a_node_without_llm_metrics_has_no_panel() {
    let mut d = fixture::snapshot(0);
    d.metrics.retain(|m| !m.name.starts_with("troupe_llm_"));
    assert!(!d.metrics.is_empty());
    assert_eq!(summarize(&d, None), None);
}

#[test]
fn the_fixture_summarized() {
    let (prev, now) = (fixture::snapshot(0), fixture::snapshot(1));
    let s = summarize(&now, Some(&prev)).expect("llm metrics");
    assert_eq!(s.models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["smollm2-135m", "smollm2-135m-fast"]);
    let big = &s.models[0];
    assert_eq!((big.running, big.waiting, big.kv_usage), (Some(3.0), Some(1.0), Some(0.42)));
    assert_eq!(big.prefix_hit, Some(Windowed { value: 0.75, recent: true }));
    assert_eq!(big.tokens_per_s, Some(240.0));
    assert_eq!(big.errors, Some(2.0));
    let t = big.ttft.expect("ttft");
    assert!(t.recent && (t.value.p50 - 0.125).abs() < 1e-9 && (t.value.p99 - 0.2475).abs() < 1e-9, "{t:?}");
    let t = big.tpot.expect("tpot");
    assert!(t.recent && (t.value.p50 - 0.015625).abs() < 1e-9, "{t:?}");
    let fast = &s.models[1];
    assert_eq!(fast.errors, Some(0.0), "its gateway is here and saw no error");
    assert_eq!(fast.tokens_per_s, Some(0.0));
    assert_eq!(fast.prefix_hit, Some(Windowed { value: 0.25, recent: false }));
    let t = fast.ttft.expect("ttft");
    assert!(!t.recent && (t.value.p50 - (0.025 + 0.025 / 3.0)).abs() < 1e-9, "{t:?}");
    let pools: Vec<_> = s.pools.iter().map(|p| (p.pool.as_str(), p.model.as_deref(), p.breaker)).collect();
    assert_eq!(
        pools,
        [
            ("worker", Some("smollm2-135m"), Some(Breaker::Closed)),
            ("worker_fast", Some("smollm2-135m-fast"), Some(Breaker::HalfOpen))
        ]
    );
    assert_eq!((s.pools[0].queue_depth, s.pools[0].active, s.pools[0].warm), (Some(1.0), Some(2.0), Some(1.0)));
}
