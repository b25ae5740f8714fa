//! Replication's decisions: primary-backup over the placement order, fenced by the
//! membership view (the argument is in docs/replication.md). The node shell
//! (`runtime/src/cluster/replica.rs`) does the asking and the disk writes and calls
//! these for every decision; the simulator ([`crate::sim`]) calls the same ones, so a
//! loss it finds is a loss of the real protocol.
//!
//! - A replica takes a write only if, in its own view, the writer owns the path, and
//!   only if the entry extends its log without a gap ([`check_write`]); it hands its
//!   copy only to the owner of its view ([`check_owner`]).
//! - The owner writes to its replica set and acknowledges when every member holds
//!   the entry; a member the view drops during the write is replaced by the current
//!   set's ([`WriteRound`]).
//! - A new owner takes the newest copy of every live node, once all of them answer
//!   ([`RecoveryRound`]).

use std::collections::BTreeMap;

/// Rounds of one write while its replica set changes under it (members declared down).
pub const FAILOVER_ROUNDS_MAX: usize = 3;

/// A replica's decision on a write, before it touches its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCheck {
    Accept,
    /// The entry would leave a hole: the log here ends at `have`.
    Gap {
        have: u64,
    },
    /// The writer does not own the path in this node's view.
    Refuse(String),
}

/// Whether replica `me` takes a write of `path` from `writer`. `view_owner` is the
/// owner of `path` in `me`'s view (or why there is none); `first_append` the sequence
/// number of the write's first appended entry (`None` for a full copy, which never
/// leaves a gap); `have` the last sequence number on `me`'s disk.
pub fn check_write(
    me: &str,
    path: &str,
    writer: &str,
    view_owner: Result<&str, String>,
    first_append: Option<u64>,
    have: u64,
) -> WriteCheck {
    if let Err(why) = check_owner(me, path, writer, view_owner) {
        return WriteCheck::Refuse(why);
    }
    match first_append {
        Some(seq) if have + 1 < seq => WriteCheck::Gap { have },
        _ => WriteCheck::Accept,
    }
}

/// Whether replica `me` hands its copy of `path` to `asker` (or takes a write from
/// it): only if `asker` owns `path` in `me`'s view (`view_owner`).
pub fn check_owner(me: &str, path: &str, asker: &str, view_owner: Result<&str, String>) -> Result<(), String> {
    match view_owner {
        Ok(o) if o == asker => Ok(()),
        Ok(o) => Err(format!("{asker} is not the owner of {path} in {me}'s view ({o} is)")),
        Err(why) => Err(why),
    }
}

/// What the owner does next in a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteStep {
    /// Send the entry to these replicas, then report with [`WriteRound::round_done`].
    Send(Vec<String>),
    /// Every member of the current replica set holds the entry: acknowledge.
    Ack,
    /// The view moved the path to another node during the write: not acknowledged.
    LostOwnership,
    /// A replica still in the set refused or did not answer: the write fails with
    /// that replica's error.
    ReplicaFailed(String),
    /// The set changed [`FAILOVER_ROUNDS_MAX`] times: not acknowledged.
    SetKeptChanging,
}

/// The owner's side of one replicated write, after its own disk holds the entry.
#[derive(Debug, Clone)]
pub struct WriteRound {
    me: String,
    set: Vec<String>,
    holding: Vec<String>,
    rounds: usize,
}

impl WriteRound {
    /// Starts a write by `me` to the replica set `set` (owner first) of its view;
    /// `None` when `me` does not own the path there (the write is refused).
    pub fn start(me: &str, set: Vec<String>) -> Option<(WriteRound, WriteStep)> {
        if set.first().map(String::as_str) != Some(me) {
            return None;
        }
        let round = WriteRound { me: me.to_string(), set, holding: vec![me.to_string()], rounds: 0 };
        let step = round.todo();
        Some((round, step))
    }

    fn todo(&self) -> WriteStep {
        let todo: Vec<String> = self.set[1..].iter().filter(|r| !self.holding.contains(r)).cloned().collect();
        if todo.is_empty() { WriteStep::Ack } else { WriteStep::Send(todo) }
    }

    /// Reports a round: which replicas answered `Written` (`true`) and which did not,
    /// and the replica set of the view now (`fresh`).
    pub fn round_done(&mut self, results: &[(String, bool)], fresh: Vec<String>) -> WriteStep {
        let mut failed = Vec::new();
        for (r, ok) in results {
            if *ok {
                self.holding.push(r.clone());
            } else {
                failed.push(r.clone());
            }
        }
        let Some(first_failed) = failed.first().cloned() else { return WriteStep::Ack };
        if fresh.first() != Some(&self.me) {
            return WriteStep::LostOwnership;
        }
        // Only a replica that left the set (held down) is failed over; a live replica
        // that refused or timed out fails the write.
        if failed.iter().any(|r| fresh.contains(r)) {
            return WriteStep::ReplicaFailed(first_failed);
        }
        self.rounds += 1;
        if self.rounds >= FAILOVER_ROUNDS_MAX {
            return WriteStep::SetKeptChanging;
        }
        self.set = fresh;
        self.todo()
    }

