//! `limiter_shard`: one shard of the cluster's limit state, a [`KeyedTable`] owned by one actor.
//!
//! Check-and-consume is atomic because only this actor touches the table and it handles one
//! message at a time; time is this owner's clock, read once per message, never the caller's.
//! Parameters come from this node's rule set (not from the caller), so a key never sees two
//! parameter sets from callers at different rule versions.
//!
//! Durability: every `snapshot_ms`, if anything changed, the busy keys are written as a
//! snapshot through the replicated store (rf from the topology), from a background task so a
//! check never waits for a disk. A new owner (after a crash or a move) restores the newest
//! snapshot. So after a failover a key may admit again what it admitted in the last
//! `snapshot_ms` before the crash, and no more (docs/rate-limiter.md states the bound).
//!
//! Invariants: one snapshot write in flight at a time, with strictly increasing sequence
//! numbers (recovery takes the copy with the highest); memory bounded by `keys_max` keys; a
//! message never blocks on I/O.

use super::clock::OwnerClock;
use super::config::ShardParams;
use super::metrics::LimiterMetrics;
use super::state::NodeLimiter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use troupe_limiter::proto::{LimiterShard, ShardItem, ShardMsg, ShardReply, ShardResult};
use troupe_limiter::{KeyedTable, LimitCheck, Rule, RuleSet, TableConfig, TableError, TableSnapshot};
use troupe_runtime::metrics::{Counter, Gauge};
use troupe_runtime::wire::codec;
use troupe_runtime::{
    ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, StoreError, WriteOp,
    fail,
};

/// The `limiter.shard` kind.
pub struct ShardActor {
    params: ShardParams,
}

impl FromParams for ShardActor {
    type Params = ShardParams;
    fn from_params(params: ShardParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(ShardActor { params })
    }
    fn check(p: &ShardParams) -> Result<(), String> {
        p.validate()
    }
}

/// A shard's state.
pub struct ShardState {
    table: KeyedTable<String>,
    clock: OwnerClock,
    st: Arc<NodeLimiter>,
    /// Version of the rules whose removed rules were last dropped from the table.
    rules_version: u64,
    dirty: bool,
    /// Sequence number of the next snapshot (above every copy's, from recovery).
    next_seq: u64,
    /// The term this shard owns its snapshot under (from its recovery).
    term: troupe_runtime::Term,
    /// A snapshot write found a newer owner: restart (and recover) at the next tick.
    deposed: Arc<AtomicBool>,
    writing: Arc<AtomicBool>,
    keys: Gauge,
    refunds_applied: Counter,
    /// Changes made to the table so far (this incarnation).
    changes: u64,
    /// Changes covered by the last snapshot that is durable.
    saved: Arc<AtomicU64>,
    /// 1 while the shard holds changes no durable snapshot has yet (a failover now
    /// would lose them), else 0.
    unsaved: Gauge,
    /// Checks dropped because their caller had given up before they were handled.
    abandoned: Counter,
}

impl ShardState {
    /// Notes a change of the table (`changed`): the next snapshot is due.
    fn mark(&mut self, changed: bool) {
        if changed {
            self.dirty = true;
            self.changes += 1;
            self.unsaved.set(1.0);
        }
    }
}

/// The rule named by a shard key (`rule|dimension|value`).
fn rule_of<'r>(rules: &'r RuleSet, key: &str) -> Result<&'r Rule, String> {
    let name = key.split('|').next().unwrap_or("");
    rules.get(name).ok_or_else(|| name.to_string())
}

