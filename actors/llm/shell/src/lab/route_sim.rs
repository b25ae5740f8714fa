//! A simulated cluster for comparing the router's policies ([`crate::route::Router`],
//! the real core, unchanged) on a workload of shared system prompts and multi-turn
//! conversations.
//!
//! Model (stated so the numbers can be judged):
//! - each worker has a prefix cache: an LRU of block hashes (the engine's own chain hash,
//!   [`troupe_llm::kv::block_manager::hash_chain`]) holding `cache_blocks` blocks; a
//!   request reuses its prompt's longest cached block prefix and caches every full block
//!   of its prompt (at routing time);
//! - prefill is compute-bound: one prefill at a time per worker (FIFO), costing
//!   `prefill_ms_per_token` per token not found in the cache; decode runs in parallel
//!   with other sequences at `tpot_ms` per output token (continuous batching);
//! - the router gets every worker's exact load (running, queued) before each decision.
//!
//! Turn `k` of a conversation arrives at its start + `k × think_s` (open loop, so every
//! policy sees the same arrivals). Deterministic for a seed.

use std::collections::{BTreeMap, HashMap};

use troupe_llm::BLOCK_SIZE;
use troupe_llm::kv::block_manager::{BlockHash, hash_chain};
use troupe_llm::sampler::Rng;

use super::{exp_gap, mean, quantile};
use crate::route::{Load, Policy, RouteQuery, Router, RouterConfig, Stage, WorkerKey};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimConfig {
    pub workers: usize,
    /// Prefix cache per worker, in 16-token blocks.
    pub cache_blocks: usize,
    pub system_prompts: usize,
    /// Tokens of each system prompt.
    pub system_len: usize,
    pub conversations: usize,
    pub turns: usize,
    /// User message tokens per turn (uniform, inclusive).
    pub user_len: (usize, usize),
    /// Output tokens per turn (uniform, inclusive); the answer joins the next turn's prompt.
    pub output_len: (usize, usize),
    /// New conversations per second (Poisson).
    pub conversation_rate: f64,
    pub think_s: f64,
    pub prefill_ms_per_token: f64,
    pub tpot_ms: f64,
    pub seed: u64,
}

impl SimConfig {
    /// Mean prefill + decode time of one request with no cache hit, s.
    pub fn mean_service_s(&self) -> f64 {
        let avg = |(a, b): (usize, usize)| (a + b) as f64 / 2.0;
        let turns = self.turns.max(1) as f64;
        // The k-th turn's prompt holds k earlier user turns and answers.
        let history = (turns - 1.0) / 2.0 * (avg(self.user_len) + avg(self.output_len));
        let prompt = self.system_len as f64 + avg(self.user_len) + history;
        (prompt * self.prefill_ms_per_token + avg(self.output_len) * self.tpot_ms) / 1e3
    }

    /// Prefill work offered per second as a fraction of the cluster's prefill capacity,
    /// with no cache hits.
    pub fn prefill_utilization_uncached(&self) -> f64 {
        let avg = |(a, b): (usize, usize)| (a + b) as f64 / 2.0;
        let turns = self.turns.max(1) as f64;
        let history = (turns - 1.0) / 2.0 * (avg(self.user_len) + avg(self.output_len));
        let prompt = self.system_len as f64 + avg(self.user_len) + history;
        self.conversation_rate * turns * prompt * self.prefill_ms_per_token / 1e3 / self.workers.max(1) as f64
    }
}

#[derive(Debug, Clone)]
struct SimReq {
    arrival_s: f64,
    session: u64,
    prompt: Vec<u32>,
    output: usize,
}

