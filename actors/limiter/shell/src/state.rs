//! The limiter's per-node shared state: the rule set this node enforces, a handle and a
//! breaker per shard, the leases of global rules, metrics, and the node's clock.
//!
//! Every caller on the node (the agent's SDK service, the HTTP service, other systems' actors
//! through [`super::Limiter`]) and every shard hosted here share one instance, so rules are
//! applied once per node and leases are per node, as the quota owner accounts them. It is the
//! node's extension of this type (`Node::extension`): one per node even with several nodes in a
//! process, created on first use from the loaded topology, kept until the node shuts down.
//!
//! Invariants: the rule set only moves to newer versions ([`ActiveRules`]); a shard's breaker
//! only ever delays asking its owner by `breaker_ms`, never longer.

use super::batch::Batchers;
use super::clock::OwnerClock;
use super::config::SystemConfig;
use super::lease::Leases;
use super::metrics::LimiterMetrics;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use troupe_limiter::proto::{
    self, LimiterRules, LimiterShard, RulesMsg, RulesReply, ShardCheck, ShardItem, ShardMsg, ShardReply,
};
use troupe_limiter::{ActiveRules, RuleDiff, RuleSet, RuleUpdateError};
use troupe_runtime::{ActorHandle, ActorPath, KindSpec, Node, RemoteError};

/// How long a rules pull may take before the next tick tries again.
const PULL_TIMEOUT: Duration = Duration::from_secs(2);

/// One shard as seen from this node.
pub struct ShardLink {
    pub handle: ActorHandle<LimiterShard>,
    /// Owner-clock ns until which the owner is presumed unreachable.
    down_until_ns: AtomicU64,
    /// (membership view version, owner node) as last computed: placement is recomputed only
    /// when the view changes.
    owner: Mutex<(u64, String)>,
}

/// See the module docs.
pub struct NodeLimiter {
    pub node: Node,
    pub cfg: SystemConfig,
    active: Mutex<ActiveRules>,
    rules: RwLock<Arc<RuleSet>>,
    pub shards: Vec<ShardLink>,
    pub leases: Leases,
    batchers: Batchers,
    pub metrics: LimiterMetrics,
    pub clock: OwnerClock,
    pulling: AtomicBool,
}

impl NodeLimiter {
    /// This node's instance, created on first use. `Err` when the system is not enabled.
    pub fn of(node: &Node) -> Result<Arc<NodeLimiter>, String> {
        node.extension(|| NodeLimiter::new(node))
    }

    fn new(node: &Node) -> Result<NodeLimiter, String> {
        let cfg = SystemConfig::of(node)?;
        let shards = (0..cfg.shard.shards)
            .map(|i| {
                proto::shard_path(i)
                    .map(|p| ShardLink {
                        handle: node.handle::<LimiterShard>(p),
                        down_until_ns: AtomicU64::new(0),
                        owner: Mutex::new((u64::MAX, String::new())),
                    })
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let metrics = LimiterMetrics::new(node);
        metrics.rules_version.set(cfg.initial_rules.version() as f64);
        Ok(NodeLimiter {
            node: node.clone(),
            active: Mutex::new(ActiveRules::new(cfg.initial_rules.clone())),
            rules: RwLock::new(Arc::new(cfg.initial_rules.clone())),
            shards,
            leases: Leases::default(),
            batchers: Batchers::new(node),
            metrics,
            clock: OwnerClock::new(),
            pulling: AtomicBool::new(false),
            cfg,
        })
    }

    /// The rule set in force (cheap: one `Arc` clone).
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().clone()
    }

    /// Applies `next` if it is newer than the set in force.
    pub fn apply(&self, next: RuleSet) -> Result<RuleDiff, RuleUpdateError> {
        let mut active = self.active.lock();
        let diff = active.apply(next)?;
        if diff.from_version != diff.to_version {
            *self.rules.write() = Arc::new(active.current().clone());
            self.metrics.rules_version.set(diff.to_version as f64);
            tracing::info!(
                node = %self.node.name(),
                from = diff.from_version,
                to = diff.to_version,
                added = ?diff.added,
                changed = ?diff.changed,
                removed = ?diff.removed,
                "rate-limiter rules applied"
            );
        }
        Ok(diff)
    }

    /// Asks the rules singleton for a newer set and applies it.
    pub async fn pull(&self) -> Result<(), RemoteError> {
        let path = ActorPath::new(proto::SYSTEM, proto::KIND_RULES, KindSpec::singleton_key())
            .map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let have = self.rules().version();
        let reply =
            self.node.handle::<LimiterRules>(path).ask_timeout(RulesMsg::GetIfNewer { have }, PULL_TIMEOUT).await?;
        if let RulesReply::Current(set) = reply
            && let Err(e) = self.apply(set)
        {
            tracing::debug!(error = %e, "pulled rules not applied");
        }
        Ok(())
    }

    /// Starts a pull in the background unless one is running (a shard saw a newer version).
    pub fn pull_soon(self: &Arc<Self>) {
        if self.pulling.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.pull().await {
                tracing::debug!(error = %e, "rules pull failed; the next tick retries");
            }
            me.pulling.store(false, Ordering::Release);
        });
    }

    /// Whether shard `i`'s owner is presumed unreachable right now.
    pub fn shard_down(&self, i: u32, now_ns: u64) -> bool {
        self.shards.get(i as usize).is_some_and(|s| s.down_until_ns.load(Ordering::Relaxed) > now_ns)
    }

    /// Marks shard `i`'s owner unreachable for `breaker_ms`.
    pub fn trip(&self, i: u32, now_ns: u64) {
        if let Some(s) = self.shards.get(i as usize) {
            let until = now_ns.saturating_add(self.cfg.agent.breaker_ms.saturating_mul(1_000_000));
            s.down_until_ns.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// The node owning shard `i` in this node's current view (`None` when it cannot be told:
    /// not clustered, or no live candidate).
    fn owner(&self, i: u32) -> Option<String> {
        let link = self.shards.get(i as usize)?;
        let version = self.node.cluster()?.view_version();
        let mut cached = link.owner.lock();
        if cached.0 != version {
            let spec = self.node.kind_spec(proto::SYSTEM, proto::KIND_SHARD)?;
            *cached = (version, self.node.owner_of(spec, link.handle.path()).ok()?);
        }
        Some(cached.1.clone())
    }

    /// Checks `items` on shard `i`: directly when the shard is here, else coalesced with other
    /// checks for the same owner node (see `batch.rs`). At most `owner_timeout_ms`.
    pub async fn ask_shard(&self, i: u32, version: u64, items: Vec<ShardItem>) -> Result<ShardReply, RemoteError> {
        let link = self.shards.get(i as usize).ok_or_else(|| RemoteError::Invalid(format!("no shard {i}")))?;
        match self.owner(i) {
            Some(owner) if owner != self.node.name() => {
                let check = ShardCheck { shard: i, version, items };
                self.batchers.submit(&self.node, &owner, check, self.owner_timeout()).await
            }
            _ => link.handle.ask_timeout(ShardMsg::Check { version, items }, self.owner_timeout()).await,
        }
    }

    /// How long a check waits for an owner.
    pub fn owner_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.agent.owner_timeout_ms)
    }
}
