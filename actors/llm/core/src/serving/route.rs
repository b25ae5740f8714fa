//! The router's core (pure: no I/O, time passed in as milliseconds): which worker of a
//! pool gets a request.
//!
//! In order of preference (policy [`Policy::Affinity`], the default):
//! 1. **Session affinity:** a request carrying a conversation id goes where that
//!    conversation went before (its KV for earlier turns is likely still cached there).
//! 2. **Prefix affinity:** the prompt's first KV blocks are hashed as the engine's
//!    prefix cache hashes them (a chain: block i's hash covers blocks 0..=i); the
//!    longest chain hash this router has sent somewhere before picks that worker.
//! 3. **Least loaded**, weighted by queue depth: `score = running + queue_weight ×
//!    queued + dispatched since the worker's last report`. Ties are broken by rendezvous
//!    hashing of the prompt's first block, so routers on different gateways that see the
//!    same loads send a new prefix to the same worker.
//!
//! Affinity yields to load: a sticky worker whose score exceeds the least loaded one's
//! by more than `affinity_slack` is passed over (a popular system prompt must not pin
//! all traffic to one worker). Only eligible workers are chosen: alive node, reported
//! within `stale_ms`, not failed in the last `penalty_ms`, not excluded by the caller
//! (retries), and active (scaled in) — warm workers are used only when no active one is
//! eligible.
//!
//! Memory is bounded: `prefix_entries_max` and `session_entries_max`, LRU.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Which stage of a pool a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Prefill and decode in one engine.
    Unified,
    Prefill,
    Decode,
}

/// A worker: its kind (one kind per pool) and its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct WorkerKey {
    pub kind: String,
    pub node: String,
}

/// What a worker last said about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// Requests in the worker's admission queue.
    pub queued: u32,
    /// Requests in its engine (running + the engine's own waiting list).
    pub running: u32,
    /// KV cache in use, 0..=1.
    pub kv_usage: f32,
    /// Whether it admits new requests (scaled in) or only keeps warm.
    pub active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Session, then prefix affinity, then least loaded (the default).
    Affinity,
    /// Least loaded only.
    LeastLoaded,
    /// Round robin over eligible workers (a baseline for the lab).
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    pub policy: Policy,
    /// Weight of a queued request against a running one in the load score.
    pub queue_weight: f64,
    /// How much more loaded (score units) a sticky worker may be than the least loaded.
    pub affinity_slack: f64,
    /// Prompt blocks hashed for prefix affinity.
    pub prefix_blocks_max: usize,
    pub prefix_entries_max: usize,
    pub session_entries_max: usize,
    /// A worker not heard from for this long (ms) is not routed to.
    pub stale_ms: u64,
    /// A worker that failed a request is avoided for this long (ms).
    pub penalty_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            policy: Policy::Affinity,
            queue_weight: 2.0,
            affinity_slack: 4.0,
            prefix_blocks_max: 8,
            prefix_entries_max: 65_536,
            session_entries_max: 65_536,
            stale_ms: 3_000,
            penalty_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Worker {
    pool: String,
    stage: Stage,
    load: Load,
    /// Dispatched by this router since the last report.
    unreported: u32,
    last_report_ms: u64,
    avoid_until_ms: u64,
}

/// Why a worker was chosen (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Session,
    Prefix,
    LeastLoaded,
    RoundRobin,
}

impl Reason {
    pub fn name(&self) -> &'static str {
        match self {
            Reason::Session => "session",
            Reason::Prefix => "prefix",
            Reason::LeastLoaded => "least_loaded",
            Reason::RoundRobin => "round_robin",
        }
    }
}

/// One routing question.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    pub pool: &'a str,
    pub stage: Stage,
    /// Chain hashes of the prompt's first full blocks (may be empty).
    pub prefix: &'a [u128],
    /// Hash of the conversation id, if any.
    pub session: Option<u64>,
    /// Workers not to use (they already failed this request).
    pub exclude: &'a [WorkerKey],
}

