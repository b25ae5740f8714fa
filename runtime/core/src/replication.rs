//! Replication's decisions: majority quorums over a fixed replica set, owners fenced
//! by terms (the argument is in docs/replication.md). The node shell
//! (`runtime/src/cluster/replica.rs`) does the asking and the disk writes and calls
//! these for every decision; the simulator ([`crate::sim`]) calls the same ones, so a
//! loss it finds is a loss of the real protocol.
//!
//! A replicated path lives on a fixed replica set ([`crate::directory::replica_set`]).
//! Each replica keeps, beside the path's data, two terms ([`Terms`]): the highest it
//! *promised* and the one of the owner whose copy it holds (*accepted*). It is
//! single-decree Paxos per owner change, then primary-backup within a term:
//!
//! 1. **Election** ([`Election`]): a new owner picks a term above every term it has
//!    seen and asks the set to promise it; a replica promises only a term not below
//!    its promise, only to the owner of its own view ([`check_prepare`]), durably, and
//!    hands over its copy. With a majority of promises the owner takes the copy of the
//!    highest accepted term (longest on a tie).
//! 2. **Adoption**: the owner writes that copy under its term to the set
//!    ([`check_adopt`]); once a majority holds it, the owner serves.
//! 3. **Writes**: each entry goes to the set under the owner's term; a replica takes it
//!    only if its copy is of that very term and the entry extends it without a gap
//!    ([`check_append`]; otherwise the owner sends its whole copy). The write is
//!    acknowledged once a majority ([`Quorum`]) has it on disk. A replica that
//!    promised a newer term refuses; an owner that cannot get a majority steps down.
//! 4. **Reads**: the owner serves from memory after a majority confirmed that its term
//!    is still the newest they promised ([`check_confirm`]), so a deposed owner on the
//!    minority side of a partition cannot answer a stale read.
//!
//! Unreplicated kinds (rf 1) keep their one copy on their owner and gather it from
//! every live node when the owner moves ([`RecoveryRound`]).

use crate::directory::majority;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An owner's term: a number, then the node and its boot epoch that took it, so two
/// owners (or two incarnations of one node) never hold the same term.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    pub n: u64,
    pub node: String,
    pub epoch: u64,
}

impl Term {
    /// The next term for `node` (boot `epoch`), above `seen`.
    pub fn after(seen: &Term, node: &str, epoch: u64) -> Term {
        Term { n: seen.n + 1, node: node.to_string(), epoch }
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 { write!(f, "none") } else { write!(f, "{} of {}", self.n, self.node) }
    }
}

/// What a replica keeps beside a path's data. **Invariant:** `accepted <= promised`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// The highest term this replica promised (it refuses older owners).
    pub promised: Term,
    /// The term of the owner whose copy this replica holds.
    pub accepted: Term,
}

/// A replica's decision on a request, before it touches its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Take it.
    Accept,
    /// An append this replica cannot place: it needs the owner's whole copy.
    NeedCopy(String),
    /// Already here in this term: the same entries, or an older copy or snapshot of
    /// this term, sent again or overtaken. Not applied; the shell checks that appended
    /// entries have the same content and answers written.
    Duplicate,
    /// A newer owner holds the path: the sender must step down.
    Fenced(Term),
    /// The sender does not own the path in this replica's view.
    NotOwner(String),
}

/// Whether replica `me` hands its copy of `path` to `asker` (or, for unreplicated
/// kinds, takes its write): only if `asker` owns `path` in `me`'s view (`view_owner`).
pub fn check_owner(me: &str, path: &str, asker: &str, view_owner: Result<&str, String>) -> Result<(), String> {
    match view_owner {
        Ok(o) if o == asker => Ok(()),
        Ok(o) => Err(format!("{asker} is not the owner of {path} in {me}'s view ({o} is)")),
        Err(why) => Err(why),
    }
}

