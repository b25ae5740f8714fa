//! Keyed table: bounded keys, lossless idle eviction, all-or-nothing multi-limit checks,
//! shadow mode, rule changes.

use proptest::prelude::*;
use troupe_limiter::{AlgorithmKind, KeyedTable, LimitCheck, LimitParams, TableConfig, TableError};

const W: u64 = 1_000_000;

fn tb(limit: u64) -> LimitParams {
    LimitParams::simple(AlgorithmKind::TokenBucket, limit, W).expect("params")
}
fn fw(limit: u64) -> LimitParams {
    LimitParams::simple(AlgorithmKind::FixedWindow, limit, W).expect("params")
}

#[test]
fn full_table_refuses_new_keys_until_one_is_idle() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 2 }).expect("cap");
    let p = fw(3);
    assert!(t.check(&1u64, &p, 1, 10).expect("room").allowed);
    assert!(t.check(&2u64, &p, 1, 10).expect("room").allowed);
    // Both keys have usage in the current window: evicting either would mint quota.
    assert_eq!(t.check(&3u64, &p, 1, 20), Err(TableError::Full { keys_max: 2 }));
    assert_eq!(t.len(), 2);
    // Once the window ends their state is back to full, so one can go.
    assert!(t.check(&3u64, &p, 1, W + 5).expect("idle key evicted").allowed);
    assert_eq!(t.len(), 2);
}

#[test]
fn evict_idle_drops_only_full_keys() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 100 }).expect("cap");
    let p = tb(10);
    for k in 0..50u64 {
        t.check(&k, &p, 1 + k % 5, 0).expect("room");
    }
    // Token bucket: cost c needs c·W/limit ns to refill. At W/10·3 only keys with cost <= 3 are full.
    let evicted = t.evict_idle(3 * W / 10, 1_000);
    assert_eq!(evicted, 30);
    assert_eq!(t.len(), 20);
    assert_eq!(t.evict_idle(10 * W, 1_000), 20);
    assert!(t.is_empty());
}

#[test]
fn check_many_is_all_or_nothing() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 16 }).expect("cap");
    let (req, tok) = ("u1|req".to_string(), "u1|tok".to_string());
    let (p_req, p_tok) = (fw(10), fw(1000));
    let checks = |cost_tok| {
        [
            LimitCheck { key: &req, params: p_req, cost: 1, shadow: false },
            LimitCheck { key: &tok, params: p_tok, cost: cost_tok, shadow: false },
        ]
    };
    let ok = t.check_many(&checks(600), 5).expect("room");
    assert!(ok.admitted);
    assert_eq!(ok.results[0].decision.remaining, 9);
    assert_eq!(ok.results[1].decision.remaining, 400);
    // The token limit denies: the request limit must not be consumed either.
    let no = t.check_many(&checks(600), 6).expect("room");
    assert!(!no.admitted);
    assert_eq!(no.binding, Some(1));
    assert!(no.results[0].decision.allowed);
    assert_eq!(t.peek(&req, &p_req, 1, 7).remaining, 8, "request limit untouched by the denied request");
    assert_eq!(t.peek(&tok, &p_tok, 0, 7).remaining, 400);
}

#[test]
fn shadow_limits_report_but_never_deny() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 16 }).expect("cap");
    let (a, s) = ("a".to_string(), "s".to_string());
    let c = [
        LimitCheck { key: &a, params: fw(100), cost: 1, shadow: false },
        LimitCheck { key: &s, params: fw(2), cost: 1, shadow: true },
    ];
    let outcomes: Vec<_> = (0..4).map(|i| t.check_many(&c, i).expect("room")).collect();
    assert!(outcomes.iter().all(|o| o.admitted));
    let would_block: Vec<bool> = outcomes.iter().map(|o| o.results[1].would_block).collect();
    assert_eq!(would_block, [false, false, true, true]);
    assert_eq!(outcomes[3].binding, Some(0), "headers come from the enforced limit");
    assert_eq!(t.peek(&a, &fw(100), 0, 5).remaining, 96);
}

