//! The limiter's Prometheus series (`troupe_ratelimit_*`), with handles cached per rule so a
//! check touches atomics only, not the node's metric registry.
//!
//! Invariant: series are labelled by rule name and shard only, both bounded by configuration
//! (at most 1024 rules per set, `shards` shards); never by key, user or IP.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use troupe_runtime::Node;
use troupe_runtime::metrics::{Counter, Gauge, Histogram, Metrics};

/// Check latency buckets, seconds: 10 µs to 1 s (the runtime's default starts at 100 µs, above
/// most checks).
pub const CHECK_SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
    0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters of one rule.
#[derive(Debug)]
pub struct RuleMetrics {
    pub checks: Counter,
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_would_block: Counter,
    pub fail_open: Counter,
    pub fail_closed: Counter,
    pub lease_refills: Counter,
}

/// The node's limiter series.
pub struct LimiterMetrics {
    node: Node,
    rules: RwLock<HashMap<String, Arc<RuleMetrics>>>,
    pub check_seconds: Histogram,
    pub requests_allowed: Counter,
    pub requests_denied: Counter,
    pub rules_version: Gauge,
    pub refunds: Counter,
}

impl LimiterMetrics {
    pub fn new(node: &Node) -> Self {
        let m = node.metrics();
        let req = |result| {
            m.counter(
                "troupe_ratelimit_requests_total",
                "Requests checked (all their limits together), by result.",
                &[("result", result)],
            )
        };
        LimiterMetrics {
            node: node.clone(),
            rules: RwLock::new(HashMap::new()),
            check_seconds: m.histogram(
                "troupe_ratelimit_check_duration_seconds",
                "Time to answer one request's checks on the caller's node (all shards, leases, fail modes).",
                &[],
                CHECK_SECONDS_BUCKETS,
            ),
            requests_allowed: req("allowed"),
            requests_denied: req("denied"),
            rules_version: m.gauge(
                "troupe_ratelimit_rules_version",
                "Version of the rule set this node enforces.",
                &[],
            ),
            refunds: m.counter(
                "troupe_ratelimit_refunds_total",
                "Shard admissions given back because another shard of the same request denied it.",
                &[],
            ),
        }
    }

    /// The counters of `rule`, created on first use.
    pub fn rule(&self, rule: &str) -> Arc<RuleMetrics> {
        if let Some(r) = self.rules.read().get(rule) {
            return r.clone();
        }
        let m = self.node.metrics();
        let c = |name: &str, help: &str| m.counter(name, help, &[("rule", rule)]);
        let r = Arc::new(RuleMetrics {
            checks: c("troupe_ratelimit_checks_total", "Limits checked, by rule."),
            allowed: c("troupe_ratelimit_allowed_total", "Limits that allowed their check, by rule."),
            denied: c("troupe_ratelimit_denied_total", "Enforced limits that denied their check, by rule."),
            shadow_would_block: c(
                "troupe_ratelimit_shadow_would_block_total",
                "Shadow limits that would have denied (they never do), by rule.",
            ),
            fail_open: c(
                "troupe_ratelimit_fail_open_total",
                "Checks admitted because the owner did not answer in time.",
            ),
            fail_closed: c(
                "troupe_ratelimit_fail_closed_total",
                "Checks denied because the owner did not answer in time.",
            ),
            lease_refills: c("troupe_ratelimit_lease_refills_total", "Lease grants received for a global rule."),
        });
        self.rules.write().insert(rule.to_string(), r.clone());
        r
    }

    /// The busy-keys gauge of shard `shard` on this node.
    pub fn keys_gauge(m: &Metrics, shard: &str) -> Gauge {
        m.gauge("troupe_ratelimit_keys", "Busy keys held by a limiter shard on this node.", &[("shard", shard)])
    }

    /// 1 while shard `shard` on this node holds changes not yet in a durable snapshot.
    pub fn unsaved_gauge(m: &Metrics, shard: &str) -> Gauge {
        m.gauge(
            "troupe_ratelimit_unsaved",
            "1 while a limiter shard holds changes no durable snapshot has yet (a failover would lose them).",
            &[("shard", shard)],
        )
    }

    /// Checks the shards of this node dropped because their caller had already given up.
    pub fn abandoned_checks(m: &Metrics) -> Counter {
        m.counter(
            "troupe_ratelimit_abandoned_checks_total",
            "Checks a limiter shard dropped unanswered because the caller had already answered with its fail mode.",
            &[],
        )
    }

    /// Refunds applied by the shards of this node (the caller side counts them sent in
    /// `troupe_ratelimit_refunds_total`; a refund is a tell, so the two can differ).
    pub fn refunds_applied(m: &Metrics) -> Counter {
        m.counter(
            "troupe_ratelimit_refunds_applied_total",
            "Refund messages applied by the limiter shards on this node.",
            &[],
        )
    }
}