/// Whether replica `me` promises `term` to `asker` for `path`: `asker` owns the path
/// in `me`'s view and `term` is not below what `me` promised. On `Accept` the shell
/// stores `promised = term` durably before it answers with its copy.
pub fn check_prepare(
    me: &str,
    path: &str,
    asker: &str,
    view_owner: Result<&str, String>,
    term: &Term,
    terms: &Terms,
) -> Check {
    if let Err(why) = check_owner(me, path, asker, view_owner) {
        return Check::NotOwner(why);
    }
    if *term < terms.promised { Check::Fenced(terms.promised.clone()) } else { Check::Accept }
}

/// Whether a replica takes an owner's whole copy under `term`: `last`, the copy's last
/// sequence number (`None`: no data, only the terms change), against `have`, the last
/// on its disk. On `Accept` the shell replaces its copy and stores `promised =
/// accepted = term` in the same commit. A copy of the term the replica already holds
/// that is not longer than its own is a late duplicate (a retried or overtaken
/// request): copies of one term are prefixes of one another, so applying it could
/// only erase entries the replica has acknowledged since — `Duplicate`, not applied.
pub fn check_adopt(term: &Term, terms: &Terms, last: Option<u64>, have: u64) -> Check {
    if *term < terms.promised {
        return Check::Fenced(terms.promised.clone());
    }
    if *term == terms.accepted && last.is_none_or(|l| l <= have) {
        return Check::Duplicate;
    }
    Check::Accept
}

/// What an owner's write carries, as a replica checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    /// Log entries from sequence number `first` on.
    Append { first: u64 },
    /// A snapshot covering everything up to `seq`.
    Snapshot { seq: u64 },
}

/// Whether a replica takes entries under `term`: its copy must be of that very term
/// (else it needs the whole copy); appended entries must follow `have`, the last on
/// its disk; a snapshot must be newer than `snapshot_at`, the one it holds (an older
/// one arriving late would drop entries after it: `Duplicate`, not applied).
pub fn check_append(term: &Term, terms: &Terms, entries: Entries, have: u64, snapshot_at: u64) -> Check {
    if *term < terms.promised {
        return Check::Fenced(terms.promised.clone());
    }
    if *term != terms.accepted {
        return Check::NeedCopy(format!("this copy is of term {}, the write of term {term}", terms.accepted));
    }
    match entries {
        Entries::Append { first } if first > have + 1 => {
            Check::NeedCopy(format!("the log here ends at {have}, the write starts at {first}"))
        }
        Entries::Append { first } if first <= have => Check::Duplicate,
        Entries::Snapshot { seq } if seq <= snapshot_at => Check::Duplicate,
        _ => Check::Accept,
    }
}

/// Whether a replica still backs the owner of `term` (a read barrier): `Fenced` when
/// it promised a newer term, `NeedCopy` when it has not taken this one yet (it missed
/// the adoption; it is no vote, and no sign of a newer owner).
pub fn check_confirm(term: &Term, terms: &Terms) -> Check {
    match term.cmp(&terms.promised) {
        std::cmp::Ordering::Equal => Check::Accept,
        std::cmp::Ordering::Less => Check::Fenced(terms.promised.clone()),
        std::cmp::Ordering::Greater => {
            Check::NeedCopy(format!("this replica has not taken term {term} (it promised {})", terms.promised))
        }
    }
}

/// The votes of one round over a replica set (a write, an adoption, a read barrier).
#[derive(Debug, Clone)]
pub struct Quorum {
    set: Vec<String>,
    yes: BTreeSet<String>,
    no: BTreeMap<String, String>,
    fenced: Option<Term>,
    needed: usize,
}

/// Where a round stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// A majority said yes: the round succeeded (whatever the others say later).
    Won,
    /// Too few can still say yes: the round failed, with why (naming a newer term a
    /// replica promised, if one did).
    Lost(String),
    /// Neither yet.
    Pending,
}

impl Quorum {
    /// A round over `set`, won with a majority of it.
    pub fn new(set: &[String]) -> Quorum {
        Quorum::with_needed(set, majority(set.len()))
    }