#[test]
fn duplicate_keys_and_too_many_checks_are_rejected() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 64 }).expect("cap");
    let k = 1u64;
    let c = LimitCheck { key: &k, params: fw(5), cost: 1, shadow: false };
    assert_eq!(t.check_many(&[c, c], 0), Err(TableError::DuplicateKey { first: 0, second: 1 }));
    let keys: Vec<u64> = (0..17).collect();
    let many: Vec<_> = keys.iter().map(|k| LimitCheck { key: k, params: fw(5), cost: 1, shadow: false }).collect();
    assert!(matches!(t.check_many(&many, 0), Err(TableError::TooManyChecks { got: 17, .. })));
    assert!(t.is_empty(), "rejected requests change nothing");
    assert_eq!(KeyedTable::<u64>::new(TableConfig { keys_max: 0 }).err(), Some(TableError::ZeroCapacity));
}

#[test]
fn changed_params_restart_the_key() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 4 }).expect("cap");
    for _ in 0..3 {
        t.check(&1u64, &fw(3), 1, 0).expect("room");
    }
    assert!(!t.check(&1u64, &fw(3), 1, 0).expect("room").allowed);
    // The rule was raised to 5: the key restarts under the new parameters.
    assert!(t.check(&1u64, &fw(5), 1, 0).expect("room").allowed);
}

#[test]
fn check_many_does_not_evict_its_own_keys() {
    let mut t = KeyedTable::new(TableConfig { keys_max: 2 }).expect("cap");
    let (a, b) = (1u64, 2u64);
    // `a` exists and is full (cost 0 creates it without usage); a request for a + b must not
    // evict `a` to make room for `b`.
    t.check(&a, &fw(5), 0, 0).expect("room");
    t.check(&9u64, &fw(5), 1, 0).expect("room");
    let c = [
        LimitCheck { key: &a, params: fw(5), cost: 1, shadow: false },
        LimitCheck { key: &b, params: fw(5), cost: 1, shadow: false },
    ];
    assert_eq!(t.check_many(&c, 1), Err(TableError::Full { keys_max: 2 }));
}

proptest! {
    /// A bounded table never holds more than keys_max keys, and eviction never lets a key
    /// admit more than its limit per aligned window (eviction is lossless).
    #[test]
    fn bounded_and_lossless(ops in prop::collection::vec((0u64..40, 0u64..200, 1u64..3), 1..400)) {
        let mut t = KeyedTable::new(TableConfig { keys_max: 8 }).expect("cap");
        let p = fw(4);
        let mut now = 0u64;
        let mut per: std::collections::HashMap<(u64, u64), u64> = Default::default();
        for (key, dt, cost) in ops {
            now += dt * W / 50;
            if let Ok(d) = t.check(&key, &p, cost, now) && d.allowed {
                *per.entry((key, now / W)).or_default() += cost;
            }
            prop_assert!(t.len() <= 8);
            if now.is_multiple_of(3) { t.evict_idle(now, 4); }
        }
        prop_assert!(per.values().all(|&n| n <= 4));
    }
}

proptest! {
    /// The packed table behaves exactly like one independent `Limiter` per key, for every
    /// algorithm, across evictions (which must be lossless), sliding-log slot reuse and
    /// parameter changes (which restart the key in both).
    #[test]
    fn table_matches_one_limiter_per_key(
        ops in prop::collection::vec((0u64..12, 0u64..W / 3, 0u64..4, 0usize..10), 1..500),
    ) {
        use troupe_limiter::{Algorithm, Limiter};
        let variants: Vec<LimitParams> = AlgorithmKind::ALL
            .iter()
            .flat_map(|k| [LimitParams::simple(*k, 3, W).expect("params"), LimitParams::simple(*k, 5, W / 2).expect("params")])
            .collect();
        let mut table = KeyedTable::new(TableConfig { keys_max: 6 }).expect("cap");
        let mut reference: std::collections::HashMap<u64, Limiter> = Default::default();
        let mut now = 0u64;
        for (key, dt, cost, v) in ops {
            now += dt;
            let p = variants[v % variants.len()];
            // A key keeps one parameter set most of the time, as keys of one rule do.
            let p = if v < 8 { variants[(key as usize) % variants.len()] } else { p };
            match table.check(&key, &p, cost, now) {
                Ok(got) => {
                    let r = reference.entry(key).or_insert_with(|| Limiter::new(p));
                    if r.params() != &p { *r = Limiter::new(p); }
                    prop_assert_eq!(got, r.check(now, cost));
                }
                Err(TableError::Full { .. }) => {
                    // Refused: nothing changed, and the reference must not change either.
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            // The reference never evicts: if the table's evictions are lossless (only full keys,
            // where fresh state behaves identically), the decisions above keep matching.
            if now.is_multiple_of(5) { table.evict_idle(now, 8); }
            prop_assert!(table.len() <= 6);
        }
    }
}
