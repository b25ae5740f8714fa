//! Keyed table: the state of many keys (one limiter each) with bounded memory, and the
//! all-or-nothing check of the several limits one request is subject to.
//!
//! Eviction policy: **expiry, not LRU.** A key is evicted only once its state is back to full
//! ([`AlgorithmState::full_at_ns`] has passed), when a fresh state would behave identically, so
//! eviction never mints quota. Keys are found through a min-heap of "check again at" times, one
//! entry per key (with the key's parameters, which the hot map does not hold), re-armed lazily:
//! a popped key that is not full yet is pushed back with its current full time.
//!
//! Memory: the hot map holds the key and 32 bytes of state (see `packed`); the heap holds the
//! key, its due time and its parameters (48 bytes). So about `keys_max × (2·size_of::<K>() + 80)`
//! bytes plus hash-table slack, and a sliding log key adds its bounded entries (see
//! [`crate::algorithm::SlidingLogState`]). When the table holds `keys_max` keys and none is idle, a new key
//! is refused with [`TableError::Full`] and the caller applies the rule's fail mode. LRU would
//! instead forget a busy key's usage under a key flood and hand it a fresh quota; refusing keeps
//! the limits honest and makes the overload visible.
//!
//! Invariants: `len() <= keys_max`; a request carries at most [`CHECKS_PER_REQUEST_MAX`]
//! limits; a denied or failed `check_many` consumes nothing (it may create fresh entries, which
//! is state-equivalent to their absence). A key whose parameters changed (a rule update) is
//! restarted from full capacity on its next check.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use crate::algorithm::{AlgorithmState, AnyState, LimitParams};

mod packed;
mod snapshot;
use crate::decision::Decision;
use packed::{LogSlab, Packed};
pub use snapshot::TableSnapshot;

/// Most limits one request can be checked against at once.
pub const CHECKS_PER_REQUEST_MAX: usize = 16;
/// Most heap entries one insertion examines while looking for an idle key (bounds latency).
pub const EVICT_SCAN_MAX: usize = 64;

/// Bounds of a [`KeyedTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Most keys held at once.
    pub keys_max: usize,
}

/// Why a table operation did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `keys_max` keys are held and none is idle: apply the rule's fail mode for this request.
    #[error("limiter table is full ({keys_max} keys, none idle); raise keys_max or apply the rule's fail mode")]
    Full { keys_max: usize },
    /// More limits in one request than [`CHECKS_PER_REQUEST_MAX`].
    #[error("{got} limits in one request is above the bound of {max}")]
    TooManyChecks { got: usize, max: usize },
    /// The same key appears twice in one request (its cost would be counted against one state
    /// twice but checked once).
    #[error("limit #{second} repeats the key of limit #{first}; merge their costs")]
    DuplicateKey { first: usize, second: usize },
    /// `keys_max` was 0.
    #[error("keys_max must be at least 1")]
    ZeroCapacity,
}

/// One limit to check for a request.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a, K> {
    /// Shard key (see [`crate::key::shard_key`]).
    pub key: &'a K,
    /// The rule's current parameters.
    pub params: LimitParams,
    /// Cost of this request against this limit (e.g. 1 request, or 730 tokens).
    pub cost: u64,
    /// Shadow limits are evaluated and reported but never deny.
    pub shadow: bool,
}

/// The result for one limit of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitResult {
    /// What this limit says. For a shadow limit it is the would-be decision (`allowed` may be
    /// false even though the request was admitted).
    pub decision: Decision,
    /// Whether the limit is in shadow mode.
    pub shadow: bool,
    /// A shadow limit that would have blocked this request (log it; never deny on it).
    pub would_block: bool,
}

/// The result of [`KeyedTable::check_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// True when every enforced limit allowed; then every enforced limit was consumed (and
    /// every shadow limit that would have allowed). False: nothing was consumed.
    pub admitted: bool,
    /// One result per limit, in input order.
    pub results: Vec<LimitResult>,
    /// Index of the enforced limit that should drive the response headers: when denied, the
    /// denying limit with the longest retry; when admitted, the one with the fewest remaining.
    /// `None` when the request had no enforced limit.
    pub binding: Option<usize>,
}

/// Heap item ordered by due time only, so `K` needs no `Ord`.
struct Due<K> {
    at_ns: u64,
    key: K,
    params: LimitParams,
}

impl<K> PartialEq for Due<K> {
    fn eq(&self, o: &Self) -> bool {
        self.at_ns == o.at_ns
    }
}
impl<K> Eq for Due<K> {}
impl<K> PartialOrd for Due<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Due<K> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.at_ns.cmp(&o.at_ns)
    }
}