    /// The replica set the write now goes to (owner first).
    pub fn set(&self) -> &[String] {
        &self.set
    }
}

/// A copy of a path's state, as far as recovery compares them.
pub trait Versioned {
    /// The highest sequence number the copy covers (0 when empty).
    fn last_seq(&self) -> u64;
}

/// What a new owner does after a round of asking every live node for its copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery<C> {
    /// Someone did not answer or refused (its view does not name this node the owner
    /// yet): ask again shortly, until the deadline.
    Retry(Vec<String>),
    /// Adopt `best` (write it locally first when `adopt_locally`), then bring the
    /// replicas `sync` level with it.
    Adopt { best: C, adopt_locally: bool, sync: Vec<String> },
}

/// One round of a new owner's recovery: every live node's answer, then the outcome.
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

    /// The outcome once every live node answered; `set` is the replica set (owner
    /// first). The newest copy wins; on a tie this node's own copy stays.
    pub fn outcome(self, set: &[String]) -> Recovery<C> {
        if !self.problems.is_empty() {
            return Recovery::Retry(self.problems);
        }
        let mine = self.copies.get(&self.me).cloned().unwrap_or_default();
        let best =
            self.copies.values().fold(mine.clone(), |a, b| if b.last_seq() > a.last_seq() { b.clone() } else { a });
        // A replica that handed over exactly this copy is already level: no write (an
        // activation of a new entity then costs no disk write).
        let sync = set.iter().skip(1).filter(|r| self.copies.get(*r) != Some(&best)).cloned().collect();
        Recovery::Adopt { adopt_locally: best != mine, best, sync }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Default)]
    struct Log(u64);
    impl Versioned for Log {
        fn last_seq(&self) -> u64 {
            self.0
        }
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn replicas_fence_by_their_view_and_refuse_gaps() {
        assert_eq!(check_write("n2", "/a", "n1", Ok("n1"), Some(5), 4), WriteCheck::Accept);
        assert_eq!(check_write("n2", "/a", "n1", Ok("n1"), Some(6), 4), WriteCheck::Gap { have: 4 });
        assert_eq!(check_write("n2", "/a", "n1", Ok("n1"), None, 0), WriteCheck::Accept);
        let WriteCheck::Refuse(why) = check_write("n2", "/a", "n1", Ok("n3"), Some(1), 0) else { panic!() };
        assert_eq!(why, "n1 is not the owner of /a in n2's view (n3 is)");
        assert!(check_owner("n2", "/a", "n1", Err("no live node".into())).is_err());
    }

    #[test]
    fn a_write_fails_over_only_from_members_that_left_the_set() {
        let (mut w, step) = WriteRound::start("n1", v(&["n1", "n2", "n3"])).unwrap();
        assert_eq!(step, WriteStep::Send(v(&["n2", "n3"])));
        // n3 failed and the view dropped it: the entry goes to n4 instead.
        let step = w.round_done(&[("n2".into(), true), ("n3".into(), false)], v(&["n1", "n2", "n4"]));
        assert_eq!(step, WriteStep::Send(v(&["n4"])));
        assert_eq!(w.round_done(&[("n4".into(), true)], v(&["n1", "n2", "n4"])), WriteStep::Ack);
        // A live replica that refused fails the write.
        let (mut w, _) = WriteRound::start("n1", v(&["n1", "n2"])).unwrap();
        assert_eq!(w.round_done(&[("n2".into(), false)], v(&["n1", "n2"])), WriteStep::ReplicaFailed("n2".into()));
        let (mut w, _) = WriteRound::start("n1", v(&["n1", "n2"])).unwrap();
        assert_eq!(w.round_done(&[("n2".into(), false)], v(&["n3", "n1"])), WriteStep::LostOwnership);
        assert!(WriteRound::start("n2", v(&["n1", "n2"])).is_none());
        // Alone in its view, an owner acknowledges with its own copy only.
        assert_eq!(WriteRound::start("n1", v(&["n1"])).unwrap().1, WriteStep::Ack);
    }

    #[test]
    fn a_set_that_keeps_changing_ends_the_write() {
        let (mut w, _) = WriteRound::start("n1", v(&["n1", "n2"])).unwrap();
        let mut step = WriteStep::Ack;
        for next in ["n3", "n4", "n5"] {
            let failed = w.set()[1].clone();
            step = w.round_done(&[(failed, false)], v(&["n1", next]));
        }
        assert_eq!(step, WriteStep::SetKeptChanging);
    }

    #[test]
    fn recovery_takes_the_newest_copy_once_everyone_answered() {
        let mut r = RecoveryRound::new("n1");
        r.copy("n1", Log(3));
        r.copy("n2", Log(5));
        r.copy("n3", Log(5));
        let out = r.outcome(&v(&["n1", "n2"]));
        assert_eq!(out, Recovery::Adopt { best: Log(5), adopt_locally: true, sync: vec![] });
        let mut r = RecoveryRound::new("n1");
        r.copy("n1", Log(3));
        r.problem("n2", "refused");
        assert!(matches!(r.outcome(&v(&["n1", "n2"])), Recovery::Retry(p) if p == vec!["n2: refused"]));
    }
}
