//! CPU weight and activation formats for the quantized kernels.
//!
//! Weights are repacked at load from GGUF blocks into split arrays (nibbles or
//! int8 contiguous per row, f32 scales and mins) so the kernels do aligned-size
//! loads and no f16 conversion in the hot loop. Q4_0 becomes Q4_1 with m = -8d
//! (exact: a power-of-two multiple of an f16 stays an f16); F32/F16/BF16 matrices
//! are quantized to Q8_0. Activations are quantized per 32-block to int8 with a
//! f32 scale, plus s = d·Σq for the Q4_1 min term (llama.cpp's Q8_1).

use crate::gguf::{GgmlType, quant::dequantize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WFormat {
    Q4_1,
    Q8_0,
}

/// A weight matrix, `rows` outputs × `cols` inputs, in 32-blocks along `cols`.
#[derive(Debug, Clone)]
pub struct QMat {
    pub fmt: WFormat,
    pub rows: usize,
    pub cols: usize,
    pub nb: usize,
    /// Q4_1: 16 bytes per block (low nibble j, high nibble j+16); Q8_0: 32 i8.
    pub qs: Vec<u8>,
    pub d: Vec<f32>,
    /// Q4_1 mins; empty for Q8_0.
    pub m: Vec<f32>,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    crate::f16::f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

impl QMat {
    /// Repack raw GGUF bytes (`rows` rows of `cols`) of type `ty`.
    /// `raw.len()` must equal `ty.row_bytes(cols) * rows` (checked by the loader).
    pub fn from_gguf(ty: GgmlType, raw: &[u8], rows: usize, cols: usize) -> QMat {
        let nb = cols / 32;
        match ty {
            GgmlType::Q4_1 | GgmlType::Q4_0 => {
                let bs = if ty == GgmlType::Q4_1 { 20 } else { 18 };
                let mut m = QMat::empty(WFormat::Q4_1, rows, cols);
                for blk in raw.chunks_exact(bs) {
                    let d = f16_at(blk, 0);
                    if ty == GgmlType::Q4_1 {
                        m.d.push(d);
                        m.m.push(f16_at(blk, 2));
                        m.qs.extend_from_slice(&blk[4..20]);
                    } else {
                        m.d.push(d);
                        m.m.push(-8.0 * d);
                        m.qs.extend_from_slice(&blk[2..18]);
                    }
                }
                debug_assert_eq!(m.d.len(), rows * nb);
                m
            }
            GgmlType::Q8_0 => {
                let mut m = QMat::empty(WFormat::Q8_0, rows, cols);
                for blk in raw.chunks_exact(34) {
                    m.d.push(f16_at(blk, 0));
                    m.qs.extend_from_slice(&blk[2..34]);
                }
                m
            }
            _ => {
                let mut f = vec![0f32; rows * cols];
                for (r, out) in f.chunks_exact_mut(cols).enumerate() {
                    let rb = ty.row_bytes(cols);
                    dequantize(ty, &raw[r * rb..(r + 1) * rb], out);
                }
                QMat::quantize_from_f32(GgmlType::Q8_0, &f, rows, cols)
            }
        }
    }

    fn empty(fmt: WFormat, rows: usize, cols: usize) -> QMat {
        let nb = cols / 32;
        let qb = if fmt == WFormat::Q4_1 { 16 } else { 32 };
        QMat {
            fmt,
            rows,
            cols,
            nb,
            qs: Vec::with_capacity(rows * nb * qb),
            d: Vec::with_capacity(rows * nb),
            m: Vec::with_capacity(if fmt == WFormat::Q4_1 { rows * nb } else { 0 }),
        }
    }

    /// Quantize f32 rows as ggml does (Q4_1: min/max per block; Q8_0: absmax).
    pub fn quantize_from_f32(ty: GgmlType, x: &[f32], rows: usize, cols: usize) -> QMat {
        let fmt = if ty == GgmlType::Q4_1 { WFormat::Q4_1 } else { WFormat::Q8_0 };
        let mut m = QMat::empty(fmt, rows, cols);
        for blk in x.chunks_exact(32) {
            match fmt {
                WFormat::Q4_1 => {
                    let (mn, mx) = blk.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                    let d = (mx - mn) / 15.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    m.d.push(d);
                    m.m.push(mn);
                    for j in 0..16 {
                        let q = |v: f32| (((v - mn) * id + 0.5) as u8).min(15);
                        m.qs.push(q(blk[j]) | (q(blk[j + 16]) << 4));
                    }
                }
                WFormat::Q8_0 => {
                    let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    m.d.push(d);
                    m.qs.extend(blk.iter().map(|&v| ((v * id).round() as i8) as u8));
                }
            }
        }
        m
    }

    /// Back to f32 (tests, GPU upload).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in 0..self.rows * self.nb {
            match self.fmt {
                WFormat::Q4_1 => {
                    let q = &self.qs[b * 16..b * 16 + 16];
                    let (d, m) = (self.d[b], self.m[b]);
                    out.extend(q.iter().map(|&v| (v & 0xf) as f32 * d + m));
                    out.extend(q.iter().map(|&v| (v >> 4) as f32 * d + m));
                }
                WFormat::Q8_0 => {
                    let d = self.d[b];
                    out.extend(self.qs[b * 32..b * 32 + 32].iter().map(|&v| (v as i8) as f32 * d));
                }
            }
        }
        out
    }

    /// One dequantized row (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let nb = self.nb;
        for b in 0..nb {
            let o = &mut out[b * 32..b * 32 + 32];
            let i = r * nb + b;
            match self.fmt {
                WFormat::Q4_1 => {
                    let q = &self.qs[i * 16..i * 16 + 16];
                    for j in 0..16 {
                        o[j] = (q[j] & 0xf) as f32 * self.d[i] + self.m[i];
                        o[j + 16] = (q[j] >> 4) as f32 * self.d[i] + self.m[i];
                    }
                }
                WFormat::Q8_0 => {
                    for j in 0..32 {
                        o[j] = (self.qs[i * 32 + j] as i8) as f32 * self.d[i];
                    }
                }
            }
        }
    }

    /// Stack matrices with the same format and width (fused QKV, gate+up).
    pub fn concat(parts: &[QMat]) -> QMat {
        let first = &parts[0];
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

/// Quantize `rows` rows of `cols` f32 (cols a multiple of 32) into `out`.
pub fn quantize_acts(x: &[f32], rows: usize, cols: usize, out: &mut QActs) {
    let nb = cols / 32;
    out.rows = rows;
    out.cols = cols;
    out.nb = nb;
    out.qs.resize(rows * cols, 0);
    out.d.resize(rows * nb, 0.0);
    out.s.resize(rows * nb, 0.0);
    out.x.clear();
    out.x.extend_from_slice(&x[..rows * cols]);
    for (i, blk) in x[..rows * cols].chunks_exact(32).enumerate() {
        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q = &mut out.qs[i * 32..i * 32 + 32];
        let mut sum = 0i32;
        for (qj, &v) in q.iter_mut().zip(blk) {
            let r = (v * id).round() as i32;
            *qj = r as i8;
            sum += r;
        }
        out.d[i] = d;
        out.s[i] = d * sum as f32;
    }
}
