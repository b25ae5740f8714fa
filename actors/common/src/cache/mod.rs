//! A bounded LRU cache (the URL shortener keeps code -> link in one on every gateway
//! node; the feed and video plans reuse it), with hit/miss counters and
//! invalidation by key.
//!
//! Invariants:
//! - never more than `capacity_entries` entries; inserting into a full cache evicts exactly
//!   the least recently used entry;
//! - `get`, `insert`, `invalidate` are O(1) expected: a hash map from key to a slot in a
//!   slab, the slots chained into a doubly linked recency list by index (no `unsafe`, no
//!   per-operation allocation once the slab is full);
//! - counters only grow; `hits + misses` equals the number of `get` calls.
//!
//! Written here rather than taken from the `lru` crate: ~150 lines without `unsafe`, and the
//! counters and invalidation API are what the shell needs. The map uses std's SipHash
//! hasher because keys (codes) come from the public, so hash flooding must not pay.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    prev: usize,
    next: usize,
}

/// Counters of a cache's life so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries pushed out by capacity.
    pub evictions: u64,
    /// Entries removed by `invalidate` (edit, delete, expiry elsewhere in the cluster).
    pub invalidations: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 { 0.0 } else { self.hits as f64 / lookups as f64 }
    }
}

/// Least-recently-used cache with a fixed capacity in entries.
#[derive(Debug)]
pub struct LruCache<K, V> {
    map: HashMap<K, usize>,
    // Dense: slots[0..len) are all live; removal swaps the last slot into the hole.
    slots: Vec<Slot<K, V>>,
    // Most recently used at `head`, least at `tail`.
    head: usize,
    tail: usize,
    capacity_entries: usize,
    stats: CacheStats,
}

impl<K: Hash + Eq + Clone, V> LruCache<K, V> {
    /// An empty cache holding at most `capacity_entries` entries.
    pub fn new(capacity_entries: NonZeroUsize) -> Self {
        let capacity_entries = capacity_entries.get();
        Self {
            map: HashMap::with_capacity(capacity_entries.min(1 << 16)),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity_entries,
            stats: CacheStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity_entries(&self) -> usize {
        self.capacity_entries
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Looks a key up, counting a hit or a miss, and marks it most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get(key).copied() {
            Some(index) => {
                self.stats.hits += 1;
                self.move_to_front(index);
                Some(&self.slots[index].value)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Looks a key up without touching recency or counters (for introspection).
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|&index| &self.slots[index].value)
    }

    /// Inserts or replaces; returns the entry evicted to make room, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        if let Some(&index) = self.map.get(&key) {
            self.slots[index].value = value;
            self.move_to_front(index);
            return None;
        }
        let slot = Slot { key: key.clone(), value, prev: NIL, next: NIL };
        if self.map.len() >= self.capacity_entries && self.tail != NIL {
            // Full: the least recently used slot is reused in place for the new entry.
            let index = self.tail;
            self.unlink(index);
            let old = std::mem::replace(&mut self.slots[index], slot);
            self.map.remove(&old.key);
            self.map.insert(key, index);
            self.push_front(index);
            self.stats.evictions += 1;
            return Some((old.key, old.value));
        }
        self.slots.push(slot);
        let index = self.slots.len() - 1;
        self.map.insert(key, index);
        self.push_front(index);
        None
    }

    /// Drops a key (after an edit or delete); returns its value if it was cached.
    pub fn invalidate<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = self.map.remove(key)?;
        self.unlink(index);
        let removed = self.slots.swap_remove(index);
        if index < self.slots.len() {
            self.relocate(self.slots.len(), index);
        }
        self.stats.invalidations += 1;
        Some(removed.value)
    }

    /// Drops every entry (counters are kept).
    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// The slot that was at `from` (the old last index) now lives at `to`: repoint its
    /// list neighbours, head/tail and the map. O(1).
    fn relocate(&mut self, from: usize, to: usize) {
        let (prev, next) = (self.slots[to].prev, self.slots[to].next);
        if prev == NIL {
            self.head = to;
        } else {
            self.slots[prev].next = to;
        }
        if next == NIL {
            self.tail = to;
        } else {
            self.slots[next].prev = to;
        }
        debug_assert!(self.map.get(&self.slots[to].key) == Some(&from));
        if let Some(entry) = self.map.get_mut(&self.slots[to].key) {
            *entry = to;
        }
    }

    fn unlink(&mut self, index: usize) {
        let (prev, next) = (self.slots[index].prev, self.slots[index].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
        self.slots[index].prev = NIL;
        self.slots[index].next = NIL;
    }

    fn push_front(&mut self, index: usize) {
        self.slots[index].prev = NIL;
        self.slots[index].next = self.head;
        if self.head != NIL {
            self.slots[self.head].prev = index;
        }
        self.head = index;
        if self.tail == NIL {
            self.tail = index;
        }
    }

    fn move_to_front(&mut self, index: usize) {
        if self.head != index {
            self.unlink(index);
            self.push_front(index);
        }
    }
}

#[cfg(test)]
mod tests;
