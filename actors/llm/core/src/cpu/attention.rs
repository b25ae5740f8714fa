//! Paged KV cache storage (f16) and paged attention for a batch of sequences of
//! different lengths.
//!
//! Layout: per layer, `num_blocks * BLOCK_SIZE` slots, each `kv_dim` halves (all
//! KV heads of one position together), K and V in separate arrays. A sequence's
//! position p lives in slot `table[p / 16] * 16 + p % 16`. Invariant: attention
//! for a token at position p reads exactly positions 0..=p of its own sequence
//! (causal), whatever other sequences share the batch.

use crate::backend::BLOCK_SIZE;
use crate::f16::{f16_to_f32, f32_to_f16};

#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<u16>,
    pub v: Vec<u16>,
    pub n_layer: usize,
    pub num_blocks: usize,
    pub kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, num_blocks: usize, kv_dim: usize) -> KvCache {
        let n = n_layer * num_blocks * BLOCK_SIZE * kv_dim;
        KvCache { k: vec![0; n], v: vec![0; n], n_layer, num_blocks, kv_dim }
    }

    #[inline]
    pub fn offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.num_blocks * BLOCK_SIZE + slot) * self.kv_dim
    }

    /// Store one position's K and V (f32 → f16, round to nearest even; F16C
    /// when `fast`, which rounds identically).
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32], fast: bool) {
        let o = self.offset(layer, slot);
        to_f16(k, &mut self.k[o..o + self.kv_dim], fast);
        to_f16(v, &mut self.v[o..o + self.kv_dim], fast);
    }

    /// Appends block `b` (every layer: 16 K rows, then 16 V rows) to `out`.
    pub fn read_block(&self, b: usize, out: &mut Vec<u16>) {
        let n = BLOCK_SIZE * self.kv_dim;
        for l in 0..self.n_layer {
            let o = self.offset(l, b * BLOCK_SIZE);
            out.extend_from_slice(&self.k[o..o + n]);
            out.extend_from_slice(&self.v[o..o + n]);
        }
    }

    /// Overwrites block `b` from `data` laid out as [`KvCache::read_block`] writes it.
    pub fn write_block(&mut self, b: usize, data: &[u16]) {
        let n = BLOCK_SIZE * self.kv_dim;
        for (l, rows) in data.chunks_exact(2 * n).take(self.n_layer).enumerate() {
            let o = self.offset(l, b * BLOCK_SIZE);
            self.k[o..o + n].copy_from_slice(&rows[..n]);
            self.v[o..o + n].copy_from_slice(&rows[n..]);
        }
    }

    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let n = BLOCK_SIZE * self.kv_dim;
        for l in 0..self.n_layer {
            let (s, d) = (self.offset(l, src * BLOCK_SIZE), self.offset(l, dst * BLOCK_SIZE));
            self.k.copy_within(s..s + n, d);
            self.v.copy_within(s..s + n, d);
        }
    }
}

/// What one attention work item needs: a token's query heads of one KV group.
pub struct AttnItem<'a> {
    /// `group` query vectors of `head_dim`, contiguous.
    pub q: &'a [f32],
    /// Output, same shape as `q`.
    pub out: &'a mut [f32],
    pub block_table: &'a [u32],
    /// Attend over positions 0..ctx.
    pub ctx: usize,
    /// Offset of this KV head inside a slot.
    pub head_off: usize,
}

/// Attention for one item; `scores` is scratch of at least `group * ctx`.
pub fn attend(cache: &KvCache, layer: usize, head_dim: usize, item: AttnItem<'_>, scores: &mut Vec<f32>, fast: bool) {
    let group = item.q.len() / head_dim;
    let ctx = item.ctx;
    scores.resize(group * ctx, 0.0);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let base = cache.offset(layer, 0) + item.head_off;
    for p in 0..ctx {
        let slot = item.block_table[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE;
        let k = &cache.k[base + slot * cache.kv_dim..][..head_dim];
        for h in 0..group {
            let q = &item.q[h * head_dim..(h + 1) * head_dim];
            scores[h * ctx + p] = dot_f16(q, k, fast) * scale;
        }
    }
    for h in 0..group {
        let s = &mut scores[h * ctx..(h + 1) * ctx];
        let mx = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for x in s.iter_mut() {
            *x -= mx;
        }
        super::vecmath::exp_inplace(s);
        let inv = 1.0 / s.iter().sum::<f32>();
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
    item.out.fill(0.0);
    for p in 0..ctx {
        let slot = item.block_table[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE;
        let v = &cache.v[base + slot * cache.kv_dim..][..head_dim];
        for h in 0..group {
            axpy_f16(&mut item.out[h * head_dim..(h + 1) * head_dim], scores[h * ctx + p], v, fast);
        }
    }
}

fn to_f16(src: &[f32], dst: &mut [u16], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` only when F16C was detected; equal lengths.
        return unsafe { x86::to_f16(src, dst) };
    }
    let _ = fast;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(*s);
    }
}

#[inline]
fn dot_f16(q: &[f32], k: &[u16], fast: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is set only when AVX2+FMA+F16C were detected; lengths
        // are equal multiples of 8 (head_dim % 32 == 0).
        return unsafe { x86::dot_f16(q, k) };
    }
    let _ = fast;
    q.iter().zip(k).map(|(a, &b)| a * f16_to_f32(b)).sum()
}

#[inline]
fn axpy_f16(out: &mut [f32], w: f32, v: &[u16], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in dot_f16.
        unsafe { x86::axpy_f16(out, w, v) };
        return;
    }
    let _ = fast;
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * f16_to_f32(x);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], k: &[u16]) -> f32 {
        let n = q.len();
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: i + 16 <= n keeps both loads in bounds of q and k (same length).
        unsafe {
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8) as *const __m128i));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8)), k1, acc1);
                i += 16;
            }
        }
        let v = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut r = _mm_cvtss_f32(s);
        for j in i..n {
            r += q[j] * crate::f16::f16_to_f32(k[j]);
        }
        r
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn to_f16(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        // SAFETY: i + 8 <= n keeps the load and the store in bounds.
        unsafe {
            while i + 8 <= n {
                let h = _mm256_cvtps_ph(_mm256_loadu_ps(src.as_ptr().add(i)), _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = crate::f16::f32_to_f16(src[j]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], w: f32, v: &[u16]) {
        let n = out.len();
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: i + 8 <= n keeps loads and stores in bounds (same lengths).
        unsafe {
            while i + 8 <= n {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
                let o = _mm256_loadu_ps(out.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(wv, x, o));
                i += 8;
            }
        }
        for j in i..n {
            out[j] += w * crate::f16::f16_to_f32(v[j]);
        }
    }
}
