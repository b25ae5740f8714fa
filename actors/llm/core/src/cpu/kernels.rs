//! Quantized dot-product kernels: weights as unsigned 4- or 8-bit blocks with a
//! scale and an offset (see `quant`) times activations quantized to 8 bits per
//! 32-block (llama.cpp's Q8_1 scheme).
//!
//! For a weight block (scale dw, offset mw, unsigned ints u) and an activation
//! block (scale da, ints q, sa = da Σq): Σ x_w x_a = dw·da·Σ u·q + mw·sa, so the hot
//! loop is an integer dot product (u8×i8) per block and one float FMA.
//!
//! Three implementations, picked once at start by CPUID: AVX-512 VNNI over
//! 16-row interleaved weights (`vnni16`), AVX2+FMA over row-major weights
//! (`vpmaddubsw`+`vpmaddwd`, one block per step; 8-bit weights go through the
//! signed |w|·sign trick there because `vpmaddubsw` would saturate on 255·127·2),
//! and portable scalar (either layout). Invariant: all
//! compute the same integer block sums; only the float summation order differs
//! (tested to 1e-4 relative).

use super::quant::{QActs, QMat, WFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && avx512 {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// A raw output pointer shared by pool threads that write disjoint elements.
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut f32);
// SAFETY: every user writes a disjoint set of indices (distinct weight rows).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the Sync wrapper, not the field).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// out[a * out_stride + r] = dot(w row r, act a) for r in `rows`, every act a.
///
/// # Safety
/// `out` must be valid for writes at every index named above, and no other
/// thread may touch those indices during the call. `w.cols == acts.cols`, and
/// `isa` must be supported by this CPU (`Isa::detect`).
pub unsafe fn gemm_rows(
    isa: Isa,
    w: &QMat,
    rows: std::ops::Range<usize>,
    acts: &QActs,
    out: OutPtr,
    out_stride: usize,
) {
    debug_assert_eq!(w.cols, acts.cols);
    debug_assert!(rows.end <= w.rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if w.interleaved && rows.start.is_multiple_of(super::vnni16::GROUP) => {
            // SAFETY: the caller guarantees the CPU features and the output contract.
            unsafe { super::vnni16::gemm(w, rows, acts, out, out_stride) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if !w.interleaved => {
            // SAFETY: as above (AVX-512 machines have AVX2).
            unsafe { x86::avx2::gemm(w, rows, acts, out, out_stride) }
        }
        // SAFETY: caller upholds the output contract.
        _ => unsafe { gemm_scalar(w, rows, acts, out, out_stride) },
    }
}

/// The f32-activation path: weights dequantized row by row, dot products in f32
/// with 8 partial sums (a shape LLVM vectorizes). Slower than the int8 kernels;
/// used when activation quantization error is not wanted (the float reference
/// gate, `EngineConfig::f32_activations`).
///
/// # Safety
/// As `gemm_rows`.
pub unsafe fn gemm_rows_f32(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, out_stride: usize) {
    let cols = w.cols;
    let mut buf = vec![0f32; cols];
    for r in rows {
        w.row_f32(r, &mut buf);
        for a in 0..acts.rows {
            let v = dot_f32(&buf, &acts.x[a * cols..(a + 1) * cols]);
            // SAFETY: caller guarantees this index is ours and in bounds.
            unsafe { *out.0.add(a * out_stride + r) = v };
        }
    }
}

/// f32 dot product with 8 partial sums (vectorized by LLVM).
#[inline(always)]
fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ over blocks of the offset term mw·sa.
#[inline(always)]
fn offset_term(w: &QMat, r: usize, acts: &QActs, a: usize) -> f32 {
    let nb = w.nb;
    if w.interleaved {
        return (0..nb).map(|b| w.dm(r, b).1 * acts.s[a * nb + b]).sum();
    }
    dot_f32(&w.m[r * nb..(r + 1) * nb], &acts.s[a * nb..(a + 1) * nb])
}

unsafe fn gemm_scalar(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, out_stride: usize) {
    let nb = w.nb;
    for r in rows {
        let blocks: Vec<[u8; 32]> = (0..nb).map(|b| w.block_u(r, b)).collect();
        for a in 0..acts.rows {
            let mut sum = 0f32;
            for (b, u) in blocks.iter().enumerate() {
                let qa = &acts.qs[(a * nb + b) * 32..][..32];
                let isum: i32 = u.iter().zip(qa).map(|(&x, &y)| x as i32 * y as i32).sum();
                sum += isum as f32 * w.dm(r, b).0 * acts.d[a * nb + b];
            }
            // SAFETY: caller guarantees this index is ours and in bounds.
            unsafe { *out.0.add(a * out_stride + r) = sum + offset_term(w, r, acts, a) };
        }
    }
}

/// Write tile results: RW rows from r0 × NA activations from a0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store<const RW: usize, const NA: usize>(
    w: &QMat,
    acts: &QActs,
    t: [[f32; NA]; RW],
    r0: usize,
    a0: usize,
    with_offset: bool,
    out: OutPtr,
    stride: usize,
) {
    for i in 0..RW {
        for j in 0..NA {
            let v = if with_offset { t[i][j] + offset_term(w, r0 + i, acts, a0 + j) } else { t[i][j] };
            // SAFETY: the caller of gemm_rows owns these output indices.
            unsafe { *out.0.add((a0 + j) * stride + r0 + i) = v };
        }
    }
}

/// Walk rows × activations in tiles: 4×1 for a single activation row (decode:
/// independent FMA chains), `$rb`×4 otherwise (each expanded weight block reused
/// 4 times, each activation block `$rb` times). Used by the AVX2 path.
macro_rules! drive_tiles {
    ($tile:ident, $rb:literal, $w:expr, $rows:expr, $acts:expr, $out:expr, $stride:expr, $offset:expr) => {{
        let (w, acts, out, stride, off) = ($w, $acts, $out, $stride, $offset);
        let n = acts.rows;
        let mut r = $rows.start;
        let end = $rows.end;
        if n == 1 {
            while r + 4 <= end {
                store::<4, 1>(w, acts, $tile::<4, 1>(w, r, acts, 0), r, 0, off, out, stride);
                r += 4;
            }
        }
        while r + $rb <= end {
            let mut a = 0;
            while a + 4 <= n {
                store::<$rb, 4>(w, acts, $tile::<$rb, 4>(w, r, acts, a), r, a, off, out, stride);
                a += 4;
            }
            while a < n {
                store::<$rb, 1>(w, acts, $tile::<$rb, 1>(w, r, acts, a), r, a, off, out, stride);
                a += 1;
            }
            r += $rb;
        }
        while r < end {
            for a in 0..n {
                store::<1, 1>(w, acts, $tile::<1, 1>(w, r, acts, a), r, a, off, out, stride);
            }
            r += 1;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    pub mod avx2 {
        use super::*;

        #[inline(always)]
        fn hsum(v: __m256) -> f32 {
            // SAFETY: only reached from the avx2 gemm (features enabled).
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }

        /// Block b of a row as 32 unsigned bytes in element order.
        #[inline(always)]
        unsafe fn load_block(w: &QMat, row: *const u8, b: usize) -> __m256i {
            // SAFETY: b < nb, so every load stays inside the row (see quant's layout).
            unsafe {
                match w.fmt {
                    WFormat::U8 => _mm256_loadu_si256(row.add(b * 32) as *const __m256i),
                    WFormat::U4 if b / 2 < w.nb / 2 => {
                        let raw = _mm256_loadu_si256(row.add((b / 2) * 32) as *const __m256i);
                        let raw = if b.is_multiple_of(2) { raw } else { _mm256_srli_epi16(raw, 4) };
                        _mm256_and_si256(raw, _mm256_set1_epi8(0x0f))
                    }
                    WFormat::U4 => {
                        let raw = _mm_loadu_si128(row.add((b / 2) * 32) as *const __m128i);
                        let m4 = _mm_set1_epi8(0x0f);
                        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4))
                    }
                }
            }
        }

        #[inline(always)]
        unsafe fn tile<const RW: usize, const NA: usize>(
            w: &QMat,
            r0: usize,
            acts: &QActs,
            a0: usize,
        ) -> [[f32; NA]; RW] {
            // SAFETY: r0 + RW <= rows and a0 + NA <= acts.rows (drive_tiles), so
            // every pointer below stays inside w.qs / acts.qs; AVX2 is enabled.
            unsafe {
                let nb = w.nb;
                let signed = w.fmt == WFormat::U8;
                let ones = _mm256_set1_epi16(1);
                let flip = _mm256_set1_epi8(-128);
                let mut acc = [[_mm256_setzero_ps(); NA]; RW];
                for b in 0..nb {
                    let mut wv = [_mm256_setzero_si256(); RW];
                    let mut dw = [0f32; RW];
                    for i in 0..RW {
                        let row = w.qs.as_ptr().add((r0 + i) * w.row_bytes());
                        wv[i] = load_block(w, row, b);
                        if signed {
                            wv[i] = _mm256_xor_si256(wv[i], flip); // back to i8 q
                        }
                        dw[i] = *w.d.get_unchecked((r0 + i) * nb + b);
                    }
                    for j in 0..NA {
                        let ai = (a0 + j) * nb + b;
                        let av = _mm256_loadu_si256(acts.qs.as_ptr().add(ai * 32) as *const __m256i);
                        let da = *acts.d.get_unchecked(ai);
                        for i in 0..RW {
                            let p16 = if signed {
                                _mm256_maddubs_epi16(_mm256_sign_epi8(wv[i], wv[i]), _mm256_sign_epi8(av, wv[i]))
                            } else {
                                _mm256_maddubs_epi16(wv[i], av)
                            };
                            let p = _mm256_madd_epi16(p16, ones);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw[i] * da), acc[i][j]);
                        }
                    }
                }
                let mut res = [[0f32; NA]; RW];
                for i in 0..RW {
                    for j in 0..NA {
                        res[i][j] = hsum(acc[i][j]);
                    }
                }
                res
            }
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn gemm(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
            // The signed path for 8-bit weights already includes the -128 offset.
            let with_offset = w.fmt == WFormat::U4;
            // SAFETY: drive_tiles keeps every tile inside rows × acts.
            unsafe { drive_tiles!(tile, 2, w, rows, acts, out, stride, with_offset) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::quant::quantize_acts;
    use crate::gguf::GgmlType;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn check(fmt: GgmlType) {
        // Odd and even block counts (the odd last block has its own layout).
        for cols in [64, 96, 160] {
            check_shape(fmt, 13, cols, 7);
            check_shape(fmt, 9, cols, 1);
        }
    }

    fn check_shape(fmt: GgmlType, rows: usize, cols: usize, n: usize) {
        let wf = rand_vec(rows * cols, 1);
        let w = QMat::quantize_from_f32(fmt, &wf, rows, cols);
        let x = rand_vec(n * cols, 2);
        let mut acts = QActs::default();
        quantize_acts(&x, n, cols, &mut acts);
        let mut want = vec![0f32; n * rows];
        // SAFETY: single thread, buffer sized n*rows.
        unsafe { gemm_scalar(&w, 0..rows, &acts, OutPtr(want.as_mut_ptr()), rows) };
        // Scalar vs the f32 math it approximates.
        let wd = w.dequantize();
        // Repacking is exact: the dequantized weights equal ggml's for the format.
        for a in 0..n {
            for r in 0..rows {
                let exact: f32 = (0..cols).map(|c| wd[r * cols + c] * x[a * cols + c]).sum();
                assert!((exact - want[a * rows + r]).abs() < 0.05, "{exact} vs {}", want[a * rows + r]);
            }
        }
        for isa in [Isa::Avx2, Isa::Avx512Vnni] {
            if Isa::detect() == Isa::Scalar || (isa == Isa::Avx512Vnni && Isa::detect() != Isa::Avx512Vnni) {
                continue;
            }
            let wk = if isa == Isa::Avx512Vnni { super::super::vnni16::interleave(&w) } else { w.clone() };
            let mut got = vec![0f32; n * rows];
            // SAFETY: feature checked above; single thread.
            unsafe { gemm_rows(isa, &wk, 0..rows, &acts, OutPtr(got.as_mut_ptr()), rows) };
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-4 * e.abs().max(1.0), "{isa:?} {fmt:?}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn q4_1_kernels_agree() {
        check(GgmlType::Q4_1);
    }

    #[test]
    fn q8_0_kernels_agree() {
        check(GgmlType::Q8_0);
    }
}
