//! Host-side packing of a step's metadata for the CUDA backend (pure, tested
//! without a GPU).
//!
//! All per-step inputs go into one i32 buffer with fixed offsets (sized for the
//! largest batch at start), copied to the device in one transfer from pinned
//! memory. Fixed offsets mean fixed device pointers, which is what lets a decode
//! step be captured once in a CUDA graph and replayed. A decode batch can be
//! padded up to its graph bucket: padding rows read token 0 at position 0 and
//! write K/V into a spare "trash" block that no sequence owns.

use crate::backend::{BLOCK_SIZE, Batch};

/// Where each array starts in the packed buffer (in i32 units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_tokens: usize,
    pub max_seqs: usize,
    pub max_table: usize,
}

impl Layout {
    pub fn tokens(&self) -> usize {
        0
    }
    pub fn positions(&self) -> usize {
        self.max_tokens
    }
    pub fn slots(&self) -> usize {
        2 * self.max_tokens
    }
    pub fn ctx(&self) -> usize {
        3 * self.max_tokens
    }
    pub fn table_off(&self) -> usize {
        4 * self.max_tokens
    }
    /// Token row of each logit row.
    pub fn logit_rows(&self) -> usize {
        5 * self.max_tokens
    }
    pub fn tables(&self) -> usize {
        5 * self.max_tokens + self.max_seqs
    }
    pub fn len(&self) -> usize {
        self.tables() + (self.max_seqs + 1) * self.max_table
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `pack` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// Token rows to compute (after padding).
    pub n_tokens: usize,
    /// Logit rows (after padding).
    pub n_logit_rows: usize,
    /// i32s of the buffer that must be copied (a prefix).
    pub used: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("batch of {0} tokens exceeds the backend's max_tokens")]
    TooManyTokens(usize),
    #[error("batch of {0} sequences exceeds the backend's max_seqs")]
    TooManySeqs(usize),
    #[error("block table of {0} blocks exceeds max_table")]
    TableTooLong(usize),
}

/// Pack `batch` into `buf` (len = layout.len()); with `pad_to`, a pure-decode
/// batch is padded to that many rows using `trash_block`.
pub fn pack(
    layout: &Layout,
    batch: &Batch<'_>,
    pad_to: Option<usize>,
    trash_block: u32,
    buf: &mut [i32],
) -> Result<Packed, PackError> {
    let n = batch.tokens.len();
    let rows = pad_to.unwrap_or(n).max(n);
    if rows > layout.max_tokens {
        return Err(PackError::TooManyTokens(rows));
    }
    // Logit rows (one per sequence, or one per padded decode row) live in a
    // max_seqs-long region.
    if batch.seqs.len() > layout.max_seqs || (rows > n && rows > layout.max_seqs) {
        return Err(PackError::TooManySeqs(batch.seqs.len()));
    }
    for t in 0..n {
        buf[layout.tokens() + t] = batch.tokens[t] as i32;
        buf[layout.positions() + t] = batch.positions[t] as i32;
        buf[layout.slots() + t] = batch.slots[t] as i32;
        buf[layout.ctx() + t] = batch.positions[t] as i32 + 1;
    }
    let mut table_at = layout.tables();
    let mut n_logits = 0;
    for sq in batch.seqs {
        if sq.block_table.len() > layout.max_table {
            return Err(PackError::TableTooLong(sq.block_table.len()));
        }
        for (i, &b) in sq.block_table.iter().enumerate() {
            buf[table_at + i] = b as i32;
        }
        for t in sq.token_start..sq.token_start + sq.n_tokens {
            buf[layout.table_off() + t] = (table_at - layout.tables()) as i32;
        }
        if sq.want_logits {
            buf[layout.logit_rows() + n_logits] = (sq.token_start + sq.n_tokens - 1) as i32;
            n_logits += 1;
        }
        table_at += sq.block_table.len();
    }
    // Padding rows: their own one-block table naming the trash block.
    if rows > n {
        buf[table_at] = trash_block as i32;
        for t in n..rows {
            buf[layout.tokens() + t] = 0;
            buf[layout.positions() + t] = 0;
            buf[layout.slots() + t] = (trash_block as usize * BLOCK_SIZE) as i32;
            buf[layout.ctx() + t] = 1;
            buf[layout.table_off() + t] = (table_at - layout.tables()) as i32;
            buf[layout.logit_rows() + n_logits] = t as i32;
            n_logits += 1;
        }
        table_at += 1;
    }
    Ok(Packed { n_tokens: rows, n_logit_rows: n_logits, used: table_at })
}