/// The workload, as one list sorted by arrival.
fn workload(c: &SimConfig) -> Vec<SimReq> {
    let mut rng = Rng::new(c.seed);
    let uni =
        |rng: &mut Rng, (lo, hi): (usize, usize)| lo + (rng.next_u64() % (hi.saturating_sub(lo) as u64 + 1)) as usize;
    let tok = |rng: &mut Rng| 100 + (rng.next_u64() % 40_000) as u32;
    let systems: Vec<Vec<u32>> =
        (0..c.system_prompts.max(1)).map(|_| (0..c.system_len).map(|_| tok(&mut rng)).collect()).collect();
    let mut out = Vec::new();
    let mut start = 0.0;
    for conv in 0..c.conversations as u64 {
        start += exp_gap(&mut rng, c.conversation_rate);
        let mut prompt = systems[(rng.next_u64() % systems.len() as u64) as usize].clone();
        for k in 0..c.turns {
            let n = uni(&mut rng, c.user_len);
            prompt.extend((0..n).map(|_| tok(&mut rng)));
            let output = uni(&mut rng, c.output_len);
            out.push(SimReq { arrival_s: start + k as f64 * c.think_s, session: conv, prompt: prompt.clone(), output });
            prompt.extend((0..output).map(|_| tok(&mut rng)));
        }
    }
    out.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    out
}

/// An LRU set of block hashes with a capacity in blocks.
#[derive(Debug, Default)]
struct BlockLru {
    cap: usize,
    tick: u64,
    at: HashMap<BlockHash, u64>,
    order: BTreeMap<u64, BlockHash>,
}

impl BlockLru {
    fn new(cap: usize) -> Self {
        BlockLru { cap, ..Default::default() }
    }
    /// Leading blocks of `chain` present.
    fn hits(&self, chain: &[BlockHash]) -> usize {
        chain.iter().take_while(|h| self.at.contains_key(h)).count()
    }
    fn touch(&mut self, h: BlockHash) {
        self.tick += 1;
        if let Some(old) = self.at.insert(h, self.tick) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, h);
        while self.at.len() > self.cap {
            let Some((_, victim)) = self.order.pop_first() else { break };
            self.at.remove(&victim);
        }
    }
}

struct SimWorker {
    key: WorkerKey,
    cache: BlockLru,
    prefill_free_s: f64,
    /// (prefill start, end) of requests not yet finished.
    inflight: Vec<(f64, f64)>,
    requests: usize,
    busy_s: f64,
}

/// One policy's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub requests: usize,
    /// Prompt tokens served from a prefix cache / all prompt tokens.
    pub token_hit_rate: f64,
    pub prefill_tokens: u64,
    pub ttft_mean_ms: f64,
    pub ttft_p99_ms: f64,
    pub latency_mean_ms: f64,
    pub latency_p99_ms: f64,
    /// Busiest worker's busy time (prefill + decode) over the mean.
    pub load_imbalance: f64,
    pub requests_per_worker: Vec<usize>,
}

pub fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Affinity => "affinity",
        Policy::LeastLoaded => "least_loaded",
        Policy::RoundRobin => "round_robin",
    }
}

