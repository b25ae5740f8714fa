//! AVX-512 VNNI kernel over 16-row interleaved weights.
//!
//! Row-major kernels spend most of their time on per-block float work (convert,
//! scale, accumulate one vector per row). Here one 512-bit register holds 4
//! consecutive weight bytes of 16 different rows, so `vpdpbusd` with a broadcast
//! 4-byte activation chunk yields 16 rows' partial sums at once, a block's 8
//! chunks accumulate in integers, and the float work (convert, scale, offset) is
//! one vector op per block for 16 rows.
//!
//! Layout (rows padded to a multiple of `GROUP` with zero blocks), per group g:
//! - U8: block b, chunk c (elements 4c..4c+4): 64 bytes at ((g·nb + b)·8 + c)·64,
//!   byte 4r+e = u[16g+r][32b + 4c + e];
//! - U4: block pair k, chunk c: 64 bytes at ((g·np + k)·8 + c)·64 (np = ⌈nb/2⌉),
//!   low nibble = block 2k's element, high nibble = block 2k+1's (0 if absent);
//! - scales and offsets: (g·nb + b)·16 + r.
//!
//! Invariant: `block_u`/`scale_index` read back exactly what `interleave` stored
//! (tested), so the scalar and f32 paths work on this layout too.

use super::kernels::OutPtr;
use super::quant::{QActs, QMat, WFormat};

/// Rows per interleaved group (one 512-bit register of i32 lanes).
pub const GROUP: usize = 16;

fn chunk_offset(m: &QMat, g: usize, b: usize, c: usize) -> usize {
    match m.fmt {
        WFormat::U8 => ((g * m.nb + b) * 8 + c) * 64,
        WFormat::U4 => ((g * m.nb.div_ceil(2) + b / 2) * 8 + c) * 64,
    }
}

pub fn scale_index(m: &QMat, r: usize, b: usize) -> usize {
    ((r / GROUP) * m.nb + b) * GROUP + r % GROUP
}

/// Unsigned values of block `b` of row `r` from the interleaved layout.
pub fn block_u(m: &QMat, r: usize, b: usize) -> [u8; 32] {
    let (g, lane) = (r / GROUP, r % GROUP);
    let mut u = [0u8; 32];
    for c in 0..8 {
        let o = chunk_offset(m, g, b, c) + lane * 4;
        for e in 0..4 {
            let v = m.qs[o + e];
            u[4 * c + e] = match m.fmt {
                WFormat::U8 => v,
                WFormat::U4 if b.is_multiple_of(2) => v & 0xf,
                WFormat::U4 => v >> 4,
            };
        }
    }
    u
}

/// Convert a row-major matrix to the interleaved layout.
pub fn interleave(m: &QMat) -> QMat {
    assert!(!m.interleaved, "already interleaved");
    let groups = m.rows.div_ceil(GROUP);
    let nb = m.nb;
    let per_group = match m.fmt {
        WFormat::U8 => nb * 8 * 64,
        WFormat::U4 => nb.div_ceil(2) * 8 * 64,
    };
    let mut out = QMat {
        fmt: m.fmt,
        rows: m.rows,
        cols: m.cols,
        nb,
        qs: vec![0u8; groups * per_group],
        d: vec![0f32; groups * nb * GROUP],
        m: vec![0f32; groups * nb * GROUP],
        interleaved: true,
    };
    for r in 0..m.rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for b in 0..nb {
            let u = m.block_u(r, b);
            let (d, off) = m.dm(r, b);
            let si = scale_index(&out, r, b);
            out.d[si] = d;
            out.m[si] = off;
            for c in 0..8 {
                let o = chunk_offset(&out, g, b, c) + lane * 4;
                for e in 0..4 {
                    let v = u[4 * c + e];
                    match m.fmt {
                        WFormat::U8 => out.qs[o + e] = v,
                        WFormat::U4 if b.is_multiple_of(2) => out.qs[o + e] |= v & 0xf,
                        WFormat::U4 => out.qs[o + e] |= v << 4,
                    }
                }
            }
        }
    }
    out
}

