//! Parameters of the LLM serving kinds (the `params` tables of systems/llm-serving.toml),
//! each with its bound and unit, checked when the cluster file is loaded, and the pool
//! map every kind derives from the topology.
//!
//! A **pool** is one `llm.worker` kind: one served model name, one engine config, one
//! worker per node with the kind's role. Its `mode` says whether each worker runs
//! prefill and decode (`unified`) or whether the workers on `prefill_nodes` prefill and
//! ship KV to the others, which decode (`disaggregated`). The gateway, the router and
//! the scaler all read the same pools from the loaded topology, so every node agrees.

use super::queue::Tier;
use super::route::{Stage, WorkerKey};
use serde::Deserialize;
use troupe_runtime::config::Loaded;

/// The system's name (topology file `systems/llm-serving.toml`, `ports."llm-serving"`).
pub const SYSTEM: &str = "llm-serving";
/// Factory names.
pub const WORKER_FACTORY: &str = "llm.worker";
pub const ROUTER_KIND: &str = "router";
pub const SCALER_KIND: &str = "scaler";

pub(crate) fn within(name: &str, v: u64, lo: u64, hi: u64, unit: &str) -> Result<(), String> {
    if (lo..=hi).contains(&v) { Ok(()) } else { Err(format!("{name} must be between {lo} and {hi} {unit}, got {v}")) }
}

/// How a pool runs prefill and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Unified,
    Disaggregated,
}

/// Which backend a worker loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendParam {
    Auto,
    Cpu,
    Cuda,
}

/// `[kinds.<pool>.params]` of an `llm.worker` kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerParams {
    /// The model name clients ask for (`"model"` in the API).
    pub model: String,
    /// The weights: a model name known to `troupe models pull` or a path to a GGUF file.
    pub file: String,
    #[serde(default = "d_mode")]
    pub mode: Mode,
    /// `disaggregated`: nodes whose worker of this pool prefills; the others decode.
    #[serde(default)]
    pub prefill_nodes: Vec<String>,
    #[serde(default = "d_backend")]
    pub backend: BackendParam,
    /// CPU compute threads per engine (0 = every core).
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// Sequences in one batch.
    #[serde(default = "d_max_num_seqs")]
    pub max_num_seqs: usize,
    /// Tokens computed per engine step (prefill chunks + decodes).
    #[serde(default = "d_max_batched_tokens")]
    pub max_batched_tokens: usize,
    /// KV cache size, blocks of 16 tokens.
    #[serde(default = "d_num_kv_blocks")]
    pub num_kv_blocks: usize,
    /// Longest prompt + completion, tokens (also capped by the model and the cache).
    #[serde(default = "d_max_model_len")]
    pub max_model_len: usize,
    #[serde(default = "d_true")]
    pub enable_prefix_caching: bool,
    /// Requests waiting in the worker's priority queue, requests.
    #[serde(default = "d_queue_cap")]
    pub queue_cap: usize,
    /// Milliseconds of waiting worth one priority level (anti-starvation).
    #[serde(default = "d_aging_ms")]
    pub aging_ms: u64,
    /// Requests of at most this many tokens (prompt + max_tokens) are "short".
    #[serde(default = "d_short_tokens_max")]
    pub short_tokens_max: u32,
    /// Requests handed to the engine at once (the rest wait in the priority queue).
    #[serde(default = "d_engine_inflight_max")]
    pub engine_inflight_max: usize,
    /// Milliseconds between load reports to routers and the scaler.
    #[serde(default = "d_report_ms")]
    pub report_ms: u64,
    /// Milliseconds between heartbeats on a stream that has produced no token yet.
    #[serde(default = "d_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Completion tokens when a request does not say.
    #[serde(default = "d_default_max_tokens")]
    pub default_max_tokens: u32,
    /// Largest `max_tokens` accepted.
    #[serde(default = "d_max_tokens_max")]
    pub max_tokens_max: u32,
    /// Temperature when a request does not say (0 = greedy).
    #[serde(default = "d_default_temperature")]
    pub default_temperature: f32,
    /// Disaggregated: KV blocks per transfer message.
    #[serde(default = "d_kv_chunk_blocks")]
    pub kv_chunk_blocks: usize,
    /// Disaggregated: milliseconds a decode worker waits for a prefill (then prefills itself).
    #[serde(default = "d_prefill_timeout_ms")]
    pub prefill_timeout_ms: u64,
    /// Whether the worker admits requests before the scaler says otherwise.
    #[serde(default = "d_true")]
    pub start_active: bool,
}