/// Runs the workload of `c` through a cluster routed by `policy`.
pub fn simulate(c: &SimConfig, policy: Policy) -> PolicyResult {
    let reqs = workload(c);
    let mut router = Router::new(RouterConfig { policy, ..RouterConfig::default() });
    let prefix_max = router.config().prefix_blocks_max;
    let mut ws: Vec<SimWorker> = (0..c.workers.max(1))
        .map(|i| SimWorker {
            key: WorkerKey { kind: "llm.worker".into(), node: format!("w{i}") },
            cache: BlockLru::new(c.cache_blocks),
            prefill_free_s: 0.0,
            inflight: Vec::new(),
            requests: 0,
            busy_s: 0.0,
        })
        .collect();
    for w in &ws {
        router.add_worker(w.key.clone(), "m", Stage::Unified);
    }
    let (mut prompt_tokens, mut cached_tokens, mut prefill_tokens) = (0u64, 0u64, 0u64);
    let (mut ttft, mut lat) = (Vec::new(), Vec::new());
    for r in &reqs {
        let now = r.arrival_s;
        let now_ms = (now * 1e3) as u64 + 1;
        for w in &mut ws {
            w.inflight.retain(|&(_, end)| end > now);
            let running = w.inflight.iter().filter(|&&(s, _)| s <= now).count() as u32;
            let queued = w.inflight.len() as u32 - running;
            router.on_report(&w.key, Load { queued, running, kv_usage: 0.0, active: true }, now_ms);
        }
        let chain = hash_chain(&r.prompt, usize::MAX);
        let q = RouteQuery {
            pool: "m",
            stage: Stage::Unified,
            prefix: &chain[..chain.len().min(prefix_max)],
            session: Some(r.session),
            exclude: &[],
        };
        let Some((key, _)) = router.route(&q, now_ms) else { continue };
        let Some(w) = ws.iter_mut().find(|w| w.key == key) else { continue };
        let hit_tokens = (w.cache.hits(&chain) * BLOCK_SIZE).min(r.prompt.len().saturating_sub(1));
        for h in &chain {
            w.cache.touch(*h);
        }
        let compute = (r.prompt.len() - hit_tokens) as u64;
        let start = w.prefill_free_s.max(now);
        let prefill_s = compute as f64 * c.prefill_ms_per_token / 1e3;
        let first = start + prefill_s;
        w.prefill_free_s = first;
        let end = first + r.output.saturating_sub(1) as f64 * c.tpot_ms / 1e3;
        w.inflight.push((start, end));
        w.requests += 1;
        w.busy_s += end - start;
        prompt_tokens += r.prompt.len() as u64;
        cached_tokens += hit_tokens as u64;
        prefill_tokens += compute;
        ttft.push((first - now) * 1e3);
        lat.push((end - now) * 1e3);
    }
    let busy: Vec<f64> = ws.iter().map(|w| w.busy_s).collect();
    let busy_mean = mean(&busy);
    PolicyResult {
        policy: policy_name(policy).into(),
        requests: ttft.len(),
        token_hit_rate: if prompt_tokens > 0 { cached_tokens as f64 / prompt_tokens as f64 } else { 0.0 },
        prefill_tokens,
        ttft_mean_ms: mean(&ttft),
        ttft_p99_ms: quantile(&ttft, 0.99),
        latency_mean_ms: mean(&lat),
        latency_p99_ms: quantile(&lat, 0.99),
        load_imbalance: if busy_mean > 0.0 { busy.iter().copied().fold(0.0, f64::max) / busy_mean } else { 1.0 },
        requests_per_worker: ws.iter().map(|w| w.requests).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> SimConfig {
        SimConfig {
            workers: 4,
            cache_blocks: 96,
            system_prompts: 6,
            system_len: 256,
            conversations: 60,
            turns: 3,
            user_len: (16, 48),
            output_len: (16, 48),
            conversation_rate: 2.0,
            think_s: 5.0,
            prefill_ms_per_token: 1.0,
            tpot_ms: 20.0,
            seed,
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        for p in [Policy::Affinity, Policy::LeastLoaded, Policy::RoundRobin] {
            assert_eq!(simulate(&cfg(5), p), simulate(&cfg(5), p));
        }
        assert_ne!(simulate(&cfg(5), Policy::Affinity), simulate(&cfg(6), Policy::Affinity));
    }

    #[test]
    fn affinity_hits_at_least_as_often_as_round_robin_on_shared_prefixes() {
        for seed in 0..5 {
            let a = simulate(&cfg(seed), Policy::Affinity);
            let rr = simulate(&cfg(seed), Policy::RoundRobin);
            assert_eq!(a.requests, 180);
            assert!(
                a.token_hit_rate >= rr.token_hit_rate,
                "seed {seed}: affinity {} < round robin {}",
                a.token_hit_rate,
                rr.token_hit_rate
            );
            assert!(a.prefill_tokens <= rr.prefill_tokens);
        }
    }

    #[test]
    fn lru_keeps_capacity_and_counts_leading_hits() {
        let mut l = BlockLru::new(3);
        for h in [1u128, 2, 3, 4] {
            l.touch(h);
        }
        assert_eq!(l.at.len(), 3);
        assert_eq!(l.hits(&[1, 2]), 0, "1 was evicted");
        assert_eq!(l.hits(&[2, 3, 4, 5]), 3);
        l.touch(2);
        l.touch(6);
        assert_eq!(l.hits(&[2]), 1, "2 was touched, 3 went instead");
        assert_eq!(l.hits(&[3]), 0);
    }
}
