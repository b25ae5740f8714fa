//! Rules: TOML parsing with every error reported, versioned sets and diffs, shard keys.

use troupe_limiter::rules::RuleErrorKind;
use troupe_limiter::{ActiveRules, AlgorithmKind, Dimension, FailMode, KeyError, RuleSet, RuleUpdateError, shard_key};

const GOOD: &str = r#"
version = 2

[[rule]]
name = "api-per-ip"
dimension = "ip"
algorithm = "gcra"
limit = 100
window_ms = 1000
burst = 150

[[rule]]
name = "global-writes"
dimension = "global"
algorithm = "sliding_counter"
limit = 5000
window_ms = 60000
cost = 2
fail_mode = "closed"
shadow = true
"#;

#[test]
fn parses_a_good_file() {
    let set = RuleSet::from_toml_str(GOOD).expect("valid");
    assert_eq!(set.version(), 2);
    assert_eq!(set.len(), 2);
    let r = set.get("api-per-ip").expect("rule");
    assert_eq!(r.dimension(), Dimension::Ip);
    assert_eq!(r.params().kind(), AlgorithmKind::Gcra);
    assert_eq!((r.params().limit(), r.params().burst(), r.params().window_ns()), (100, 150, 1_000_000_000));
    assert_eq!((r.cost(), r.fail_mode(), r.shadow()), (1, FailMode::Open, false));
    let g = set.get("global-writes").expect("rule");
    assert_eq!((g.cost(), g.fail_mode(), g.shadow()), (2, FailMode::Closed, true));
}

#[test]
fn reports_every_error_with_its_line() {
    let bad = r#"
version = 1
[[rule]]
name = "a"
dimension = "planet"
algorithm = "leaky"
limit = -3
window_ms = 0

[[rule]]
name = "b:c"
dimension = "user"
algorithm = "fixed_window"
limit = 10
window_ms = 1000
burst = 20
colour = "red"

[[rule]]
name = "d"
dimension = "user"
algorithm = "token_bucket"
limit = 10
window_ms = 1000
fail_mode = "maybe"
cost = 0
"#;
    let errs = RuleSet::from_toml_str(bad).expect_err("invalid").0;
    let kinds: Vec<&RuleErrorKind> = errs.iter().map(|e| &e.kind).collect();
    let has = |f: &dyn Fn(&RuleErrorKind) -> bool| kinds.iter().any(|k| f(k));
    assert!(has(&|k| matches!(k, RuleErrorKind::UnknownDimension(d) if d == "planet")));
    assert!(has(&|k| matches!(k, RuleErrorKind::UnknownAlgorithm(a) if a == "leaky")));
    assert!(has(&|k| matches!(k, RuleErrorKind::NotPositive { field: "limit", got: -3 })));
    assert!(has(&|k| matches!(k, RuleErrorKind::NotPositive { field: "window_ms", got: 0 })));
    assert!(has(&|k| matches!(k, RuleErrorKind::BadName { .. })));
    assert!(has(&|k| matches!(k, RuleErrorKind::UnknownField(f) if f == "colour")));
    assert!(has(&|k| matches!(k, RuleErrorKind::Params(_))), "burst on a fixed window");
    assert!(has(&|k| matches!(k, RuleErrorKind::UnknownFailMode(m) if m == "maybe")));
    assert!(has(&|k| matches!(k, RuleErrorKind::NotPositive { field: "cost", got: 0 })));
    assert_eq!(errs.len(), 9, "{errs:#?}");
    let first = errs.iter().find(|e| e.rule.as_deref() == Some("a")).expect("located");
    assert_eq!(first.line, Some(3));
    let text = RuleSet::from_toml_str(bad).expect_err("invalid").to_string();
    assert!(text.contains("line 10: rule `b:c`"), "{text}");
}