/// out[a·stride + r] for r in `rows` (rows.start a multiple of GROUP), all acts.
///
/// # Safety
/// `w` interleaved, CPU has AVX-512 F/BW/VL/VNNI, and the output contract of
/// `kernels::gemm_rows`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
    // SAFETY: forwarded.
    unsafe { x86::gemm(w, rows, acts, out, stride) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// One group of 16 rows × NA activations (a0..a0+NA); returns 16 lanes per act.
    #[inline(always)]
    unsafe fn group<const NA: usize>(w: &QMat, g: usize, acts: &QActs, a0: usize) -> [__m512; NA] {
        // SAFETY: g < groups and a0 + NA <= acts.rows (caller), so every offset
        // below is inside w.qs/w.d/w.m and acts; AVX-512 is enabled by `gemm`.
        unsafe {
            let nb = w.nb;
            let mut acc = [_mm512_setzero_ps(); NA];
            let m4 = _mm512_set1_epi8(0x0f);
            // Macros, not closures: a closure body is a separate function without
            // this function's target features, so intrinsics would not inline.
            macro_rules! act_chunk {
                ($j:expr, $b:expr, $c:expr) => {
                    _mm512_set1_epi32(std::ptr::read_unaligned(
                        acts.qs.as_ptr().add(((a0 + $j) * nb + $b) * 32 + 4 * $c) as *const i32,
                    ))
                };
            }
            macro_rules! finish_block {
                ($isum:expr, $b:expr) => {{
                    let si = (g * nb + $b) * GROUP;
                    let dv = _mm512_loadu_ps(w.d.as_ptr().add(si));
                    let mv = _mm512_loadu_ps(w.m.as_ptr().add(si));
                    for j in 0..NA {
                        let ai = (a0 + j) * nb + $b;
                        let sc = _mm512_mul_ps(dv, _mm512_set1_ps(*acts.d.get_unchecked(ai)));
                        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps($isum[j]), sc, acc[j]);
                        acc[j] = _mm512_fmadd_ps(mv, _mm512_set1_ps(*acts.s.get_unchecked(ai)), acc[j]);
                    }
                }};
            }
            match w.fmt {
                WFormat::U8 => {
                    for b in 0..nb {
                        let mut isum = [_mm512_setzero_si512(); NA];
                        for c in 0..8 {
                            let wv = _mm512_loadu_si512(w.qs.as_ptr().add(chunk_offset(w, g, b, c)) as *const __m512i);
                            for j in 0..NA {
                                isum[j] = _mm512_dpbusd_epi32(isum[j], wv, act_chunk!(j, b, c));
                            }
                        }
                        finish_block!(isum, b);
                    }
                }
                WFormat::U4 => {
                    for k in 0..nb.div_ceil(2) {
                        let (b0, b1) = (2 * k, 2 * k + 1);
                        let has1 = b1 < nb;
                        let mut lo = [_mm512_setzero_si512(); NA];
                        let mut hi = [_mm512_setzero_si512(); NA];
                        for c in 0..8 {
                            let raw =
                                _mm512_loadu_si512(w.qs.as_ptr().add(chunk_offset(w, g, b0, c)) as *const __m512i);
                            let wl = _mm512_and_si512(raw, m4);
                            for j in 0..NA {
                                lo[j] = _mm512_dpbusd_epi32(lo[j], wl, act_chunk!(j, b0, c));
                            }
                            if has1 {
                                let wh = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                                for j in 0..NA {
                                    hi[j] = _mm512_dpbusd_epi32(hi[j], wh, act_chunk!(j, b1, c));
                                }
                            }
                        }
                        finish_block!(lo, b0);
                        if has1 {
                            finish_block!(hi, b1);
                        }
                    }
                }
            }
            acc
        }
    }

    #[inline(always)]
    unsafe fn store<const NA: usize>(
        acc: [__m512; NA],
        g: usize,
        a0: usize,
        rows: &std::ops::Range<usize>,
        out: OutPtr,
        stride: usize,
    ) {
        let r0 = g * GROUP;
        // Lanes past rows.end (padding, or another thread's rows) are not written.
        let valid = rows.end.saturating_sub(r0).min(GROUP);
        let mask: __mmask16 = if valid >= GROUP { 0xffff } else { (1u16 << valid) - 1 };
        for j in 0..NA {
            // SAFETY: the caller owns out[(a0+j)·stride + r] for r in rows.
            unsafe { _mm512_mask_storeu_ps(out.ptr().add((a0 + j) * stride + r0), mask, acc[j]) };
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn gemm(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
        let n = acts.rows;
        let mut g = rows.start / GROUP;
        while g * GROUP < rows.end {
            let mut a = 0;
            // SAFETY: g covers rows in range, a + NA <= n in every call.
            unsafe {
                while a + 4 <= n {
                    store(group::<4>(w, g, acts, a), g, a, &rows, out, stride);
                    a += 4;
                }
                while a + 2 <= n {
                    store(group::<2>(w, g, acts, a), g, a, &rows, out, stride);
                    a += 2;
                }
                while a < n {
                    store(group::<1>(w, g, acts, a), g, a, &rows, out, stride);
                    a += 1;
                }
            }
            g += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    #[test]
    fn interleave_round_trips() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            for (rows, cols) in [(5, 32), (16, 64), (33, 96)] {
                let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7) % 23) as f32 - 11.0).collect();
                let m = QMat::quantize_from_f32(ty, &x, rows, cols);
                let i = interleave(&m);
                assert_eq!(i.dequantize(), m.dequantize(), "{ty:?} {rows}x{cols}");
            }
        }
    }
}
