//! KV block manager: reference-counted physical blocks, copy-on-write, and the
//! automatic prefix cache (full blocks keyed by a hash chain, LRU-evicted).
//!
//! Every block is in exactly one state:
//! - free: refcount 0, no hash, in `free`;
//! - cached-idle: refcount 0, has a hash, in `lru` (content kept for reuse,
//!   evicted oldest-first when `free` is empty);
//! - in use: refcount > 0 (may also have a hash, then it is findable by it).
//!
//! Invariants (property-tested): refcounts equal the number of block-table entries
//! that name the block; a block is never handed out twice; `num_free()` counts
//! free + cached-idle; the hash map and `hash_of` agree. Pure: no I/O, no clock
//! (LRU order is a logical tick).

use std::collections::{BTreeMap, HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::backend::BLOCK_SIZE;

/// Identity of a full block's content *and* its place: sha256 over (parent hash,
/// tokens), truncated to 128 bits. The chain makes position part of the key, which
/// matters because RoPE makes K depend on position.
pub type BlockHash = u128;

pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    debug_assert_eq!(tokens.len(), BLOCK_SIZE);
    let mut h = Sha256::new();
    h.update(parent.unwrap_or(0).to_le_bytes());
    h.update([parent.is_some() as u8]);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

/// Hashes of every full block of `tokens` (at most `max_blocks`).
pub fn hash_chain(tokens: &[u32], max_blocks: usize) -> Vec<BlockHash> {
    let mut out = Vec::new();
    let mut parent = None;
    for chunk in tokens.chunks_exact(BLOCK_SIZE).take(max_blocks) {
        let h = hash_block(parent, chunk);
        out.push(h);
        parent = Some(h);
    }
    out
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Full blocks looked up.
    pub queries: u64,
    /// Of those, found in the cache.
    pub hits: u64,
    pub evictions: u64,
}

#[derive(Debug)]
pub struct BlockManager {
    refcount: Vec<u32>,
    free: VecDeque<u32>,
    hash_of: Vec<Option<BlockHash>>,
    by_hash: HashMap<BlockHash, u32>,
    /// Cached-idle blocks by last-release tick (oldest first).
    lru: BTreeMap<u64, u32>,
    lru_tick: Vec<u64>,
    tick: u64,
    prefix_caching: bool,
    pub stats: PrefixStats,
}

impl BlockManager {
    pub fn new(num_blocks: usize, prefix_caching: bool) -> BlockManager {
        BlockManager {
            refcount: vec![0; num_blocks],
            free: (0..num_blocks as u32).collect(),
            hash_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            lru: BTreeMap::new(),
            lru_tick: vec![0; num_blocks],
            tick: 0,
            prefix_caching,
            stats: PrefixStats::default(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.refcount.len()
    }
    /// Blocks that can be allocated now (free + evictable cached).
    pub fn num_free(&self) -> usize {
        self.free.len() + self.lru.len()
    }
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }
    pub fn num_cached(&self) -> usize {
        self.by_hash.len()
    }
    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }
    pub fn refcount(&self, b: u32) -> u32 {
        self.refcount[b as usize]
    }

    /// Take a block (refcount 1): a free one, else evict the least recently
    /// released cached block. None when every block is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop_front() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                self.stats.evictions += 1;
                b
            }
        };
        debug_assert_eq!(self.refcount[b as usize], 0);
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// Drop one reference. A block whose last reference goes stays findable by
    /// its hash (cached-idle) or returns to the free list.
    pub fn release(&mut self, b: u32) {
        let rc = &mut self.refcount[b as usize];
        assert!(*rc > 0, "release of free block {b}");
        *rc -= 1;
        if *rc == 0 {
            if self.hash_of[b as usize].is_some() {
                self.tick += 1;
                self.lru_tick[b as usize] = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.free.push_back(b);
            }
        }
    }

    /// Release every block of a table (a finished or preempted sequence). Blocks
    /// are released last-first so that a sequence's tail is evicted before its
    /// (more shareable) head.
    pub fn release_table(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..).rev() {
            self.release(b);
        }
    }

    /// Longest cached prefix of `hashes`: takes a reference on each hit block.
    pub fn lookup(&mut self, hashes: &[BlockHash]) -> Vec<u32> {
        let mut out = Vec::new();
        if !self.prefix_caching {
            return out;
        }
        for h in hashes {
            self.stats.queries += 1;
            let Some(&b) = self.by_hash.get(h) else { break };
            self.stats.hits += 1;
            if self.refcount[b as usize] == 0 {
                self.lru.remove(&self.lru_tick[b as usize]);
            }
            self.refcount[b as usize] += 1;
            out.push(b);
        }
        out
    }

    /// Record that in-use block `b` now holds the full block with `hash`. If
    /// another block already holds the same content, keep the existing entry.
    pub fn register(&mut self, b: u32, hash: BlockHash) {
        if !self.prefix_caching || self.hash_of[b as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        debug_assert!(self.refcount[b as usize] > 0);
        self.hash_of[b as usize] = Some(hash);
        self.by_hash.insert(hash, b);
    }

    /// Share every block of `table` with a new sequence (parallel sampling).
    pub fn fork(&mut self, table: &[u32]) -> Vec<u32> {
        for &b in table {
            self.refcount[b as usize] += 1;
        }
        table.to_vec()
    }

    /// Before writing into the last block of `table`: if it is shared, give this
    /// table a private copy. Returns the (src, dst) copy the backend must do, or
    /// `Err(())` if no block is available.
    #[allow(clippy::result_unit_err)]
    pub fn cow_last(&mut self, table: &mut [u32]) -> Result<Option<(u32, u32)>, ()> {
        let Some(last) = table.last_mut() else { return Ok(None) };
        if self.refcount[*last as usize] <= 1 {
            return Ok(None);
        }
        let dst = self.allocate().ok_or(())?;
        let src = *last;
        self.release(src);
        *last = dst;
        Ok(Some((src, dst)))
    }

    /// Check the state invariants against the tables that hold blocks (tests).
    pub fn check(&self, tables: &[&[u32]]) -> Result<(), String> {
        let mut refs = vec![0u32; self.num_blocks()];
        for t in tables {
            for &b in *t {
                refs[b as usize] += 1;
            }
        }
        if refs != self.refcount {
            return Err("refcounts differ from table references".into());
        }
        let mut seen = vec![0u8; self.num_blocks()];
        for &b in &self.free {
            seen[b as usize] += 1;
            if self.refcount[b as usize] != 0 || self.hash_of[b as usize].is_some() {
                return Err(format!("free block {b} in use or hashed"));
            }
        }
        for (&tick, &b) in &self.lru {
            seen[b as usize] += 1;
            if self.refcount[b as usize] != 0 || self.hash_of[b as usize].is_none() || self.lru_tick[b as usize] != tick
            {
                return Err(format!("lru block {b} inconsistent"));
            }
        }
        for b in 0..self.num_blocks() {
            let idle = self.refcount[b] == 0;
            if (idle && seen[b] != 1) || (!idle && seen[b] != 0) {
                return Err(format!("block {b} listed {} times with refcount {}", seen[b], self.refcount[b]));
            }
        }
        for (h, &b) in &self.by_hash {
            if self.hash_of[b as usize] != Some(*h) {
                return Err(format!("hash map disagrees for block {b}"));
            }
        }
        if self.hash_of.iter().filter(|h| h.is_some()).count() != self.by_hash.len() {
            return Err("hashed blocks missing from the map".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cached_blocks_are_reused_then_evicted_lru() {
        let mut m = BlockManager::new(3, true);
        let toks: Vec<u32> = (0..32).collect();
        let hs = hash_chain(&toks, 8);
        let mut t = vec![m.allocate().expect("a"), m.allocate().expect("b")];
        m.register(t[0], hs[0]);
        m.register(t[1], hs[1]);
        m.release_table(&mut t);
        assert_eq!(m.num_free(), 3);
        let hit = m.lookup(&hs);
        assert_eq!(hit.len(), 2);
        assert_eq!(m.stats.hits, 2);
        let mut hit = hit;
        m.release_table(&mut hit);
        // Free list first, then the oldest idle cached block (the tail, released first).
        let a = m.allocate().expect("free");
        let b = m.allocate().expect("evict");
        assert_eq!(m.stats.evictions, 1);
        assert_eq!(m.lookup(&hs).len(), 1, "head survives, tail was evicted");
        let _ = (a, b);
    }

    #[test]
    fn cow_copies_only_shared_last_block() {
        let mut m = BlockManager::new(4, false);
        let mut a = vec![m.allocate().expect("x")];
        let mut b = m.fork(&a);
        assert_eq!(m.refcount(a[0]), 2);
        let copy = m.cow_last(&mut b).expect("room");
        assert_eq!(copy, Some((a[0], b[0])));
        assert_ne!(a[0], b[0]);
        assert_eq!(m.cow_last(&mut a).expect("room"), None);
        m.check(&[&a, &b]).expect("consistent");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize),
        Release(usize),
        Fork(usize),
        Cow(usize),
        Register(usize, u8),
        Lookup(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6).prop_map(Op::Alloc),
            (0usize..6).prop_map(Op::Release),
            (0usize..6).prop_map(Op::Fork),
            (0usize..6).prop_map(Op::Cow),
            ((0usize..6), any::<u8>()).prop_map(|(a, b)| Op::Register(a, b)),
            any::<u8>().prop_map(Op::Lookup),
        ]
    }

    proptest! {
        /// Random sequences of operations over 6 tables never leak a block, never
        /// hand one out twice and keep refcounts equal to table references.
        #[test]
        fn block_manager_invariants(ops in prop::collection::vec(op(), 1..200), caching in any::<bool>()) {
            let mut m = BlockManager::new(12, caching);
            let mut tables: Vec<Vec<u32>> = vec![Vec::new(); 6];
            for o in ops {
                match o {
                    Op::Alloc(t) => if let Some(b) = m.allocate() { tables[t].push(b) },
                    Op::Release(t) => m.release_table(&mut tables[t]),
                    Op::Fork(t) => {
                        let f = m.fork(&tables[t]);
                        let dst = (t + 1) % 6;
                        m.release_table(&mut tables[dst]);
                        tables[dst] = f;
                    }
                    Op::Cow(t) => { let _ = m.cow_last(&mut tables[t]); }
                    Op::Register(t, h) => if let Some(&b) = tables[t].last() { m.register(b, h as u128) },
                    Op::Lookup(h) => {
                        let got = m.lookup(&[h as u128, h as u128 + 1]);
                        tables[h as usize % 6].extend(got);
                    }
                }
                let refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
                prop_assert_eq!(m.check(&refs), Ok(()));
            }
            for t in &mut tables { m.release_table(t); }
            prop_assert_eq!(m.num_free(), 12);
        }
    }
}