/// Many keys, each with its own limiter state. Single-owner (`&mut self`): the limiter shard
/// actor owns one, which is what makes check-and-consume atomic without locks.
pub struct KeyedTable<K> {
    keys_max: usize,
    entries: HashMap<K, Packed>,
    logs: LogSlab,
    due: BinaryHeap<Reverse<Due<K>>>,
}

impl<K: Hash + Eq + Clone> KeyedTable<K> {
    /// An empty table.
    pub fn new(config: TableConfig) -> Result<Self, TableError> {
        if config.keys_max == 0 {
            return Err(TableError::ZeroCapacity);
        }
        Ok(KeyedTable {
            keys_max: config.keys_max,
            entries: HashMap::new(),
            logs: LogSlab::default(),
            due: BinaryHeap::new(),
        })
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The bound on keys.
    pub fn keys_max(&self) -> usize {
        self.keys_max
    }

    /// Checks and consumes one enforced limit (the fast path: one hash lookup on a hit).
    pub fn check(&mut self, key: &K, params: &LimitParams, cost: u64, now_ns: u64) -> Result<Decision, TableError> {
        if let Some(e) = self.entries.get_mut(key) {
            if e.matches(params) {
                return Ok(e.check(params, &mut self.logs, now_ns, cost));
            }
            self.restart(key, params, now_ns);
        } else {
            self.insert(key, params, now_ns, &[])?;
        }
        let logs = &mut self.logs;
        Ok(self.entries.get_mut(key).expect("key was inserted in this call").check(params, logs, now_ns, cost))
    }

    /// The decision `check` would return, consuming nothing (an absent key answers as fresh).
    pub fn peek(&self, key: &K, params: &LimitParams, cost: u64, now_ns: u64) -> Decision {
        match self.entries.get(key) {
            Some(e) if e.matches(params) => e.peek(params, &self.logs, now_ns, cost),
            _ => AnyState::new(params).peek(params, now_ns, cost),
        }
    }

    /// Checks all the limits of one request atomically: enforced limits are consumed only if
    /// all of them allow. Shadow limits never deny; when the request is admitted, each shadow
    /// limit consumes only if it would have allowed, so its state tracks what enforcing it
    /// would have done.
    pub fn check_many(&mut self, checks: &[LimitCheck<'_, K>], now_ns: u64) -> Result<CheckOutcome, TableError> {
        if checks.len() > CHECKS_PER_REQUEST_MAX {
            return Err(TableError::TooManyChecks { got: checks.len(), max: CHECKS_PER_REQUEST_MAX });
        }
        for (j, c) in checks.iter().enumerate() {
            if let Some(i) = checks[..j].iter().position(|p| p.key == c.key) {
                return Err(TableError::DuplicateKey { first: i, second: j });
            }
        }
        // Phase 1: make every key present with current parameters. Keys of this request are
        // pinned so making room for one cannot evict another.
        let pinned: Vec<&K> = checks.iter().map(|c| c.key).collect();
        for c in checks {
            match self.entries.get(c.key) {
                Some(e) if e.matches(&c.params) => {}
                Some(_) => self.restart(c.key, &c.params, now_ns),
                None => self.insert(c.key, &c.params, now_ns, &pinned)?,
            }
        }
        // Phase 2: decide without consuming.
        let mut results: Vec<LimitResult> = checks
            .iter()
            .map(|c| {
                let decision = match self.entries.get(c.key) {
                    Some(e) => e.peek(&c.params, &self.logs, now_ns, c.cost),
                    None => AnyState::new(&c.params).peek(&c.params, now_ns, c.cost), // not reached: inserted above
                };
                LimitResult { decision, shadow: c.shadow, would_block: c.shadow && !decision.allowed }
            })
            .collect();
        let admitted = results.iter().all(|r| r.shadow || r.decision.allowed);
        // Phase 3: consume. `check` repeats `peek`'s arithmetic on the same state and time, so it
        // reaches the same verdict (a property test holds every algorithm to that).
        if admitted {
            for (c, r) in checks.iter().zip(results.iter_mut()) {
                if r.decision.allowed {
                    if let Some(e) = self.entries.get_mut(c.key) {
                        r.decision = e.check(&c.params, &mut self.logs, now_ns, c.cost);
                    }
                    debug_assert!(r.decision.allowed, "peek and check disagree");
                }
            }
        }
        let binding = binding_index(&results, admitted);
        Ok(CheckOutcome { admitted, results, binding })
    }

    /// Evicts keys whose state is back to full, examining at most `scan_max` heap entries.
    /// Call it from a timer so memory tracks the working set; returns how many were evicted.
    pub fn evict_idle(&mut self, now_ns: u64, scan_max: usize) -> usize {
        let mut evicted = 0;
        for _ in 0..scan_max {
            match self.pop_due(now_ns, &[]) {
                Some(true) => evicted += 1,
                Some(false) => {}
                None => break,
            }
        }
        evicted
    }

    /// Drops every key for which `keep` returns false (e.g. the keys of a removed rule).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let logs = &mut self.logs;
        self.entries.retain(|k, e| {
            let kept = keep(k);
            if !kept {
                e.release(logs);
            }
            kept
        });
        self.compact_heap();
    }

    fn insert(&mut self, key: &K, params: &LimitParams, now_ns: u64, pinned: &[&K]) -> Result<(), TableError> {
        if self.entries.len() >= self.keys_max {
            self.make_room(now_ns, pinned)?;
        }
        let fresh = Packed::fresh(params, &mut self.logs);
        self.entries.insert(key.clone(), fresh);
        self.arm(key, params, now_ns);
        Ok(())
    }

    /// New parameters for an existing key (a rule changed): fresh state under them.
    fn restart(&mut self, key: &K, params: &LimitParams, now_ns: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.release(&mut self.logs);
            *e = Packed::fresh(params, &mut self.logs);
        }
        // The old heap entry carries the old fingerprint and is dropped when popped.
        self.arm(key, params, now_ns);
    }

