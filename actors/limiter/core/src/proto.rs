//! The rate-limiter system's wire protocol: the messages its actors exchange and the ones an
//! SDK user sends, as plain serde types plus [`troupe_wire::Protocol`] markers.
//!
//! They live here, in the pure crate, so that a program using only `troupe-client` (no runtime)
//! can write `client.ask::<LimiterService>(&agent_path(node)?, &ServiceMsg::Check { .. })`.
//! The actors (crate `troupe-limiter-shell`) implement them; docs/rate-limiter.md
//! describes the data flow.
//!
//! Routing: a limit's state lives on shard `shard_of(dimension, value, shards)`, i.e. limits are
//! placed by **what they count** (the user, the IP, the endpoint), not by rule. So every limit
//! of one subject — requests/min AND tokens/min of a user — lives on one shard and is checked
//! all-or-nothing there in one message; only limits of different subjects (a user and an org,
//! a user and an IP) span shards.
//!
//! Invariants: every type here encodes with bincode (no untagged enums, no skipped fields);
//! [`route_hash`] is FNV-1a and must never change (it decides where every key's state lives).

use serde::{Deserialize, Serialize};
use troupe_wire::{ActorPath, PathError, Protocol, RemoteError};

use crate::decision::Decision;
use crate::headers::{self, PolicyItem, RateLimitItem};
use crate::lease::{LeaseGrant, LeaseRequest};
use crate::rules::{Dimension, RuleDiff, RuleSet};
use crate::time::ns_to_secs_ceil;

/// The system's name in topology files and actor paths.
pub const SYSTEM: &str = "rate-limiter";
/// Sharded kind holding limit state, keys `s0..s{shards-1}`.
pub const KIND_SHARD: &str = "limiter_shard";
/// Singleton holding the versioned rule set.
pub const KIND_RULES: &str = "rules";
/// Singleton owning the quota of every global rule.
pub const KIND_QUOTA: &str = "quota";
/// Per-node agent: rule cache, leases of global rules, the SDK service.
pub const KIND_AGENT: &str = "agent";
/// Per-node HTTP service (role `gateway`).
pub const KIND_HTTP: &str = "http";

/// FNV-1a (64 bit) of `dimension|value`: the same on every node, build and SDK.
pub fn route_hash(dimension: Dimension, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dimension.as_str().bytes().chain(std::iter::once(b'|')).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard holding the limits of `value` in `dimension`, out of `shards` (>= 1).
pub fn shard_of(dimension: Dimension, value: &str, shards: u32) -> u32 {
    (route_hash(dimension, value) % u64::from(shards.max(1))) as u32
}

/// Entity key of shard `i`.
pub fn shard_name(i: u32) -> String {
    format!("s{i}")
}

/// Path of shard `i`.
pub fn shard_path(i: u32) -> Result<ActorPath, PathError> {
    ActorPath::new(SYSTEM, KIND_SHARD, &shard_name(i))
}

/// Path of the agent (the SDK service) on `node`.
pub fn agent_path(node: &str) -> Result<ActorPath, PathError> {
    ActorPath::new(SYSTEM, KIND_AGENT, node)
}

// ---------------------------------------------------------------------------------------------
// The service: what callers send (SDK → agent; the in-cluster API uses the same types).

/// Protocol of the per-node agent, the entry point for SDK users.
pub struct LimiterService;

impl Protocol for LimiterService {
    type Msg = ServiceMsg;
    type Reply = ServiceReply;
    const NAME: &'static str = "limiter.agent";
}

/// One limit to check for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// Rule name.
    pub rule: String,
    /// The request's value of the rule's dimension: user id, client IP, `METHOD /route`; empty
    /// for a global rule.
    pub key: String,
    /// Cost against this limit; `None` = the rule's default cost. 0 is a probe: it reports the
    /// limit's state and consumes nothing.
    pub cost: Option<u64>,
}

impl CheckItem {
    /// A check of `rule` for `key` at the rule's default cost.
    pub fn new(rule: impl Into<String>, key: impl Into<String>) -> Self {
        CheckItem { rule: rule.into(), key: key.into(), cost: None }
    }
    /// The same check at `cost`.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }
}