    /// A round won with `needed` votes (the simulator's test that it finds losses when
    /// fewer than a majority acknowledge; nothing else).
    pub fn with_needed(set: &[String], needed: usize) -> Quorum {
        Quorum { set: set.to_vec(), yes: BTreeSet::new(), no: BTreeMap::new(), fenced: None, needed: needed.max(1) }
    }

    pub fn yes(&mut self, from: &str) {
        if self.set.iter().any(|s| s == from) {
            self.no.remove(from);
            self.yes.insert(from.to_string());
        }
    }

    pub fn no(&mut self, from: &str, why: impl std::fmt::Display) {
        if self.set.iter().any(|s| s == from) && !self.yes.contains(from) {
            self.no.insert(from.to_string(), why.to_string());
        }
    }

    /// `from` promised the newer term `by`.
    pub fn fenced(&mut self, from: &str, by: Term) {
        self.no(from, format!("promised the newer term {by}"));
        if self.fenced.as_ref().is_none_or(|f| by > *f) {
            self.fenced = Some(by);
        }
    }

    /// The newest term a replica reported having promised, if any did.
    pub fn newer(&self) -> Option<&Term> {
        self.fenced.as_ref()
    }

    /// Won with enough yes votes; lost once too few members are left to give them. A
    /// replica that promised a newer term is one no vote, not the end of the round: a
    /// node whose view wrongly holds the owner down may promise itself a term, and that
    /// alone must not fail the owner's writes while a majority still backs it.
    pub fn tally(&self) -> Tally {
        if self.yes.len() >= self.needed {
            return Tally::Won;
        }
        if self.set.len() - self.no.len() < self.needed {
            let why = self.no.iter().map(|(n, w)| format!("{n}: {w}")).collect::<Vec<_>>().join("; ");
            let newer =
                self.fenced.as_ref().map(|t| format!("a newer owner (term {t}) may hold it; ")).unwrap_or_default();
            return Tally::Lost(format!(
                "{newer}{} of {} replicas needed, {} cannot: {why}",
                self.needed,
                self.set.len(),
                self.no.len(),
            ));
        }
        Tally::Pending
    }

    /// The members that said yes.
    pub fn voters(&self) -> &BTreeSet<String> {
        &self.yes
    }
}

/// A copy of a path's state, as far as recovery compares them.
pub trait Versioned {
    /// The highest sequence number the copy covers (0 when empty).
    fn last_seq(&self) -> u64;
}

/// An election's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Elected<C> {
    /// Not decided yet: wait for more answers.
    Pending,
    /// A majority promised: adopt `best` under the term. `send` lists each member
    /// with whether it needs the data (`false`: its copy is `best` already and only
    /// its terms change).
    Won { best: C, send: Vec<(String, bool)> },
    /// No majority: try again with a term above `seen` (why in `problems`).
    Lost { seen: Term, problems: String },
}

/// A new owner's election: promises of its term from the replica set, each with the
/// replica's copy and the term of that copy.
#[derive(Debug, Clone)]
pub struct Election<C> {
    me: String,
    term: Term,
    votes: Quorum,
    copies: BTreeMap<String, (Term, C)>,
    seen: Term,
}

impl<C: Versioned + Clone + PartialEq + Default> Election<C> {
    pub fn new(me: &str, term: Term, set: &[String]) -> Self {
        Election { me: me.to_string(), seen: term.clone(), term, votes: Quorum::new(set), copies: BTreeMap::new() }
    }

    pub fn term(&self) -> &Term {
        &self.term
    }

    /// `from` promised and handed over `copy`, which it holds under `accepted`.
    pub fn promised(&mut self, from: &str, accepted: Term, copy: C) {
        self.votes.yes(from);
        self.copies.insert(from.to_string(), (accepted, copy));
    }

    /// `from` refused (not the owner in its view, an error) or did not answer.
    pub fn refused(&mut self, from: &str, why: impl std::fmt::Display) {
        self.votes.no(from, why);
    }

    /// `from` promised the newer term `by`.
    pub fn fenced(&mut self, from: &str, by: Term) {
        if by > self.seen {
            self.seen = by.clone();
        }
        self.votes.fenced(from, by);
    }

