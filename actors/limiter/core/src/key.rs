//! Shard keys: `(rule, dimension value)` → the string that places and names a limiter's state.
//!
//! Format: `<rule>|<dimension>|<value>`, or `<rule>|global` for a global rule. Rule names
//! cannot contain `|` (see [`crate::rules::validate_rule_name`]) so the key is unambiguous even
//! when the value contains `|`. Invariant: a key is at most [`KEY_BYTES_MAX`] bytes and holds no
//! control characters (it appears in logs and metrics).

use crate::rules::{Dimension, Rule};

/// Longest shard key, in bytes. Bounds the memory a hostile caller can make one key cost.
pub const KEY_BYTES_MAX: usize = 256;

/// Why a key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A user, ip or endpoint rule got an empty value.
    #[error("rule `{rule}` counts by {dimension}: the {dimension} value must not be empty")]
    EmptyValue { rule: String, dimension: &'static str },
    /// A global rule got a value; a global limit is one counter, so a value is a caller bug.
    #[error("rule `{rule}` is global: pass an empty value, got {got_bytes} bytes")]
    ValueForGlobal { rule: String, got_bytes: usize },
    /// The key would be longer than [`KEY_BYTES_MAX`].
    #[error(
        "key for rule `{rule}` would be {bytes} bytes, above the bound of {max} bytes; shorten the {dimension} value"
    )]
    TooLong { rule: String, dimension: &'static str, bytes: usize, max: usize },
    /// The value holds a control character.
    #[error("the {dimension} value for rule `{rule}` contains a control character")]
    ControlChar { rule: String, dimension: &'static str },
}

/// Builds the shard key for `rule` and the request's value of the rule's dimension.
pub fn shard_key(rule: &Rule, value: &str) -> Result<String, KeyError> {
    let dim = rule.dimension();
    let rule_name = rule.name();
    if dim == Dimension::Global {
        if !value.is_empty() {
            return Err(KeyError::ValueForGlobal { rule: rule_name.to_string(), got_bytes: value.len() });
        }
        return Ok(format!("{rule_name}|global"));
    }
    if value.is_empty() {
        return Err(KeyError::EmptyValue { rule: rule_name.to_string(), dimension: dim.as_str() });
    }
    let bytes = rule_name.len() + 2 + dim.as_str().len() + value.len();
    if bytes > KEY_BYTES_MAX {
        return Err(KeyError::TooLong {
            rule: rule_name.to_string(),
            dimension: dim.as_str(),
            bytes,
            max: KEY_BYTES_MAX,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(KeyError::ControlChar { rule: rule_name.to_string(), dimension: dim.as_str() });
    }
    Ok(format!("{rule_name}|{}|{value}", dim.as_str()))
}
