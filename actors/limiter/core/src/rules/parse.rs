//! TOML rules documents → [`RuleSet`], collecting every error with its line.
//!
//! Fields are read loosely (strings and signed integers) and checked by hand, because serde
//! would stop at the first unknown algorithm or negative limit; the point is to report them all.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Dimension, FailMode, Rule, RuleError, RuleErrorKind, RuleErrors, RuleSet};
use crate::algorithm::{AlgorithmKind, LimitParams};
use crate::time::ms_to_ns;

#[derive(Deserialize)]
struct RawFile {
    version: Option<i64>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(flatten)]
    extra: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct RawRule {
    name: Option<String>,
    dimension: Option<String>,
    algorithm: Option<String>,
    limit: Option<i64>,
    window_ms: Option<i64>,
    burst: Option<i64>,
    cost: Option<i64>,
    fail_mode: Option<String>,
    shadow: Option<bool>,
    #[serde(flatten)]
    extra: BTreeMap<String, toml::Value>,
}

fn line_of(src: &str, byte: usize) -> usize {
    src.get(..byte).map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// A positive integer field, or an error pushed and `None`.
fn positive(field: &'static str, v: Option<i64>, errs: &mut Vec<RuleErrorKind>) -> Option<u64> {
    match v {
        None => {
            errs.push(RuleErrorKind::Missing(field));
            None
        }
        Some(n) if n < 1 => {
            errs.push(RuleErrorKind::NotPositive { field, got: n });
            None
        }
        Some(n) => u64::try_from(n).ok(),
    }
}

fn rule_from_raw(raw: RawRule, errs: &mut Vec<RuleErrorKind>) -> Option<Rule> {
    for key in raw.extra.keys() {
        errs.push(RuleErrorKind::UnknownField(key.clone()));
    }
    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        errs.push(RuleErrorKind::Missing("name"));
    } else if let Err(e) = super::validate_rule_name(&name) {
        errs.push(e);
    }
    let dimension = match raw.dimension.as_deref() {
        None => {
            errs.push(RuleErrorKind::Missing("dimension"));
            None
        }
        Some(s) => Dimension::parse(s).or_else(|| {
            errs.push(RuleErrorKind::UnknownDimension(s.to_string()));
            None
        }),
    };
    let kind = match raw.algorithm.as_deref() {
        None => {
            errs.push(RuleErrorKind::Missing("algorithm"));
            None
        }
        Some(s) => AlgorithmKind::parse(s).or_else(|| {
            errs.push(RuleErrorKind::UnknownAlgorithm(s.to_string()));
            None
        }),
    };
    let fail_mode = match raw.fail_mode.as_deref() {
        None => Some(FailMode::Open),
        Some(s) => FailMode::parse(s).or_else(|| {
            errs.push(RuleErrorKind::UnknownFailMode(s.to_string()));
            None
        }),
    };
    let limit = positive("limit", raw.limit, errs);
    let window_ms = positive("window_ms", raw.window_ms, errs);
    let burst = match raw.burst {
        None => limit,
        b => positive("burst", b, errs),
    };
    let cost = match raw.cost {
        None => Some(1),
        c => positive("cost", c, errs),
    };
    let (kind, limit, window_ms, burst, cost) = (kind?, limit?, window_ms?, burst?, cost?);
    let params = LimitParams::new(kind, limit, ms_to_ns(window_ms), burst)
        .map_err(|e| errs.push(RuleErrorKind::Params(e)))
        .ok()?;
    if !errs.is_empty() {
        return None;
    }
    Rule::new(name, dimension?, params, cost, fail_mode?, raw.shadow.unwrap_or(false)).map_err(|e| errs.push(e)).ok()
}

pub(super) fn parse(src: &str) -> Result<RuleSet, RuleErrors> {
    let file: RawFile = toml::from_str(src).map_err(|e| {
        let line = e.span().map(|s| line_of(src, s.start));
        let msg = e.message().to_string();
        RuleErrors(vec![RuleError { rule: None, line, kind: RuleErrorKind::Syntax(msg) }])
    })?;
    let mut errors = Vec::new();
    for key in file.extra.keys() {
        errors.push(RuleError::set(RuleErrorKind::UnknownField(key.clone())));
    }
    let version = match file.version.map(u64::try_from) {
        Some(Ok(v)) => Some(v),
        _ => {
            errors.push(RuleError::set(RuleErrorKind::BadVersion));
            None
        }
    };
    let mut rules = Vec::new();
    for (i, spanned) in file.rule.into_iter().enumerate() {
        let line = Some(line_of(src, spanned.span().start));
        let raw = spanned.into_inner();
        let label = raw.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("#{}", i + 1));
        let mut errs = Vec::new();
        match rule_from_raw(raw, &mut errs) {
            Some(rule) if errs.is_empty() => rules.push(rule),
            _ => errors.extend(errs.into_iter().map(|k| RuleError::rule(&label, line, k))),
        }
    }
    let set = RuleSet::new(version.unwrap_or(0), rules);
    match set {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(RuleErrors(errors)),
        Err(RuleErrors(more)) => {
            errors.extend(more);
            Err(RuleErrors(errors))
        }
    }
}
