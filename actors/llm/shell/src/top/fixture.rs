//! LLM serving's metrics as one node reports them, for the panel's tests.

use troupe_runtime::wire::introspect::{Metric, MetricsSnapshot};

fn metric(name: &str, kind: &str, labels: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        name: name.into(),
        help: String::new(),
        kind: kind.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value,
    }
}

/// A snapshot of node n1 at `step` (a second apart), with `llm_metrics(step)` and a
/// runtime metric that is not LLM serving's.
pub fn snapshot(step: u64) -> MetricsSnapshot {
    let mut metrics = vec![metric("troupe_mailbox_depth", "gauge", &[("system", "kv"), ("kind", "store")], 2.0)];
    metrics.extend(llm_metrics(step));
    MetricsSnapshot { node: "n1".into(), unix_ms: 1_700_000_000_000 + step * 1000, metrics }
}

/// Cumulative `_bucket` series of an LLM latency histogram for `model`: `counts` are
/// observations per bucket of `LATENCY_BUCKETS` (then `+Inf`), in order.
fn llm_histogram(name: &str, model: &str, counts: &[(f64, u64)]) -> Vec<Metric> {
    let mut acc = 0;
    let mut les: Vec<String> = troupe_runtime::metrics::LATENCY_BUCKETS.iter().map(|b| b.to_string()).collect();
    les.push("+Inf".into());
    les.into_iter()
        .map(|le| {
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
            acc += counts.iter().filter(|(b, _)| *b == bound).map(|(_, n)| n).sum::<u64>();
            metric(
                &format!("{name}_bucket"),
                "histogram",
                &[("system", "llm-serving"), ("model_name", model), ("le", &le)],
                acc as f64,
            )
        })
        .collect()
}

/// LLM serving as one node reports it (gateway, router, scaler and both workers of
/// `systems/llm-serving.toml`), at `step` 0 and one second later at `step` 1. Between
/// the two, `smollm2-135m` saw 10 first tokens (4 in 50..100 ms, 6 in 100..250 ms: p50
/// 125 ms, p99 247.5 ms), 10 requests finish (TPOT 2 in 5..10 ms, 8 in 10..25 ms: p50
/// 15.6 ms, p99 24.8 ms), 240 tokens, 15 prefix hits in 20 queries (75%);
/// `smollm2-135m-fast` was idle, so its figures are since start (TTFT 2 in 10..25 ms, 6
/// in 25..50 ms: p50 33 ms, p99 49.7 ms; hits 1 of 4). Pool `worker_fast`'s breaker is
/// half-open.
pub fn llm_metrics(step: u64) -> Vec<Metric> {
    let s = |model: &str, pool: &str| -> Vec<(&'static str, String)> {
        vec![
            ("system", "llm-serving".into()),
            ("model_name", model.into()),
            ("worker", pool.into()),
            ("stage", "unified".into()),
        ]
    };
    let g = |name: &str, kind: &str, l: &[(&str, String)], v: f64| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metric(name, kind, &l, v)
    };
    let (big, fast) = (s("smollm2-135m", "worker"), s("smollm2-135m-fast", "worker_fast"));
    let k = step as f64;
    let mut out = vec![
        g("troupe_llm_num_requests_running", "gauge", &big, 3.0),
        g("troupe_llm_num_requests_running", "gauge", &fast, 0.0),
        g("troupe_llm_num_requests_waiting", "gauge", &big, 1.0),
        g("troupe_llm_num_requests_waiting", "gauge", &fast, 0.0),
        g("troupe_llm_kv_cache_usage_perc", "gauge", &big, 0.42),
        g("troupe_llm_kv_cache_usage_perc", "gauge", &fast, 0.05),
        g("troupe_llm_prefix_cache_hits_total", "counter", &big, 30.0 + 15.0 * k),
        g("troupe_llm_prefix_cache_queries_total", "counter", &big, 40.0 + 20.0 * k),
        g("troupe_llm_prefix_cache_hits_total", "counter", &fast, 1.0),
        g("troupe_llm_prefix_cache_queries_total", "counter", &fast, 4.0),
        metric(
            "troupe_llm_generation_tokens_total",
            "counter",
            &[("system", "llm-serving"), ("model_name", "smollm2-135m")],
            1000.0 + 240.0 * k,
        ),
        metric(
            "troupe_llm_generation_tokens_total",
            "counter",
            &[("system", "llm-serving"), ("model_name", "smollm2-135m-fast")],
            64.0,
        ),
        metric(
            "troupe_llm_request_errors_total",
            "counter",
            &[
                ("system", "llm-serving"),
                ("model_name", "smollm2-135m"),
                ("type", "invalid_request_error"),
                ("status", "400"),
            ],
            2.0,
        ),
        metric(
            "troupe_llm_queue_depth",
            "gauge",
            &[("system", "llm-serving"), ("pool", "worker"), ("model_name", "smollm2-135m")],
            1.0,
        ),
        metric(
            "troupe_llm_queue_depth",
            "gauge",
            &[("system", "llm-serving"), ("pool", "worker_fast"), ("model_name", "smollm2-135m-fast")],
            0.0,
        ),
        metric("troupe_llm_breaker_state", "gauge", &[("system", "llm-serving"), ("pool", "worker")], 0.0),
        metric("troupe_llm_breaker_state", "gauge", &[("system", "llm-serving"), ("pool", "worker_fast")], 2.0),
    ];
    for (pool, active, warm) in [("worker", 2.0, 1.0), ("worker_fast", 1.0, 0.0)] {
        let l = [("system", "llm-serving"), ("pool", pool), ("stage", "unified")];
        out.push(metric("troupe_llm_active_workers", "gauge", &l, active));
        out.push(metric("troupe_llm_warm_workers", "gauge", &l, warm));
    }
    let ttft = "troupe_llm_time_to_first_token_seconds";
    let tpot = "troupe_llm_time_per_output_token_seconds";
    out.extend(llm_histogram(ttft, "smollm2-135m", &[(0.05, 2), (0.1, 4 * step), (0.25, 6 * step + 3)]));
    out.extend(llm_histogram(tpot, "smollm2-135m", &[(0.01, 2 * step), (0.025, 8 * step + 5)]));
    out.extend(llm_histogram(ttft, "smollm2-135m-fast", &[(0.025, 2), (0.05, 6)]));
    out.extend(llm_histogram(tpot, "smollm2-135m-fast", &[(0.01, 4), (0.025, 4)]));
    out
}
