//! Presence: who is online, and when each user was last seen. Each gateway node counts
//! its own sessions per user and, once per tick, publishes one digest of what changed
//! (and every `FULL_EVERY` ticks all of it) — one message per node per tick however
//! many users came and went, never one per change or per watcher. Every gateway folds
//! the digests of the others into its view; a node declared down takes its users
//! offline with it.
//!
//! Staleness: a change is seen elsewhere one tick (plus a publish) after it happens; a
//! lost digest is corrected by the next full one; a dead node's users go offline at its
//! member-down event, and a node not heard from for three full-digest periods has its
//! users taken offline anyway.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A full digest every this many ticks.
pub const FULL_EVERY: u64 = 15;
/// Users whose last-seen time a view keeps at most (the oldest are forgotten).
pub const LAST_SEEN_MAX: usize = 1_000_000;

/// One node's presence news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub node: String,
    /// Every user online on the node (else: only the changes).
    pub full: bool,
    /// Users online there (that came online, in a delta).
    pub online: Vec<String>,
    /// Users that went offline there, and when.
    pub offline: Vec<(String, u64)>,
    pub at_ms: u64,
}

/// One node's own sessions.
#[derive(Debug, Default)]
pub struct Local {
    counts: HashMap<String, u32>,
    /// Changes since the last digest: None = came online, Some(ms) = went offline.
    changed: BTreeMap<String, Option<u64>>,
    ticks: u64,
}

impl Local {
    pub fn connect(&mut self, user: &str) {
        let n = self.counts.entry(user.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.changed.insert(user.to_string(), None);
        }
    }

    pub fn disconnect(&mut self, user: &str, now_ms: u64) {
        if let Some(n) = self.counts.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(user);
                self.changed.insert(user.to_string(), Some(now_ms));
            }
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.counts.contains_key(user)
    }

    /// Users online on this node.
    pub fn online(&self) -> usize {
        self.counts.len()
    }

    /// This tick's digest: the changes, or everything every `FULL_EVERY` ticks; None
    /// when there is nothing to say.
    pub fn tick(&mut self, node: &str, now_ms: u64) -> Option<Digest> {
        self.ticks += 1;
        let changed = std::mem::take(&mut self.changed);
        if self.ticks.is_multiple_of(FULL_EVERY) {
            let offline = changed.into_iter().filter_map(|(u, off)| off.map(|t| (u, t))).collect();
            let mut online: Vec<String> = self.counts.keys().cloned().collect();
            online.sort();
            return Some(Digest { node: node.to_string(), full: true, online, offline, at_ms: now_ms });
        }
        if changed.is_empty() {
            return None;
        }
        let mut online = Vec::new();
        let mut offline = Vec::new();
        for (u, off) in changed {
            match off {
                None => online.push(u),
                Some(t) => offline.push((u, t)),
            }
        }
        Some(Digest { node: node.to_string(), full: false, online, offline, at_ms: now_ms })
    }
}

/// What one node knows of the others.
#[derive(Debug, Default)]
pub struct View {
    nodes: HashMap<String, HashSet<String>>,
    last_seen: HashMap<String, u64>,
    /// When each node's last digest arrived (this node's clock).
    heard: HashMap<String, u64>,
}

impl View {
    fn seen(&mut self, user: &str, at_ms: u64) {
        if self.last_seen.len() >= LAST_SEEN_MAX
            && !self.last_seen.contains_key(user)
            && let Some(oldest) = self.last_seen.iter().min_by_key(|(_, t)| **t).map(|(u, _)| u.clone())
        {
            self.last_seen.remove(&oldest);
        }
        let t = self.last_seen.entry(user.to_string()).or_insert(at_ms);
        *t = (*t).max(at_ms);
    }

    /// Folds in a digest that arrived at `received_ms` (this node's clock).
    pub fn apply(&mut self, d: &Digest, received_ms: u64) {
        self.heard.insert(d.node.clone(), received_ms);
        let set = self.nodes.entry(d.node.clone()).or_default();
        if d.full {
            let now: HashSet<String> = d.online.iter().cloned().collect();
            let gone: Vec<String> = set.difference(&now).cloned().collect();
            *set = now;
            for u in gone {
                self.seen(&u, d.at_ms);
            }
        } else {
            set.extend(d.online.iter().cloned());
            for (u, _) in &d.offline {
                set.remove(u);
            }
        }
        for (u, t) in &d.offline {
            self.seen(u, *t);
        }
    }

    /// Node `node` is down: its users are offline as of `at_ms`.
    pub fn node_down(&mut self, node: &str, at_ms: u64) {
        self.heard.remove(node);
        for u in self.nodes.remove(node).unwrap_or_default() {
            self.seen(&u, at_ms);
        }
    }

    /// Takes offline the users of every node not heard from for `max_age_ms` (a
    /// member-down event missed, a digest overtaken by it): a node's users never stay
    /// online on a view for longer than that after the node went quiet.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) {
        let quiet: Vec<(String, u64)> = self
            .heard
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) > max_age_ms)
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        for (node, last) in quiet {
            self.node_down(&node, last);
        }
    }

    /// Whether `user` is online on another node, and when last seen going offline.
    pub fn query(&self, user: &str) -> (bool, Option<u64>) {
        (self.nodes.values().any(|s| s.contains(user)), self.last_seen.get(user).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_then_a_full_digest_correct_a_lost_one() {
        let mut n1 = Local::default();
        let mut v = View::default();
        n1.connect("a");
        n1.connect("a");
        n1.connect("b");
        let d = n1.tick("n1", 10).unwrap();
        assert!(!d.full);
        v.apply(&d, 10);
        assert_eq!(v.query("a"), (true, None));
        n1.disconnect("a", 20);
        assert!(n1.is_online("a"), "a second session still open");
        assert!(n1.tick("n1", 21).is_none(), "nothing changed");
        n1.disconnect("a", 30);
        n1.disconnect("b", 31);
        let _lost = n1.tick("n1", 32).unwrap();
        assert_eq!(v.query("b"), (true, None), "the delta was lost");
        let full = loop {
            if let Some(d) = n1.tick("n1", 40)
                && d.full
            {
                break d;
            }
        };
        v.apply(&full, 40);
        assert_eq!(v.query("b"), (false, Some(40)), "the full digest took b offline");
        assert!(!v.query("a").0);
    }

    #[test]
    fn a_dead_node_takes_its_users_offline() {
        let mut n2 = Local::default();
        let mut v = View::default();
        n2.connect("c");
        v.apply(&n2.tick("n2", 5).unwrap(), 5);
        assert!(v.query("c").0);
        v.node_down("n2", 50);
        assert_eq!(v.query("c"), (false, Some(50)));
        // A node that goes quiet without a down event is expired.
        n2.connect("d");
        v.apply(&n2.tick("n2", 60).unwrap(), 60);
        v.expire(100, 60);
        assert!(v.query("d").0, "heard 40 ms ago");
        v.expire(200, 60);
        assert_eq!(v.query("d"), (false, Some(60)));
    }
}
