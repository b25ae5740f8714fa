//! Refunds (compensation across shards, estimate-then-adjust) and table snapshots (limits that
//! hold after re-homing).

use proptest::prelude::*;
use troupe_limiter::{
    Algorithm, AlgorithmKind, KeyedTable, LimitParams, Limiter, TableConfig, TableError, TableSnapshot,
};

const W: u64 = 1_000;

fn params_for(kind: AlgorithmKind, limit: u64, burst_extra: u64) -> LimitParams {
    let burst = if kind.uses_burst() { limit + burst_extra } else { limit };
    LimitParams::new(kind, limit, W, burst).expect("valid params")
}

/// A step: time delta, cost, and whether to refund the latest admission not yet refunded
/// instead of checking.
fn steps() -> impl Strategy<Value = Vec<(u64, u64, bool)>> {
    prop::collection::vec((prop_oneof![4 => 0u64..300, 1 => 0u64..3000], 0u64..6, prop::bool::weighted(0.3)), 1..200)
}

/// Runs the trace with refunds; returns the net admissions (time, cost): a refunded admission
/// is removed, because a refund means "this request was not served".
fn drive_with_refunds(p: LimitParams, steps: &[(u64, u64, bool)]) -> Vec<(u64, u64)> {
    let mut lim = Limiter::new(p);
    let mut now = 10_000u64;
    let mut net: Vec<(u64, u64)> = Vec::new();
    for &(dt, cost, refund) in steps {
        now += dt;
        if refund {
            if let Some((at, c)) = net.pop() {
                lim.refund(at, now, c);
            }
            continue;
        }
        if lim.check(now, cost).allowed && cost > 0 {
            net.push((now, cost));
        }
    }
    net
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every algorithm keeps its promise counting refunded admissions as never made: a refund
    /// is never more generous than not admitting.
    #[test]
    fn promises_hold_net_of_refunds(k in 0usize..5, limit in 1u64..12, extra in 0u64..6, s in steps()) {
        let kind = AlgorithmKind::ALL[k];
        let p = params_for(kind, limit, extra);
        let adm = drive_with_refunds(p, &s);
        match kind {
            AlgorithmKind::TokenBucket | AlgorithmKind::Gcra => {
                for i in 0..adm.len() {
                    let mut sum = 0u128;
                    for j in i..adm.len() {
                        sum += u128::from(adm[j].1);
                        let span = u128::from(adm[j].0 - adm[i].0);
                        prop_assert!(sum * u128::from(W) <= u128::from(p.burst()) * u128::from(W) + u128::from(limit) * span,
                            "{} admitted {} in {} ns net of refunds", kind.as_str(), sum, span);
                    }
                }
            }
            AlgorithmKind::SlidingLog => {
                for &(t, _) in &adm {
                    let sum: u64 = adm.iter().filter(|(s, _)| *s >= t && *s < t + W).map(|(_, c)| c).sum();
                    prop_assert!(sum <= limit);
                }
            }
            AlgorithmKind::FixedWindow | AlgorithmKind::SlidingCounter => {
                let mut per = std::collections::BTreeMap::<u64, u64>::new();
                for (t, c) in adm { *per.entry(t / W).or_default() += c; }
                prop_assert!(per.values().all(|&n| n <= limit));
            }
        }
    }

    /// A refund right after the admission gives the quota back to the next request, exactly
    /// for the window algorithms and the log, minus at most the bound for the buckets.
    #[test]
    fn immediate_refund_restores_the_quota(k in 0usize..5, limit in 2u64..12, cost in 1u64..3) {
        let p = params_for(AlgorithmKind::ALL[k], limit, 0);
        let mut lim = Limiter::new(p);
        let before = lim.peek(50_000, 0).remaining;
        prop_assert!(lim.check(50_000, cost).allowed);
        lim.refund(50_000, 50_000, cost);
        prop_assert_eq!(lim.peek(50_000, 0).remaining, before);
    }

    /// A snapshot restored into a fresh table (through serde) decides exactly as the original
    /// on any continuation of the trace.
    #[test]
    fn snapshot_round_trip_decides_identically(
        k in 0usize..5,
        limit in 1u64..10,
        trace in prop::collection::vec((0u64..8, 0u64..200, 0u64..4), 1..300),
        split in 0usize..300,
    ) {
        let p = params_for(AlgorithmKind::ALL[k], limit, 2);
        let mut a: KeyedTable<String> = KeyedTable::new(TableConfig { keys_max: 64 }).expect("cap");
        let mut now = 1_000_000u64;
        let split = split.min(trace.len());
        for &(key, dt, cost) in &trace[..split] {
            now += dt;
            a.check(&format!("k{key}"), &p, cost, now).expect("room");
        }
        let snap = a.snapshot(now);
        let json = serde_json::to_string(&snap).expect("serialize");
        let back: TableSnapshot<String> = serde_json::from_str(&json).expect("deserialize");
        let mut b: KeyedTable<String> = KeyedTable::new(TableConfig { keys_max: 64 }).expect("cap");
        prop_assert_eq!(b.restore(back, now), snap.len());
        for &(key, dt, cost) in &trace[split..] {
            now += dt;
            let key = format!("k{key}");
            prop_assert_eq!(a.check(&key, &p, cost, now), b.check(&key, &p, cost, now));
        }
    }
}

