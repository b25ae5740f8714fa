//! A replica that lost its disk (a replacement machine, a wiped data directory)
//! rebuilds before it votes again. The argument is in docs/replication.md ("A replica
//! that lost its disk"); the node shell (`runtime/src/cluster/rebuild.rs`) asks and
//! writes around these decisions.
//!
//! Why it must: a replica's promises and copies are what make majorities intersect. A
//! node that comes back empty has forgotten which terms it promised and which entries
//! it acknowledged. Were it to vote at once, an old owner could win a majority made of
//! it and one other replica that missed the newer owner's writes, and serve without
//! them. So a node with an empty store starts *rebuilding* ([`Standing`]):
//!
//! 1. It refuses every replication request (promise, adoption, append, read barrier)
//!    for a path it has not relearned, so nothing it says is counted.
//! 2. It asks every other node of the cluster file which replicated paths they hold
//!    that it replicates too (the inventory). A node answers only once every election
//!    of its own that began before the request has stopped counting promises, so any
//!    election that counted a promise this node gave before the loss is over, and the
//!    other promises it counted are on disk.
//! 3. It relearns each path: the copies and terms of [`learn_needed`] other members of
//!    the path's replica set, keeping the copy of the newest accepted term (longest on
//!    a tie) and the highest promise ([`Learning`]). Any majority that counted it
//!    before the loss contains one of those members, so it learns at least what it had
//!    promised and acknowledged.
//! 4. Once every node answered the inventory and every path in it is relearned, it
//!    votes on every path (a path none of them held is new to it too).
//!
//! A brand-new cluster is told apart by its answers: when every node that answers
//! holds no replicated state at all, and they are a majority of the cluster file, no
//! acknowledged write exists that this node could have held, and it votes at once.
//! Only a node that has not voted since its store was made counts as empty (a voter
//! that holds no path, as with a kind placed on other nodes, may still be owed
//! writes), and only answers of the round that decides count (empty answers are asked
//! again each round). The node that decides so remembers whom it saw empty (by their
//! store's identity); one of them that asks later, when the decider already holds
//! state, is told so and follows ([`Inventory::vouched`]): it has not voted since it
//! was seen empty, so it holds nothing the decision did not already account for. A
//! node that followed vouches for nobody. Without that, nodes of a
//! new cluster that asked a moment after the first one decided would each wait for
//! the other's copy, for ever (found by the suite: a fresh 3-node cluster with two
//! nodes stuck rebuilding).

use crate::directory::majority;
use crate::replication::{Term, Terms, Versioned};
use std::collections::{BTreeMap, BTreeSet};

/// How many *other* members of a replica set of `rf` a rebuilding replica must hear
/// from: enough that every majority it was part of before its loss includes one of
/// them (`rf - majority(rf) + 1`: 2 of the other 2 for rf 3, 3 of the other 4 for rf 5).
pub fn learn_needed(rf: usize) -> usize {
    (rf + 1).saturating_sub(majority(rf)).max(1)
}

/// Whether a replica may vote, per path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Standing {
    /// Its store is whole: it votes on every path.
    #[default]
    Voter,
    /// It came back with an empty store: it votes only on the paths it relearned.
    Rebuilding { learned: BTreeSet<String> },
}

impl Standing {
    /// A replica that starts with an empty store and has not learned anything yet.
    pub fn rebuilding() -> Standing {
        Standing::Rebuilding { learned: BTreeSet::new() }
    }

    /// Whether this replica's answers about `path` may be counted.
    pub fn may_vote(&self, path: &str) -> bool {
        match self {
            Standing::Voter => true,
            Standing::Rebuilding { learned } => learned.contains(path),
        }
    }

    pub fn is_rebuilding(&self) -> bool {
        matches!(self, Standing::Rebuilding { .. })
    }

    /// `path` is relearned (its copy and terms are on this replica's disk).
    pub fn learned(&mut self, path: &str) {
        if let Standing::Rebuilding { learned } = self {
            learned.insert(path.to_string());
        }
    }

