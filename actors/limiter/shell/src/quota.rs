//! `quota`: the cluster singleton owning every global rule's quota, one [`QuotaOwner`] each.
//!
//! Nodes lease slices of a window's quota (see `lease.rs` and the core's `lease` module) and
//! admit locally; this actor grants them. Its state is made durable (rf nodes) **before** a
//! grant is answered, so a new owner after a failover resumes with every grant made and cannot
//! hand the same window's quota out twice. Membership events tell it when a node is down; that
//! node's slice is written off for the rest of the window (it may have been spent).
//!
//! Invariants: grants per rule and window sum to at most the rule's limit, across failovers;
//! when a global rule's parameters change, its new owner grants nothing until the window in
//! force under the old parameters has ended (what was granted under them is not known to the
//! new owner's arithmetic, so this is the safe side).

use super::clock::OwnerClock;
use super::config::QuotaParams;
use super::state::NodeLimiter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use troupe_limiter::proto::{LimiterQuota, QuotaMsg, QuotaReply};
use troupe_limiter::{Dimension, LeaseError, LeaseGrant, LeaseRequest, NodeId, QuotaConfig, QuotaOwner, Rule};
use troupe_runtime::wire::codec;
use troupe_runtime::wire::introspect::MemberState;
use troupe_runtime::{
    ActorError, Behavior, Ctx, FromParams, KindSpec, MemberChange, MsgOf, Node, RemoteError, Reply, ReplyOf, fail,
};

/// The `limiter.quota` kind.
pub struct QuotaActor {
    params: QuotaParams,
}

impl FromParams for QuotaActor {
    type Params = QuotaParams;
    fn from_params(params: QuotaParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(QuotaActor { params })
    }
    fn check(p: &QuotaParams) -> Result<(), String> {
        p.validate()
    }
}

/// One global rule's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OwnerEntry {
    /// Parameters the owner was built for.
    fingerprint: u64,
    owner: QuotaOwner,
    /// Owner-clock time before which nothing is granted (after a parameter change).
    fenced_until_ns: u64,
}

/// What is made durable before every grant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Durable {
    owners: BTreeMap<String, OwnerEntry>,
    /// Lease id → (node name, boot epoch), to write a node's leases off when it goes down.
    incarnations: BTreeMap<NodeId, (String, u64)>,
}

/// The singleton's state.
pub struct QuotaState {
    d: Durable,
    clock: OwnerClock,
    st: Arc<NodeLimiter>,
    since_snapshot: u64,
    _watch: Option<AbortOnDrop>,
}

/// Aborts the membership watcher when the actor's state is dropped (stop or failure).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl QuotaActor {
    fn config(&self, rule: &Rule) -> QuotaConfig {
        let limit = rule.params().limit();
        let (slice_min, slice_max) = self.params.slices(limit);
        QuotaConfig {
            limit,
            window_ns: rule.params().window_ns(),
            slice_min,
            slice_max,
            nodes_max: self.params.nodes_max,
        }
    }

    fn grant(&self, s: &mut QuotaState, rule_name: &str, req: &LeaseRequest) -> Result<QuotaReply, RemoteError> {
        let now = s.clock.now_ns();
        let rules = s.st.rules();
        let Some(rule) = rules.get(rule_name).filter(|r| r.dimension() == Dimension::Global) else {
            return Ok(QuotaReply::NotGlobal { rule: rule_name.to_string(), version: rules.version() });
        };
        let fp = rule.params().fingerprint();
        let cfg = self.config(rule);
        let entry = match s.d.owners.get_mut(rule_name) {
            Some(e) if e.fingerprint == fp => e,
            old => {
                // New parameters: wait out the window in force under the old ones.
                let fenced_until_ns = old.map_or(0, |e| {
                    let w = e.owner.config().window_ns.max(1);
                    (now / w + 1).saturating_mul(w)
                });
                let owner = QuotaOwner::new(cfg).map_err(|e| RemoteError::Invalid(e.to_string()))?;
                s.d.owners.insert(rule_name.to_string(), OwnerEntry { fingerprint: fp, owner, fenced_until_ns });
                s.d.owners.get_mut(rule_name).ok_or_else(|| RemoteError::Invalid("owner vanished".into()))?
            }
        };
        if now < entry.fenced_until_ns {
            let valid_for_ns = entry.fenced_until_ns - now;
            let window_id = now / cfg.window_ns.max(1);
            return Ok(QuotaReply::Grant(LeaseGrant {
                node: req.node,
                seq: req.seq,
                window_id,
                amount: 0,
                valid_for_ns,
            }));
        }
        match entry.owner.handle_request(req, now) {
            Ok(g) => Ok(QuotaReply::Grant(g)),
            Err(LeaseError::NodeDown { .. }) => Ok(QuotaReply::WrittenOff),
            Err(e) => Ok(QuotaReply::Refused(e.to_string())),
        }
    }

    async fn make_durable(&self, ctx: &Ctx<LimiterQuota>, s: &mut QuotaState) -> Result<(), RemoteError> {
        let bytes = codec::encode(&s.d).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        ctx.persist(bytes.clone()).await.map_err(|e| troupe_runtime::store_failed(ctx.path(), &e))?;
        s.since_snapshot += 1;
        if s.since_snapshot >= self.params.snapshot_every {
            // Each entry is the whole state, so the snapshot is just the latest one.
            match ctx.snapshot(bytes).await {
                Ok(()) => s.since_snapshot = 0,
                Err(e) => tracing::warn!(error = %e, "quota snapshot not written; the log keeps growing"),
            }
        }
        Ok(())
    }

    fn node_down(s: &mut QuotaState, name: &str, epoch: u64) -> u64 {
        let now = s.clock.now_ns();
        let ids: Vec<NodeId> =
            s.d.incarnations.iter().filter(|(_, (n, e))| n == name && *e == epoch).map(|(id, _)| *id).collect();
        let mut lost = 0;
        for id in &ids {
            for e in s.d.owners.values_mut() {
                lost += e.owner.node_down(*id, now);
            }
            // The owners keep the id marked down (a late request of it is refused); the name is
            // no longer needed, which keeps this map bounded by the live incarnations.
            s.d.incarnations.remove(id);
        }
        lost
    }
}