impl ShardActor {
    fn check(&self, s: &mut ShardState, version: u64, items: &[ShardItem]) -> Result<ShardReply, RemoteError> {
        let now = s.clock.now_ns();
        let rules = s.st.rules();
        if version > rules.version() {
            s.st.pull_soon();
        }
        let mut checks = Vec::with_capacity(items.len());
        for it in items {
            match rule_of(&rules, &it.key) {
                Ok(rule) => checks.push(LimitCheck {
                    key: &it.key,
                    params: *rule.params(),
                    cost: it.cost,
                    shadow: rule.shadow(),
                }),
                Err(rule) => return Ok(ShardReply::UnknownRule { rule, version: rules.version() }),
            }
        }
        match s.table.check_many(&checks, now) {
            Ok(outcome) => {
                s.mark(outcome.admitted);
                let results = outcome
                    .results
                    .iter()
                    .map(|r| ShardResult { decision: r.decision, would_block: r.would_block, shadow: r.shadow })
                    .collect();
                Ok(ShardReply::Checked { admitted: outcome.admitted, at_ns: now, results })
            }
            Err(TableError::Full { keys_max }) => Ok(ShardReply::Full { keys_max }),
            Err(e) => Err(RemoteError::Invalid(e.to_string())),
        }
    }

    /// Starts writing a snapshot if anything changed and none is being written.
    fn snapshot(&self, ctx: &Ctx<LimiterShard>, s: &mut ShardState) {
        if !s.dirty || s.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let snap = s.table.snapshot(s.clock.now_ns());
        let bytes = match codec::encode(&snap) {
            Ok(b) if b.len() <= self.params.snapshot_bytes_max => b,
            Ok(b) => {
                tracing::warn!(path = %ctx.path(), bytes = b.len(), max = self.params.snapshot_bytes_max,
                    "snapshot above snapshot_bytes_max skipped; its keys would restart from full after a failover");
                s.writing.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::error!(path = %ctx.path(), error = %e, "cannot encode snapshot");
                s.writing.store(false, Ordering::Release);
                return;
            }
        };
        s.dirty = false;
        let (covered, saved) = (s.changes, s.saved.clone());
        let seq = s.next_seq;
        s.next_seq += 1;
        let (node, path, rf, writing, term, deposed) = (
            ctx.node().clone(),
            ctx.path().clone(),
            ctx.spec().replication_factor,
            s.writing.clone(),
            s.term.clone(),
            s.deposed.clone(),
        );
        tokio::spawn(async move {
            let op = WriteOp::Snapshot { path: path.to_string(), seq, bytes };
            match node.persist(&path, rf, &term, op).await {
                Ok(()) => {
                    saved.fetch_max(covered, Ordering::AcqRel);
                }
                // Another node owns the shard now: restart at the next tick, recovering
                // under a new election, instead of counting here unseen.
                Err(e @ StoreError::Deposed(_)) => {
                    tracing::warn!(%path, error = %e, "shard deposed; it restarts and recovers");
                    deposed.store(true, Ordering::Release);
                }
                // Not fatal: the next tick writes a newer one. Until then a failover loses more.
                Err(e) => tracing::debug!(%path, error = %e, "shard snapshot not written"),
            }
            writing.store(false, Ordering::Release);
        });
    }
}

impl Behavior for ShardActor {
    type Proto = LimiterShard;
    type State = ShardState;

    async fn init(&self, ctx: &Ctx<LimiterShard>) -> Result<ShardState, ActorError> {
        let st = NodeLimiter::of(ctx.node()).map_err(fail)?;
        let table = KeyedTable::new(TableConfig { keys_max: self.params.keys_max }).map_err(|e| fail(e.to_string()))?;
        let clock = OwnerClock::new();
        let recovered = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut s = ShardState {
            table,
            clock,
            rules_version: st.rules().version(),
            st,
            dirty: false,
            next_seq: recovered.last_seq() + 1,
            term: recovered.terms.accepted.clone(),
            deposed: Arc::new(AtomicBool::new(false)),
            writing: Arc::new(AtomicBool::new(false)),
            keys: LimiterMetrics::keys_gauge(ctx.node().metrics(), ctx.key()),
            refunds_applied: LimiterMetrics::refunds_applied(ctx.node().metrics()),
            changes: 0,
            saved: Arc::new(AtomicU64::new(0)),
            unsaved: LimiterMetrics::unsaved_gauge(ctx.node().metrics(), ctx.key()),
            abandoned: LimiterMetrics::abandoned_checks(ctx.node().metrics()),
        };
        if let Some((_, bytes)) = &recovered.snapshot {
            match codec::decode::<TableSnapshot<String>>(bytes) {
                Ok(snap) => {
                    let age_ms = s.clock.now_ns().saturating_sub(snap.taken_at_ns) / 1_000_000;
                    let n = s.table.restore(snap, s.clock.now_ns());
                    tracing::info!(path = %ctx.path(), keys = n, age_ms, "limiter shard restored its snapshot");
                }
                // A snapshot we cannot read only loses limit state (keys restart from full);
                // refusing to start would turn that into an outage of the shard.
                Err(e) => tracing::error!(path = %ctx.path(), error = %e, "unreadable shard snapshot ignored"),
            }
        }
        s.keys.set(s.table.len() as f64);
        ctx.tick_every(Duration::from_millis(self.params.snapshot_ms));
        Ok(s)
    }