fn d_mode() -> Mode {
    Mode::Unified
}
fn d_backend() -> BackendParam {
    BackendParam::Auto
}
fn d_threads() -> usize {
    2
}
fn d_max_num_seqs() -> usize {
    32
}
fn d_max_batched_tokens() -> usize {
    256
}
fn d_num_kv_blocks() -> usize {
    512
}
fn d_max_model_len() -> usize {
    4096
}
fn d_true() -> bool {
    true
}
fn d_queue_cap() -> usize {
    1024
}
fn d_aging_ms() -> u64 {
    2_000
}
fn d_short_tokens_max() -> u32 {
    512
}
fn d_engine_inflight_max() -> usize {
    32
}
fn d_report_ms() -> u64 {
    200
}
fn d_heartbeat_ms() -> u64 {
    1_000
}
fn d_default_max_tokens() -> u32 {
    256
}
fn d_max_tokens_max() -> u32 {
    2_048
}
fn d_default_temperature() -> f32 {
    0.7
}
fn d_kv_chunk_blocks() -> usize {
    8
}
fn d_prefill_timeout_ms() -> u64 {
    10_000
}

impl WorkerParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() || self.model.len() > 128 || self.model.chars().any(|c| c.is_control()) {
            return Err("model must be 1..=128 printable characters".into());
        }
        if self.file.is_empty() {
            return Err("file must name a model (`smollm2-135m`) or a GGUF path".into());
        }
        if self.mode == Mode::Disaggregated && self.prefill_nodes.is_empty() {
            return Err("mode = \"disaggregated\" needs prefill_nodes (the nodes whose worker prefills)".into());
        }
        within("threads", self.threads as u64, 0, 256, "threads")?;
        within("max_num_seqs", self.max_num_seqs as u64, 1, 4096, "sequences")?;
        within("max_batched_tokens", self.max_batched_tokens as u64, 16, 65_536, "tokens")?;
        within("num_kv_blocks", self.num_kv_blocks as u64, 4, 1 << 20, "blocks")?;
        within("max_model_len", self.max_model_len as u64, 16, 1 << 20, "tokens")?;
        within("queue_cap", self.queue_cap as u64, 1, 1 << 20, "requests")?;
        within("aging_ms", self.aging_ms, 1, 3_600_000, "milliseconds")?;
        within("engine_inflight_max", self.engine_inflight_max as u64, 1, 65_536, "requests")?;
        within("report_ms", self.report_ms, 10, 60_000, "milliseconds")?;
        within("heartbeat_ms", self.heartbeat_ms, 10, 60_000, "milliseconds")?;
        within("max_tokens_max", u64::from(self.max_tokens_max), 1, 1 << 20, "tokens")?;
        within("default_max_tokens", u64::from(self.default_max_tokens), 1, u64::from(self.max_tokens_max), "tokens")?;
        within("kv_chunk_blocks", self.kv_chunk_blocks as u64, 1, 64, "blocks")?;
        within("prefill_timeout_ms", self.prefill_timeout_ms, 100, 600_000, "milliseconds")?;
        if !(0.0..=2.0).contains(&self.default_temperature) {
            return Err(format!("default_temperature must be in 0..=2, got {}", self.default_temperature));
        }
        Ok(())
    }

    /// The stage of this pool's worker on `node`.
    pub fn stage_on(&self, node: &str) -> Stage {
        match self.mode {
            Mode::Unified => Stage::Unified,
            Mode::Disaggregated if self.prefill_nodes.iter().any(|n| n == node) => Stage::Prefill,
            Mode::Disaggregated => Stage::Decode,
        }
    }

    /// Longest prompt + completion a worker accepts, before the model's own limit.
    pub fn len_cap(&self) -> usize {
        self.max_model_len.min(self.num_kv_blocks * troupe_llm::BLOCK_SIZE)
    }
}

