//! Header values: X-RateLimit-*, Retry-After, and the IETF RateLimit-Policy / RateLimit fields.

use troupe_limiter::headers::{
    HeaderError, PolicyItem, QuotaUnit, RateLimitItem, policy_item, ratelimit, ratelimit_policy, retry_after_secs,
    x_ratelimit_headers,
};
use troupe_limiter::{Algorithm, AlgorithmKind, Decision, LimitParams, Limiter, RETRY_NEVER, RuleSet};

#[test]
fn x_ratelimit_on_allow_and_deny() {
    let p = LimitParams::simple(AlgorithmKind::FixedWindow, 2, 60_000_000_000).expect("params");
    let mut l = Limiter::new(p);
    let now = 15_500_000_000; // 15.5 s into a 60 s window
    let ok = l.check(now, 2);
    assert_eq!(
        x_ratelimit_headers(&ok),
        [
            ("X-RateLimit-Limit", "2".to_string()),
            ("X-RateLimit-Remaining", "0".to_string()),
            ("X-RateLimit-Reset", "45".to_string()),
        ]
    );
    let no = l.check(now, 1);
    let h = x_ratelimit_headers(&no);
    assert_eq!(h[3], ("Retry-After", "45".to_string()));
    // Cost above capacity: retrying cannot help, so no Retry-After.
    let never = Decision { allowed: false, limit: 2, remaining: 2, reset_after_ns: 0, retry_after_ns: RETRY_NEVER };
    assert_eq!(x_ratelimit_headers(&never).len(), 3);
    assert_eq!(retry_after_secs(&never), None);
    // Sub-second waits round up to 1 s, never 0.
    let soon = Decision { allowed: false, limit: 2, remaining: 0, reset_after_ns: 10, retry_after_ns: 10 };
    assert_eq!(retry_after_secs(&soon), Some(1));
}

#[test]
fn ietf_fields_use_the_draft_syntax() {
    let policy = ratelimit_policy(&[
        PolicyItem { name: "default", quota: 100, window_s: Some(60), unit: None },
        PolicyItem { name: "bytes", quota: 1_000_000, window_s: Some(3600), unit: Some(QuotaUnit::ContentBytes) },
    ])
    .expect("valid");
    assert_eq!(policy, r#""default";q=100;w=60, "bytes";q=1000000;qu="content-bytes";w=3600"#);
    let rl = ratelimit(&[RateLimitItem { name: "default", remaining: 42, reset_s: Some(30) }]).expect("valid");
    assert_eq!(rl, r#""default";r=42;t=30"#);
    assert_eq!(ratelimit(&[]), Err(HeaderError::Empty));
    assert!(matches!(
        ratelimit_policy(&[PolicyItem { name: "caf\u{e9}", quota: 1, window_s: None, unit: None }]),
        Err(HeaderError::BadPolicyName(_))
    ));
    let quoted = ratelimit(&[RateLimitItem { name: "a\"b", remaining: u64::MAX, reset_s: None }]).expect("valid");
    assert_eq!(quoted, r#""a\"b";r=999999999999999"#);
}

#[test]
fn policy_and_state_from_a_rule_and_decision() {
    let set = RuleSet::from_toml_str(
        "version=1\n[[rule]]\nname='chat'\ndimension='user'\nalgorithm='gcra'\nlimit=60\nwindow_ms=60000\n",
    )
    .expect("valid");
    let rule = set.get("chat").expect("rule");
    assert_eq!(ratelimit_policy(&[policy_item(rule)]).expect("valid"), r#""chat";q=60;w=60"#);
    let mut l = Limiter::new(*rule.params());
    let d = l.check(0, 1);
    let item = RateLimitItem::from_decision(rule.name(), &d);
    assert_eq!(ratelimit(&[item]).expect("valid"), r#""chat";r=59;t=1"#);
}
