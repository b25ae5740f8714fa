//! The split-brain resolver (Akka's "downing provider" idea): from its own view, each
//! node decides whether its side of a partition keeps serving. The side that does
//! not stops its singletons and entity owners, and its gateways answer 503 at once
//! instead of waiting on quorums they cannot reach; it serves again when a view
//! change puts it back on the serving side.
//!
//! Replicated state is safe either way (writes need a majority of a fixed replica
//! set, `crate::replication`); the resolver makes the minority side refuse fast and
//! keeps unreplicated singletons from running on both sides.
//!
//! Strategies (`[split_brain]` in the cluster file):
//! - `keep-majority` (default): serve while this node sees more than half of the
//!   cluster file's nodes live (itself included). **Tie-break** for an even split
//!   (exactly half): the half that holds the first node of the cluster file serves.
//! - `keep-oldest`: serve while the oldest member this node knows of (earliest boot;
//!   node name breaks a tie) is live in its view. If the oldest member crashes, every
//!   other node stops serving until it is back (or forgotten): the price of never
//!   splitting on size.
//! - `static-quorum`: serve while at least `quorum` nodes are live. With `quorum`
//!   at most half the cluster both sides may serve: the loader refuses that.

/// Which side of a partition keeps serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitBrain {
    #[default]
    KeepMajority,
    KeepOldest,
    StaticQuorum(usize),
}

impl SplitBrain {
    pub const NAMES: [&'static str; 3] = ["keep-majority", "keep-oldest", "static-quorum"];
}

/// A member as this node's view has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    /// Boot epoch (ms since the Unix epoch): earlier is older.
    pub epoch: u64,
    /// Not held down.
    pub live: bool,
}

/// Whether this node's side serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Serving,
    /// Not serving, with why (the text a refused client reads).
    Minority(String),
}

/// Decides the side of `me` (which counts as live) from its view `members` of the
/// cluster whose nodes, in cluster-file order, are `roster`.
pub fn side(strategy: SplitBrain, roster: &[&str], me: &str, members: &[Member<'_>]) -> Side {
    let live = |n: &str| n == me || members.iter().any(|m| m.name == n && m.live);
    let seen = roster.iter().filter(|n| live(n)).count();
    let n = roster.len();
    let refuse = |why: String| Side::Minority(format!("{me} is on the minority side of a partition: {why}"));
    match strategy {
        SplitBrain::KeepMajority => {
            let tie_won = 2 * seen == n && roster.first().is_some_and(|first| live(first));
            if 2 * seen > n || tie_won {
                Side::Serving
            } else if 2 * seen == n {
                refuse(format!(
                    "it sees {seen} of {n} nodes, an even split, and keep-majority keeps the half with {}",
                    roster.first().unwrap_or(&"-")
                ))
            } else {
                refuse(format!("it sees {seen} of {n} nodes live; keep-majority needs {}", n / 2 + 1))
            }
        }
        SplitBrain::StaticQuorum(q) => {
            if seen >= q {
                Side::Serving
            } else {
                refuse(format!("it sees {seen} of {n} nodes live; static-quorum needs {q}"))
            }
        }
        SplitBrain::KeepOldest => {
            let oldest = members
                .iter()
                .filter(|m| roster.contains(&m.name))
                .min_by(|a, b| (a.epoch, a.name).cmp(&(b.epoch, b.name)))
                .map(|m| m.name);
            match oldest {
                Some(o) if !live(o) => {
                    refuse(format!("the oldest member, {o}, is not reachable; keep-oldest keeps its side"))
                }
                _ => Side::Serving,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, epoch: u64, live: bool) -> Member<'_> {
        Member { name, epoch, live }
    }

    const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

    #[test]
    fn keep_majority_serves_the_larger_side_only() {
        let view = [m("n1", 1, true), m("n2", 1, true), m("n3", 1, false), m("n4", 1, false), m("n5", 1, false)];
        let Side::Minority(why) = side(SplitBrain::KeepMajority, &FIVE, "n1", &view) else { panic!() };
        assert_eq!(why, "n1 is on the minority side of a partition: it sees 2 of 5 nodes live; keep-majority needs 3");
        let view = [m("n1", 1, false), m("n2", 1, false), m("n3", 1, true), m("n4", 1, true), m("n5", 1, true)];
        assert_eq!(side(SplitBrain::KeepMajority, &FIVE, "n3", &view), Side::Serving);
        // A lone node of a one-node cluster serves.
        assert_eq!(side(SplitBrain::KeepMajority, &["n1"], "n1", &[]), Side::Serving);
    }

    #[test]
    fn an_even_split_keeps_the_half_with_the_first_node() {
        let four = ["n1", "n2", "n3", "n4"];
        let a = [m("n1", 1, true), m("n2", 1, true), m("n3", 1, false), m("n4", 1, false)];
        let b = [m("n1", 1, false), m("n2", 1, false), m("n3", 1, true), m("n4", 1, true)];
        assert_eq!(side(SplitBrain::KeepMajority, &four, "n2", &a), Side::Serving);
        let Side::Minority(why) = side(SplitBrain::KeepMajority, &four, "n3", &b) else { panic!() };
        assert!(why.contains("an even split, and keep-majority keeps the half with n1"), "{why}");
        // Two nodes cut apart: exactly one serves.
        let two = ["n1", "n2"];
        assert_eq!(side(SplitBrain::KeepMajority, &two, "n1", &[m("n2", 1, false)]), Side::Serving);
        assert!(matches!(side(SplitBrain::KeepMajority, &two, "n2", &[m("n1", 1, false)]), Side::Minority(_)));
    }

    #[test]
    fn keep_oldest_and_static_quorum() {
        let view = [m("n1", 5, true), m("n2", 3, false), m("n3", 9, true)];
        let Side::Minority(why) = side(SplitBrain::KeepOldest, &["n1", "n2", "n3"], "n1", &view) else { panic!() };
        assert!(why.contains("the oldest member, n2, is not reachable"), "{why}");
        let view = [m("n1", 5, false), m("n2", 3, true), m("n3", 9, false)];
        assert_eq!(side(SplitBrain::KeepOldest, &["n1", "n2", "n3"], "n2", &view), Side::Serving);
        let view = [m("n1", 1, true), m("n2", 1, false), m("n3", 1, false)];
        assert_eq!(side(SplitBrain::StaticQuorum(1), &["n1", "n2", "n3"], "n1", &view), Side::Serving);
        assert!(matches!(side(SplitBrain::StaticQuorum(2), &["n1", "n2", "n3"], "n1", &view), Side::Minority(_)));
    }

    #[test]
    fn at_most_one_side_of_any_split_serves_under_keep_majority() {
        // Every two-way split of five and of four nodes.
        for roster in [&FIVE[..], &FIVE[..4]] {
            let n = roster.len();
            for mask in 0u32..(1 << n) {
                let serving_sides = [true, false]
                    .iter()
                    .filter(|&&in_a| {
                        let view: Vec<Member> = roster
                            .iter()
                            .enumerate()
                            .map(|(i, name)| m(name, 1, (mask >> i & 1 == 1) == in_a))
                            .collect();
                        let me = view.iter().find(|x| x.live).map(|x| x.name);
                        me.is_some_and(|me| side(SplitBrain::KeepMajority, roster, me, &view) == Side::Serving)
                    })
                    .count();
                assert!(serving_sides <= 1, "{roster:?} split {mask:b}: both sides serve");
            }
        }
    }
}
