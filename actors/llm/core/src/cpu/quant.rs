//! CPU weight and activation formats for the quantized kernels.
//!
//! Every weight block is stored as 32 *unsigned* integers u with an f32 scale d
//! and offset m, x = u·d + m, so one integer kernel (u8 × i8, which is what
//! `vpdpbusd` computes) serves every format:
//! - `U4` (from Q4_1, and Q4_0 with m = -8d): nibbles, two blocks per 32 bytes —
//!   byte j holds block 2k's element j (low nibble) and block 2k+1's element j
//!   (high nibble), so one 32-byte load and two mask/shift ops give both blocks in
//!   element order; an odd last block keeps GGUF's layout (element j low, j+16 high);
//! - `U8` (from Q8_0, with u = q + 128 and m = -128d): bytes in element order.
//!
//! Scales are f32 (no f16 conversion in the hot loop). F32/F16/BF16 matrices are
//! quantized to Q8_0 first. Activations are quantized per 32-block to int8 with
//! an f32 scale, plus s = d·Σq for the offset term Σ m·s (llama.cpp's Q8_1).
//! Repacking is exact: the values a kernel sees equal GGUF's dequantization.

use crate::gguf::{GgmlType, quant::dequantize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WFormat {
    U4,
    U8,
}

/// A weight matrix, `rows` outputs × `cols` inputs, in 32-blocks along `cols`.
#[derive(Debug, Clone)]
pub struct QMat {
    pub fmt: WFormat,
    pub rows: usize,
    pub cols: usize,
    pub nb: usize,
    /// Row-major (`row_bytes()` per row), or 16-row interleaved (see `vnni16`).
    pub qs: Vec<u8>,
    pub d: Vec<f32>,
    pub m: Vec<f32>,
    /// Layout of `qs`/`d`/`m`: false = row-major, true = `vnni16` groups.
    pub interleaved: bool,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    crate::f16::f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

impl QMat {
    fn empty(fmt: WFormat, rows: usize, cols: usize) -> QMat {
        let nb = cols / 32;
        let per = if fmt == WFormat::U4 { 16 } else { 32 };
        QMat {
            fmt,
            rows,
            cols,
            nb,
            qs: Vec::with_capacity(rows * nb * per),
            d: Vec::with_capacity(rows * nb),
            m: Vec::with_capacity(rows * nb),
            interleaved: false,
        }
    }

    /// (scale, offset) of block `b` of row `r`, in either layout.
    #[inline]
    pub fn dm(&self, r: usize, b: usize) -> (f32, f32) {
        let i = if self.interleaved { super::vnni16::scale_index(self, r, b) } else { r * self.nb + b };
        (self.d[i], self.m[i])
    }

    pub fn row_bytes(&self) -> usize {
        self.nb * if self.fmt == WFormat::U4 { 16 } else { 32 }
    }

    /// Append one row given its blocks as (d, m, unsigned values).
    fn push_row(&mut self, blocks: &[(f32, f32, [u8; 32])]) {
        for (d, m, _) in blocks {
            self.d.push(*d);
            self.m.push(*m);
        }
        match self.fmt {
            WFormat::U8 => {
                for (_, _, u) in blocks {
                    self.qs.extend_from_slice(u);
                }
            }
            WFormat::U4 => {
                let mut pairs = blocks.chunks_exact(2);
                for p in &mut pairs {
                    self.qs.extend((0..32).map(|j| (p[0].2[j] & 0xf) | (p[1].2[j] << 4)));
                }
                if let [(_, _, u)] = pairs.remainder() {
                    self.qs.extend((0..16).map(|j| (u[j] & 0xf) | (u[j + 16] << 4)));
                }
            }
        }
    }

    /// Unsigned values of block `b` of row `r`.
    pub fn block_u(&self, r: usize, b: usize) -> [u8; 32] {
        if self.interleaved {
            return super::vnni16::block_u(self, r, b);
        }
        let row = &self.qs[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        let mut u = [0u8; 32];
        match self.fmt {
            WFormat::U8 => u.copy_from_slice(&row[b * 32..b * 32 + 32]),
            WFormat::U4 if b / 2 < self.nb / 2 => {
                let pair = &row[(b / 2) * 32..(b / 2) * 32 + 32];
                let shift = if b.is_multiple_of(2) { 0 } else { 4 };
                for j in 0..32 {
                    u[j] = (pair[j] >> shift) & 0xf;
                }
            }
            WFormat::U4 => {
                let q = &row[(b / 2) * 32..(b / 2) * 32 + 16];
                for j in 0..16 {
                    u[j] = q[j] & 0xf;
                    u[j + 16] = q[j] >> 4;
                }
            }
        }
        u
    }

    /// Repack raw GGUF bytes (`rows` rows of `cols`) of type `ty`.
    /// `raw.len()` must equal `ty.row_bytes(cols) * rows` (checked by the loader).
    pub fn from_gguf(ty: GgmlType, raw: &[u8], rows: usize, cols: usize) -> QMat {
        let nb = cols / 32;
        let (fmt, bs) = match ty {
            GgmlType::Q4_1 => (WFormat::U4, 20),
            GgmlType::Q4_0 => (WFormat::U4, 18),
            GgmlType::Q8_0 => (WFormat::U8, 34),
            _ => {
                let mut f = vec![0f32; rows * cols];
                let rb = ty.row_bytes(cols);
                for (r, out) in f.chunks_exact_mut(cols).enumerate() {
                    dequantize(ty, &raw[r * rb..(r + 1) * rb], out);
                }
                return QMat::quantize_from_f32(GgmlType::Q8_0, &f, rows, cols);
            }
        };
        let mut m = QMat::empty(fmt, rows, cols);
        let mut blocks = Vec::with_capacity(nb);
        for row in raw.chunks_exact(bs * nb) {
            blocks.clear();
            for blk in row.chunks_exact(bs) {
                let d = f16_at(blk, 0);
                let mut u = [0u8; 32];
                let off = match ty {
                    GgmlType::Q4_1 => 4,
                    _ => 2,
                };
                let min = match ty {
                    GgmlType::Q4_1 => f16_at(blk, 2),
                    GgmlType::Q4_0 => -8.0 * d,
                    _ => -128.0 * d,
                };
                if fmt == WFormat::U4 {
                    for j in 0..16 {
                        u[j] = blk[off + j] & 0xf;
                        u[j + 16] = blk[off + j] >> 4;
                    }
                } else {
                    for j in 0..32 {
                        u[j] = blk[off + j] ^ 0x80; // i8 q -> q + 128
                    }
                }
                blocks.push((d, min, u));
            }
            m.push_row(&blocks);
        }
        m
    }

    /// Quantize f32 rows as ggml does (Q4_1: min/max per block; otherwise Q8_0 absmax).
    pub fn quantize_from_f32(ty: GgmlType, x: &[f32], rows: usize, cols: usize) -> QMat {
        let fmt = if ty == GgmlType::Q4_1 { WFormat::U4 } else { WFormat::U8 };
        let mut m = QMat::empty(fmt, rows, cols);
        let mut blocks = Vec::new();
        for row in x.chunks_exact(cols) {
            blocks.clear();
            for blk in row.chunks_exact(32) {
                let mut u = [0u8; 32];
                match fmt {
                    WFormat::U4 => {
                        let (mn, mx) = blk.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                        let d = (mx - mn) / 15.0;
                        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                        for j in 0..32 {
                            u[j] = (((blk[j] - mn) * id + 0.5) as u8).min(15);
                        }
                        blocks.push((d, mn, u));
                    }
                    WFormat::U8 => {
                        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
                        let d = amax / 127.0;
                        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                        for j in 0..32 {
                            u[j] = (((blk[j] * id).round() as i32) + 128) as u8;
                        }
                        blocks.push((d, -128.0 * d, u));
                    }
                }
            }
            m.push_row(&blocks);
        }
        m
    }

    /// One dequantized row (embedding lookup, the f32 path).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        for b in 0..self.nb {
            let u = self.block_u(r, b);
            let (d, m) = self.dm(r, b);
            for (o, &v) in out[b * 32..b * 32 + 32].iter_mut().zip(&u) {
                *o = v as f32 * d + m;
            }
        }
    }

    /// Back to f32 (tests, GPU upload).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r, o);
        }
        out
    }

    /// Stack matrices with the same format and width (fused QKV, gate+up).
    pub fn concat(parts: &[QMat]) -> QMat {
        let first = &parts[0];
        assert!(parts.iter().all(|p| !p.interleaved), "concat before interleaving");
        let mut m = QMat::empty(first.fmt, parts.iter().map(|p| p.rows).sum(), first.cols);
        for p in parts {
            assert!(p.fmt == first.fmt && p.cols == first.cols, "concat of mismatched matrices");
            m.qs.extend_from_slice(&p.qs);
            m.d.extend_from_slice(&p.d);
            m.m.extend_from_slice(&p.m);
        }
        m
    }
}

