//! A sequence's KV cache in a portable form, for moving it between engines of the same
//! model (disaggregated serving: a prefill worker computes the prompt, a decode worker
//! continues from its KV).
//!
//! Layout of [`KvBlocks::data`] (f16 bits): for each block of the sequence in order, for
//! each layer, the block's 16 K rows then its 16 V rows, each row `kv_dim` values. A
//! block is self-contained, so a transfer can be cut into chunks of whole blocks
//! ([`KvBlocks::chunks`]) and reassembled in order ([`KvBlocks::from_chunks`]).
//!
//! Invariants: `data.len() == n_blocks() * block_len(n_layer, kv_dim)` and
//! `n_blocks() == ceil(n_tokens / BLOCK_SIZE)`; positions past `n_tokens` in the last
//! block carry whatever the source cache held and are never read (attention reads
//! positions below the context length only).

use crate::backend::BLOCK_SIZE;

/// Values (f16) of one block across every layer, K and V.
pub fn block_len(n_layer: usize, kv_dim: usize) -> usize {
    n_layer * 2 * BLOCK_SIZE * kv_dim
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBlocks {
    /// Tokens whose K/V are present (positions `0..n_tokens`).
    pub n_tokens: usize,
    pub n_layer: usize,
    pub kv_dim: usize,
    /// f16 bits, layout in the module docs.
    pub data: Vec<u16>,
}

/// Why KV data does not fit a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvLayoutError {
    #[error("KV shape differs: got {got_layers} layers x {got_dim}, this model has {want_layers} x {want_dim}")]
    Shape { got_layers: usize, got_dim: usize, want_layers: usize, want_dim: usize },
    #[error("KV data holds {got} values, {want} expected for {n_tokens} tokens")]
    Length { got: usize, want: usize, n_tokens: usize },
    #[error("KV chunk {index} is out of order or of the wrong size")]
    Chunk { index: usize },
}

impl KvBlocks {
    pub fn n_blocks(&self) -> usize {
        self.n_tokens.div_ceil(BLOCK_SIZE)
    }

    /// Size on the wire, bytes.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }

    /// Checks the length invariant and that the shape matches a model.
    pub fn check(&self, n_layer: usize, kv_dim: usize) -> Result<(), KvLayoutError> {
        if self.n_layer != n_layer || self.kv_dim != kv_dim {
            return Err(KvLayoutError::Shape {
                got_layers: self.n_layer,
                got_dim: self.kv_dim,
                want_layers: n_layer,
                want_dim: kv_dim,
            });
        }
        let want = self.n_blocks() * block_len(n_layer, kv_dim);
        if self.data.len() != want {
            return Err(KvLayoutError::Length { got: self.data.len(), want, n_tokens: self.n_tokens });
        }
        Ok(())
    }

    /// The data as little-endian bytes, cut into chunks of at most `blocks_per_chunk`
    /// whole blocks (at least one).
    pub fn chunks(&self, blocks_per_chunk: usize) -> Vec<Vec<u8>> {
        let per = block_len(self.n_layer, self.kv_dim) * blocks_per_chunk.max(1);
        self.data.chunks(per.max(1)).map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()).collect()
    }

    /// Reassembles chunks made by [`KvBlocks::chunks`] (in order).
    pub fn from_chunks(
        n_tokens: usize,
        n_layer: usize,
        kv_dim: usize,
        chunks: &[Vec<u8>],
    ) -> Result<KvBlocks, KvLayoutError> {
        let block_bytes = block_len(n_layer, kv_dim) * 2;
        let mut data = Vec::with_capacity(chunks.iter().map(|c| c.len() / 2).sum());
        for (index, c) in chunks.iter().enumerate() {
            if c.is_empty() || block_bytes == 0 || c.len() % block_bytes != 0 {
                return Err(KvLayoutError::Chunk { index });
            }
            data.extend(c.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
        }
        let kv = KvBlocks { n_tokens, n_layer, kv_dim, data };
        kv.check(n_layer, kv_dim)?;
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_bad_shapes_are_refused() {
        let (layers, dim) = (2, 4);
        let n_tokens = 3 * BLOCK_SIZE + 5;
        let len = 4 * block_len(layers, dim);
        let kv = KvBlocks { n_tokens, n_layer: layers, kv_dim: dim, data: (0..len).map(|i| i as u16).collect() };
        kv.check(layers, dim).expect("valid");
        for per in [1, 2, 3, 4, 9] {
            let c = kv.chunks(per);
            assert_eq!(c.len(), 4usize.div_ceil(per));
            assert_eq!(KvBlocks::from_chunks(n_tokens, layers, dim, &c), Ok(kv.clone()));
        }
        let mut c = kv.chunks(1);
        c[1].pop();
        assert!(matches!(KvBlocks::from_chunks(n_tokens, layers, dim, &c), Err(KvLayoutError::Chunk { index: 1 })));
        let c = kv.chunks(1);
        assert!(matches!(KvBlocks::from_chunks(n_tokens, layers, dim, &c[..3]), Err(KvLayoutError::Length { .. })));
        assert!(matches!(kv.check(3, dim), Err(KvLayoutError::Shape { .. })));
    }
}