/// Messages of [`LimiterService`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServiceMsg {
    /// Check and consume every limit of one request, all-or-nothing (see the guarantees in
    /// docs/rate-limiter.md). Answer: [`ServiceReply::Verdict`]; bad input fails the ask with
    /// `RemoteError::Invalid` naming the check and what is wrong.
    Check { checks: Vec<CheckItem> },
    /// Settle an admitted check whose real cost is known only now (estimate-then-adjust):
    /// refund the difference if `actual` is smaller, charge it if larger. Answer: `Done`.
    Adjust { receipt: Receipt, actual: u64 },
    /// The rule set this node enforces. Answer: [`ServiceReply::Rules`].
    GetRules,
    /// From the rules singleton: a newer rule set exists (push). The agent pulls it from
    /// the singleton rather than applying what it was sent: agents answer every client
    /// certificate, and only the singleton (admin-only) is trusted. Answer: `Done`.
    ApplyRules { rules: RuleSet },
    /// Several independent requests at once (a high-throughput caller that coalesces its
    /// traffic): each is checked all-or-nothing on its own. Answer:
    /// [`ServiceReply::Verdicts`], one per request, in order.
    CheckBatch { requests: Vec<Vec<CheckItem>> },
    /// Node to node: shard checks for shards this node's view says the receiver owns, coalesced
    /// into one message per destination under load. Answer: [`ServiceReply::ShardBatch`].
    ShardBatch { checks: Vec<ShardCheck> },
}

/// One request's shard check inside a [`ServiceMsg::ShardBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheck {
    /// Shard index.
    pub shard: u32,
    /// The caller's rule-set version.
    pub version: u64,
    /// The request's items on that shard (all-or-nothing).
    pub items: Vec<ShardItem>,
}

/// Most requests in one [`ServiceMsg::CheckBatch`] or [`ServiceMsg::ShardBatch`].
pub const BATCH_MAX: usize = 256;

/// Replies of [`LimiterService`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServiceReply {
    /// The answer to a check.
    Verdict(Verdict),
    /// The active rule set.
    Rules(RuleSet),
    /// A rule update was accepted and made durable.
    RulesUpdated(RuleDiff),
    /// Done.
    Done,
    /// Answers of a [`ServiceMsg::CheckBatch`], in order; an `Err` says what was wrong with that
    /// request (as `RemoteError::Invalid` would for a single check).
    Verdicts(Vec<Result<Verdict, String>>),
    /// Answers of a [`ServiceMsg::ShardBatch`], in order.
    ShardBatch(Vec<Result<ShardReply, RemoteError>>),
}

/// How a limit's answer was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Checked and (if the request was admitted) consumed by the owner of its state.
    Enforced,
    /// A shadow rule: evaluated, never denies; `would_block` says it would have.
    Shadow { would_block: bool },
    /// The owner did not answer within `owner_timeout_ms`; the rule fails open (admit).
    FailOpen,
    /// The owner did not answer within `owner_timeout_ms`; the rule fails closed (deny).
    FailClosed,
}

/// Enough to settle an admitted check later ([`ServiceMsg::Adjust`]). Plain data: carry it in a
/// request context across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Rule name.
    pub rule: String,
    /// The dimension value that was checked.
    pub key: String,
    /// Units consumed.
    pub cost: u64,
    /// Owner time of the admission (what a refund is matched against); 0 for a global rule.
    pub at_ns: u64,
    /// Rule-set version the check ran under; an adjustment under other rules is dropped.
    pub rules_version: u64,
}

/// The answer for one limit of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Rule name.
    pub rule: String,
    /// The dimension value checked.
    pub key: String,
    /// Cost checked (merged over repeats of the same rule and key).
    pub cost: u64,
    /// The limit's own decision (for a shadow rule, what it would have decided).
    pub decision: Decision,
    /// How it was reached.
    pub mode: Mode,
    /// The rule's quota per window, for `RateLimit-Policy` (`q`).
    pub quota: u64,
    /// The rule's window, for `RateLimit-Policy` (`w`).
    pub window_ns: u64,
    /// Present when the request was admitted and this limit consumed a positive cost.
    pub receipt: Option<Receipt>,
}

