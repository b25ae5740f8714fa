//! `rules`: the cluster singleton holding the versioned rule set.
//!
//! A new set (from `PUT /v1/rules` or [`super::Limiter::put_rules`]) is validated (every error
//! reported), must carry a newer version, is made durable on `replication_factor` nodes, and
//! only then acknowledged and pushed to every node's agent. Agents also pull every
//! `rules_pull_ms`, so a node that missed the push (a lost tell, a restart) converges anyway;
//! since sets are whole and versioned, applying them is idempotent and order-insensitive.
//!
//! Invariants: the active version never decreases, across failovers too (recovery takes the
//! newest durable set, or the topology's initial set if that is newer); an acknowledged update
//! survives the loss of any one node.

use super::config::RulesParams;
use super::state::NodeLimiter;
use std::time::Duration;
use troupe_limiter::proto::{self, LimiterRules, LimiterService, RulesMsg, RulesReply, ServiceMsg};
use troupe_limiter::{ActiveRules, RuleSet};
use troupe_runtime::wire::codec;
use troupe_runtime::wire::introspect::MemberState;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};

/// Durable log entries between snapshots (each entry is a whole set).
const SNAPSHOT_EVERY: u64 = 16;

/// The `limiter.rules` kind.
pub struct RulesActor {
    initial: RuleSet,
}

impl FromParams for RulesActor {
    type Params = RulesParams;
    fn from_params(p: RulesParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(RulesActor { initial: p.parse()? })
    }
    fn check(p: &RulesParams) -> Result<(), String> {
        p.parse().map(|_| ())
    }
}

/// The singleton's state.
pub struct RulesState {
    active: ActiveRules,
    since_snapshot: u64,
}

impl RulesActor {
    async fn put(
        &self,
        ctx: &Ctx<LimiterRules>,
        s: &mut RulesState,
        toml: &str,
        force: bool,
    ) -> Result<RulesReply, RemoteError> {
        let set = match RuleSet::from_toml_str(toml) {
            Ok(set) => set,
            Err(e) => {
                return Ok(RulesReply::Rejected {
                    conflict: false,
                    errors: e.0.iter().map(|x| x.to_string()).collect(),
                });
            }
        };
        let active = s.active.current().version();
        if let Err(why) = troupe_limiter::rules::check_next_version(active, set.version()) {
            // Not newer: a conflict with whoever wrote the active version (409); a leap
            // that would exhaust the versions: a bad request (400).
            return Ok(RulesReply::Rejected { conflict: set.version() <= active, errors: vec![why] });
        }
        // A rule a running system names must not vanish by accident.
        let used = rules_in_use(ctx.node());
        let dropped: Vec<String> = s
            .active
            .current()
            .rules()
            .filter(|r| set.get(r.name()).is_none())
            .filter_map(|r| {
                used.get(r.name()).map(|by| {
                    format!(
                        "rule `{}` is used by {}; keep it in the new set, or send the update with force (PUT /v1/rules?force=true) to remove it anyway",
                        r.name(),
                        by.join(", ")
                    )
                })
            })
            .collect();
        if !dropped.is_empty() && !force {
            return Ok(RulesReply::Rejected { conflict: false, errors: dropped });
        }
        let bytes = codec::encode(&set).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        // Durable on rf nodes before anyone is told: an acknowledged set survives a crash.
        ctx.persist(bytes).await.map_err(|e| troupe_runtime::store_failed(ctx.path(), &e))?;
        let diff = s.active.apply(set.clone()).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        s.since_snapshot += 1;
        if s.since_snapshot >= SNAPSHOT_EVERY {
            match codec::encode(s.active.current()) {
                Ok(b) => match ctx.snapshot(b).await {
                    Ok(()) => s.since_snapshot = 0,
                    Err(e) => tracing::warn!(error = %e, "rules snapshot not written; the log keeps growing"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot encode rules snapshot"),
            }
        }
        if let Ok(st) = NodeLimiter::of(ctx.node()) {
            let _ = st.apply(set.clone());
        }
        push(ctx.node(), set);
        Ok(RulesReply::Updated(diff))
    }
}

/// The rules the kinds of this node's topologies name, by rule: each parameter whose key
/// ends in `_rule` and whose value is a string names one (`requests_rule =
/// "llm-requests"` → `llm-serving.gateway (requests_rule)`).
fn rules_in_use(node: &Node) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut used: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in &node.loaded().topologies {
        for k in &t.kinds {
            for (key, v) in &k.params {
                if let (true, Some(rule)) = (key.ends_with("_rule"), v.as_str()) {
                    used.entry(rule.to_string()).or_default().push(format!("{}.{} ({key})", k.system, k.name));
                }
            }
        }
    }
    used
}

/// Tells every live node's agent about `set` (best effort; the pull is the safety net).
fn push(node: &Node, set: RuleSet) {
    let node = node.clone();
    tokio::spawn(async move {
        for m in node.members().into_iter().filter(|m| m.state != MemberState::Down) {
            let Ok(path) = proto::agent_path(&m.name) else { continue };
            let msg = ServiceMsg::ApplyRules { rules: set.clone() };
            if let Err(e) = node.handle::<LimiterService>(path).tell(msg).await {
                tracing::debug!(node = %m.name, error = %e, "rules push not delivered; its pull will catch up");
            }
        }
    });
}

impl Behavior for RulesActor {
    type Proto = LimiterRules;
    type State = RulesState;

    async fn init(&self, ctx: &Ctx<LimiterRules>) -> Result<RulesState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut durable: Option<RuleSet> = None;
        for bytes in r.snapshot.iter().map(|(_, b)| b).chain(r.entries.iter().map(|(_, b)| b)) {
            // Each entry is a whole set; later entries are newer. A set that fails to decode or
            // to re-validate is skipped rather than stopping the limiter.
            match codec::decode::<RuleSet>(bytes) {
                Ok(set) => durable = Some(set),
                Err(e) => tracing::error!(error = %e, "unreadable durable rule set skipped"),
            }
        }
        let set = match durable {
            Some(d) if d.version() >= self.initial.version() => d,
            _ => self.initial.clone(),
        };
        tracing::info!(path = %ctx.path(), version = set.version(), rules = set.len(), "rate-limiter rules loaded");
        if let Ok(st) = NodeLimiter::of(ctx.node()) {
            let _ = st.apply(set.clone());
        }
        Ok(RulesState { active: ActiveRules::new(set), since_snapshot: r.entries.len() as u64 })
    }

    async fn handle(
        &self,
        ctx: &Ctx<LimiterRules>,
        s: &mut RulesState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            RulesMsg::GetIfNewer { have } => {
                let cur = s.active.current();
                let r = if cur.version() > have {
                    RulesReply::Current(cur.clone())
                } else {
                    RulesReply::Unchanged { version: cur.version() }
                };
                reply.send(r).await;
            }
            RulesMsg::Put { toml, force } => match self.put(ctx, s, &toml, force).await {
                Ok(r) => reply.send(r).await,
                Err(e) => reply.fail(e),
            },
        }
        Ok(())
    }
}

/// How long a caller waits for the rules singleton.
pub const RULES_TIMEOUT: Duration = Duration::from_secs(10);
