//! JSON shapes of the HTTP service and the middleware: parsing `POST /v1/check` bodies with
//! messages that say exactly what is wrong, and rendering verdicts and rule sets.
//!
//! Invariant: parsing never panics and never trusts a field's type; every refusal names the
//! field (and the check's index in a batch).

use crate::proto::{CheckItem, Mode, Verdict};
use crate::{RETRY_NEVER, RuleSet};
use serde_json::{Map, Value, json};

const ITEM_FIELDS: &str = "rule, key, cost";

fn item(at: &str, v: &Value) -> Result<CheckItem, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("{at}must be an object with fields {ITEM_FIELDS}"));
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "rule" | "key" | "cost")) {
        return Err(format!("{at}unknown field `{k}` (expected {ITEM_FIELDS})"));
    }
    let rule = match obj.get("rule") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err(format!("{at}`rule` is required (a rule name)")),
        Some(other) => return Err(format!("{at}`rule` must be a string, got {}", kind(other))),
    };
    let key = match obj.get("key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("{at}`key` must be a string, got {}", kind(other))),
    };
    let cost = match obj.get("cost") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(c), _) => Some(c),
            (None, Some(neg)) => return Err(format!("{at}`cost` must not be negative, got {neg}")),
            _ => return Err(format!("{at}`cost` must be a whole number, got {n}")),
        },
        Some(other) => return Err(format!("{at}`cost` must be a non-negative integer, got {}", kind(other))),
    };
    Ok(CheckItem { rule, key, cost })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a check body: one `{"rule", "key", "cost"}` or `{"checks": [...]}`.
pub fn parse_checks(body: &[u8]) -> Result<Vec<CheckItem>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err(format!(
            "the body must be a JSON object: {{\"rule\", \"key\", \"cost\"}} or {{\"checks\": [...]}}, got {}",
            kind(&v)
        ));
    };
    match obj.get("checks") {
        None => Ok(vec![item("", &v)?]),
        Some(Value::Array(items)) => {
            if let Some(k) = obj.keys().find(|k| k.as_str() != "checks") {
                return Err(format!("unknown field `{k}` next to `checks`"));
            }
            items.iter().enumerate().map(|(i, it)| item(&format!("checks[{i}]: "), it)).collect()
        }
        Some(other) => Err(format!("`checks` must be an array of checks, got {}", kind(other))),
    }
}

fn mode_str(m: &Mode) -> &'static str {
    match m {
        Mode::Enforced => "enforced",
        Mode::Shadow { .. } => "shadow",
        Mode::FailOpen => "fail_open",
        Mode::FailClosed => "fail_closed",
    }
}

fn ms(ns: u64) -> u64 {
    ns.div_ceil(1_000_000)
}

/// The JSON answer to a check.
pub fn verdict(v: &Verdict) -> Value {
    let results: Vec<Value> = v
        .results
        .iter()
        .map(|r| {
            let d = &r.decision;
            json!({
                "rule": r.rule,
                "key": r.key,
                "cost": r.cost,
                "allowed": d.allowed,
                "mode": mode_str(&r.mode),
                "would_block": matches!(r.mode, Mode::Shadow { would_block: true }),
                "limit": d.limit,
                "remaining": d.remaining,
                "reset_ms": ms(d.reset_after_ns),
                "retry_after_ms": if d.allowed || d.retry_after_ns == RETRY_NEVER { Value::Null } else { json!(ms(d.retry_after_ns)) },
            })
        })
        .collect();
    json!({
        "allowed": v.allowed,
        "rules_version": v.rules_version,
        "binding": v.binding().map(|r| r.rule.clone()),
        "results": results,
    })
}

/// The rule set as JSON, in the rule file's own terms (`window_ms`).
pub fn rules(set: &RuleSet) -> Value {
    let rules: Vec<Value> = set
        .rules()
        .map(|r| {
            let p = r.params();
            let mut m = Map::new();
            m.insert("name".into(), json!(r.name()));
            m.insert("dimension".into(), json!(r.dimension().as_str()));
            m.insert("algorithm".into(), json!(p.kind().as_str()));
            m.insert("limit".into(), json!(p.limit()));
            m.insert("window_ms".into(), json!(p.window_ns() / 1_000_000));
            if p.kind().uses_burst() {
                m.insert("burst".into(), json!(p.burst()));
            }
            m.insert("cost".into(), json!(r.cost()));
            m.insert("fail_mode".into(), json!(r.fail_mode().as_str()));
            m.insert("shadow".into(), json!(r.shadow()));
            Value::Object(m)
        })
        .collect();
    json!({ "version": set.version(), "rules": rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies_parse() {
        let one = parse_checks(br#"{"rule":"r","key":"k","cost":3}"#).expect("single");
        assert_eq!(one, vec![CheckItem { rule: "r".into(), key: "k".into(), cost: Some(3) }]);
        let many = parse_checks(br#"{"checks":[{"rule":"a","key":"x"},{"rule":"g"}]}"#).expect("batch");
        assert_eq!(many.len(), 2);
        assert_eq!(many[1].key, "");
        assert_eq!(many[0].cost, None);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let err = |b: &str| parse_checks(b.as_bytes()).expect_err("must be refused");
        assert!(err(r#"{"rule":"r","key":"k","cost":-2}"#).contains("must not be negative, got -2"));
        assert!(err(r#"{"rule":"r","cost":1.5}"#).contains("whole number"));
        assert!(err(r#"{"rule":"r","cost":"1"}"#).contains("non-negative integer, got a string"));
        assert!(err(r#"{"key":"k"}"#).contains("`rule` is required"));
        assert!(err(r#"{"rule":"r","user":"k"}"#).contains("unknown field `user`"));
        assert!(err(r#"{"checks":[{"rule":"a"},{"rule":7}]}"#).contains("checks[1]: `rule` must be a string"));
        assert!(err(r#"{"checks":{}}"#).contains("must be an array"));
        assert!(err("{nope").contains("not valid JSON"));
        assert!(err("[1]").contains("must be a JSON object"));
    }

    proptest::proptest! {
        /// Any bytes to `POST /v1/check`: checks or a reason, never a panic.
        #[test]
        fn any_body_is_checks_or_a_reason(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Err(why) = parse_checks(&body) {
                proptest::prop_assert!(!why.is_empty());
            }
        }
    }

    #[test]
    fn hostile_check_bodies_say_what_is_wrong() {
        let deep = "[".repeat(50_000);
        for (body, says) in [
            (deep.as_str(), "JSON"),
            (r#"{"rule":"r","key":"k","cost":-1}"#, "cost"),
            (r#"{"rule":"r","key":"k","cost":1e300}"#, "cost"),
            (r#"{"rule":"r","key":"k","cost":18446744073709551616}"#, "cost"),
            (r#"{"checks":"all"}"#, "checks"),
        ] {
            let why = parse_checks(body.as_bytes()).expect_err(body);
            assert!(why.contains(says), "{body}: {why}");
        }
        assert!(parse_checks(b"\xff{").is_err(), "invalid UTF-8 is refused");
    }
}