    /// The outcome so far. The best copy is the one of the highest accepted term, the
    /// longest among those; on a tie this node's own copy stays (no data to write).
    pub fn outcome(&self, set: &[String]) -> Elected<C> {
        match self.votes.tally() {
            Tally::Pending => Elected::Pending,
            Tally::Lost(problems) => Elected::Lost { seen: self.seen.clone(), problems },
            Tally::Won => {
                let mut best: Option<(&String, &(Term, C))> = None;
                for (from, tc) in &self.copies {
                    let better = match best {
                        None => true,
                        Some((bf, b)) => {
                            let key = (&tc.0, tc.1.last_seq());
                            let bkey = (&b.0, b.1.last_seq());
                            key > bkey || (key == bkey && *from == self.me && *bf != self.me)
                        }
                    };
                    if better {
                        best = Some((from, tc));
                    }
                }
                let best = best.map(|(_, (_, c))| c.clone()).unwrap_or_default();
                let send =
                    set.iter().map(|r| (r.clone(), self.copies.get(r).is_none_or(|(_, c)| *c != best))).collect();
                Elected::Won { best, send }
            }
        }
    }
}

/// What a new owner of an unreplicated path does after a round of asking every live
/// node for its copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery<C> {
    /// Someone did not answer or refused (its view does not name this node the owner
    /// yet): ask again shortly, until the deadline.
    Retry(Vec<String>),
    /// Adopt `best` (write it locally first when `adopt_locally`).
    Adopt { best: C, adopt_locally: bool },
}

/// One round of an unreplicated path's recovery: every live node's answer, then the
/// newest copy (the path's one copy may be on the node it moved from).
#[derive(Debug, Clone)]
pub struct RecoveryRound<C> {
    me: String,
    copies: BTreeMap<String, C>,
    problems: Vec<String>,
}

impl<C: Versioned + Clone + PartialEq + Default> RecoveryRound<C> {
    pub fn new(me: &str) -> Self {
        RecoveryRound { me: me.to_string(), copies: BTreeMap::new(), problems: Vec::new() }
    }

    /// Node `from` handed over its copy.
    pub fn copy(&mut self, from: &str, c: C) {
        self.copies.insert(from.to_string(), c);
    }

    /// Node `from` refused or did not answer.
    pub fn problem(&mut self, from: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{from}: {why}"));
    }