    /// Paths relearned so far (0 for a voter).
    pub fn learned_count(&self) -> usize {
        match self {
            Standing::Voter => 0,
            Standing::Rebuilding { learned } => learned.len(),
        }
    }
}

/// One node's answer to the inventory, as the rebuilding node counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Nodes that answered in full, and whether each holds no replicated state at all.
    answered: BTreeMap<String, bool>,
    /// Every path any of them listed.
    paths: BTreeSet<String>,
    /// A node that formed a new cluster after seeing this node's current store empty.
    vouched_by: Option<String>,
}

/// What a rebuilding node does next with the inventory it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Every answering node is empty and they are a majority: a new cluster, vote now.
    NewCluster,
    /// Nodes still to answer, by name.
    Waiting(Vec<String>),
    /// Everyone answered: relearn these paths, then vote on every path.
    Learn(Vec<String>),
}

impl Inventory {
    /// Node `from` listed all its `paths` that this node replicates too; `blank`: it
    /// holds no replicated state at all.
    pub fn answered(&mut self, from: &str, paths: impl IntoIterator<Item = String>, blank: bool) {
        self.answered.insert(from.to_string(), blank);
        self.paths.extend(paths);
    }

    /// Node `from` formed a new cluster after it saw this node's current store empty.
    pub fn vouched(&mut self, from: &str) {
        self.vouched_by = Some(from.to_string());
    }

    /// Drops `from`'s answer, to ask it again (an empty answer counts only in the round
    /// that decides).
    pub fn forget(&mut self, from: &str) {
        self.answered.remove(from);
    }

    /// Who vouched for this node, if anyone did.
    pub fn vouched_by(&self) -> Option<&str> {
        self.vouched_by.as_deref()
    }

    /// The nodes that answered that they hold no replicated state at all.
    pub fn blank(&self) -> impl Iterator<Item = &str> {
        self.answered.iter().filter(|(_, b)| **b).map(|(n, _)| n.as_str())
    }

    /// The next step for node `me` of a cluster file listing `roster`. `patient`:
    /// the nodes of a new cluster may still be starting (the shell passes true for its
    /// first seconds), so an empty majority is not enough yet: every node must have
    /// answered empty. A new cluster formed on a majority vouches only for the nodes
    /// it saw empty; one that had not answered yet would find state it must relearn
    /// from the others, and could not while any of them is down (found by the suite:
    /// a fresh cluster whose first owner was killed at once, the second node unable to
    /// relearn and the third unable to elect, until the first came back).
    pub fn next(&self, me: &str, roster: &[String], patient: bool) -> NextStep {
        if self.vouched_by.is_some() {
            return NextStep::NewCluster;
        }
        let others: Vec<&String> = roster.iter().filter(|n| *n != me).collect();
        let missing: Vec<String> =
            others.iter().filter(|n| !self.answered.contains_key(**n)).map(|n| n.to_string()).collect();
        let blank = self.answered.values().filter(|b| **b).count();
        if blank == self.answered.len()
            && self.paths.is_empty()
            && 1 + blank >= majority(roster.len())
            && (!patient || missing.is_empty())
        {
            return NextStep::NewCluster;
        }
        if missing.is_empty() {
            NextStep::Learn(self.paths.iter().cloned().collect())
        } else {
            NextStep::Waiting(missing)
        }
    }
}

/// Relearning one path: the other members' copies and terms.
#[derive(Debug, Clone)]
pub struct Learning<C> {
    needed: usize,
    copies: BTreeMap<String, (Terms, C)>,
    problems: Vec<String>,
}

/// The outcome of relearning one path.
#[derive(Debug, Clone, PartialEq)]
pub enum Learned<C> {
    /// Hold `copy` with these terms: `accepted` is the term of the newest copy,
    /// `promised` the highest promise any member reported (never below `accepted`).
    Hold { copy: C, terms: Terms },
    /// Too few members answered: try again later (why in the text).
    Retry(String),
}

