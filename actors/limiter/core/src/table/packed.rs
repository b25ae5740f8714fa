//! The keyed table's per-key state in 32 bytes: a tag (parameters' fingerprint and algorithm)
//! and three words that hold whichever algorithm's state the tag names.
//!
//! Why: with 100K keys the table is memory-bound, and an enum of states plus a separate
//! fingerprint took 48 bytes per key (the enum tag alone padded to 8). Packing brings a `u64`
//! key's bucket to 40 bytes, and the keyed bench from ~2× to below governor. The typed states
//! stay the single implementation: a check unpacks three words into the typed state, runs it,
//! and packs it back, which costs a few register moves. A sliding log does not fit in three
//! words; it lives in a slab owned by the table and the words hold its slot index.
//!
//! Invariant: an entry's words are only interpreted with parameters whose tag equals the
//! entry's tag, i.e. the same algorithm and (up to a 2^-56 fingerprint collision) the same
//! numbers the state was built with.

use crate::algorithm::{
    AlgorithmKind, AlgorithmState, FixedWindowState, GcraState, LimitParams, SlidingCounterState, SlidingLogState,
    TokenBucketState,
};
use crate::decision::Decision;

/// Conversion of a small typed state to and from three words.
pub(crate) trait Words: AlgorithmState {
    fn pack(&self) -> [u64; 3];
    fn unpack(w: [u64; 3]) -> Self;
}

impl Words for TokenBucketState {
    fn pack(&self) -> [u64; 3] {
        self.to_words()
    }
    fn unpack(w: [u64; 3]) -> Self {
        Self::from_words(w)
    }
}
impl Words for GcraState {
    fn pack(&self) -> [u64; 3] {
        self.to_words()
    }
    fn unpack(w: [u64; 3]) -> Self {
        Self::from_words(w)
    }
}
impl Words for FixedWindowState {
    fn pack(&self) -> [u64; 3] {
        self.to_words()
    }
    fn unpack(w: [u64; 3]) -> Self {
        Self::from_words(w)
    }
}
impl Words for SlidingCounterState {
    fn pack(&self) -> [u64; 3] {
        self.to_words()
    }
    fn unpack(w: [u64; 3]) -> Self {
        Self::from_words(w)
    }
}

/// Sliding logs of the table's keys, by slot; freed slots are reused.
#[derive(Debug, Default)]
pub(crate) struct LogSlab {
    slots: Vec<Option<SlidingLogState>>,
    free: Vec<usize>,
}

impl LogSlab {
    fn alloc(&mut self, p: &LimitParams) -> u64 {
        self.insert(SlidingLogState::new(p))
    }
    fn insert(&mut self, log: SlidingLogState) -> u64 {
        let log = Some(log);
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = log;
                i as u64
            }
            None => {
                self.slots.push(log);
                (self.slots.len() - 1) as u64
            }
        }
    }
    fn release(&mut self, slot: u64) {
        if let Some(s) = self.slots.get_mut(slot as usize)
            && s.take().is_some()
        {
            self.free.push(slot as usize);
        }
    }
    fn get(&self, slot: u64) -> Option<&SlidingLogState> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }
    fn get_mut(&mut self, slot: u64) -> Option<&mut SlidingLogState> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }
}

/// One key's state: 32 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed {
    tag: u64,
    words: [u64; 3],
}

/// Fingerprint in the high 56 bits, algorithm in the low 8.
pub(crate) fn tag_of(p: &LimitParams) -> u64 {
    (p.fingerprint() & !0xff) | p.kind() as u64
}

#[inline]
fn refund_words<S: Words>(words: &mut [u64; 3], p: &LimitParams, at_ns: u64, now_ns: u64, cost: u64) {
    let mut s = S::unpack(*words);
    s.refund(p, at_ns, now_ns, cost);
    *words = s.pack();
}

/// One key's state as a snapshot carries it: the packed words, or a sliding log's entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Saved {
    Words([u64; 3]),
    Log { entries: Vec<(u64, u64)>, last_ns: u64 },
}

#[inline]
fn run<S: Words>(words: &mut [u64; 3], p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
    let mut s = S::unpack(*words);
    let d = s.check(p, now_ns, cost);
    *words = s.pack();
    d
}

impl Packed {
    /// Fresh state for `p` (allocates a log slot for a sliding log).
    pub(crate) fn fresh(p: &LimitParams, logs: &mut LogSlab) -> Self {
        let words = match p.kind() {
            AlgorithmKind::TokenBucket => TokenBucketState::new(p).pack(),
            AlgorithmKind::Gcra => GcraState::new(p).pack(),
            AlgorithmKind::SlidingCounter => SlidingCounterState::new(p).pack(),
            AlgorithmKind::FixedWindow => FixedWindowState::new(p).pack(),
            AlgorithmKind::SlidingLog => [logs.alloc(p), 0, 0],
        };
        Packed { tag: tag_of(p), words }
    }

    /// Whether this state was built for `p`.
    #[inline]
    pub(crate) fn matches(&self, p: &LimitParams) -> bool {
        self.tag == tag_of(p)
    }