#[test]
fn syntax_errors_and_duplicates_are_reported() {
    let e = RuleSet::from_toml_str("version = 1\n[[rule]\n").expect_err("syntax");
    assert!(matches!(e.0[0].kind, RuleErrorKind::Syntax(_)));
    assert_eq!(e.0[0].line, Some(2));
    let dup = "version = 1\n[[rule]]\nname='x'\ndimension='user'\nalgorithm='gcra'\nlimit=1\nwindow_ms=1\n\
               [[rule]]\nname='x'\ndimension='ip'\nalgorithm='gcra'\nlimit=1\nwindow_ms=1\n";
    let e = RuleSet::from_toml_str(dup).expect_err("dup");
    assert!(matches!(&e.0[0].kind, RuleErrorKind::DuplicateName(n) if n == "x"));
    let e = RuleSet::from_toml_str("[[rule]]\nname='x'\ndimension='user'\nalgorithm='gcra'\nlimit=1\nwindow_ms=1\n")
        .expect_err("no version");
    assert!(matches!(e.0[0].kind, RuleErrorKind::BadVersion));
}

#[test]
fn versioned_updates_diff_and_refuse_stale_or_conflicting_sets() {
    let v2 = RuleSet::from_toml_str(GOOD).expect("valid");
    let v3 = RuleSet::from_toml_str(
        &GOOD
            .replace("version = 2", "version = 3")
            .replace("limit = 100", "limit = 200")
            .replace("name = \"global-writes\"", "name = \"per-user\""),
    )
    .expect("valid");
    let mut active = ActiveRules::new(v2.clone());
    let diff = active.apply(v3.clone()).expect("newer");
    assert_eq!((diff.from_version, diff.to_version), (2, 3));
    assert_eq!(diff.added, ["per-user"]);
    assert_eq!(diff.changed, ["api-per-ip"]);
    assert_eq!(diff.removed, ["global-writes"]);
    assert!(active.apply(v3.clone()).expect("re-delivery").is_empty());
    assert_eq!(active.apply(v2.clone()), Err(RuleUpdateError::Stale { active: 3, offered: 2 }));
    let other3 = RuleSet::new(3, vec![]).expect("empty set");
    assert_eq!(active.apply(other3), Err(RuleUpdateError::Conflict { version: 3 }));
    assert_eq!(active.current(), &v3);
}

#[test]
fn rule_sets_round_trip_through_serde_and_revalidate() {
    let set = RuleSet::from_toml_str(GOOD).expect("valid");
    let json = serde_json::to_string(&set).expect("serialize");
    let back: RuleSet = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, set);
    let tampered = json.replace("\"api-per-ip\"", "\"bad|name\"");
    assert!(serde_json::from_str::<RuleSet>(&tampered).is_err(), "a bad rule from the wire is refused");
}

#[test]
fn shard_keys_are_bounded_and_unambiguous() {
    let set = RuleSet::from_toml_str(GOOD).expect("valid");
    let ip = set.get("api-per-ip").expect("rule");
    let global = set.get("global-writes").expect("rule");
    assert_eq!(shard_key(ip, "10.0.0.1").expect("key"), "api-per-ip|ip|10.0.0.1");
    assert_eq!(shard_key(global, "").expect("key"), "global-writes|global");
    assert!(matches!(shard_key(ip, ""), Err(KeyError::EmptyValue { .. })));
    assert!(matches!(shard_key(global, "x"), Err(KeyError::ValueForGlobal { .. })));
    assert!(matches!(shard_key(ip, "a\nb"), Err(KeyError::ControlChar { .. })));
    let long = "x".repeat(300);
    let err = shard_key(ip, &long).expect_err("oversize");
    assert!(matches!(err, KeyError::TooLong { bytes: 314, max: 256, .. }));
    assert!(err.to_string().contains("shorten the ip value"));
    let at_bound = "y".repeat(256 - "api-per-ip|ip|".len());
    assert_eq!(shard_key(ip, &at_bound).expect("fits").len(), 256);
}