impl<C: Versioned + Clone + Default> Learning<C> {
    /// Relearning a path whose replica set has `rf` members.
    pub fn new(rf: usize) -> Self {
        Learning { needed: learn_needed(rf), copies: BTreeMap::new(), problems: Vec::new() }
    }

    /// Member `from` handed over its copy and its terms for the path.
    pub fn copy(&mut self, from: &str, terms: Terms, copy: C) {
        self.copies.insert(from.to_string(), (terms, copy));
    }

    /// Member `from` refused (it is rebuilding too) or did not answer.
    pub fn problem(&mut self, from: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{from}: {why}"));
    }

    /// The outcome once every asked member answered or failed.
    pub fn outcome(&self) -> Learned<C> {
        if self.copies.len() < self.needed {
            return Learned::Retry(format!(
                "{} of the other replicas must hand over their copy, {} did ({})",
                self.needed,
                self.copies.len(),
                self.problems.join("; ")
            ));
        }
        let mut promised = Term::default();
        let mut best: Option<&(Terms, C)> = None;
        for tc in self.copies.values() {
            promised = promised.max(tc.0.promised.clone());
            let better = best.is_none_or(|b| (&tc.0.accepted, tc.1.last_seq()) > (&b.0.accepted, b.1.last_seq()));
            if better {
                best = Some(tc);
            }
        }
        let (terms, copy) = best.cloned().unwrap_or_default();
        let accepted = terms.accepted;
        Learned::Hold { copy, terms: Terms { promised: promised.max(accepted.clone()), accepted } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::tests::Log;

    fn t(n: u64, node: &str) -> Term {
        Term { n, node: node.into(), epoch: 1 }
    }

    fn roster(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn enough_members_that_every_old_majority_is_met() {
        // Exhaustively: for every majority M of a set that contains the lost replica,
        // every choice of learn_needed others meets M in someone other than it.
        for rf in 2..=7usize {
            let k = learn_needed(rf);
            let m = majority(rf);
            assert!(k < rf, "rf {rf}: the others ({}) can give {k} answers", rf - 1);
            // Worst case: M holds the lost replica and m - 1 others; the learned set
            // avoids them if it fits in the remaining rf - 1 - (m - 1) others.
            assert!(k > rf - m, "rf {rf}: {k} answers can miss a majority");
        }
        assert_eq!(learn_needed(3), 2);
        assert_eq!(learn_needed(5), 3);
        assert_eq!(learn_needed(2), 1);
        assert_eq!(learn_needed(1), 1);
    }

    #[test]
    fn a_rebuilding_replica_votes_only_on_what_it_relearned() {
        let mut s = Standing::rebuilding();
        assert!(!s.may_vote("/kv/store/a"));
        s.learned("/kv/store/a");
        assert!(s.may_vote("/kv/store/a"));
        assert!(!s.may_vote("/kv/store/b"));
        assert!(Standing::Voter.may_vote("/kv/store/b"));
    }

    #[test]
    fn learning_keeps_the_newest_copy_and_the_highest_promise() {
        let mut l: Learning<Log> = Learning::new(3);
        l.copy("n2", Terms { promised: t(5, "n3"), accepted: t(3, "n2") }, Log(9));
        assert!(matches!(l.outcome(), Learned::Retry(_)), "one of two others is not enough for rf 3");
        l.copy("n3", Terms { promised: t(4, "n3"), accepted: t(4, "n3") }, Log(2));
        match l.outcome() {
            Learned::Hold { copy, terms } => {
                assert_eq!(copy, Log(2), "the copy of the newer term wins over a longer older one");
                assert_eq!(terms.accepted, t(4, "n3"));
                assert_eq!(terms.promised, t(5, "n3"), "a promise another member made is kept");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusing_member_leaves_the_path_unlearned() {
        let mut l: Learning<Log> = Learning::new(3);
        l.copy("n2", Terms::default(), Log(0));
        l.problem("n3", "rebuilding too");
        match l.outcome() {
            Learned::Retry(why) => assert!(why.contains("n3: rebuilding too"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_cluster_is_told_apart_from_a_lost_disk() {
        let r = roster(3);
        let mut inv = Inventory::default();
        assert_eq!(inv.next("n1", &r, false), NextStep::Waiting(vec!["n2".into(), "n3".into()]));
        inv.answered("n2", vec![], true);
        assert_eq!(inv.next("n1", &r, false), NextStep::NewCluster, "n1 and n2, both empty, are a majority of 3");
        let mut inv = Inventory::default();
        inv.answered("n2", vec!["/kv/store/a".into()], false);
        assert_eq!(
            inv.next("n1", &r, false),
            NextStep::Waiting(vec!["n3".into()]),
            "n2 holds state: wait for everyone"
        );
        inv.answered("n3", vec!["/kv/store/b".into()], false);
        assert_eq!(inv.next("n1", &r, false), NextStep::Learn(vec!["/kv/store/a".into(), "/kv/store/b".into()]));
        // One empty answer of five is no majority: n1 may have lost a disk that, with
        // nodes not answering yet, held acknowledged writes.
        let r5 = roster(5);
        let mut inv = Inventory::default();
        inv.answered("n2", vec![], true);
        assert!(matches!(inv.next("n1", &r5, false), NextStep::Waiting(_)));
        inv.answered("n3", vec![], true);
        assert_eq!(inv.next("n1", &r5, false), NextStep::NewCluster);
        assert_eq!(inv.blank().collect::<Vec<_>>(), vec!["n2", "n3"]);
    }

    /// n2 formed the cluster after seeing n1 and n3 empty; n1 asks a moment later, when
    /// n2 already holds state and n3 is still rebuilding: without n2's word, n1 would
    /// wait for n3's copy and n3 for n1's, for ever.
    #[test]
    fn a_node_seen_empty_by_the_one_that_formed_the_cluster_follows_it() {
        let r = roster(3);
        let mut inv = Inventory::default();
        inv.answered("n2", vec!["/rate-limiter/rules/main".into()], false);
        inv.answered("n3", vec![], true);
        assert_eq!(inv.next("n1", &r, false), NextStep::Learn(vec!["/rate-limiter/rules/main".into()]));
        inv.vouched("n2");
        assert_eq!(inv.next("n1", &r, false), NextStep::NewCluster);
        assert_eq!(inv.vouched_by(), Some("n2"));
    }

    /// While the cluster may still be starting, an empty majority waits for the rest,
    /// so the node that forms the cluster has seen, and vouches for, every node.
    #[test]
    fn a_patient_node_waits_for_every_empty_answer_before_a_new_cluster() {
        let r = roster(3);
        let mut inv = Inventory::default();
        inv.answered("n3", vec![], true);
        assert_eq!(inv.next("n1", &r, true), NextStep::Waiting(vec!["n2".into()]), "n2 has not answered yet");
        assert_eq!(inv.next("n1", &r, false), NextStep::NewCluster, "past the patience, a majority will do");
        inv.answered("n2", vec![], true);
        assert_eq!(inv.next("n1", &r, true), NextStep::NewCluster);
        assert_eq!(inv.blank().collect::<Vec<_>>(), vec!["n2", "n3"]);
        // Patience never turns state into a new cluster.
        let mut inv = Inventory::default();
        inv.answered("n2", vec!["/kv/store/a".into()], false);
        inv.answered("n3", vec![], true);
        assert_eq!(inv.next("n1", &r, true), NextStep::Learn(vec!["/kv/store/a".into()]));
    }

    /// An empty answer from an earlier round is forgotten before the next: the peer
    /// may have started voting since.
    #[test]
    fn a_forgotten_empty_answer_no_longer_counts() {
        let r = roster(5);
        let mut inv = Inventory::default();
        inv.answered("n2", vec![], true);
        inv.answered("n3", vec![], true);
        inv.forget("n2");
        assert!(matches!(inv.next("n1", &r, false), NextStep::Waiting(_)), "n1 and n3 alone are no majority of 5");
        assert_eq!(inv.blank().collect::<Vec<_>>(), vec!["n3"]);
    }
}
