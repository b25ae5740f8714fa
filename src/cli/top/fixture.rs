//! A small fake cluster for the TUI's tests: three nodes (the tests take n2 down), the
//! kv system with a few entities, one of them failed with a last error, the built-in
//! `troupe` system, and a handful of metrics from the runtime and from kv.

use super::data::NodeData;
use troupe_runtime::wire::introspect::{
    ActorInfo, ActorState, Health, MemberInfo, MemberState, Metric, MetricsSnapshot, SystemHealth,
};

pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
pub const FAILED_ERROR: &str = "disk full: cannot append to the log";

pub fn actor(path: &str, kind: &str, state: ActorState, handled: u64, children: Vec<ActorInfo>) -> ActorInfo {
    let supervisor = matches!(kind, "node" | "system" | "kind");
    ActorInfo {
        path: path.into(),
        kind: kind.into(),
        state,
        strategy: if supervisor { "one_for_one".into() } else { String::new() },
        mailbox_len: 0,
        mailbox_cap: if supervisor { u64::MAX } else { 1024 },
        handled,
        restarts: 0,
        last_error: None,
        children,
    }
}

/// `n` kv entities named `key0000`.., all running, for paging tests.
pub fn entities(n: usize) -> Vec<ActorInfo> {
    (0..n).map(|i| actor(&format!("/kv/store/key{i:04}"), "store", ActorState::Running, i as u64, vec![])).collect()
}

pub fn tree(node: &str, handled: u64, store_entities: Vec<ActorInfo>) -> ActorInfo {
    use ActorState::Running;
    let mut failed = actor("/kv/store/cart-7", "store", ActorState::Failed, 3, vec![]);
    failed.restarts = 5;
    failed.last_error = Some(FAILED_ERROR.into());
    let mut hello = actor("/kv/store/hello", "store", Running, handled, vec![]);
    hello.mailbox_len = 2;
    let mut store = vec![hello, actor("/kv/store/world", "store", Running, 4, vec![]), failed];
    store.extend(store_entities);
    actor(
        "/",
        "node",
        Running,
        0,
        vec![
            actor(
                "/kv",
                "system",
                Running,
                0,
                vec![
                    actor("/kv/store", "kind", Running, 0, store),
                    actor(
                        "/kv/ranges",
                        "kind",
                        Running,
                        0,
                        vec![actor("/kv/ranges/ranges", "ranges", Running, 1, vec![])],
                    ),
                ],
            ),
            actor(
                "/troupe",
                "system",
                Running,
                0,
                vec![actor(
                    "/troupe/node",
                    "kind",
                    Running,
                    0,
                    vec![actor(&format!("/troupe/node/{node}"), "troupe.node", Running, 40, vec![])],
                )],
            ),
        ],
    )
}

fn metric(name: &str, kind: &str, labels: &[(&str, &str)], value: f64) -> Metric {
    Metric {
        name: name.into(),
        help: String::new(),
        kind: kind.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value,
    }
}

/// One node's answer; `handled` feeds `/kv/store/hello` so tests can make rates.
pub fn node(name: &str, handled: u64, down: &[&str]) -> NodeData {
    let members = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| MemberInfo {
            name: n.to_string(),
            addr: format!("127.0.0.1:710{}", i + 1),
            epoch: 1_700_000_000_000,
            state: if down.contains(n) { MemberState::Down } else { MemberState::Alive },
            incarnation: 0,
            roles: vec!["gateway".into()],
        })
        .collect();
    NodeData {
        health: Health {
            node: name.into(),
            epoch: 1_700_000_000_000,
            uptime_ms: 3_723_000,
            systems: vec![SystemHealth { name: "kv".into(), status: "running".into() }],
        },
        members,
        tree: tree(name, handled, vec![]),
        metrics: MetricsSnapshot {
            node: name.into(),
            unix_ms: 1_700_000_000_000 + handled,
            metrics: vec![
                metric(
                    "troupe_messages_handled_total",
                    "counter",
                    &[("system", "kv"), ("kind", "store")],
                    handled as f64,
                ),
                metric("troupe_kv_puts_total", "counter", &[], 12.0),
                metric("troupe_mailbox_depth", "gauge", &[("system", "kv"), ("kind", "store")], 2.0),
                metric("troupe_gossip_packets_sent_total", "counter", &[], 4242.0),
                metric("troupe_node_uptime_seconds", "gauge", &[], 3723.0),
            ],
        },
    }
}

/// The three nodes as they answer when all are up.
pub fn cluster() -> Vec<NodeData> {
    NODES.iter().map(|n| node(n, 100, &[])).collect()
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

/// `node` with LLM serving's metrics of `step` added (see `llm_metrics`).
pub fn llm_node(name: &str, handled: u64, down: &[&str], step: u64) -> NodeData {
    let mut d = node(name, handled, down);
    d.metrics.metrics.extend(llm_metrics(step));
    d
}