/// Activations quantized per 32-block; reused across steps (grows, never shrinks).
#[derive(Debug, Default, Clone)]
pub struct QActs {
    pub rows: usize,
    pub cols: usize,
    pub nb: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// d·Σq per block.
    pub s: Vec<f32>,
    /// The unquantized values (the f32-activation path reads these).
    pub x: Vec<f32>,
}

impl QActs {
    /// Size the buffers for `rows` × `cols` (cols a multiple of 32).
    pub fn prepare(&mut self, rows: usize, cols: usize) {
        let nb = cols / 32;
        self.rows = rows;
        self.cols = cols;
        self.nb = nb;
        self.qs.resize(rows * cols, 0);
        self.d.resize(rows * nb, 0.0);
        self.s.resize(rows * nb, 0.0);
        self.x.resize(rows * cols, 0.0);
    }

    /// Raw row access for pool threads that each fill disjoint rows.
    pub fn raw(&mut self) -> QActsRaw {
        QActsRaw {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            x: self.x.as_mut_ptr(),
            cols: self.cols,
            nb: self.nb,
        }
    }
}

/// Base pointers of a prepared `QActs`.
#[derive(Clone, Copy)]
pub struct QActsRaw {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    x: *mut f32,
    cols: usize,
    nb: usize,
}