/// One API key: who is calling, for which org, at which tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    pub user: String,
    pub org: String,
    pub tier: Tier,
}

/// `[kinds.gateway.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayParams {
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Largest request body, bytes.
    #[serde(default = "d_body_bytes_max")]
    pub body_bytes_max: usize,
    /// Messages in one chat request.
    #[serde(default = "d_messages_max")]
    pub messages_max: usize,
    /// Attempts on other workers when one fails before the first token.
    #[serde(default = "d_retries_max")]
    pub retries_max: u32,
    /// Milliseconds a request may wait for its first token (queue + prefill).
    #[serde(default = "d_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Milliseconds a request may take in all.
    #[serde(default = "d_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Rate limits through the rate-limiter system (rules by name; "" skips one).
    #[serde(default = "d_true")]
    pub rate_limit: bool,
    #[serde(default = "d_requests_rule")]
    pub requests_rule: String,
    #[serde(default = "d_tokens_rule")]
    pub tokens_rule: String,
    #[serde(default = "d_org_requests_rule")]
    pub org_requests_rule: String,
    #[serde(default = "d_org_tokens_rule")]
    pub org_tokens_rule: String,
    /// Breaker per pool: failures in `breaker_window_ms` that open it.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "d_breaker_window_ms")]
    pub breaker_window_ms: u64,
    /// Milliseconds it stays open at first (doubling after failed probes, up to `breaker_open_max_ms`).
    #[serde(default = "d_breaker_open_ms")]
    pub breaker_open_ms: u64,
    #[serde(default = "d_breaker_open_max_ms")]
    pub breaker_open_max_ms: u64,
    /// Successful probes that close it.
    #[serde(default = "d_breaker_close_after")]
    pub breaker_close_after: u32,
    /// Probes in flight while half-open.
    #[serde(default = "d_breaker_probes")]
    pub breaker_probes: u32,
}

fn d_body_bytes_max() -> usize {
    1 << 20
}
fn d_messages_max() -> usize {
    256
}
fn d_retries_max() -> u32 {
    2
}
fn d_first_token_timeout_ms() -> u64 {
    60_000
}
fn d_request_timeout_ms() -> u64 {
    600_000
}
fn d_requests_rule() -> String {
    "llm-requests".into()
}
fn d_tokens_rule() -> String {
    "llm-tokens".into()
}
fn d_org_requests_rule() -> String {
    "llm-org-requests".into()
}
fn d_org_tokens_rule() -> String {
    "llm-org-tokens".into()
}
fn d_breaker_failures() -> u32 {
    5
}
fn d_breaker_window_ms() -> u64 {
    10_000
}
fn d_breaker_open_ms() -> u64 {
    2_000
}
fn d_breaker_open_max_ms() -> u64 {
    30_000
}
fn d_breaker_close_after() -> u32 {
    2
}
fn d_breaker_probes() -> u32 {
    1
}

impl GatewayParams {
    pub fn validate(&self) -> Result<(), String> {
        within("body_bytes_max", self.body_bytes_max as u64, 1024, 64 << 20, "bytes")?;
        within("messages_max", self.messages_max as u64, 1, 65_536, "messages")?;
        within("retries_max", u64::from(self.retries_max), 0, 10, "retries")?;
        within("first_token_timeout_ms", self.first_token_timeout_ms, 100, 3_600_000, "milliseconds")?;
        within("request_timeout_ms", self.request_timeout_ms, 100, 86_400_000, "milliseconds")?;
        within("breaker_failures", u64::from(self.breaker_failures), 1, 1_000_000, "failures")?;
        within("breaker_window_ms", self.breaker_window_ms, 1, 3_600_000, "milliseconds")?;
        within("breaker_open_ms", self.breaker_open_ms, 1, 3_600_000, "milliseconds")?;
        within("breaker_open_max_ms", self.breaker_open_max_ms, self.breaker_open_ms, 3_600_000, "milliseconds")?;
        within("breaker_close_after", u64::from(self.breaker_close_after), 1, 1_000, "probes")?;
        within("breaker_probes", u64::from(self.breaker_probes), 1, 1_000, "probes")?;
        let mut seen = std::collections::HashSet::new();
        for k in &self.api_keys {
            if k.key.len() < 8 || k.key.len() > 256 || k.key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("api key for user `{}` must be 8..=256 characters without spaces", k.user));
            }
            if k.user.is_empty() || k.org.is_empty() || k.user.len() > 200 || k.org.len() > 200 {
                return Err("every api key needs a user and an org of 1..=200 bytes".into());
            }
            if !seen.insert(&k.key) {
                return Err(format!("api key for user `{}` is listed twice", k.user));
            }
        }
        Ok(())
    }

    pub fn breaker(&self) -> super::breaker::BreakerConfig {
        super::breaker::BreakerConfig {
            failure_threshold: self.breaker_failures,
            window_ms: self.breaker_window_ms,
            open_ms: self.breaker_open_ms,
            open_max_ms: self.breaker_open_max_ms,
            half_open_probes: self.breaker_probes,
            close_after: self.breaker_close_after,
        }
    }
}

