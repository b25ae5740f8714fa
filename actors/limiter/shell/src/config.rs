//! Parameters of the rate limiter's kinds (the `params` tables of systems/rate-limiter.toml),
//! each with its bound and unit, checked when the cluster file is loaded.
//!
//! The caller side of a check (any node) needs parameters of several kinds: the shard count
//! (to route), the agent's timeouts and lease sizes, the quota's slice bounds. [`SystemConfig`]
//! reads them all from the loaded topology, so every node routes and times out the same way.

use serde::Deserialize;
use troupe_limiter::RuleSet;
use troupe_limiter::proto::{KIND_AGENT, KIND_HTTP, KIND_QUOTA, KIND_RULES, KIND_SHARD, SYSTEM};
use troupe_runtime::Node;

fn within(name: &str, v: u64, lo: u64, hi: u64, unit: &str) -> Result<(), String> {
    if (lo..=hi).contains(&v) { Ok(()) } else { Err(format!("{name} must be between {lo} and {hi} {unit}, got {v}")) }
}

/// `[kinds.limiter_shard.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardParams {
    /// Number of shard entities (`s0..s{shards-1}`); every node routes with it, so changing it
    /// moves keys (their state restarts from full).
    #[serde(default = "d_shards")]
    pub shards: u32,
    /// Busy keys one shard holds, keys.
    #[serde(default = "d_keys_max")]
    pub keys_max: usize,
    /// How often a shard snapshots its busy keys (if anything changed), milliseconds. This is
    /// the staleness bound after a crash: what a key admitted in the last `snapshot_ms` before
    /// its owner died may be admitted again.
    #[serde(default = "d_snapshot_ms")]
    pub snapshot_ms: u64,
    /// Largest snapshot written, bytes; a larger one is skipped (and counted).
    #[serde(default = "d_snapshot_bytes_max")]
    pub snapshot_bytes_max: usize,
    /// Heap entries examined per idle-eviction pass (bounds the pause), entries.
    #[serde(default = "d_evict_scan_max")]
    pub evict_scan_max: usize,
}

fn d_shards() -> u32 {
    64
}
fn d_keys_max() -> usize {
    20_000
}
fn d_snapshot_ms() -> u64 {
    1_000
}
fn d_snapshot_bytes_max() -> usize {
    8 << 20
}
fn d_evict_scan_max() -> usize {
    4_096
}

impl ShardParams {
    /// Bounds, reported at config load.
    pub fn validate(&self) -> Result<(), String> {
        within("shards", u64::from(self.shards), 1, 4_096, "shards")?;
        within("keys_max", self.keys_max as u64, 1, 1_000_000, "keys")?;
        within("snapshot_ms", self.snapshot_ms, 20, 600_000, "milliseconds")?;
        within("snapshot_bytes_max", self.snapshot_bytes_max as u64, 1_024, 15 << 20, "bytes")?;
        within("evict_scan_max", self.evict_scan_max as u64, 1, 1_000_000, "entries")
    }
}

/// `[kinds.agent.params]`: the caller side of every check on this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentParams {
    /// How long a check waits for a shard owner (or a lease grant) before the rule's fail mode
    /// answers, milliseconds.
    #[serde(default = "d_owner_timeout_ms")]
    pub owner_timeout_ms: u64,
    /// After an owner failed to answer, its limits are answered by their fail mode without
    /// asking for this long, milliseconds (so an outage costs one timeout, not one per request).
    #[serde(default = "d_breaker_ms")]
    pub breaker_ms: u64,
    /// `Retry-After` given when a rule fails closed, milliseconds (about a re-homing).
    #[serde(default = "d_fail_closed_retry_ms")]
    pub fail_closed_retry_ms: u64,
    /// How often the node pulls the rule set from the rules singleton (the safety net under
    /// the push), milliseconds.
    #[serde(default = "d_rules_pull_ms")]
    pub rules_pull_ms: u64,
    /// SDK checks in flight on this agent; more are refused with `MailboxFull`, requests.
    #[serde(default = "d_inflight_max")]
    pub inflight_max: usize,
    /// A node asks for more of a global rule's quota when its slice falls to this percent of
    /// the limit (at least 1 unit), percent.
    #[serde(default = "d_lease_low_watermark_percent")]
    pub lease_low_watermark_percent: u64,
    /// A refill should last this long at the node's recent demand, milliseconds.
    #[serde(default = "d_lease_horizon_ms")]
    pub lease_horizon_ms: u64,
    /// An unanswered lease request is abandoned after this long, milliseconds.
    #[serde(default = "d_lease_request_timeout_ms")]
    pub lease_request_timeout_ms: u64,
    /// Subtracted from every grant's validity for clock rate drift, milliseconds.
    #[serde(default = "d_lease_drift_margin_ms")]
    pub lease_drift_margin_ms: u64,
}

fn d_owner_timeout_ms() -> u64 {
    50
}
fn d_breaker_ms() -> u64 {
    250
}
fn d_fail_closed_retry_ms() -> u64 {
    2_000
}
fn d_rules_pull_ms() -> u64 {
    2_000
}
fn d_inflight_max() -> usize {
    8_192
}
fn d_lease_low_watermark_percent() -> u64 {
    2
}
fn d_lease_horizon_ms() -> u64 {
    100
}
fn d_lease_request_timeout_ms() -> u64 {
    500
}
fn d_lease_drift_margin_ms() -> u64 {
    5
}