impl Behavior for QuotaActor {
    type Proto = LimiterQuota;
    type State = QuotaState;

    async fn init(&self, ctx: &Ctx<LimiterQuota>) -> Result<QuotaState, ActorError> {
        let st = NodeLimiter::of(ctx.node()).map_err(fail)?;
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut d = Durable::default();
        for bytes in r.snapshot.iter().map(|(_, b)| b).chain(r.entries.iter().map(|(_, b)| b)) {
            match codec::decode::<Durable>(bytes) {
                Ok(x) => d = x,
                // Refusing to start would stop every global limit; an unreadable state is
                // replaced by a fenced one below, which under-admits for one window at most.
                Err(e) => tracing::error!(error = %e, "unreadable quota state skipped"),
            }
        }
        let mut s =
            QuotaState { d, clock: OwnerClock::new(), st, since_snapshot: r.entries.len() as u64, _watch: None };
        // Subscribe before reading the members, so a node that dies in between is seen.
        let events = ctx.node().member_events();
        // Nodes that died while no owner was listening (e.g. the node this singleton ran on).
        let members = ctx.node().members();
        let dead: Vec<(String, u64)> = s
            .d
            .incarnations
            .values()
            .filter(|(n, e)| members.iter().any(|m| &m.name == n && (m.state == MemberState::Down || m.epoch != *e)))
            .cloned()
            .collect();
        for (n, e) in dead {
            let lost = Self::node_down(&mut s, &n, e);
            tracing::info!(node = %n, epoch = e, lost, "quota of a node found down at takeover written off");
        }
        if let Some(mut events) = events {
            let me = ctx.myself();
            let node = ctx.node().clone();
            s._watch = Some(AbortOnDrop(tokio::spawn(async move {
                while let Some(change) = events.next().await {
                    let down: Vec<(String, u64)> = match change {
                        MemberChange::Changed(ev) if ev.state == MemberState::Down => vec![(ev.name, ev.epoch)],
                        MemberChange::Changed(_) => Vec::new(),
                        // Fell behind: whoever is down now may be one of the missed.
                        MemberChange::Missed(_) => node
                            .members()
                            .into_iter()
                            .filter(|m| m.state == MemberState::Down)
                            .map(|m| (m.name, m.epoch))
                            .collect(),
                    };
                    for (n, epoch) in down {
                        let _ = me.tell(QuotaMsg::NodeDown { node: n, epoch }).await;
                    }
                }
            })));
        }
        Ok(s)
    }

    async fn handle(
        &self,
        ctx: &Ctx<LimiterQuota>,
        s: &mut QuotaState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            QuotaMsg::Lease { rule, node, epoch, req } => {
                s.d.incarnations.entry(req.node).or_insert((node, epoch));
                let answer = match self.grant(s, &rule, &req) {
                    Ok(r @ QuotaReply::Grant(_)) => self.make_durable(ctx, s).await.map(|()| r),
                    other => other,
                };
                match answer {
                    Ok(r) => reply.send(r).await,
                    Err(e) => reply.fail(e),
                }
            }
            QuotaMsg::NodeDown { node, epoch } => {
                let known = s.d.incarnations.values().any(|(n, e)| *n == node && *e == epoch);
                let lost = Self::node_down(s, &node, epoch);
                if known {
                    tracing::info!(%node, epoch, lost, "node down: its lease slices are written off for this window");
                    if let Err(e) = self.make_durable(ctx, s).await {
                        tracing::warn!(error = %e, "write-off not made durable");
                    }
                }
                reply.send(QuotaReply::Done).await;
            }
        }
        Ok(())
    }
}