    fn arm(&mut self, key: &K, params: &LimitParams, now_ns: u64) {
        self.due.push(Reverse(Due { at_ns: now_ns, key: key.clone(), params: *params }));
        if self.due.len() > 2 * self.keys_max + CHECKS_PER_REQUEST_MAX {
            self.compact_heap();
        }
    }

    fn make_room(&mut self, now_ns: u64, pinned: &[&K]) -> Result<(), TableError> {
        for _ in 0..EVICT_SCAN_MAX {
            match self.pop_due(now_ns, pinned) {
                Some(true) => return Ok(()),
                Some(false) => {}
                None => break,
            }
        }
        Err(TableError::Full { keys_max: self.keys_max })
    }

    /// Pops the earliest due entry if it is due by `now`: `Some(true)` if it evicted a key,
    /// `Some(false)` if the entry was stale or re-armed, `None` if nothing is due.
    fn pop_due(&mut self, now_ns: u64, pinned: &[&K]) -> Option<bool> {
        if self.due.peek().is_none_or(|Reverse(d)| d.at_ns > now_ns) {
            return None;
        }
        let Reverse(due) = self.due.pop()?;
        let Some(entry) = self.entries.get(&due.key) else { return Some(false) };
        if !entry.matches(&due.params) {
            return Some(false); // the key restarted under new parameters; a newer entry exists
        }
        let full_at = entry.full_at_ns(&due.params, &self.logs);
        if full_at <= now_ns && !pinned.contains(&&due.key) {
            if let Some(e) = self.entries.remove(&due.key) {
                e.release(&mut self.logs);
            }
            return Some(true);
        }
        // Not idle yet (or pinned): check again later. Always strictly later than `now`, so one
        // pass never examines the same key twice.
        let at_ns = full_at.max(now_ns.saturating_add(1));
        self.due.push(Reverse(Due { at_ns, ..due }));
        Some(false)
    }

    /// Drops heap entries of removed or restarted keys and duplicates, keeping one per key.
    fn compact_heap(&mut self) {
        let mut seen = std::collections::HashSet::with_capacity(self.entries.len());
        let old = std::mem::take(&mut self.due).into_vec();
        self.due = old
            .into_iter()
            .filter(|Reverse(d)| {
                self.entries.get(&d.key).is_some_and(|e| e.matches(&d.params)) && seen.insert(d.key.clone())
            })
            .collect();
    }
}

fn binding_index(results: &[LimitResult], admitted: bool) -> Option<usize> {
    let enforced = results.iter().enumerate().filter(|(_, r)| !r.shadow);
    if admitted {
        enforced.min_by_key(|(_, r)| r.decision.remaining).map(|(i, _)| i)
    } else {
        enforced.filter(|(_, r)| !r.decision.allowed).max_by_key(|(_, r)| r.decision.retry_after_ns).map(|(i, _)| i)
    }
}