impl AgentParams {
    /// Bounds, reported at config load.
    pub fn validate(&self) -> Result<(), String> {
        within("owner_timeout_ms", self.owner_timeout_ms, 1, 60_000, "milliseconds")?;
        within("breaker_ms", self.breaker_ms, 0, 60_000, "milliseconds")?;
        within("fail_closed_retry_ms", self.fail_closed_retry_ms, 1, 3_600_000, "milliseconds")?;
        within("rules_pull_ms", self.rules_pull_ms, 50, 3_600_000, "milliseconds")?;
        within("inflight_max", self.inflight_max as u64, 1, 1_000_000, "requests")?;
        within("lease_low_watermark_percent", self.lease_low_watermark_percent, 0, 100, "percent")?;
        within("lease_horizon_ms", self.lease_horizon_ms, 1, 600_000, "milliseconds")?;
        within("lease_request_timeout_ms", self.lease_request_timeout_ms, 1, 60_000, "milliseconds")?;
        within("lease_drift_margin_ms", self.lease_drift_margin_ms, 0, 60_000, "milliseconds")
    }
}

/// `[kinds.rules.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesParams {
    /// The initial rule set, a rules TOML document (format in docs/rate-limiter.md). A durable
    /// set with a higher version (from `PUT /v1/rules`) wins over it.
    pub rules: String,
}

impl RulesParams {
    /// Parses the embedded document, reporting every error with its line in the document.
    pub fn parse(&self) -> Result<RuleSet, String> {
        RuleSet::from_toml_str(&self.rules).map_err(|e| format!("in `rules`: {e}"))
    }
}

/// `[kinds.quota.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaParams {
    /// Smallest slice granted, percent of the limit (at least 1 unit), percent.
    #[serde(default = "d_slice_min_percent")]
    pub slice_min_percent: u64,
    /// Largest slice one grant carries, percent of the limit (at least 1 unit): bounds what a
    /// node can strand or lose by dying, percent.
    #[serde(default = "d_slice_max_percent")]
    pub slice_max_percent: u64,
    /// Node incarnations tracked per global rule, nodes.
    #[serde(default = "d_nodes_max")]
    pub nodes_max: usize,
    /// The durable log is compacted into a snapshot every this many grants, entries.
    #[serde(default = "d_snapshot_every")]
    pub snapshot_every: u64,
}

fn d_slice_min_percent() -> u64 {
    1
}
fn d_slice_max_percent() -> u64 {
    10
}
fn d_nodes_max() -> usize {
    256
}
fn d_snapshot_every() -> u64 {
    64
}

impl QuotaParams {
    /// Bounds, reported at config load.
    pub fn validate(&self) -> Result<(), String> {
        within("slice_min_percent", self.slice_min_percent, 0, 100, "percent")?;
        within("slice_max_percent", self.slice_max_percent, 1, 100, "percent")?;
        if self.slice_min_percent > self.slice_max_percent {
            return Err("slice_min_percent must not exceed slice_max_percent".into());
        }
        within("nodes_max", self.nodes_max as u64, 1, 65_536, "nodes")?;
        within("snapshot_every", self.snapshot_every, 1, 100_000, "entries")
    }
    /// Slice bounds for a global limit of `limit` units.
    pub fn slices(&self, limit: u64) -> (u64, u64) {
        let pct = |p: u64| (u128::from(limit) * u128::from(p) / 100).clamp(1, u128::from(limit.max(1))) as u64;
        let (lo, hi) = (pct(self.slice_min_percent), pct(self.slice_max_percent));
        (lo.min(hi), hi)
    }
}

/// `[kinds.http.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpParams {
    /// Largest request body accepted, bytes; larger gets a 400 saying so.
    #[serde(default = "d_body_bytes_max")]
    pub body_bytes_max: usize,
}

fn d_body_bytes_max() -> usize {
    64 << 10
}

impl HttpParams {
    /// Bounds, reported at config load.
    pub fn validate(&self) -> Result<(), String> {
        within("body_bytes_max", self.body_bytes_max as u64, 256, 16 << 20, "bytes")
    }
}

/// Every kind's parameters, as one node reads them from its loaded topology.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub shard: ShardParams,
    pub agent: AgentParams,
    pub quota: QuotaParams,
    pub http: HttpParams,
    /// The initial rule set from the topology.
    pub initial_rules: RuleSet,
}

fn params_of<T: serde::de::DeserializeOwned>(node: &Node, kind: &str) -> Result<T, String> {
    let spec = node
        .kind_spec(SYSTEM, kind)
        .ok_or_else(|| format!("system `{SYSTEM}` has no kind `{kind}` on this node (is it enabled?)"))?;
    toml::Value::Table(spec.params.clone()).try_into::<T>().map_err(|e| format!("params of `{kind}`: {}", e.message()))
}

impl SystemConfig {
    /// Reads the configuration of the `rate-limiter` system as loaded on `node`.
    pub fn of(node: &Node) -> Result<SystemConfig, String> {
        let rules: RulesParams = params_of(node, KIND_RULES)?;
        Ok(SystemConfig {
            shard: params_of(node, KIND_SHARD)?,
            agent: params_of(node, KIND_AGENT)?,
            quota: params_of(node, KIND_QUOTA)?,
            http: params_of(node, KIND_HTTP).unwrap_or(HttpParams { body_bytes_max: d_body_bytes_max() }),
            initial_rules: rules.parse()?,
        })
    }
}