/// The answer to one request's checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when the request may proceed: every enforced limit allowed (or failed open).
    pub allowed: bool,
    /// One result per distinct limit, in request order (repeated rule+key pairs are merged).
    pub results: Vec<CheckResult>,
    /// The result that drives the headers: the denying limit with the longest wait, or, when
    /// admitted, the enforced limit with the fewest remaining. `None` with no enforced limit.
    pub binding: Option<usize>,
    /// Version of the rule set the check ran under.
    pub rules_version: u64,
}

impl Verdict {
    /// The binding result (see [`Verdict::binding`]).
    pub fn binding(&self) -> Option<&CheckResult> {
        self.binding.and_then(|i| self.results.get(i))
    }

    /// Whole seconds for `Retry-After`, when denied and waiting can help.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        self.binding().and_then(|r| headers::retry_after_secs(&r.decision))
    }

    /// Response headers: `X-RateLimit-Limit/Remaining/Reset` (and `Retry-After` on a denial)
    /// of the binding limit, and the IETF `RateLimit-Policy` / `RateLimit` listing every
    /// enforced limit.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let Some(b) = self.binding() else { return Vec::new() };
        let mut d = b.decision;
        d.allowed = self.allowed;
        if !self.allowed && d.retry_after_ns == 0 {
            // The binding limit failed closed or another limit denied: never say "retry now".
            d.retry_after_ns = d.reset_after_ns.max(1);
        }
        let mut h = headers::x_ratelimit_headers(&d);
        let enforced: Vec<&CheckResult> =
            self.results.iter().filter(|r| !matches!(r.mode, Mode::Shadow { .. })).collect();
        let policy: Vec<PolicyItem<'_>> = enforced
            .iter()
            .map(|r| PolicyItem {
                name: &r.rule,
                quota: r.quota,
                window_s: Some(ns_to_secs_ceil(r.window_ns)),
                unit: None,
            })
            .collect();
        let state: Vec<RateLimitItem<'_>> =
            enforced.iter().map(|r| RateLimitItem::from_decision(&r.rule, &r.decision)).collect();
        // Rule names are validated ASCII, so these cannot fail; a failure only drops the field.
        if let Ok(v) = headers::ratelimit_policy(&policy) {
            h.push(("RateLimit-Policy", v));
        }
        if let Ok(v) = headers::ratelimit(&state) {
            h.push(("RateLimit", v));
        }
        h
    }

    /// Receipts of every limit that consumed a positive cost.
    pub fn receipts(&self) -> impl Iterator<Item = &Receipt> {
        self.results.iter().filter_map(|r| r.receipt.as_ref())
    }
}

// ---------------------------------------------------------------------------------------------
// Shards.

/// Protocol of a limiter shard (`/rate-limiter/limiter_shard/s<i>`).
pub struct LimiterShard;

impl Protocol for LimiterShard {
    type Msg = ShardMsg;
    type Reply = ShardReply;
    const NAME: &'static str = "limiter.shard";
}

/// One limit sent to a shard: its shard key (`rule|dimension|value`, see
/// [`crate::shard_key`]) and cost. The shard takes the rule's parameters from its own node's
/// rule set, so one key never sees two parameter sets from callers at different versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardItem {
    /// Shard key.
    pub key: String,
    /// Cost.
    pub cost: u64,
}

/// Give back `cost` admitted for `key` at `at_ns` (shard clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundItem {
    /// Shard key.
    pub key: String,
    /// Units to give back.
    pub cost: u64,
    /// The admission's time, from [`ShardReply::Checked`].
    pub at_ns: u64,
}

/// Messages of [`LimiterShard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardMsg {
    /// Check and consume all items, all-or-nothing. `version` is the caller's rule-set
    /// version; a shard that is behind asks its node to pull the rules.
    Check { version: u64, items: Vec<ShardItem> },
    /// Undo admissions (another shard denied the request, or the real cost was lower).
    Refund { items: Vec<RefundItem> },
    /// Consume up to the cost whatever the limit says (the real cost was higher).
    Charge { items: Vec<ShardItem> },
}