#[test]
fn snapshot_holds_only_busy_keys() {
    let p = params_for(AlgorithmKind::FixedWindow, 5, 0);
    let mut t: KeyedTable<String> = KeyedTable::new(TableConfig { keys_max: 16 }).expect("cap");
    t.check(&"busy".to_string(), &p, 3, 10).expect("room");
    t.check(&"probe".to_string(), &p, 0, 10).expect("room");
    let snap = t.snapshot(20);
    assert_eq!(snap.len(), 1, "a key back to full decides like an absent one and is not saved");
    assert_eq!(t.snapshot(W + 1).len(), 0, "after its window the busy key is full again");
}

#[test]
fn hostile_snapshot_is_clamped_into_the_invariants() {
    // A fixed window count far above the limit, and a sliding log whose entries sum above it.
    let fw = serde_json::to_value(params_for(AlgorithmKind::FixedWindow, 5, 0)).expect("params");
    let log = serde_json::to_value(params_for(AlgorithmKind::SlidingLog, 5, 0)).expect("params");
    let json = serde_json::json!({
        "taken_at_ns": 10,
        "groups": [
            { "params": fw, "keys": [["a", { "Words": [u64::MAX, 10, 0] }]] },
            { "params": log, "keys": [["b", { "Log": { "entries": [[5, 3], [6, 9]], "last_ns": 10 } }]] },
        ]
    });
    let snap: TableSnapshot<String> = serde_json::from_value(json).expect("shape");
    let mut t: KeyedTable<String> = KeyedTable::new(TableConfig { keys_max: 16 }).expect("cap");
    assert_eq!(t.restore(snap, 10), 1, "the malformed log is dropped");
    let p = params_for(AlgorithmKind::FixedWindow, 5, 0);
    let d = t.check(&"a".to_string(), &p, 1, 11).expect("room");
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0, "count clamped to the limit, not wrapped");
}

#[test]
fn restore_respects_keys_max() {
    let p = params_for(AlgorithmKind::TokenBucket, 5, 0);
    let mut big: KeyedTable<u64> = KeyedTable::new(TableConfig { keys_max: 100 }).expect("cap");
    for k in 0..50 {
        big.check(&k, &p, 2, 10).expect("room");
    }
    let mut small: KeyedTable<u64> = KeyedTable::new(TableConfig { keys_max: 10 }).expect("cap");
    assert_eq!(small.restore(big.snapshot(10), 10), 10);
    assert_eq!(small.len(), 10);
}

#[test]
fn charge_takes_what_is_left_and_never_more() {
    let p = params_for(AlgorithmKind::SlidingCounter, 100, 0);
    let mut t: KeyedTable<String> = KeyedTable::new(TableConfig { keys_max: 4 }).expect("cap");
    let k = "tokens".to_string();
    assert!(t.check(&k, &p, 70, 10).expect("room").allowed);
    let (charged, d) = t.charge(&k, &p, 50, 20).expect("room");
    assert_eq!(charged, 30);
    assert_eq!(d.remaining, 0);
    let (charged, _) = t.charge(&k, &p, 5, 30).expect("room");
    assert_eq!(charged, 0);
    assert!(matches!(KeyedTable::<u8>::new(TableConfig { keys_max: 0 }).map(|_| ()), Err(TableError::ZeroCapacity)));
}