/// A small LRU map (bounded; O(1) amortized; stale queue entries are skipped).
#[derive(Debug)]
struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    cap: usize,
    tick: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Lru { map: HashMap::new(), order: VecDeque::new(), cap: cap.max(1), tick: 0 }
    }
    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }
    fn put(&mut self, k: K, v: V) {
        self.tick += 1;
        self.map.insert(k.clone(), (v, self.tick));
        self.order.push_back((k, self.tick));
        while self.map.len() > self.cap {
            let Some((old, t)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|(_, cur)| *cur == t) {
                self.map.remove(&old);
            }
        }
        // Keep the queue from growing with overwritten entries.
        if self.order.len() > 4 * self.cap {
            let map = &self.map;
            self.order.retain(|(k, t)| map.get(k).is_some_and(|(_, cur)| cur == t));
        }
    }
    fn retain(&mut self, f: impl Fn(&V) -> bool) {
        self.map.retain(|_, (v, _)| f(v));
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    workers: BTreeMap<WorkerKey, Worker>,
    alive: Option<Vec<String>>,
    prefix: Lru<u128, WorkerKey>,
    sessions: Lru<u64, WorkerKey>,
    rr: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of the pair: a cheap, well-spread rendezvous weight.
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key_hash(k: &WorkerKey) -> u64 {
    // FNV-1a: stable across processes (std's hasher is randomly seeded).
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in k.kind.bytes().chain([0]).chain(k.node.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Router {
            prefix: Lru::new(cfg.prefix_entries_max),
            sessions: Lru::new(cfg.session_entries_max),
            cfg,
            workers: BTreeMap::new(),
            alive: None,
            rr: 0,
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Declares a worker (from the topology) so it can be routed to once it reports.
    pub fn add_worker(&mut self, key: WorkerKey, pool: &str, stage: Stage) {
        self.workers.entry(key).or_insert(Worker {
            pool: pool.to_string(),
            stage,
            load: Load::default(),
            unreported: 0,
            last_report_ms: 0,
            avoid_until_ms: 0,
        });
    }

    /// A load report from a worker.
    pub fn on_report(&mut self, key: &WorkerKey, load: Load, now_ms: u64) {
        if let Some(w) = self.workers.get_mut(key) {
            w.load = load;
            w.unreported = 0;
            w.last_report_ms = now_ms.max(1);
        }
    }

    /// The nodes currently alive (from membership); `None` = all.
    pub fn set_alive(&mut self, nodes: Option<Vec<String>>) {
        self.alive = nodes;
    }

    /// A request to `key` failed for a reason that is the worker's (not the client's).
    pub fn on_failure(&mut self, key: &WorkerKey, now_ms: u64) {
        if let Some(w) = self.workers.get_mut(key) {
            w.avoid_until_ms = now_ms + self.cfg.penalty_ms;
        }
        // Forget affinities to it: they would only send more requests into the failure.
        self.prefix.retain(|k| k != key);
        self.sessions.retain(|k| k != key);
    }

    fn score(&self, w: &Worker) -> f64 {
        f64::from(w.load.running) + self.cfg.queue_weight * f64::from(w.load.queued) + f64::from(w.unreported)
    }

    fn eligible(&self, key: &WorkerKey, w: &Worker, q: &RouteQuery<'_>, now_ms: u64) -> bool {
        w.pool == q.pool
            && w.stage == q.stage
            && w.last_report_ms > 0
            && now_ms.saturating_sub(w.last_report_ms) <= self.cfg.stale_ms
            && now_ms >= w.avoid_until_ms
            && !q.exclude.contains(key)
            && self.alive.as_ref().is_none_or(|a| a.contains(&key.node))
    }

    /// Eligible workers of the query with their scores: active ones if there are any,
    /// else warm ones.
    fn candidates(&self, q: &RouteQuery<'_>, now_ms: u64) -> Vec<(WorkerKey, f64)> {
        let all: Vec<(&WorkerKey, &Worker)> =
            self.workers.iter().filter(|(k, w)| self.eligible(k, w, q, now_ms)).collect();
        let any_active = all.iter().any(|(_, w)| w.load.active);
        all.into_iter().filter(|(_, w)| !any_active || w.load.active).map(|(k, w)| (k.clone(), self.score(w))).collect()
    }

    /// Picks a worker and records the choice (affinities, dispatched count). `None` when
    /// no worker of the pool is eligible.
    pub fn route(&mut self, q: &RouteQuery<'_>, now_ms: u64) -> Option<(WorkerKey, Reason)> {
        let cands = self.candidates(q, now_ms);
        let tie = q.prefix.first().map_or(0, |h| *h as u64 ^ (*h >> 64) as u64);
        let best = cands
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| mix(key_hash(&b.0), tie).cmp(&mix(key_hash(&a.0), tie))))?
            .clone();
        let sticky = |k: &WorkerKey| cands.iter().find(|(c, _)| c == k).map(|(_, s)| *s);
        let within = |s: Option<f64>| s.is_some_and(|s| s <= best.1 + self.cfg.affinity_slack);
        let (choice, reason) = match self.cfg.policy {
            Policy::RoundRobin => {
                let i = self.rr % cands.len();
                self.rr = self.rr.wrapping_add(1);
                (cands[i].0.clone(), Reason::RoundRobin)
            }
            Policy::LeastLoaded => (best.0, Reason::LeastLoaded),
            Policy::Affinity => {
                let by_session = q.session.and_then(|s| self.sessions.get(&s)).filter(|k| within(sticky(k))).cloned();
                let by_prefix = q
                    .prefix
                    .iter()
                    .take(self.cfg.prefix_blocks_max)
                    .rev()
                    .find_map(|h| self.prefix.get(h))
                    .filter(|k| within(sticky(k)))
                    .cloned();
                match (by_session, by_prefix) {
                    (Some(k), _) => (k, Reason::Session),
                    (None, Some(k)) => (k, Reason::Prefix),
                    (None, None) => (best.0, Reason::LeastLoaded),
                }
            }
        };
        if let Some(s) = q.session {
            self.sessions.put(s, choice.clone());
        }
        for h in q.prefix.iter().take(self.cfg.prefix_blocks_max) {
            self.prefix.put(*h, choice.clone());
        }
        if let Some(w) = self.workers.get_mut(&choice) {
            w.unreported += 1;
        }
        Some((choice, reason))
    }

    /// Sum of queued requests over a pool's workers (for metrics and scaling).
    pub fn pool_queue_depth(&self, pool: &str) -> u32 {
        self.workers.values().filter(|w| w.pool == pool).map(|w| w.load.queued).sum()
    }

    /// (prefix entries, session entries) held.
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.prefix.len(), self.sessions.len())
    }

    /// Workers of a pool known to this router: stage, last load, and whether it is
    /// routable now (reported within `stale_ms`, node alive, not penalized).
    pub fn workers_of(&self, pool: &str, now_ms: u64) -> Vec<(WorkerKey, Stage, Load, bool)> {
        self.workers
            .iter()
            .filter(|(_, w)| w.pool == pool)
            .map(|(k, w)| {
                let q = RouteQuery { pool, stage: w.stage, prefix: &[], session: None, exclude: &[] };
                (k.clone(), w.stage, w.load, self.eligible(k, w, &q, now_ms))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: &str) -> WorkerKey {
        WorkerKey { kind: "worker".into(), node: n.into() }
    }

    fn router(policy: Policy, nodes: &[&str]) -> Router {
        let mut r = Router::new(RouterConfig { policy, ..RouterConfig::default() });
        for n in nodes {
            r.add_worker(key(n), "m", Stage::Unified);
            r.on_report(&key(n), Load { active: true, ..Load::default() }, 1);
        }
        r
    }

    fn q<'a>(prefix: &'a [u128], session: Option<u64>, exclude: &'a [WorkerKey]) -> RouteQuery<'a> {
        RouteQuery { pool: "m", stage: Stage::Unified, prefix, session, exclude }
    }

    #[test]
    fn same_prefix_goes_to_the_same_worker_while_load_allows() {
        let mut r = router(Policy::Affinity, &["n1", "n2", "n3"]);
        let p = [11u128, 12, 13];
        let (first, why) = r.route(&q(&p, None, &[]), 10).expect("route");
        assert_eq!(why, Reason::LeastLoaded);
        for _ in 0..3 {
            let (k, why) = r.route(&q(&p[..2], None, &[]), 10).expect("route");
            assert_eq!((k, why), (first.clone(), Reason::Prefix));
        }
        // The sticky worker is now 4 dispatches ahead; one more exceeds the slack.
        r.route(&q(&p, None, &[]), 10).expect("route");
        let (k, why) = r.route(&q(&p, None, &[]), 10).expect("route");
        assert_ne!(k, first);
        assert_eq!(why, Reason::LeastLoaded);
    }

    #[test]
    fn sessions_stick_and_failures_and_dead_nodes_are_avoided() {
        let mut r = router(Policy::Affinity, &["n1", "n2"]);
        let (a, _) = r.route(&q(&[], Some(7), &[]), 10).expect("route");
        assert_eq!(r.route(&q(&[], Some(7), &[]), 10), Some((a.clone(), Reason::Session)));
        r.on_failure(&a, 20);
        let (b, _) = r.route(&q(&[], Some(7), &[]), 30).expect("route");
        assert_ne!(a, b, "the failed worker is avoided for penalty_ms");
        r.set_alive(Some(vec![a.node.clone()]));
        assert_eq!(r.route(&q(&[], None, &[]), 40), None, "n-b is dead and n-a penalized");
        assert_eq!(r.route(&q(&[], None, &[]), 20 + 2_000).map(|x| x.0), Some(a.clone()));
        assert_eq!(r.route(&q(&[], None, std::slice::from_ref(&a)), 20 + 2_000), None, "excluded");
    }

    #[test]
    fn stale_and_warm_workers() {
        let mut r = router(Policy::LeastLoaded, &["n1", "n2"]);
        r.on_report(&key("n1"), Load { active: false, ..Load::default() }, 100);
        r.on_report(&key("n2"), Load { active: true, running: 50, ..Load::default() }, 100);
        assert_eq!(r.route(&q(&[], None, &[]), 100).map(|x| x.0), Some(key("n2")), "active before warm");
        assert_eq!(r.route(&q(&[], None, &[]), 100 + 3_001).map(|x| x.0), None, "both stale");
        r.on_report(&key("n1"), Load { active: false, ..Load::default() }, 5_000);
        assert_eq!(r.route(&q(&[], None, &[]), 5_000).map(|x| x.0), Some(key("n1")), "warm when no active");
    }

    proptest! {
        /// Least loaded really picks a minimum score, and routing never returns an
        /// ineligible worker.
        #[test]
        fn least_loaded_is_a_minimum(loads in prop::collection::vec((0u32..20, 0u32..20, any::<bool>()), 1..8),
                                     exclude in prop::collection::vec(0usize..8, 0..3)) {
            let names: Vec<String> = (0..loads.len()).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            let mut r = router(Policy::LeastLoaded, &refs);
            for (i, (running, queued, active)) in loads.iter().enumerate() {
                r.on_report(&key(&names[i]), Load { running: *running, queued: *queued, active: *active, kv_usage: 0.0 }, 5);
            }
            let ex: Vec<WorkerKey> = exclude.iter().filter(|&&i| i < names.len()).map(|&i| key(&names[i])).collect();
            let got = r.route(&q(&[1], None, &ex), 5);
            let ok: Vec<usize> = (0..loads.len()).filter(|&i| !ex.contains(&key(&names[i]))).collect();
            let any_active = ok.iter().any(|&i| loads[i].2);
            let pool: Vec<usize> = ok.into_iter().filter(|&i| !any_active || loads[i].2).collect();
            match got {
                None => prop_assert!(pool.is_empty()),
                Some((k, _)) => {
                    let i = names.iter().position(|n| *n == k.node).expect("known");
                    prop_assert!(pool.contains(&i));
                    let s = |i: usize| f64::from(loads[i].0) + 2.0 * f64::from(loads[i].1);
                    let min = pool.iter().map(|&j| s(j)).fold(f64::INFINITY, f64::min);
                    prop_assert_eq!(s(i), min);
                }
            }
        }
    }
}