/// One item's answer from a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResult {
    /// The limit's decision.
    pub decision: Decision,
    /// Shadow rule that would have denied.
    pub would_block: bool,
    /// The rule is in shadow mode.
    pub shadow: bool,
}

/// Replies of [`LimiterShard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardReply {
    /// The items' answers in order; `admitted` = all enforced items allowed and were consumed.
    Checked { admitted: bool, at_ns: u64, results: Vec<ShardResult> },
    /// The shard's rule set (version `version`) has no rule `rule` (the caller is newer or the
    /// key is malformed): the caller applies the rule's fail mode.
    UnknownRule { rule: String, version: u64 },
    /// The shard holds `keys_max` busy keys: the caller applies the rules' fail modes.
    Full { keys_max: usize },
    /// Done.
    Done,
}

// ---------------------------------------------------------------------------------------------
// Rules singleton.

/// Protocol of the rules singleton (`/rate-limiter/rules/main`).
pub struct LimiterRules;

impl Protocol for LimiterRules {
    type Msg = RulesMsg;
    type Reply = RulesReply;
    const NAME: &'static str = "limiter.rules";
}

/// Messages of [`LimiterRules`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RulesMsg {
    /// The current set if its version is above `have`.
    GetIfNewer { have: u64 },
    /// Replace the set with this TOML document. Removing a rule that a kind of a
    /// loaded topology names (a parameter ending in `_rule`) is refused unless `force`.
    Put {
        toml: String,
        #[serde(default)]
        force: bool,
    },
}

/// Replies of [`LimiterRules`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RulesReply {
    /// The current set.
    Current(RuleSet),
    /// Nothing newer than `have`.
    Unchanged { version: u64 },
    /// Accepted, durable, and being pushed to every node.
    Updated(RuleDiff),
    /// Refused: `conflict` when the version is not newer than the active one (HTTP 409), else
    /// the document is invalid (HTTP 400); `errors` lists every problem found.
    Rejected { conflict: bool, errors: Vec<String> },
}

// ---------------------------------------------------------------------------------------------
// Quota singleton (global rules).

/// Protocol of the quota singleton (`/rate-limiter/quota/main`).
pub struct LimiterQuota;

impl Protocol for LimiterQuota {
    type Msg = QuotaMsg;
    type Reply = QuotaReply;
    const NAME: &'static str = "limiter.quota";
}

/// Messages of [`LimiterQuota`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaMsg {
    /// A node's lease request for global rule `rule`. `node`/`epoch` name the incarnation so
    /// the owner can write its slice off when membership reports it down.
    Lease { rule: String, node: String, epoch: u64, req: LeaseRequest },
    /// Membership saw `node` (boot `epoch`) go down.
    NodeDown { node: String, epoch: u64 },
}

/// Replies of [`LimiterQuota`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaReply {
    /// A grant (possibly of 0 units when the window is used up).
    Grant(LeaseGrant),
    /// This lease id was written off (reported down): start a new lease incarnation.
    WrittenOff,
    /// The rule is not global (or unknown) at the owner's version.
    NotGlobal { rule: String, version: u64 },
    /// Refused (stale sequence number, too many nodes); ask again later.
    Refused(String),
    /// Done.
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a of `user|alice`, computed independently.
    const ROUTE_ALICE: u64 = 0x6a89_0a3c_6f76_108a;

    #[test]
    fn routing_is_stable_and_spread() {
        // Fixed values: a change here would move every key's state to another shard.
        assert_eq!(route_hash(Dimension::User, "alice"), ROUTE_ALICE);
        assert_eq!(shard_of(Dimension::User, "alice", 64), (ROUTE_ALICE % 64) as u32);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(Dimension::Ip, &format!("10.0.{}.{}", i / 256, i % 256), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");
        assert_ne!(route_hash(Dimension::User, "x"), route_hash(Dimension::Ip, "x"));
    }
}
