use super::*;
use proptest::prelude::*;

fn cache(cap: usize) -> LruCache<String, u32> {
    LruCache::new(NonZeroUsize::new(cap).expect("non-zero"))
}

#[test]
fn evicts_least_recently_used() {
    let mut c = cache(2);
    assert_eq!(c.insert("a".into(), 1), None);
    assert_eq!(c.insert("b".into(), 2), None);
    assert_eq!(c.get("a"), Some(&1)); // a is now most recent
    assert_eq!(c.insert("c".into(), 3), Some(("b".into(), 2)));
    assert_eq!(c.get("b"), None);
    assert_eq!(c.len(), 2);
    assert_eq!(c.stats(), CacheStats { hits: 1, misses: 1, evictions: 1, invalidations: 0 });
    assert!((c.stats().hit_rate() - 0.5).abs() < 1e-9);
}

#[test]
fn replace_does_not_evict_and_refreshes() {
    let mut c = cache(2);
    c.insert("a".into(), 1);
    c.insert("b".into(), 2);
    assert_eq!(c.insert("a".into(), 10), None);
    assert_eq!(c.insert("c".into(), 3), Some(("b".into(), 2)));
    assert_eq!(c.peek("a"), Some(&10));
}

#[test]
fn invalidate_removes_and_counts() {
    let mut c = cache(3);
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        c.insert(k.into(), v);
    }
    assert_eq!(c.invalidate("a"), Some(1));
    assert_eq!(c.invalidate("a"), None);
    assert_eq!(c.len(), 2);
    c.insert("d".into(), 4);
    c.insert("e".into(), 5);
    // b was least recent after a left.
    assert_eq!(c.peek("b"), None);
    assert_eq!(c.stats().invalidations, 1);
    c.clear();
    assert!(c.is_empty());
    assert_eq!(c.get("c"), None);
}

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8, u32),
    Invalidate(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12).prop_map(Op::Get),
        (0u8..12, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        (0u8..12).prop_map(Op::Invalidate),
    ]
}

proptest! {
    /// The cache behaves exactly like a naive recency list (front = most recent).
    #[test]
    fn matches_a_naive_model(cap in 1usize..6, ops in proptest::collection::vec(op(), 0..200)) {
        let mut real: LruCache<u8, u32> = LruCache::new(NonZeroUsize::new(cap).expect("non-zero"));
        let mut model: Vec<(u8, u32)> = Vec::new();
        let (mut hits, mut misses) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Get(k) => {
                    let expected = model.iter().position(|e| e.0 == k).map(|i| {
                        let e = model.remove(i);
                        model.insert(0, e);
                        e.1
                    });
                    if expected.is_some() { hits += 1 } else { misses += 1 }
                    prop_assert_eq!(real.get(&k).copied(), expected);
                }
                Op::Insert(k, v) => {
                    let mut expected_evicted = None;
                    if let Some(i) = model.iter().position(|e| e.0 == k) {
                        model.remove(i);
                    } else if model.len() == cap {
                        expected_evicted = model.pop();
                    }
                    model.insert(0, (k, v));
                    prop_assert_eq!(real.insert(k, v), expected_evicted);
                }
                Op::Invalidate(k) => {
                    let expected = model.iter().position(|e| e.0 == k).map(|i| model.remove(i).1);
                    prop_assert_eq!(real.invalidate(&k), expected);
                }
            }
            prop_assert!(real.len() <= cap);
            prop_assert_eq!(real.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(real.peek(k), Some(v));
            }
        }
        prop_assert_eq!((real.stats().hits, real.stats().misses), (hits, misses));
    }
}
