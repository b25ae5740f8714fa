//! The seam between the engine (scheduler, block manager, sampler: pure, shared)
//! and a compute backend (CPU today, CUDA in `cuda`).
//!
//! A backend owns the weights and the paged KV cache memory. Each step the engine
//! hands it one flattened `Batch`: the new tokens of every scheduled sequence
//! (prefill chunks and single decode tokens mixed), their positions, the KV slot
//! each token's K/V is written to, and per sequence its block table. The backend
//! writes K/V, attends over the whole context through the block table, and returns
//! logits only for the rows the engine asked for. Invariants the engine upholds
//! (and `Batch::validate` checks): slots and block ids are < the cache size, a
//! sequence's tokens are contiguous and in position order, and positions are
//! `context_len - n_tokens .. context_len`.

use crate::model::ModelConfig;

/// Tokens per KV block (fixed: the engine, the kernels and the prefix hashes agree on it).
pub const BLOCK_SIZE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("device error: {0}")]
    Device(String),
}

/// One sequence's part of a step.
#[derive(Debug, Clone)]
pub struct SeqBatch<'a> {
    /// Index of its first token in `Batch::tokens`.
    pub token_start: usize,
    pub n_tokens: usize,
    /// Tokens in the KV cache after this step (history + these tokens).
    pub context_len: usize,
    /// Physical KV blocks holding positions 0.. in order.
    pub block_table: &'a [u32],
    /// Whether to return logits for this sequence's last token.
    pub want_logits: bool,
}

#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [u32],
    /// Physical slot (block * BLOCK_SIZE + offset) each token's K/V goes to.
    pub slots: &'a [u32],
    pub seqs: &'a [SeqBatch<'a>],
}

impl Batch<'_> {
    /// Number of logit rows the backend returns (sequences with `want_logits`).
    pub fn n_logit_rows(&self) -> usize {
        self.seqs.iter().filter(|s| s.want_logits).count()
    }

    /// Check the invariants above so a backend can index without further checks.
    pub fn validate(&self, num_blocks: usize, vocab: usize) -> Result<(), BackendError> {
        let bad = |s: String| Err(BackendError::InvalidBatch(s));
        let n = self.tokens.len();
        if self.positions.len() != n || self.slots.len() != n {
            return bad("tokens/positions/slots lengths differ".into());
        }
        if let Some(t) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("token {t} >= vocab {vocab}"));
        }
        let mut next = 0;
        for s in self.seqs {
            if s.token_start != next || s.n_tokens == 0 || s.n_tokens > s.context_len {
                return bad(format!("sequence layout at token {}", s.token_start));
            }
            next += s.n_tokens;
            if next > n {
                return bad("sequences overrun the token list".into());
            }
            if s.block_table.len() * BLOCK_SIZE < s.context_len {
                return bad(format!("block table too short for {} tokens", s.context_len));
            }
            if s.block_table.iter().any(|&b| b as usize >= num_blocks) {
                return bad("block id out of range".into());
            }
            for i in 0..s.n_tokens {
                let pos = s.context_len - s.n_tokens + i;
                let t = s.token_start + i;
                if self.positions[t] as usize != pos {
                    return bad(format!("position {} != {pos}", self.positions[t]));
                }
                let want = s.block_table[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE;
                if self.slots[t] as usize != want {
                    return bad(format!("slot {} != {want}", self.slots[t]));
                }
            }
        }
        if next != n {
            return bad("tokens not covered by sequences".into());
        }
        Ok(())
    }
}

/// A compute backend. Object-safe so the engine can hold `Box<dyn Backend>` chosen
/// at run time (CUDA when a driver is present, else CPU).
pub trait Backend: Send {
    fn name(&self) -> String;
    fn config(&self) -> &ModelConfig;
    /// KV blocks this backend allocated.
    fn num_kv_blocks(&self) -> usize;
    /// Run one step; `logits` is resized to `n_logit_rows * vocab` and filled in
    /// sequence order.
    fn forward(&mut self, batch: &Batch<'_>, logits: &mut Vec<f32>) -> Result<(), BackendError>;
    /// Greedy fast path: the argmax token of each logit row, in sequence order.
    /// A GPU backend computes it on the device and reads back one u32 per row
    /// instead of a vocabulary of logits; the default goes through `forward`.
    fn forward_argmax(&mut self, batch: &Batch<'_>, out: &mut Vec<u32>) -> Result<(), BackendError> {
        let mut logits = Vec::new();
        self.forward(batch, &mut logits)?;
        let vocab = self.config().vocab;
        out.clear();
        out.extend(logits.chunks_exact(vocab).map(crate::sampler::argmax));
        Ok(())
    }
    /// Copy whole KV blocks (copy-on-write of shared blocks), all layers.
    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), BackendError>;
    /// Append the K/V of `blocks` (every layer) to `out` as f16 bits, in the layout of
    /// `kv::transfer` (per block, per layer: 16 K rows then 16 V rows). For moving a
    /// sequence to another engine; backends that cannot do it say so.
    fn read_blocks(&self, _blocks: &[u32], _out: &mut Vec<u16>) -> Result<(), BackendError> {
        Err(BackendError::Unavailable(format!("{} cannot export KV blocks", self.name())))
    }
    /// Overwrite `blocks` with `data` in the layout of [`Backend::read_blocks`].
    fn write_blocks(&mut self, _blocks: &[u32], _data: &[u16]) -> Result<(), BackendError> {
        Err(BackendError::Unavailable(format!("{} cannot import KV blocks", self.name())))
    }
}
