//! Rule errors: each names the rule and line it concerns and says how to fix it.
//!
//! Invariant: parsing never stops at the first semantic error; [`RuleErrors`] holds them all.

use std::fmt;

use crate::algorithm::ParamError;

/// What is wrong with a rule or a rule set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    /// The TOML itself did not parse (or a field had the wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field this format does not know (often a typo).
    #[error(
        "unknown field `{0}`; known fields: name, dimension, algorithm, limit, window_ms, burst, cost, fail_mode, shadow"
    )]
    UnknownField(String),
    /// `algorithm` is not one of the five.
    #[error("unknown algorithm `{0}`; use token_bucket, gcra, sliding_log, sliding_counter or fixed_window")]
    UnknownAlgorithm(String),
    /// `dimension` is not one of the four.
    #[error("unknown dimension `{0}`; use user, ip, endpoint or global")]
    UnknownDimension(String),
    /// `fail_mode` is neither open nor closed.
    #[error("unknown fail_mode `{0}`; use open or closed")]
    UnknownFailMode(String),
    /// A number that must be at least 1 was zero or negative.
    #[error("{field} must be at least 1, got {got}")]
    NotPositive { field: &'static str, got: i64 },
    /// The parameters were rejected by the algorithm (bounds, burst on a window algorithm...).
    #[error("{0}")]
    Params(ParamError),
    /// The default cost can never be admitted.
    #[error("cost {cost} is above the capacity {capacity}: every request would be denied")]
    CostAboveCapacity { cost: u64, capacity: u64 },
    /// Two rules share a name.
    #[error("duplicate rule name `{0}`; names must be unique")]
    DuplicateName(String),
    /// A name with a forbidden character or length.
    #[error("rule name `{name}` {why}")]
    BadName { name: String, why: &'static str },
    /// The document has no `version` or a negative one.
    #[error("`version` must be a non-negative integer at the top of the file (bump it on every change)")]
    BadVersion,
    /// Too many rules in one set.
    #[error("{got} rules is above the bound of {max} per set")]
    TooMany { got: usize, max: usize },
}

/// One error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule's name, or `#<index>` when it has none; `None` for set-level errors.
    pub rule: Option<String>,
    /// 1-based line of the rule's table in the source, when parsed from text.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: RuleErrorKind,
}

impl RuleError {
    pub(crate) fn set(kind: RuleErrorKind) -> Self {
        RuleError { rule: None, line: None, kind }
    }
    pub(crate) fn rule(name: &str, line: Option<usize>, kind: RuleErrorKind) -> Self {
        RuleError { rule: Some(name.to_string()), line, kind }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for RuleError {}

/// Every error found in a rules document or set (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in rules:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}
