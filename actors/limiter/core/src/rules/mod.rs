//! Rules: what to limit, by which dimension, with which algorithm; versioned rule sets.
//!
//! Invariants: a [`Rule`] only exists validated (name charset and length, parameters within
//! bounds); a [`RuleSet`] has unique names and a version. Rule sets are replaced whole, never
//! edited in place: a node applies a set only if its version is newer ([`ActiveRules::apply`]),
//! which makes the update idempotent and order-insensitive when it is gossiped cluster-wide.

mod error;
mod parse;

pub use error::{RuleError, RuleErrorKind, RuleErrors};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::algorithm::LimitParams;

/// Longest rule name, in bytes. Names are part of every shard key, so they stay short.
pub const RULE_NAME_BYTES_MAX: usize = 64;
/// Most rules in one set. Each request may match several, and the set is gossiped whole.
pub const RULES_PER_SET_MAX: usize = 1024;

/// What a rule counts by: the value that, with the rule name, forms the shard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Per authenticated user (or API key / org).
    User,
    /// Per client IP address.
    Ip,
    /// Per endpoint (route), shared by all callers.
    Endpoint,
    /// One limit for the whole cluster.
    Global,
}

impl Dimension {
    /// Rule-file name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::User => "user",
            Dimension::Ip => "ip",
            Dimension::Endpoint => "endpoint",
            Dimension::Global => "global",
        }
    }
    /// Parses a rule-file name.
    pub fn parse(s: &str) -> Option<Self> {
        [Dimension::User, Dimension::Ip, Dimension::Endpoint, Dimension::Global].into_iter().find(|d| d.as_str() == s)
    }
}

/// What to answer when the owner of a key cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Admit: availability over protection (the default, as in Envoy's rate limit filter).
    Open,
    /// Deny: protection over availability (for limits that guard money or a fragile backend).
    Closed,
}