    async fn handle(
        &self,
        ctx: &Ctx<LimiterShard>,
        s: &mut ShardState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let _ = ctx; // messages need no context: everything they touch is in the state
        match msg {
            // The caller gave up waiting (its owner timeout passed while this check was
            // queued or parked behind the shard's activation) and answered with the rule's
            // fail mode: consuming now would count a request it did not let through.
            ShardMsg::Check { .. } if reply.is_abandoned() => s.abandoned.inc(),
            ShardMsg::Check { version, items } => match self.check(s, version, &items) {
                Ok(r) => reply.send(r).await,
                Err(e) => reply.fail(e),
            },
            ShardMsg::Refund { items } => {
                let now = s.clock.now_ns();
                let rules = s.st.rules();
                for it in &items {
                    if let Ok(rule) = rule_of(&rules, &it.key) {
                        let refunded = s.table.refund(&it.key, rule.params(), it.at_ns, it.cost, now);
                        s.mark(refunded);
                    }
                }
                s.refunds_applied.inc();
                reply.send(ShardReply::Done).await;
            }
            ShardMsg::Charge { items } => {
                let now = s.clock.now_ns();
                let rules = s.st.rules();
                for it in &items {
                    if let Ok(rule) = rule_of(&rules, &it.key) {
                        match s.table.charge(&it.key, rule.params(), it.cost, now) {
                            Ok((charged, _)) => s.mark(charged > 0),
                            Err(e) => tracing::debug!(key = %it.key, error = %e, "charge dropped"),
                        }
                    }
                }
                reply.send(ShardReply::Done).await;
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<LimiterShard>, s: &mut ShardState) -> Result<(), ActorError> {
        if s.deposed.load(Ordering::Acquire) {
            // Failing restarts it: its init recovers under a new term, or fails while
            // another node owns the shard (and the supervisor's backoff paces it).
            return Err(fail(format!("{} was deposed by a newer owner; restarting to recover", ctx.path())));
        }
        let now = s.clock.now_ns();
        let rules = s.st.rules();
        if rules.version() != s.rules_version {
            // Keys of removed rules would otherwise wait for idle eviction.
            s.table.retain(|k| rule_of(&rules, k).is_ok());
            s.rules_version = rules.version();
        }
        s.table.evict_idle(now, self.params.evict_scan_max);
        s.keys.set(s.table.len() as f64);
        let durable = s.saved.load(Ordering::Acquire) >= s.changes;
        s.unsaved.set(if durable { 0.0 } else { 1.0 });
        self.snapshot(ctx, s);
        Ok(())
    }

    async fn stopping(&self, ctx: &Ctx<LimiterShard>, s: &mut ShardState) {
        // A planned stop (handoff, passivation): try once more, so a graceful move loses less.
        // After a membership change the replicas may refuse it (we no longer own the path);
        // then the last periodic snapshot is what the next owner gets. Skipped while a write is
        // in flight: the store keeps the last snapshot written, so two must never race.
        self.snapshot(ctx, s);
        s.keys.set(0.0);
        // This node holds none of the shard's changes any more.
        s.unsaved.set(0.0);
    }
}