/// `[kinds.router.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterParams {
    /// `affinity` (session, prefix, then least loaded), `least_loaded` or `round_robin`.
    #[serde(default = "d_policy")]
    pub policy: String,
    /// Weight of a queued request against a running one in the load score.
    #[serde(default = "d_queue_weight")]
    pub queue_weight: f64,
    /// Score units a sticky worker may be above the least loaded.
    #[serde(default = "d_affinity_slack")]
    pub affinity_slack: f64,
    /// Prompt blocks (16 tokens) hashed for prefix affinity.
    #[serde(default = "d_prefix_blocks_max")]
    pub prefix_blocks_max: usize,
    #[serde(default = "d_entries_max")]
    pub prefix_entries_max: usize,
    #[serde(default = "d_entries_max")]
    pub session_entries_max: usize,
    /// Milliseconds without a report after which a worker is not routed to.
    #[serde(default = "d_stale_ms")]
    pub stale_ms: u64,
    /// Milliseconds a worker that failed a request is avoided.
    #[serde(default = "d_penalty_ms")]
    pub penalty_ms: u64,
}

fn d_policy() -> String {
    "affinity".into()
}
fn d_queue_weight() -> f64 {
    2.0
}
fn d_affinity_slack() -> f64 {
    4.0
}
fn d_prefix_blocks_max() -> usize {
    8
}
fn d_entries_max() -> usize {
    65_536
}
fn d_stale_ms() -> u64 {
    3_000
}
fn d_penalty_ms() -> u64 {
    2_000
}

impl RouterParams {
    pub fn validate(&self) -> Result<(), String> {
        self.core()?;
        within("prefix_blocks_max", self.prefix_blocks_max as u64, 1, 256, "blocks")?;
        within("prefix_entries_max", self.prefix_entries_max as u64, 1, 1 << 24, "entries")?;
        within("session_entries_max", self.session_entries_max as u64, 1, 1 << 24, "entries")?;
        within("stale_ms", self.stale_ms, 10, 3_600_000, "milliseconds")?;
        within("penalty_ms", self.penalty_ms, 0, 3_600_000, "milliseconds")?;
        if !(0.0..=1000.0).contains(&self.queue_weight) || !(0.0..=1e6).contains(&self.affinity_slack) {
            return Err("queue_weight must be in 0..=1000 and affinity_slack in 0..=1e6".into());
        }
        Ok(())
    }

    pub fn core(&self) -> Result<super::route::RouterConfig, String> {
        use super::route::Policy;
        let policy = match self.policy.as_str() {
            "affinity" => Policy::Affinity,
            "least_loaded" => Policy::LeastLoaded,
            "round_robin" => Policy::RoundRobin,
            other => return Err(format!("policy must be affinity, least_loaded or round_robin, got `{other}`")),
        };
        Ok(super::route::RouterConfig {
            policy,
            queue_weight: self.queue_weight,
            affinity_slack: self.affinity_slack,
            prefix_blocks_max: self.prefix_blocks_max,
            prefix_entries_max: self.prefix_entries_max,
            session_entries_max: self.session_entries_max,
            stale_ms: self.stale_ms,
            penalty_ms: self.penalty_ms,
        })
    }
}

