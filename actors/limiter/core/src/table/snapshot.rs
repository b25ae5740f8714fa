//! Snapshots of a keyed table: a compact, serde copy of its busy keys that a new owner (after
//! a crash or a move) restores, so limits hold across re-homing.
//!
//! Only keys that are not back to full are saved: a full key decides exactly like an absent
//! one, so dropping it loses nothing (the same argument as idle eviction). Keys are grouped by
//! their parameters, which are stored once per group.
//!
//! Invariants: restoring never breaks an algorithm's invariants, whatever the bytes were (every
//! state is clamped into its valid range, a sliding log that is not well formed is dropped);
//! restoring never grows the table past `keys_max`. Time is not translated: the snapshot's
//! timestamps are on the owner's clock, so the next owner must read a clock with the same epoch
//! (the shard actors use monotonic time offset to the wall clock at activation; see
//! docs/rate-limiter.md for the bound on what a clock offset between owners can cost).

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use super::KeyedTable;
use super::packed::{Packed, Saved};
use crate::algorithm::LimitParams;

/// A copy of a table's busy keys (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot<K> {
    /// Owner time at which it was taken.
    pub taken_at_ns: u64,
    groups: Vec<Group<K>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Group<K> {
    params: LimitParams,
    keys: Vec<(K, Saved)>,
}

impl<K> TableSnapshot<K> {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.keys.len()).sum()
    }
    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.keys.is_empty())
    }
}

impl<K: Hash + Eq + Clone> KeyedTable<K> {
    /// Copies every key whose state is not back to full at `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> TableSnapshot<K> {
        // The heap holds, for every live key, at least one entry with its current parameters
        // (armed at insert and restart, re-armed on pop, kept by compaction), which is where the
        // parameters the hot map does not store are found.
        let mut groups: Vec<Group<K>> = Vec::new();
        let mut by_tag: HashMap<u64, usize> = HashMap::new();
        let mut seen = std::collections::HashSet::with_capacity(self.entries.len());
        for std::cmp::Reverse(due) in self.due.iter() {
            let Some(entry) = self.entries.get(&due.key) else { continue };
            if !entry.matches(&due.params) || entry.full_at_ns(&due.params, &self.logs) <= now_ns {
                continue;
            }
            if !seen.insert(&due.key) {
                continue;
            }
            let i = *by_tag.entry(due.params.fingerprint()).or_insert_with(|| {
                groups.push(Group { params: due.params, keys: Vec::new() });
                groups.len() - 1
            });
            groups[i].keys.push((due.key.clone(), entry.save(&due.params, &self.logs)));
        }
        TableSnapshot { taken_at_ns: now_ns, groups }
    }

    /// Loads the keys of `snap` that this table does not hold yet, while there is room; returns
    /// how many were loaded. Keys are armed for idle eviction at `now_ns`. A key whose rule has
    /// changed since restarts from full on its next check, as after any rule change.
    pub fn restore(&mut self, snap: TableSnapshot<K>, now_ns: u64) -> usize {
        let mut loaded = 0;
        for group in snap.groups {
            for (key, saved) in group.keys {
                if self.entries.len() >= self.keys_max {
                    return loaded;
                }
                if self.entries.contains_key(&key) {
                    continue;
                }
                let Some(packed) = Packed::restore(&group.params, saved, &mut self.logs) else { continue };
                self.entries.insert(key.clone(), packed);
                self.arm(&key, &group.params, now_ns);
                loaded += 1;
            }
        }
        loaded
    }

    /// Gives back `cost` admitted for `key` at `admitted_at_ns` (see
    /// [`crate::Algorithm::refund`] for why it is never more generous than not admitting).
    /// Returns false when there is nothing to refund: the key is gone (it was back to full, so
    /// the admission no longer counts) or its rule changed (its state restarted).
    pub fn refund(&mut self, key: &K, params: &LimitParams, admitted_at_ns: u64, cost: u64, now_ns: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(e) if e.matches(params) => {
                e.refund(params, &mut self.logs, admitted_at_ns, now_ns, cost);
                true
            }
            _ => false,
        }
    }

    /// Consumes up to `cost` whatever the limit says, for costs learnt after the fact (an LLM's
    /// generated tokens): what is left is taken, never more, so the key is not pushed into debt
    /// it could not represent. Returns the units charged and the decision after the charge.
    pub fn charge(
        &mut self,
        key: &K,
        params: &LimitParams,
        cost: u64,
        now_ns: u64,
    ) -> Result<(u64, crate::Decision), super::TableError> {
        let available = self.peek(key, params, 0, now_ns).remaining;
        let charged = cost.min(available);
        let d = self.check(key, params, charged, now_ns)?;
        Ok((if d.allowed { charged } else { 0 }, d))
    }
}
