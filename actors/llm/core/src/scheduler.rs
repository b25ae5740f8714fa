//! Continuous-batching scheduler (pure core: no I/O, no clock, no model).
//!
//! Each `schedule()` call plans one engine step (iteration-level scheduling):
//! 1. running sequences, most urgent first, each get their next tokens — one for a
//!    decode, a chunk for an unfinished prefill — out of one shared token budget
//!    (`max_batched_tokens`), so decodes are never stuck behind a long prompt;
//! 2. if KV blocks run out, the least urgent running sequence is preempted: its
//!    blocks are released and it goes back to waiting to be recomputed later
//!    (its prefix is often still in the prefix cache, which makes that cheap);
//! 3. the rest of the budget admits waiting sequences (most urgent, then oldest
//!    first), reusing cached prefix blocks, in chunks (chunked prefill).
//!
//! Invariants (property-tested): the tokens planned in a step never exceed the
//! budget; running sequences never exceed `max_num_seqs`; a sequence's block table
//! always covers its computed tokens; every admitted request finishes, provided
//! each fits in the cache alone (checked at `add`).

use std::collections::HashMap;

use crate::backend::BLOCK_SIZE;
use crate::kv::block_manager::{BlockHash, BlockManager, hash_block};

pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences in one step's batch.
    pub max_num_seqs: usize,
    /// Most tokens (prefill + decode) computed in one step.
    pub max_batched_tokens: usize,
    /// Longest sequence (prompt + generated), tokens.
    pub max_model_len: usize,
    /// Most requests waiting for admission.
    pub max_waiting: usize,
    pub num_kv_blocks: usize,
    pub enable_prefix_caching: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("request {0} already exists")]
    Duplicate(SeqId),
    #[error("sequence of {len} tokens exceeds the limit of {max} (max_model_len / KV cache size)")]
    TooLong { len: usize, max: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("waiting queue full ({0} requests)")]
    QueueFull(usize),
    #[error("no room for an imported sequence: {need} KV blocks needed, {free} free")]
    NoRoom { need: usize, free: usize },
    #[error("no room for an imported sequence: {0} sequences already running (max_num_seqs)")]
    Busy(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
}

#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    /// Higher is more urgent.
    pub priority: i32,
    arrival: u64,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    /// Hash chain of full, computed blocks (prefix of `block_table`).
    hashes: Vec<BlockHash>,
    /// Upper bound on total tokens this sequence may reach (for `add` checks).
    max_total: usize,
    status: Status,
    pub preemptions: u32,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    /// Compute tokens[start .. start + n_tokens].
    pub start: usize,
    pub n_tokens: usize,
    /// This chunk reaches the end of the known tokens: sample after it.
    pub want_logits: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub scheduled: Vec<Scheduled>,
    pub preempted: Vec<SeqId>,
    pub copies: Vec<(u32, u32)>,
}

impl Plan {
    pub fn n_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.n_tokens).sum()
    }
}

