//! The in-cluster call API: [`Limiter`], a clonable client any actor on a node uses to check a
//! request's limits, and [`check`] for one-off calls.
//!
//! A check is planned on the caller (rules from this node's set, shard keys, routing), then:
//! 1. the limits held by shards are sent, one message per shard, in parallel; each shard
//!    checks and consumes its items all-or-nothing on its own clock;
//! 2. if every shard admitted, global limits are taken from this node's leases;
//! 3. if anything denied, the shards that admitted are told to refund (compensation).
//!
//! A shard that does not answer within `owner_timeout_ms` (or whose breaker is open) answers
//! for each of its limits with the rule's fail mode. Bad input is an error, never a decision.
//!
//! Invariants: a request is admitted only if every enforced limit allowed or failed open;
//! nothing is consumed for a denied request once its refunds land (until then, other requests
//! may be under-admitted, never over-admitted); every wait is bounded by `owner_timeout_ms`.

use super::lease;
use super::state::NodeLimiter;
use futures::future::join_all;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use troupe_limiter::proto::{
    CheckItem, CheckResult, Mode, Receipt, RefundItem, ShardItem, ShardMsg, ShardReply, ShardResult, Verdict,
};
use troupe_limiter::table::CHECKS_PER_REQUEST_MAX;
use troupe_limiter::{Decision, Dimension, FailMode, Rule, RuleDiff, RuleSet, proto, shard_key};
use troupe_runtime::{KindSpec, Node, RemoteError};

/// Why a check (or a rules call) could not be made. Decisions, including fail-open and
/// fail-closed answers, are never errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The cluster does not run the `rate-limiter` system (or its config is unreadable).
    #[error("the rate limiter is not available on this node: {0}")]
    NotEnabled(String),
    /// Bad input: unknown rule, bad key, cost above capacity, too many checks. Say 400.
    #[error("{0}")]
    Invalid(String),
    /// A rules update was refused; `conflict` when its version is not newer (say 409).
    #[error("rules update refused: {}", errors.join("; "))]
    Rules { conflict: bool, errors: Vec<String> },
    /// The rules singleton could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// A clonable client of the cluster's rate limiter, bound to one node (see the module docs of
/// `limiter` for usage).
#[derive(Clone)]
pub struct Limiter {
    st: Arc<NodeLimiter>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limiter({})", self.st.node.name())
    }
}

/// One-off check from `node` (builds a [`Limiter`]; keep one instead on a hot path).
pub async fn check(node: &Node, checks: &[CheckItem]) -> Result<Verdict, LimiterError> {
    Limiter::new(node)?.check(checks).await
}

/// One distinct limit of a request, resolved against the rules.
struct Planned<'r> {
    rule: &'r Rule,
    value: String,
    key: String,
    cost: u64,
}

impl Limiter {
    /// The client for `node`. Fails when the cluster does not run the `rate-limiter` system.
    pub fn new(node: &Node) -> Result<Limiter, LimiterError> {
        NodeLimiter::of(node).map(|st| Limiter { st }).map_err(LimiterError::NotEnabled)
    }

    pub(crate) fn from_state(st: Arc<NodeLimiter>) -> Limiter {
        Limiter { st }
    }

    pub(crate) fn state(&self) -> &Arc<NodeLimiter> {
        &self.st
    }