/// `[kinds.scaler.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerParams {
    /// Off: every worker admits (no warm pool).
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Workers of each pool (stage) always admitting.
    #[serde(default = "d_min_active")]
    pub min_active: u32,
    /// Requests (queued + running) one active worker should carry.
    #[serde(default = "d_target_per_worker")]
    pub target_per_worker: f64,
    #[serde(default = "d_tick_ms")]
    pub tick_ms: u64,
    #[serde(default = "d_up_cooldown_ms")]
    pub up_cooldown_ms: u64,
    #[serde(default = "d_down_cooldown_ms")]
    pub down_cooldown_ms: u64,
    #[serde(default = "d_down_stable_ms")]
    pub down_stable_ms: u64,
    /// Milliseconds without a report after which a worker counts as dead.
    #[serde(default = "d_stale_ms")]
    pub stale_ms: u64,
}

fn d_min_active() -> u32 {
    1
}
fn d_target_per_worker() -> f64 {
    8.0
}
fn d_tick_ms() -> u64 {
    500
}
fn d_up_cooldown_ms() -> u64 {
    1_000
}
fn d_down_cooldown_ms() -> u64 {
    10_000
}
fn d_down_stable_ms() -> u64 {
    30_000
}

impl ScalerParams {
    pub fn validate(&self) -> Result<(), String> {
        within("min_active", u64::from(self.min_active), 0, 100_000, "workers")?;
        within("tick_ms", self.tick_ms, 10, 600_000, "milliseconds")?;
        within("up_cooldown_ms", self.up_cooldown_ms, 0, 3_600_000, "milliseconds")?;
        within("down_cooldown_ms", self.down_cooldown_ms, 0, 3_600_000, "milliseconds")?;
        within("down_stable_ms", self.down_stable_ms, 0, 3_600_000, "milliseconds")?;
        within("stale_ms", self.stale_ms, 10, 3_600_000, "milliseconds")?;
        if !(0.1..=100_000.0).contains(&self.target_per_worker) {
            return Err(format!("target_per_worker must be in 0.1..=100000, got {}", self.target_per_worker));
        }
        Ok(())
    }

    pub fn core(&self) -> super::scale::ScaleConfig {
        super::scale::ScaleConfig {
            min_active: self.min_active,
            target_per_worker: self.target_per_worker,
            up_cooldown_ms: self.up_cooldown_ms,
            down_cooldown_ms: self.down_cooldown_ms,
            down_stable_ms: self.down_stable_ms,
        }
    }
}

/// One pool of workers (an `llm.worker` kind).
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// The kind's name in the topology (e.g. `worker`); also the pool's name.
    pub kind: String,
    pub params: WorkerParams,
    pub role: Option<String>,
}

impl PoolSpec {
    /// Every worker of the pool the cluster file declares, with its stage.
    pub fn workers(&self, loaded: &Loaded) -> Vec<(WorkerKey, Stage)> {
        loaded
            .cluster
            .nodes
            .iter()
            .filter(|n| self.role.as_ref().is_none_or(|r| n.placement_roles.contains(r)))
            .map(|n| (WorkerKey { kind: self.kind.clone(), node: n.name.clone() }, self.params.stage_on(&n.name)))
            .collect()
    }
}

/// The pools of the loaded `llm-serving` topology, in file order. Kinds whose params do
/// not parse are skipped (the config check has already reported them).
pub fn pools(loaded: &Loaded) -> Vec<PoolSpec> {
    let Some(t) = loaded.topology(SYSTEM) else { return Vec::new() };
    t.kinds
        .iter()
        .filter(|k| k.factory == WORKER_FACTORY)
        .filter_map(|k| {
            let params: WorkerParams = toml::Value::Table(k.params.clone()).try_into().ok()?;
            Some(PoolSpec { kind: k.name.clone(), params, role: k.role.clone() })
        })
        .collect()
}

/// Parameters of another kind of this system (e.g. the router's, read by the lab).
pub fn kind_params<T: serde::de::DeserializeOwned>(loaded: &Loaded, kind: &str) -> Option<T> {
    let k = loaded.kind(SYSTEM, kind)?;
    toml::Value::Table(k.params.clone()).try_into().ok()
}