#[derive(Debug)]
pub struct Scheduler {
    pub cfg: SchedulerConfig,
    pub blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    next_arrival: u64,
    pub total_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        let blocks = BlockManager::new(cfg.num_kv_blocks, cfg.enable_prefix_caching);
        Scheduler { cfg, blocks, seqs: HashMap::new(), next_arrival: 0, total_preemptions: 0 }
    }

    /// Longest sequence accepted: a sequence must fit in the cache on its own, or
    /// preemption could never make room for it.
    pub fn max_len(&self) -> usize {
        self.cfg.max_model_len.min(self.cfg.num_kv_blocks * BLOCK_SIZE)
    }

    /// Queue a sequence; `max_new` bounds the tokens it will generate.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>, max_new: usize, priority: i32) -> Result<(), ScheduleError> {
        if self.seqs.contains_key(&id) {
            return Err(ScheduleError::Duplicate(id));
        }
        if prompt.is_empty() {
            return Err(ScheduleError::EmptyPrompt);
        }
        let max_total = prompt.len().saturating_add(max_new);
        if max_total > self.max_len() {
            return Err(ScheduleError::TooLong { len: max_total, max: self.max_len() });
        }
        if self.num_waiting() >= self.cfg.max_waiting {
            return Err(ScheduleError::QueueFull(self.cfg.max_waiting));
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.seqs.insert(
            id,
            Sequence {
                id,
                priority,
                arrival,
                tokens: prompt,
                num_computed: 0,
                block_table: Vec::new(),
                hashes: Vec::new(),
                max_total,
                status: Status::Waiting,
                preemptions: 0,
            },
        );
        Ok(())
    }

    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }
    pub fn num_running(&self) -> usize {
        self.seqs.values().filter(|s| s.status == Status::Running).count()
    }
    pub fn num_waiting(&self) -> usize {
        self.seqs.values().filter(|s| s.status == Status::Waiting).count()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Remove a sequence (finished or cancelled) and release its blocks.
    pub fn finish(&mut self, id: SeqId) -> Option<Sequence> {
        let mut s = self.seqs.remove(&id)?;
        self.blocks.release_table(&mut s.block_table);
        Some(s)
    }

    /// Remove a finished sequence *without* releasing its blocks: the caller now owns
    /// them (to export their KV) and must give them back with
    /// `blocks.release_table`.
    pub fn detach(&mut self, id: SeqId) -> Option<Sequence> {
        self.seqs.remove(&id)
    }

    /// Add a sequence whose first `computed` tokens already have K/V, which the caller
    /// writes into the returned block table before the next step (KV imported from
    /// another engine). It runs at once: refused, without side effects, when
    /// `max_num_seqs` are running or the blocks are not free now.
    pub fn add_computed(
        &mut self,
        id: SeqId,
        tokens: Vec<u32>,
        computed: usize,
        max_new: usize,
        priority: i32,
    ) -> Result<Vec<u32>, ScheduleError> {
        if self.seqs.contains_key(&id) {
            return Err(ScheduleError::Duplicate(id));
        }
        if tokens.is_empty() || computed == 0 || computed >= tokens.len() {
            return Err(ScheduleError::EmptyPrompt);
        }
        let max_total = computed.saturating_add(max_new);
        if max_total > self.max_len() {
            return Err(ScheduleError::TooLong { len: max_total, max: self.max_len() });
        }
        if self.num_running() >= self.cfg.max_num_seqs {
            return Err(ScheduleError::Busy(self.cfg.max_num_seqs));
        }
        let need = computed.div_ceil(BLOCK_SIZE);
        if need > self.blocks.num_free() {
            return Err(ScheduleError::NoRoom { need, free: self.blocks.num_free() });
        }
        let mut table = Vec::with_capacity(need);
        for _ in 0..need {
            match self.blocks.allocate() {
                Some(b) => table.push(b),
                None => {
                    self.blocks.release_table(&mut table);
                    return Err(ScheduleError::NoRoom { need, free: 0 });
                }
            }
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.seqs.insert(
            id,
            Sequence {
                id,
                priority,
                arrival,
                tokens,
                num_computed: computed,
                block_table: table.clone(),
                // Full imported blocks are hashed and published to the prefix cache by
                // the next `on_computed`, like blocks computed here.
                hashes: Vec::new(),
                max_total,
                status: Status::Running,
                preemptions: 0,
            },
        );
        Ok(table)
    }

    /// Append a sampled token (it is computed in the next step).
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Most urgent first: higher priority, then earlier arrival.
    fn order(&self, status: Status) -> Vec<SeqId> {
        let mut v: Vec<&Sequence> = self.seqs.values().filter(|s| s.status == status).collect();
        v.sort_by_key(|s| (std::cmp::Reverse(s.priority), s.arrival));
        v.into_iter().map(|s| s.id).collect()
    }

    fn preempt(&mut self, id: SeqId, plan: &mut Plan) {
        if let Some(s) = self.seqs.get_mut(&id) {
            self.blocks.release_table(&mut s.block_table);
            s.num_computed = 0;
            s.hashes.clear();
            s.status = Status::Waiting;
            s.preemptions += 1;
            self.total_preemptions += 1;
            plan.preempted.push(id);
        }
    }

    /// Grow `id`'s table to hold `upto` tokens; false if blocks ran out.
    fn grow(&mut self, id: SeqId, upto: usize) -> bool {
        let need = upto.div_ceil(BLOCK_SIZE);
        let Some(have) = self.seqs.get(&id).map(|s| s.block_table.len()) else { return false };
        if need.saturating_sub(have) > self.blocks.num_free() {
            return false;
        }
        for _ in have..need {
            let Some(b) = self.blocks.allocate() else { return false };
            if let Some(s) = self.seqs.get_mut(&id) {
                s.block_table.push(b);
            }
        }
        true
    }

    /// Plan one step. Blocks for the planned tokens are allocated here.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batched_tokens;
        let mut running = self.order(Status::Running);
        let mut i = 0;
        while i < running.len() && budget > 0 {
            let id = running[i];
            let Some(s) = self.seqs.get(&id) else {
                i += 1;
                continue;
            };
            let n = (s.tokens.len() - s.num_computed).min(budget);
            let (start, end) = (s.num_computed, s.num_computed + n);
            let want_logits = end == s.tokens.len();
            // Make room by preempting the least urgent running sequences (never
            // ones already planned this step); preempt this one if it is the least.
            let mut fits = self.grow(id, end);
            while !fits {
                let victim = *running.last().unwrap_or(&id);
                running.pop();
                self.preempt(victim, &mut plan);
                if victim == id {
                    break;
                }
                fits = self.grow(id, end);
            }
            if !fits {
                continue; // `id` itself was preempted; running shrank
            }
            plan.scheduled.push(Scheduled { id, start, n_tokens: n, want_logits });
            budget -= n;
            i += 1;
        }
        let mut n_running = running.len();
        for id in self.order(Status::Waiting) {
            if budget == 0 || n_running >= self.cfg.max_num_seqs {
                break;
            }
            if plan.preempted.contains(&id) {
                continue; // just preempted: do not thrash it back in this step
            }
            if !self.admit(id, &mut budget, &mut plan) {
                break; // first come first served: no overtaking on memory
            }
            n_running += 1;
        }
        debug_assert!(plan.n_tokens() <= self.cfg.max_batched_tokens);
        plan
    }

    fn admit(&mut self, id: SeqId, budget: &mut usize, plan: &mut Plan) -> bool {
        let Some(s) = self.seqs.get(&id) else { return false };
        // Reuse cached full blocks, but always leave at least one token to compute
        // (its logits are needed to sample).
        let cacheable = (s.tokens.len() - 1) / BLOCK_SIZE;
        let mut hashes = Vec::new();
        if self.blocks.prefix_caching() {
            let mut parent = None;
            for c in s.tokens.chunks_exact(BLOCK_SIZE).take(cacheable) {
                let h = hash_block(parent, c);
                hashes.push(h);
                parent = Some(h);
            }
        }
        let hit = self.blocks.lookup(&hashes);
        let computed = hit.len() * BLOCK_SIZE;
        let n = (s.tokens.len() - computed).min(*budget);
        let end = computed + n;
        let need = end.div_ceil(BLOCK_SIZE) - hit.len();
        if need > self.blocks.num_free() {
            let mut hit = hit;
            self.blocks.release_table(&mut hit);
            return false;
        }
        let Some(s) = self.seqs.get_mut(&id) else { return false };
        s.hashes = hashes[..hit.len()].to_vec();
        s.block_table = hit;
        s.num_computed = computed;
        s.status = Status::Running;
        if !self.grow(id, end) {
            return false; // unreachable: free blocks were counted above
        }
        let want_logits = end == self.seqs.get(&id).map_or(0, |s| s.tokens.len());
        plan.scheduled.push(Scheduled { id, start: computed, n_tokens: n, want_logits });
        *budget -= n;
        true
    }

    /// After the backend ran `plan`: advance computed counts and publish newly
    /// full blocks to the prefix cache.
    pub fn on_computed(&mut self, plan: &Plan) {
        for sc in &plan.scheduled {
            let Some(s) = self.seqs.get_mut(&sc.id) else { continue };
            s.num_computed = sc.start + sc.n_tokens;
            let full = s.num_computed / BLOCK_SIZE;
            while s.hashes.len() < full {
                let i = s.hashes.len();
                let h = hash_block(s.hashes.last().copied(), &s.tokens[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]);
                s.hashes.push(h);
                self.blocks.register(s.block_table[i], h);
            }
        }
    }

    /// Every block table (tests check the block manager against them).
    pub fn tables(&self) -> Vec<&[u32]> {
        self.seqs.values().map(|s| s.block_table.as_slice()).collect()
    }

    pub fn max_total(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.max_total)
    }
}

#[cfg(test)]
mod tests;