    /// The outcome once every live node answered. The newest copy wins; on a tie this
    /// node's own copy stays.
    pub fn outcome(self) -> Recovery<C> {
        if !self.problems.is_empty() {
            return Recovery::Retry(self.problems);
        }
        let mine = self.copies.get(&self.me).cloned().unwrap_or_default();
        let best =
            self.copies.values().fold(mine.clone(), |a, b| if b.last_seq() > a.last_seq() { b.clone() } else { a });
        Recovery::Adopt { adopt_locally: best != mine, best }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A copy that is only its length (the rebuild's tests use it too).
    #[derive(Debug, Clone, PartialEq, Default)]
    pub(crate) struct Log(pub(crate) u64);
    impl Versioned for Log {
        fn last_seq(&self) -> u64 {
            self.0
        }
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn t(n: u64, node: &str) -> Term {
        Term { n, node: node.into(), epoch: 1 }
    }

    fn terms(promised: Term, accepted: Term) -> Terms {
        Terms { promised, accepted }
    }

    #[test]
    fn terms_order_by_number_then_node_then_boot() {
        assert!(t(2, "a") > t(1, "z"));
        assert!(t(1, "b") > t(1, "a"));
        let reboot = Term { epoch: 2, ..t(1, "a") };
        assert!(reboot > t(1, "a"), "a restarted node never reuses its old term");
        assert_eq!(Term::after(&t(4, "b"), "a", 7), Term { n: 5, node: "a".into(), epoch: 7 });
        assert_eq!(Term::default().to_string(), "none");
    }

    #[test]
    fn replicas_promise_only_newer_terms_to_the_owner_of_their_view() {
        let held = terms(t(3, "n2"), t(3, "n2"));
        assert_eq!(check_prepare("n3", "/a", "n1", Ok("n1"), &t(4, "n1"), &held), Check::Accept);
        assert_eq!(check_prepare("n3", "/a", "n1", Ok("n1"), &t(3, "n2"), &held), Check::Accept, "a retry");
        assert_eq!(check_prepare("n3", "/a", "n1", Ok("n1"), &t(2, "n1"), &held), Check::Fenced(t(3, "n2")));
        let Check::NotOwner(why) = check_prepare("n3", "/a", "n1", Ok("n2"), &t(9, "n1"), &held) else { panic!() };
        assert_eq!(why, "n1 is not the owner of /a in n3's view (n2 is)");
        assert_eq!(check_adopt(&t(2, "n1"), &held, Some(9), 4), Check::Fenced(t(3, "n2")));
        assert_eq!(check_adopt(&t(3, "n2"), &held, Some(9), 4), Check::Accept);
        // A late copy of the term this replica holds, not longer than its own: it would
        // erase entries acknowledged since it was sent.
        assert_eq!(check_adopt(&t(3, "n2"), &held, Some(3), 4), Check::Duplicate);
        assert_eq!(check_adopt(&t(3, "n2"), &held, Some(4), 4), Check::Duplicate);
        assert_eq!(check_adopt(&t(3, "n2"), &held, None, 4), Check::Duplicate);
        // A newer owner's copy replaces it, even a shorter one.
        let promised = terms(t(5, "n1"), t(3, "n2"));
        assert_eq!(check_adopt(&t(5, "n1"), &promised, Some(2), 4), Check::Accept);
        assert_eq!(check_adopt(&t(5, "n1"), &promised, None, 4), Check::Accept);
    }

    #[test]
    fn appends_need_the_copy_of_their_own_term_and_no_gap() {
        let here = terms(t(3, "n1"), t(3, "n1"));
        let app = |first| Entries::Append { first };
        assert_eq!(check_append(&t(3, "n1"), &here, app(5), 4, 0), Check::Accept);
        assert_eq!(check_append(&t(3, "n1"), &here, app(4), 4, 0), Check::Duplicate);
        assert!(matches!(check_append(&t(3, "n1"), &here, app(6), 4, 0), Check::NeedCopy(_)));
        assert_eq!(check_append(&t(3, "n1"), &here, Entries::Snapshot { seq: 4 }, 4, 2), Check::Accept);
        // A snapshot older than the one here, arriving late, is not applied.
        assert_eq!(check_append(&t(3, "n1"), &here, Entries::Snapshot { seq: 2 }, 4, 3), Check::Duplicate);
        // Promised to n1 but holding an older copy: the whole copy first.
        let promised_only = terms(t(3, "n1"), t(2, "n2"));
        let Check::NeedCopy(why) = check_append(&t(3, "n1"), &promised_only, app(5), 4, 0) else { panic!() };
        assert_eq!(why, "this copy is of term 2 of n2, the write of term 3 of n1");
        // An older owner is fenced; a newer one it never heard of needs the copy.
        assert_eq!(check_append(&t(2, "n2"), &here, app(5), 4, 0), Check::Fenced(t(3, "n1")));
        assert!(matches!(check_append(&t(4, "n2"), &here, app(5), 4, 0), Check::NeedCopy(_)));
        assert_eq!(check_confirm(&t(3, "n1"), &here), Check::Accept);
        assert_eq!(check_confirm(&t(2, "n1"), &here), Check::Fenced(t(3, "n1")));
        // A replica that missed the adoption of term 4 is no vote, not a newer owner.
        assert!(matches!(check_confirm(&t(4, "n2"), &here), Check::NeedCopy(_)));
    }

    #[test]
    fn a_round_is_won_by_a_majority_and_lost_when_one_is_out_of_reach() {
        let set = v(&["n1", "n2", "n3"]);
        let mut q = Quorum::new(&set);
        q.yes("n1");
        assert_eq!(q.tally(), Tally::Pending);
        q.no("n3", "timed out");
        assert_eq!(q.tally(), Tally::Pending);
        q.yes("n2");
        assert_eq!(q.tally(), Tally::Won);
        let mut q = Quorum::new(&set);
        q.yes("n1");
        q.no("n2", "timed out");
        q.no("n3", "unreachable");
        let Tally::Lost(why) = q.tally() else { panic!() };
        assert!(why.contains("2 of 3 replicas needed, 2 cannot"), "{why}");
        // A replica that promised a newer term is one no: the round goes on while a
        // majority is still possible, and a loss names the newer term.
        let mut q = Quorum::new(&set);
        q.yes("n1");
        q.fenced("n2", t(7, "n2"));
        assert_eq!(q.tally(), Tally::Pending);
        q.yes("n3");
        assert_eq!(q.tally(), Tally::Won);
        let mut q = Quorum::new(&set);
        q.yes("n1");
        q.fenced("n2", t(7, "n2"));
        q.no("n3", "timed out");
        assert!(matches!(q.tally(), Tally::Lost(w) if w.contains("term 7 of n2")));
        assert_eq!(q.newer(), Some(&t(7, "n2")));
        // Votes from outside the set do not count; a lone node is its own majority.
        let mut q = Quorum::new(&set);
        q.yes("n9");
        q.yes("n9");
        assert_eq!(q.tally(), Tally::Pending);
        let mut q = Quorum::new(&v(&["n1"]));
        q.yes("n1");
        assert_eq!(q.tally(), Tally::Won);
    }

    #[test]
    fn an_election_takes_the_copy_of_the_newest_term_then_the_longest() {
        let set = v(&["n1", "n2", "n3"]);
        let mut e = Election::new("n1", t(5, "n1"), &set);
        e.promised("n1", t(3, "n1"), Log(9));
        assert_eq!(e.outcome(&set), Elected::Pending);
        // n2's copy is shorter but of a newer term: an owner after n1's last write
        // there adopted it, so n1's extra entries were never acknowledged.
        e.promised("n2", t(4, "n3"), Log(7));
        let Elected::Won { best, send } = e.outcome(&set) else { panic!() };
        assert_eq!(best, Log(7));
        assert_eq!(send, vec![("n1".into(), true), ("n2".into(), false), ("n3".into(), true)]);
        // Same term: the longest; equal: this node's own.
        let mut e = Election::new("n2", t(5, "n2"), &set);
        e.promised("n1", t(3, "n1"), Log(4));
        e.promised("n2", t(3, "n1"), Log(4));
        e.promised("n3", t(3, "n1"), Log(2));
        let Elected::Won { best, send } = e.outcome(&set) else { panic!() };
        assert_eq!(best, Log(4));
        assert_eq!(send, vec![("n1".into(), false), ("n2".into(), false), ("n3".into(), true)]);
        // Fenced, then no majority left: lost, with the term to go above.
        let mut e: Election<Log> = Election::new("n1", t(5, "n1"), &set);
        e.promised("n1", t(3, "n1"), Log(4));
        e.fenced("n2", t(8, "n3"));
        assert_eq!(e.outcome(&set), Elected::Pending, "n3 may still promise");
        e.refused("n3", "timed out");
        assert!(matches!(e.outcome(&set), Elected::Lost { seen, .. } if seen == t(8, "n3")));
    }

    #[test]
    fn an_unreplicated_path_takes_the_newest_copy_once_everyone_answered() {
        let mut r = RecoveryRound::new("n1");
        r.copy("n1", Log(3));
        r.copy("n2", Log(5));
        assert_eq!(r.outcome(), Recovery::Adopt { best: Log(5), adopt_locally: true });
        let mut r = RecoveryRound::new("n1");
        r.copy("n1", Log(3));
        r.problem("n2", "refused");
        assert!(matches!(r.outcome(), Recovery::Retry(p) if p == vec!["n2: refused"]));
    }
}