// SAFETY: users write disjoint rows only (see `row`).
unsafe impl Send for QActsRaw {}
unsafe impl Sync for QActsRaw {}

/// Mutable views of one activation row.
pub struct QRow<'a> {
    pub x: &'a mut [f32],
    qs: &'a mut [i8],
    d: &'a mut [f32],
    s: &'a mut [f32],
}

impl QActsRaw {
    /// Row `t`'s buffers.
    ///
    /// # Safety
    /// `t` < the prepared row count, the `QActs` outlives the views and is not
    /// resized meanwhile, and no two live views name the same row.
    pub unsafe fn row<'a>(self, t: usize) -> QRow<'a> {
        // SAFETY: guaranteed by the caller as documented.
        unsafe {
            QRow {
                x: std::slice::from_raw_parts_mut(self.x.add(t * self.cols), self.cols),
                qs: std::slice::from_raw_parts_mut(self.qs.add(t * self.cols), self.cols),
                d: std::slice::from_raw_parts_mut(self.d.add(t * self.nb), self.nb),
                s: std::slice::from_raw_parts_mut(self.s.add(t * self.nb), self.nb),
            }
        }
    }
}

impl QRow<'_> {
    /// Quantize this row's `x` into its int8 blocks (round half to even).
    pub fn quantize(&mut self) {
        super::vecmath::quantize_row(self.x, self.qs, self.d, self.s);
    }
}

/// Quantize `rows` rows of `cols` f32 (cols a multiple of 32) into `out`.
pub fn quantize_acts(x: &[f32], rows: usize, cols: usize, out: &mut QActs) {
    out.prepare(rows, cols);
    out.x.copy_from_slice(&x[..rows * cols]);
    let raw = out.raw();
    for t in 0..rows {
        // SAFETY: t < rows, one view at a time, `out` is borrowed for the loop.
        unsafe { raw.row(t) }.quantize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f16::f32_to_f16;

    /// Repacking GGUF blocks keeps every value: dequantizing our format equals
    /// ggml's dequantization of the original bytes, for odd and even block counts.
    #[test]
    fn repack_is_exact() {
        for (ty, bs) in [(GgmlType::Q4_1, 20usize), (GgmlType::Q4_0, 18), (GgmlType::Q8_0, 34)] {
            for nb in [1usize, 2, 3, 4] {
                let rows = 3;
                let mut raw = Vec::new();
                let mut seed = 12345u32;
                for _ in 0..rows * nb {
                    raw.extend(f32_to_f16(0.37).to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        raw.extend(f32_to_f16(-1.25).to_le_bytes());
                    }
                    for _ in 0..bs - if ty == GgmlType::Q4_1 { 4 } else { 2 } {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        raw.push((seed >> 16) as u8);
                    }
                }
                let m = QMat::from_gguf(ty, &raw, rows, nb * 32);
                let mut want = vec![0f32; rows * nb * 32];
                dequantize(ty, &raw, &mut want);
                assert_eq!(m.dequantize(), want, "{ty:?} nb={nb}");
            }
        }
    }
}