    /// The rule set this node enforces.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.st.rules()
    }

    /// Checks and consumes every limit of one request (see the module docs for the guarantee).
    pub async fn check(&self, checks: &[CheckItem]) -> Result<Verdict, LimiterError> {
        let started = Instant::now();
        let rules = self.st.rules();
        let plan = plan(&rules, checks)?;
        let verdict = self.run(&rules, &plan).await;
        self.st.metrics.check_seconds.observe(started.elapsed().as_secs_f64());
        Ok(verdict)
    }

    async fn run(&self, rules: &RuleSet, plan: &[Planned<'_>]) -> Verdict {
        let st = &self.st;
        let mut results: Vec<Option<(Decision, Mode)>> = vec![None; plan.len()];
        let shards = st.cfg.shard.shards;
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut globals = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            if p.rule.dimension() == Dimension::Global {
                globals.push(i);
            } else {
                groups.entry(proto::shard_of(p.rule.dimension(), &p.value, shards)).or_default().push(i);
            }
        }
        // 1. Shards, in parallel, one message each.
        let now = st.clock.now_ns();
        let asks = groups.iter().map(|(&shard, idx)| {
            let items: Vec<ShardItem> =
                idx.iter().map(|&i| ShardItem { key: plan[i].key.clone(), cost: plan[i].cost }).collect();
            let down = st.shard_down(shard, now);
            async move {
                if down {
                    return (shard, None);
                }
                (shard, Some(st.ask_shard(shard, rules.version(), items).await))
            }
        });
        let answers = join_all(asks).await;
        let mut admitted_at: Vec<(u32, u64)> = Vec::new();
        for (shard, answer) in answers {
            let idx = &groups[&shard];
            match answer {
                Some(Ok(ShardReply::Checked { admitted, at_ns, results: rs })) if rs.len() == idx.len() => {
                    for (&i, r) in idx.iter().zip(rs) {
                        results[i] = Some(from_shard(&r));
                    }
                    if admitted {
                        admitted_at.push((shard, at_ns));
                    }
                }
                Some(Ok(other)) => {
                    tracing::debug!(shard, answer = ?other, "shard could not check; fail modes apply");
                    for &i in idx {
                        results[i] = Some(fail_mode(st, plan[i].rule));
                    }
                }
                Some(Err(e)) => {
                    if trips_breaker(&e) {
                        st.trip(shard, st.clock.now_ns());
                    }
                    tracing::debug!(shard, error = %e, "shard owner did not answer; fail modes apply");
                    for &i in idx {
                        results[i] = Some(fail_mode(st, plan[i].rule));
                    }
                }
                None => {
                    for &i in idx {
                        results[i] = Some(fail_mode(st, plan[i].rule));
                    }
                }
            }
        }
        // 2. Global limits from this node's leases, only if the shards admitted (a lease slice
        // spent on a request denied elsewhere cannot be given back).
        let shards_ok = results.iter().flatten().all(|(d, m)| enforced_ok(d, m));
        for &i in &globals {
            let p = &plan[i];
            results[i] = Some(if shards_ok {
                let (d, mode) = lease::check_global(st, p.rule, p.cost).await;
                if p.rule.shadow() { (d, Mode::Shadow { would_block: !d.allowed }) } else { (d, mode) }
            } else {
                // Not asked: report the limit as not consumed.
                let d = Decision {
                    allowed: true,
                    limit: p.rule.params().limit(),
                    remaining: p.rule.params().limit(),
                    reset_after_ns: 0,
                    retry_after_ns: 0,
                };
                (d, if p.rule.shadow() { Mode::Shadow { would_block: false } } else { Mode::Enforced })
            });
        }
        let resolved: Vec<(Decision, Mode)> =
            results.into_iter().map(|r| r.unwrap_or_else(|| (Decision::fail_open(0), Mode::FailOpen))).collect();
        let allowed = resolved.iter().all(|(d, m)| enforced_ok(d, m));
        // 3. Compensation: undo what shards consumed for a request that is denied after all.
        if !allowed && !admitted_at.is_empty() {
            self.refund(plan, &groups, &admitted_at, &resolved);
        }
        self.count(plan, &resolved, allowed);
        let version = rules.version();
        let results: Vec<CheckResult> = plan
            .iter()
            .zip(&resolved)
            .map(|(p, (d, mode))| {
                let consumed = allowed && p.cost > 0 && consumed(d, mode);
                let at_ns = if p.rule.dimension() == Dimension::Global {
                    0
                } else {
                    let shard = proto::shard_of(p.rule.dimension(), &p.value, shards);
                    admitted_at.iter().find(|(s, _)| *s == shard).map_or(0, |(_, at)| *at)
                };
                let receipt = consumed.then(|| Receipt {
                    rule: p.rule.name().to_string(),
                    key: p.value.clone(),
                    cost: p.cost,
                    at_ns,
                    rules_version: version,
                });
                CheckResult {
                    rule: p.rule.name().to_string(),
                    key: p.value.clone(),
                    cost: p.cost,
                    decision: *d,
                    mode: *mode,
                    quota: p.rule.params().limit(),
                    window_ns: p.rule.params().window_ns(),
                    receipt,
                }
            })
            .collect();
        let binding = binding(&results, allowed);
        Verdict { allowed, results, binding, rules_version: version }
    }

    fn refund(
        &self,
        plan: &[Planned<'_>],
        groups: &BTreeMap<u32, Vec<usize>>,
        admitted_at: &[(u32, u64)],
        resolved: &[(Decision, Mode)],
    ) {
        for &(shard, at_ns) in admitted_at {
            let items: Vec<RefundItem> = groups[&shard]
                .iter()
                .filter(|&&i| plan[i].cost > 0 && consumed(&resolved[i].0, &resolved[i].1))
                .map(|&i| RefundItem { key: plan[i].key.clone(), cost: plan[i].cost, at_ns })
                .collect();
            if items.is_empty() {
                continue;
            }
            self.st.metrics.refunds.inc();
            let handle = self.st.shards[shard as usize].handle.clone();
            // A tell: at most once. A lost refund leaves the request's cost consumed, i.e. errs
            // towards under-admission, never over-admission.
            tokio::spawn(async move {
                if let Err(e) = handle.tell(ShardMsg::Refund { items }).await {
                    tracing::debug!(shard, error = %e, "refund not delivered");
                }
            });
        }
    }

    fn count(&self, plan: &[Planned<'_>], resolved: &[(Decision, Mode)], allowed: bool) {
        let m = &self.st.metrics;
        if allowed {
            m.requests_allowed.inc()
        } else {
            m.requests_denied.inc()
        }
        for (p, (d, mode)) in plan.iter().zip(resolved) {
            let r = m.rule(p.rule.name());
            r.checks.inc();
            match mode {
                Mode::Enforced if d.allowed => r.allowed.inc(),
                Mode::Enforced => r.denied.inc(),
                Mode::Shadow { would_block: true } => {
                    r.allowed.inc();
                    r.shadow_would_block.inc();
                    tracing::info!(rule = %p.rule.name(), key = %p.value, "shadow rule would block");
                }
                Mode::Shadow { would_block: false } => r.allowed.inc(),
                Mode::FailOpen => {
                    r.allowed.inc();
                    r.fail_open.inc();
                }
                Mode::FailClosed => {
                    r.denied.inc();
                    r.fail_closed.inc();
                }
            }
        }
    }

    /// Settles an admitted limit whose real cost is known only now: refunds `receipt.cost −
    /// actual` or charges `actual − receipt.cost` (up to what is left; a limit is never pushed
    /// into debt). Dropped when the rules changed since the check. For a global rule only the
    /// extra charge applies (a lease slice cannot be given back).
    pub async fn adjust(&self, receipt: &Receipt, actual: u64) -> Result<(), LimiterError> {
        let rules = self.st.rules();
        if rules.version() != receipt.rules_version || actual == receipt.cost {
            return Ok(());
        }
        let rule = rules
            .get(&receipt.rule)
            .ok_or_else(|| LimiterError::Invalid(format!("unknown rule `{}`", receipt.rule)))?;
        let key = shard_key(rule, &receipt.key).map_err(|e| LimiterError::Invalid(e.to_string()))?;
        if rule.dimension() == Dimension::Global {
            if actual > receipt.cost {
                let _ = lease::check_global(&self.st, rule, actual - receipt.cost).await;
            }
            return Ok(());
        }
        let shard = proto::shard_of(rule.dimension(), &receipt.key, self.st.cfg.shard.shards);
        let msg = if actual < receipt.cost {
            ShardMsg::Refund { items: vec![RefundItem { key, cost: receipt.cost - actual, at_ns: receipt.at_ns }] }
        } else {
            ShardMsg::Charge { items: vec![ShardItem { key, cost: actual - receipt.cost }] }
        };
        let link = &self.st.shards[shard as usize];
        link.handle.ask_timeout(msg, self.st.owner_timeout()).await?;
        Ok(())
    }

    /// Replaces the cluster's rule set with a TOML document (its version must be newer); the
    /// rules singleton makes it durable and pushes it to every node. Dropping a rule a
    /// loaded system names is refused unless `force`.
    pub async fn put_rules(&self, toml: &str, force: bool) -> Result<RuleDiff, LimiterError> {
        use troupe_limiter::proto::{LimiterRules, RulesMsg, RulesReply};
        let path = troupe_runtime::ActorPath::new(proto::SYSTEM, proto::KIND_RULES, KindSpec::singleton_key())
            .map_err(|e| LimiterError::Invalid(e.to_string()))?;
        let reply = self
            .st
            .node
            .handle::<LimiterRules>(path)
            .ask_timeout(RulesMsg::Put { toml: toml.to_string(), force }, std::time::Duration::from_secs(10))
            .await?;
        match reply {
            RulesReply::Updated(diff) => {
                // Apply here at once so this caller sees its own write.
                if let Err(e) = self.st.pull().await {
                    tracing::debug!(error = %e, "pull after a rules update failed; the push or the next tick brings it");
                }
                Ok(diff)
            }
            RulesReply::Rejected { conflict, errors } => Err(LimiterError::Rules { conflict, errors }),
            other => Err(LimiterError::Invalid(format!("unexpected answer from the rules singleton: {other:?}"))),
        }
    }
}

/// Resolves, validates and merges the checks of one request.
fn plan<'r>(rules: &'r RuleSet, checks: &[CheckItem]) -> Result<Vec<Planned<'r>>, LimiterError> {
    if checks.is_empty() {
        return Err(LimiterError::Invalid("no checks: give at least one {rule, key}".into()));
    }
    if checks.len() > CHECKS_PER_REQUEST_MAX {
        return Err(LimiterError::Invalid(format!(
            "{} checks in one request is above the bound of {CHECKS_PER_REQUEST_MAX}",
            checks.len()
        )));
    }
    let mut out: Vec<Planned<'r>> = Vec::with_capacity(checks.len());
    for (i, c) in checks.iter().enumerate() {
        let bad = |why: String| LimiterError::Invalid(format!("check #{i} (rule `{}`): {why}", c.rule));
        let rule = rules.get(&c.rule).ok_or_else(|| {
            let names: Vec<&str> = rules.rules().map(Rule::name).take(20).collect();
            LimiterError::Invalid(format!(
                "check #{i}: unknown rule `{}`; rules version {} has: {}",
                c.rule,
                rules.version(),
                names.join(", ")
            ))
        })?;
        let key = shard_key(rule, &c.key).map_err(|e| bad(e.to_string()))?;
        let cost = c.cost.unwrap_or_else(|| rule.cost());
        match out.iter_mut().find(|p| p.key == key) {
            // The same limit twice in one request: one check of the summed cost.
            Some(p) => p.cost = p.cost.saturating_add(cost),
            None => out.push(Planned { rule, value: c.key.clone(), key, cost }),
        }
    }
    for p in &out {
        let cap =
            if p.rule.dimension() == Dimension::Global { p.rule.params().limit() } else { p.rule.params().capacity() };
        if p.cost > cap {
            return Err(LimiterError::Invalid(format!(
                "rule `{}`: cost {} is above its capacity of {cap}, so it could never be admitted",
                p.rule.name(),
                p.cost
            )));
        }
    }
    Ok(out)
}