    /// Frees what the state owns outside the entry (a log slot). Call before dropping it.
    pub(crate) fn release(&self, logs: &mut LogSlab) {
        if self.tag & 0xff == AlgorithmKind::SlidingLog as u64 {
            logs.release(self.words[0]);
        }
    }

    #[inline]
    pub(crate) fn check(&mut self, p: &LimitParams, logs: &mut LogSlab, now_ns: u64, cost: u64) -> Decision {
        match p.kind() {
            AlgorithmKind::TokenBucket => run::<TokenBucketState>(&mut self.words, p, now_ns, cost),
            AlgorithmKind::Gcra => run::<GcraState>(&mut self.words, p, now_ns, cost),
            AlgorithmKind::SlidingCounter => run::<SlidingCounterState>(&mut self.words, p, now_ns, cost),
            AlgorithmKind::FixedWindow => run::<FixedWindowState>(&mut self.words, p, now_ns, cost),
            AlgorithmKind::SlidingLog => match logs.get_mut(self.words[0]) {
                Some(log) => log.check(p, now_ns, cost),
                // Unreachable while the slab invariant holds; answer as a fresh log would.
                None => SlidingLogState::new(p).check(p, now_ns, cost),
            },
        }
    }

    #[inline]
    pub(crate) fn peek(&self, p: &LimitParams, logs: &LogSlab, now_ns: u64, cost: u64) -> Decision {
        match p.kind() {
            AlgorithmKind::TokenBucket => TokenBucketState::unpack(self.words).peek(p, now_ns, cost),
            AlgorithmKind::Gcra => GcraState::unpack(self.words).peek(p, now_ns, cost),
            AlgorithmKind::SlidingCounter => SlidingCounterState::unpack(self.words).peek(p, now_ns, cost),
            AlgorithmKind::FixedWindow => FixedWindowState::unpack(self.words).peek(p, now_ns, cost),
            AlgorithmKind::SlidingLog => match logs.get(self.words[0]) {
                Some(log) => log.peek(p, now_ns, cost),
                None => SlidingLogState::new(p).peek(p, now_ns, cost),
            },
        }
    }

    pub(crate) fn refund(&mut self, p: &LimitParams, logs: &mut LogSlab, at_ns: u64, now_ns: u64, cost: u64) {
        match p.kind() {
            AlgorithmKind::TokenBucket => refund_words::<TokenBucketState>(&mut self.words, p, at_ns, now_ns, cost),
            AlgorithmKind::Gcra => refund_words::<GcraState>(&mut self.words, p, at_ns, now_ns, cost),
            AlgorithmKind::SlidingCounter => {
                refund_words::<SlidingCounterState>(&mut self.words, p, at_ns, now_ns, cost)
            }
            AlgorithmKind::FixedWindow => refund_words::<FixedWindowState>(&mut self.words, p, at_ns, now_ns, cost),
            AlgorithmKind::SlidingLog => {
                if let Some(log) = logs.get_mut(self.words[0]) {
                    log.refund(p, at_ns, now_ns, cost);
                }
            }
        }
    }

    /// The state as a snapshot stores it.
    pub(crate) fn save(&self, p: &LimitParams, logs: &LogSlab) -> Saved {
        match p.kind() {
            AlgorithmKind::SlidingLog => {
                let (entries, last_ns) = logs.get(self.words[0]).map(SlidingLogState::parts).unwrap_or_default();
                Saved::Log { entries, last_ns }
            }
            _ => Saved::Words(self.words),
        }
    }

    /// Rebuilds a state from a snapshot for parameters `p`, bringing it within the algorithm's
    /// invariants (a snapshot is read from disk or another node, so it is not trusted); `None`
    /// when it does not fit `p` at all.
    pub(crate) fn restore(p: &LimitParams, saved: Saved, logs: &mut LogSlab) -> Option<Self> {
        let words = match (p.kind(), saved) {
            (AlgorithmKind::TokenBucket, Saved::Words(w)) => TokenBucketState::sanitized(w, p),
            (AlgorithmKind::Gcra, Saved::Words(w)) => GcraState::sanitized(w, p),
            (AlgorithmKind::SlidingCounter, Saved::Words(w)) => SlidingCounterState::sanitized(w, p),
            (AlgorithmKind::FixedWindow, Saved::Words(w)) => FixedWindowState::sanitized(w, p),
            (AlgorithmKind::SlidingLog, Saved::Log { entries, last_ns }) => {
                let log = SlidingLogState::from_parts(p, entries, last_ns)?;
                [logs.insert(log), 0, 0]
            }
            _ => return None,
        };
        Some(Packed { tag: tag_of(p), words })
    }

    pub(crate) fn full_at_ns(&self, p: &LimitParams, logs: &LogSlab) -> u64 {
        match p.kind() {
            AlgorithmKind::TokenBucket => TokenBucketState::unpack(self.words).full_at_ns(p),
            AlgorithmKind::Gcra => GcraState::unpack(self.words).full_at_ns(p),
            AlgorithmKind::SlidingCounter => SlidingCounterState::unpack(self.words).full_at_ns(p),
            AlgorithmKind::FixedWindow => FixedWindowState::unpack(self.words).full_at_ns(p),
            AlgorithmKind::SlidingLog => logs.get(self.words[0]).map_or(0, |log| log.full_at_ns(p)),
        }
    }
}
