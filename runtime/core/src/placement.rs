//! Placement: which node owns an actor, as a pure function of the live membership.
//!
//! Weighted rendezvous hashing (highest random weight, logarithmic method): every
//! node scores `-weight / ln(u)` with `u` a uniform hash of (key, node name); the
//! highest score owns the key, the next ones hold its replicas. When a node leaves,
//! only the keys it owned move; when it returns, the same keys come back to it.
//! Node weights skew ownership in proportion.
//!
//! The hash is fixed (FNV-1a folded through splitmix64), never seeded per process,
//! so every node computes the same owner from the same view.

/// A member as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub roles: Vec<String>,
    pub weight: f64,
}

pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn score(key: &str, c: &Candidate) -> f64 {
    score_of(key, &c.name, c.weight)
}

fn score_of(key: &str, name: &str, weight: f64) -> f64 {
    let h = stable_hash(&[key.as_bytes(), name.as_bytes()]);
    // u in (0, 1): never 0, so ln(u) is finite and negative.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

/// Candidates eligible for `role` (all when `None`), best owner first.
pub fn rank<'a>(key: &str, candidates: &'a [Candidate], role: Option<&str>) -> Vec<&'a Candidate> {
    let mut v: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| role.is_none_or(|r| c.roles.iter().any(|x| x == r)))
        .map(|c| (score(key, c), c))
        .collect();
    // Ties (vanishingly rare) break by name so every node agrees.
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    v.into_iter().map(|(_, c)| c).collect()
}

/// The first `n` eligible members of a roster for `key`, best owner first: the same
/// order [`rank`] gives the same nodes as candidates. `members` are (name, roles,
/// weight) triples.
pub fn top<'a>(
    key: &str,
    members: impl Iterator<Item = (&'a str, &'a [String], f64)>,
    role: Option<&str>,
    n: usize,
) -> Vec<&'a str> {
    let mut v: Vec<(f64, &str)> = members
        .filter(|(_, roles, _)| role.is_none_or(|r| roles.iter().any(|x| x == r)))
        .map(|(name, _, weight)| (score_of(key, name, if weight > 0.0 { weight } else { 1.0 }), name))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().take(n).map(|(_, name)| name).collect()
}

pub fn owner<'a>(key: &str, candidates: &'a [Candidate], role: Option<&str>) -> Option<&'a Candidate> {
    rank(key, candidates, role).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Candidate { name: format!("n{i}"), roles: vec![], weight: 1.0 }).collect()
    }

    #[test]
    fn balanced_and_weighted() {
        let ns = nodes(4);
        let mut counts = [0usize; 4];
        for k in 0..40_000 {
            let o = owner(&format!("key{k}"), &ns, None).unwrap();
            counts[o.name[1..].parse::<usize>().unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        let mut w = nodes(2);
        w[0].weight = 3.0;
        let heavy = (0..20_000).filter(|k| owner(&format!("k{k}"), &w, None).unwrap().name == "n0").count();
        assert!((14_000..16_000).contains(&heavy), "weight 3:1 should own ~75%, got {heavy}");
    }

    #[test]
    fn roles_filter() {
        let mut ns = nodes(3);
        ns[2].roles = vec!["gpu".into()];
        for k in 0..100 {
            assert_eq!(owner(&format!("{k}"), &ns, Some("gpu")).unwrap().name, "n2");
        }
        assert!(owner("x", &ns, Some("tpu")).is_none());
    }

    proptest! {
        /// Removing a node moves only the keys it owned.
        #[test]
        fn minimal_movement(n in 2usize..8, gone in 0usize..8, keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..200)) {
            let all = nodes(n);
            let gone = gone % n;
            let rest: Vec<Candidate> = all.iter().filter(|c| c.name != all[gone].name).cloned().collect();
            for k in &keys {
                let before = owner(k, &all, None).unwrap();
                let after = owner(k, &rest, None).unwrap();
                if before.name != all[gone].name {
                    prop_assert_eq!(&before.name, &after.name);
                }
            }
        }

        /// `top` over a roster orders the nodes as `rank` over the same candidates.
        #[test]
        fn top_agrees_with_rank(n in 1usize..8, take in 1usize..9, key in "[a-z]{1,8}") {
            let mut all = nodes(n);
            all[0].weight = 2.5;
            let ranked: Vec<&str> = rank(&key, &all, None).iter().take(take).map(|c| c.name.as_str()).collect();
            let t = top(&key, all.iter().map(|c| (c.name.as_str(), c.roles.as_slice(), c.weight)), None, take);
            prop_assert_eq!(ranked, t);
        }

        /// The replica order is a permutation of the eligible nodes.
        #[test]
        fn rank_is_a_permutation(n in 1usize..10, key in "[a-z]{1,8}") {
            let all = nodes(n);
            let r = rank(&key, &all, None);
            let mut names: Vec<&str> = r.iter().map(|c| c.name.as_str()).collect();
            names.sort();
            let mut want: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            want.sort();
            prop_assert_eq!(names, want);
        }
    }
}