fn from_shard(r: &ShardResult) -> (Decision, Mode) {
    if r.shadow { (r.decision, Mode::Shadow { would_block: r.would_block }) } else { (r.decision, Mode::Enforced) }
}

fn fail_mode(st: &NodeLimiter, rule: &Rule) -> (Decision, Mode) {
    let retry = st.cfg.agent.fail_closed_retry_ms.saturating_mul(1_000_000);
    let d = rule.fail_mode().unreachable_decision(rule.params().capacity(), retry);
    if rule.shadow() {
        return (Decision::fail_open(rule.params().capacity()), Mode::Shadow { would_block: false });
    }
    match rule.fail_mode() {
        FailMode::Open => (d, Mode::FailOpen),
        FailMode::Closed => (d, Mode::FailClosed),
    }
}

/// Whether a result lets the request through.
fn enforced_ok(d: &Decision, m: &Mode) -> bool {
    match m {
        Mode::Enforced => d.allowed,
        Mode::Shadow { .. } | Mode::FailOpen => true,
        Mode::FailClosed => false,
    }
}

/// Whether a result consumed quota on its owner.
fn consumed(d: &Decision, m: &Mode) -> bool {
    matches!(m, Mode::Enforced | Mode::Shadow { .. }) && d.allowed
}

/// Errors that mean "the owner is not answering" (open the breaker), as opposed to
/// back-pressure (a full mailbox or queue), which fails this request only.
fn trips_breaker(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Timeout { .. }
            | RemoteError::Unreachable { .. }
            | RemoteError::NodeDown { .. }
            | RemoteError::NoReply { .. }
            | RemoteError::Restarting { .. }
            | RemoteError::WrongOwner { .. }
            | RemoteError::ActorFailed { .. }
    )
}

/// The result that drives the headers, as in the core's `check_many`.
fn binding(results: &[CheckResult], allowed: bool) -> Option<usize> {
    let enforced = results.iter().enumerate().filter(|(_, r)| !matches!(r.mode, Mode::Shadow { .. }));
    if allowed {
        enforced.min_by_key(|(_, r)| r.decision.remaining).map(|(i, _)| i)
    } else {
        enforced.filter(|(_, r)| !r.decision.allowed).max_by_key(|(_, r)| r.decision.retry_after_ns).map(|(i, _)| i)
    }
}