impl FailMode {
    /// Rule-file name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
    /// Parses a rule-file name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(FailMode::Open),
            "closed" => Some(FailMode::Closed),
            _ => None,
        }
    }
    /// The decision to return when the owner is unreachable; `retry_after_ns` is used when
    /// failing closed (e.g. the expected re-homing time).
    pub fn unreachable_decision(self, limit: u64, retry_after_ns: u64) -> crate::Decision {
        match self {
            FailMode::Open => crate::Decision::fail_open(limit),
            FailMode::Closed => crate::Decision::fail_closed(limit, retry_after_ns),
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleWire", into = "RuleWire")]
pub struct Rule {
    name: String,
    dimension: Dimension,
    params: LimitParams,
    cost: u64,
    fail_mode: FailMode,
    shadow: bool,
}

/// Serde shape of a rule; converting it into a [`Rule`] re-validates, so a rule received over
/// the wire is as trustworthy as one parsed from a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuleWire {
    name: String,
    dimension: Dimension,
    params: LimitParams,
    cost: u64,
    fail_mode: FailMode,
    shadow: bool,
}

impl TryFrom<RuleWire> for Rule {
    type Error = RuleErrorKind;
    fn try_from(w: RuleWire) -> Result<Self, Self::Error> {
        let p = w.params;
        let params = LimitParams::new(p.kind(), p.limit(), p.window_ns(), p.burst()).map_err(RuleErrorKind::Params)?;
        Rule::new(w.name, w.dimension, params, w.cost, w.fail_mode, w.shadow)
    }
}

impl From<Rule> for RuleWire {
    fn from(r: Rule) -> Self {
        RuleWire {
            name: r.name,
            dimension: r.dimension,
            params: r.params,
            cost: r.cost,
            fail_mode: r.fail_mode,
            shadow: r.shadow,
        }
    }
}

/// Checks a rule name: 1..=64 bytes of `[A-Za-z0-9_.-]`, so it can never contain the key
/// separator and shard keys stay unambiguous.
pub fn validate_rule_name(name: &str) -> Result<(), RuleErrorKind> {
    if name.is_empty() || name.len() > RULE_NAME_BYTES_MAX {
        return Err(RuleErrorKind::BadName { name: name.to_string(), why: "must be 1 to 64 bytes long" });
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(RuleErrorKind::BadName { name: name.to_string(), why: "may only use A-Z a-z 0-9 _ . -" });
    }
    Ok(())
}

impl Rule {
    /// Builds a validated rule. `cost` is the default cost of one request (>= 1).
    pub fn new(
        name: String,
        dimension: Dimension,
        params: LimitParams,
        cost: u64,
        fail_mode: FailMode,
        shadow: bool,
    ) -> Result<Self, RuleErrorKind> {
        validate_rule_name(&name)?;
        if cost == 0 {
            return Err(RuleErrorKind::NotPositive { field: "cost", got: 0 });
        }
        if cost > params.capacity() {
            return Err(RuleErrorKind::CostAboveCapacity { cost, capacity: params.capacity() });
        }
        Ok(Rule { name, dimension, params, cost, fail_mode, shadow })
    }
    /// Unique name within the set; the first part of every shard key.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What the rule counts by.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }
    /// Algorithm and its parameters.
    pub fn params(&self) -> &LimitParams {
        &self.params
    }
    /// Default cost of one request when the caller does not say.
    pub fn cost(&self) -> u64 {
        self.cost
    }
    /// What to answer when the key's owner is unreachable.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }
    /// Shadow rules are evaluated and reported ("would block") but never deny.
    pub fn shadow(&self) -> bool {
        self.shadow
    }
}

/// A versioned, validated set of rules with unique names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleSetWire", into = "RuleSetWire")]
pub struct RuleSet {
    version: u64,
    rules: BTreeMap<String, Rule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuleSetWire {
    version: u64,
    rules: Vec<Rule>,
}

impl TryFrom<RuleSetWire> for RuleSet {
    type Error = RuleErrors;
    fn try_from(w: RuleSetWire) -> Result<Self, Self::Error> {
        RuleSet::new(w.version, w.rules)
    }
}

impl From<RuleSet> for RuleSetWire {
    fn from(s: RuleSet) -> Self {
        RuleSetWire { version: s.version, rules: s.rules.into_values().collect() }
    }
}

impl RuleSet {
    /// Builds a set, reporting every duplicate name and the size bound.
    pub fn new(version: u64, rules: Vec<Rule>) -> Result<Self, RuleErrors> {
        let mut errors = Vec::new();
        if rules.len() > RULES_PER_SET_MAX {
            errors.push(RuleError::set(RuleErrorKind::TooMany { got: rules.len(), max: RULES_PER_SET_MAX }));
        }
        let mut map = BTreeMap::new();
        for rule in rules {
            let name = rule.name.clone();
            if map.insert(name.clone(), rule).is_some() {
                errors.push(RuleError::rule(&name, None, RuleErrorKind::DuplicateName(name.clone())));
            }
        }
        if errors.is_empty() { Ok(RuleSet { version, rules: map }) } else { Err(RuleErrors(errors)) }
    }

    /// Parses and validates a rules document (see the crate docs for the format), collecting
    /// every error with its line instead of stopping at the first.
    pub fn from_toml_str(src: &str) -> Result<Self, RuleErrors> {
        parse::parse(src)
    }

    /// Version of this set; larger is newer.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name)
    }
    /// All rules, by name order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }
    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }
    /// True when the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What changes going from `self` to `next`, by rule name.
    pub fn diff(&self, next: &RuleSet) -> RuleDiff {
        let mut d = RuleDiff { from_version: self.version, to_version: next.version, ..RuleDiff::default() };
        for (name, rule) in &next.rules {
            match self.rules.get(name) {
                None => d.added.push(name.clone()),
                Some(old) if old != rule => d.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        d.removed = self.rules.keys().filter(|n| !next.rules.contains_key(*n)).cloned().collect();
        d
    }
}

/// Difference between two rule sets, by name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDiff {
    /// Version applied before.
    pub from_version: u64,
    /// Version applied after.
    pub to_version: u64,
    /// Rules only in the new set.
    pub added: Vec<String>,
    /// Rules in both whose definition changed. Keys of a changed rule restart from full
    /// capacity on their next check (the keyed table sees new parameters).
    pub changed: Vec<String>,
    /// Rules only in the old set; their keys go idle and are evicted.
    pub removed: Vec<String>,
}

impl RuleDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Why [`ActiveRules::apply`] refused a set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleUpdateError {
    /// The offered set is older than the active one (a late gossip message): ignore it.
    #[error("rule set version {offered} is older than the active version {active}")]
    Stale { active: u64, offered: u64 },
    /// Same version, different content: two writers used the same version number.
    #[error("rule set version {version} was already applied with different rules; bump the version")]
    Conflict { version: u64 },
}

/// Most a new rule set's version may pass the active one by. Versions only grow, so a
/// jump to near `u64::MAX` (or `i64::MAX`, TOML's largest integer) would leave no
/// newer version for any later update: such a jump is refused.
pub const VERSION_STEP_MAX: u64 = 1_000_000;

/// Whether `offered` may replace `active` through an update: newer, and not by more
/// than [`VERSION_STEP_MAX`]. The error says what to send instead.
pub fn check_next_version(active: u64, offered: u64) -> Result<(), String> {
    if offered <= active {
        return Err(format!(
            "version {offered} is not newer than the active version {active}; set `version = {}` or higher",
            active + 1
        ));
    }
    if offered - active > VERSION_STEP_MAX {
        return Err(format!(
            "version {offered} is more than {VERSION_STEP_MAX} past the active version {active}, which would use up \
             the versions left for later updates; set `version = {}`",
            active + 1
        ));
    }
    Ok(())
}

/// The rule set a node is enforcing, replaced atomically by newer versions.
#[derive(Debug, Clone)]
pub struct ActiveRules {
    current: RuleSet,
}

impl ActiveRules {
    /// Starts from `initial`.
    pub fn new(initial: RuleSet) -> Self {
        ActiveRules { current: initial }
    }
    /// The set in force.
    pub fn current(&self) -> &RuleSet {
        &self.current
    }
    /// Applies `next` if it is newer; re-delivery of the active version is a no-op (empty diff).
    pub fn apply(&mut self, next: RuleSet) -> Result<RuleDiff, RuleUpdateError> {
        let (active, offered) = (self.current.version, next.version);
        if offered < active {
            return Err(RuleUpdateError::Stale { active, offered });
        }
        if offered == active {
            return if next == self.current {
                Ok(RuleDiff { from_version: active, to_version: active, ..RuleDiff::default() })
            } else {
                Err(RuleUpdateError::Conflict { version: active })
            };
        }
        let diff = self.current.diff(&next);
        self.current = next;
        Ok(diff)
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn an_update_must_be_newer_but_not_by_a_leap() {
        assert!(check_next_version(3, 4).is_ok());
        assert!(check_next_version(3, 3 + VERSION_STEP_MAX).is_ok());
        let e = check_next_version(3, 3).unwrap_err();
        assert!(e.contains("not newer") && e.contains("version = 4"), "{e}");
        let e = check_next_version(3, i64::MAX as u64).unwrap_err();
        assert!(e.contains("use up the versions") || e.contains("would use up"), "{e}");
        assert!(e.contains("version = 4"), "{e}");
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    proptest::proptest! {
        /// Any text as a rules document: a rule set or errors with their lines, never a panic.
        #[test]
        fn any_text_is_rules_or_errors(src in "\\PC{0,300}") {
            if let Err(e) = RuleSet::from_toml_str(&src) {
                proptest::prop_assert!(!e.0.is_empty());
            }
        }

        /// Rule documents with random values in every field.
        #[test]
        fn random_rule_values_are_rules_or_errors(
            dimension in "\\PC{0,8}",
            limit in proptest::prelude::any::<i64>(),
            window in proptest::prelude::any::<i64>(),
            version in proptest::prelude::any::<i64>(),
        ) {
            let src = format!(
                "version = {version}\n[[rule]]\nname = \"r\"\ndimension = {}\nalgorithm = \"gcra\"\nlimit = {limit}\nwindow_ms = {window}\n",
                toml::Value::String(dimension)
            );
            if let Err(e) = RuleSet::from_toml_str(&src) {
                proptest::prop_assert!(!e.0.is_empty());
            }
        }
    }
}