/// Graph bucket for a decode batch of `n` rows: the next power of two, if
/// within `max` (larger batches run without a graph).
pub fn bucket(n: usize, max: usize) -> Option<usize> {
    let b = n.next_power_of_two();
    (n > 0 && b <= max).then_some(b)
}

/// Whether every sequence of the batch decodes exactly one token and wants
/// logits (the shape a graph captures).
pub fn is_pure_decode(batch: &Batch<'_>) -> bool {
    batch.seqs.iter().all(|s| s.n_tokens == 1 && s.want_logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqBatch;

    #[test]
    fn packs_mixed_batch_and_pads_decodes() {
        let layout = Layout { max_tokens: 16, max_seqs: 4, max_table: 4 };
        let (t1, t2) = ([3u32, 4], [7u32]);
        let seqs = [
            SeqBatch { token_start: 0, n_tokens: 2, context_len: 2, block_table: &t1, want_logits: true },
            SeqBatch { token_start: 2, n_tokens: 1, context_len: 17, block_table: &t2, want_logits: false },
        ];
        let b = Batch { tokens: &[10, 11, 12], positions: &[0, 1, 16], slots: &[48, 49, 112], seqs: &seqs };
        let mut buf = vec![-1; layout.len()];
        let p = pack(&layout, &b, None, 99, &mut buf).expect("pack");
        assert_eq!(p, Packed { n_tokens: 3, n_logit_rows: 1, used: layout.tables() + 3 });
        assert_eq!(&buf[layout.ctx()..layout.ctx() + 3], &[1, 2, 17]);
        assert_eq!(&buf[layout.table_off()..layout.table_off() + 3], &[0, 0, 2]);
        assert_eq!(buf[layout.logit_rows()], 1);

        let dseqs = [SeqBatch { token_start: 0, n_tokens: 1, context_len: 5, block_table: &t2, want_logits: true }];
        let d = Batch { tokens: &[9], positions: &[4], slots: &[116], seqs: &dseqs };
        assert!(is_pure_decode(&d));
        let p = pack(&layout, &d, bucket(1, 8).map(|_| 4), 99, &mut buf).expect("pack");
        assert_eq!((p.n_tokens, p.n_logit_rows), (4, 4));
        assert_eq!(buf[layout.slots() + 3], 99 * BLOCK_SIZE as i32);
        assert_eq!(buf[layout.tables() + buf[layout.table_off() + 2] as usize], 99);
    }

    #[test]
    fn buckets_are_powers_of_two_within_max() {
        assert_eq!(bucket(1, 256), Some(1));
        assert_eq!(bucket(33, 256), Some(64));
        assert_eq!(bucket(300, 256), None);
        assert_eq!(bucket(0, 256), None);
    }

    #[test]
    fn oversize_batches_are_errors() {
        let layout = Layout { max_tokens: 2, max_seqs: 1, max_table: 1 };
        let t = [1u32];
        let seqs = [SeqBatch { token_start: 0, n_tokens: 3, context_len: 3, block_table: &t, want_logits: true }];
        let b = Batch { tokens: &[1, 2, 3], positions: &[0, 1, 2], slots: &[0, 1, 2], seqs: &seqs };
        let mut buf = vec![0; layout.len()];
        assert_eq!(pack(&layout, &b, None, 0, &mut buf), Err(PackError::TooManyTokens(3)));
    }
}
