//! Quantized dot-product kernels: weights in Q4_1 or Q8_0 blocks times
//! activations quantized to 8 bits per 32-block (llama.cpp's Q8_1 scheme).
//!
//! For a Q4_1 weight block (scale dw, min mw, nibbles qw) and an activation block
//! (scale da, ints qa, sa = da Σqa): Σ x_w x_a = dw·da·Σ qw·qa + mw·sa, so the hot
//! loop is an integer dot product (u8×i8) per block, then one float FMA.
//!
//! Three implementations of the same tile kernel, picked once at start by CPUID:
//! AVX-512 VNNI (256-bit `vpdpbusd`), AVX2+FMA (`vpmaddubsw`+`vpmaddwd`), and a
//! portable scalar one. Invariant: all three give the same integer block sums;
//! only float summation order differs (tested to 1e-4 relative).

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
            if avx2 && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
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
/// thread may touch those indices during the call. `w.cols == acts.cols`.
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
        // SAFETY: Isa::detect verified the CPU features; caller upholds the rest.
        Isa::Avx512Vnni => unsafe { x86::gemm_vnni(w, rows, acts, out, out_stride) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::gemm_avx2(w, rows, acts, out, out_stride) },
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
            let x = &acts.x[a * cols..(a + 1) * cols];
            let mut acc = [0f32; 8];
            for (wc, xc) in buf.chunks_exact(8).zip(x.chunks_exact(8)) {
                for k in 0..8 {
                    acc[k] += wc[k] * xc[k];
                }
            }
            // SAFETY: caller guarantees this index is ours and in bounds.
            unsafe { *out.0.add(a * out_stride + r) = acc.iter().sum() };
        }
    }
}

/// Σ over blocks of the min term mw·sa (Q4_1 only).
#[inline(always)]
fn min_term(w: &QMat, r: usize, acts: &QActs, a: usize) -> f32 {
    let nb = w.nb;
    let (m, s) = (&w.m[r * nb..(r + 1) * nb], &acts.s[a * nb..(a + 1) * nb]);
    m.iter().zip(s).map(|(x, y)| x * y).sum()
}

unsafe fn gemm_scalar(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, out_stride: usize) {
    let nb = w.nb;
    for r in rows {
        for a in 0..acts.rows {
            let mut sum = 0f32;
            for b in 0..nb {
                let qa = &acts.qs[(a * nb + b) * 32..][..32];
                let isum: i32 = match w.fmt {
                    WFormat::Q4_1 => {
                        let qw = &w.qs[(r * nb + b) * 16..][..16];
                        (0..16)
                            .map(|j| (qw[j] & 0xf) as i32 * qa[j] as i32 + (qw[j] >> 4) as i32 * qa[j + 16] as i32)
                            .sum()
                    }
                    WFormat::Q8_0 => {
                        let qw = &w.qs[(r * nb + b) * 32..][..32];
                        (0..32).map(|j| (qw[j] as i8) as i32 * qa[j] as i32).sum()
                    }
                };
                sum += isum as f32 * w.d[r * nb + b] * acts.d[a * nb + b];
            }
            if w.fmt == WFormat::Q4_1 {
                sum += min_term(w, r, acts, a);
            }
            // SAFETY: caller guarantees this index is ours and in bounds.
            unsafe { *out.0.add(a * out_stride + r) = sum };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The tile body, expanded once per ISA so that every intrinsic inlines into a
    /// function compiled with that ISA's features. `$dot_u8i8(w, a)` must return
    /// eight i32 partial sums of u8(w)·i8(a).
    macro_rules! tiles {
        ($dot_u8i8:ident) => {
            /// RW weight rows × NA activations, all blocks; returns the float sums
            /// without the Q4_1 min term.
            #[inline(always)]
            unsafe fn tile<const RW: usize, const NA: usize>(
                w: &QMat,
                r0: usize,
                acts: &QActs,
                a0: usize,
            ) -> [[f32; NA]; RW] {
                // SAFETY: indices stay inside w and acts (r0+RW <= rows, a0+NA <= acts);
                // the enclosing target_feature fn enabled the ISA.
                unsafe {
                    let nb = w.nb;
                    let mut acc = [[_mm256_setzero_ps(); NA]; RW];
                    let m4 = _mm_set1_epi8(0x0f);
                    for b in 0..nb {
                        let mut wv = [_mm256_setzero_si256(); RW];
                        let mut dw = [0f32; RW];
                        for i in 0..RW {
                            let idx = (r0 + i) * nb + b;
                            dw[i] = *w.d.get_unchecked(idx);
                            wv[i] = match w.fmt {
                                WFormat::Q4_1 => {
                                    let raw = _mm_loadu_si128(w.qs.as_ptr().add(idx * 16) as *const __m128i);
                                    let lo = _mm_and_si128(raw, m4);
                                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
                                    _mm256_set_m128i(hi, lo)
                                }
                                WFormat::Q8_0 => _mm256_loadu_si256(w.qs.as_ptr().add(idx * 32) as *const __m256i),
                            };
                        }
                        for j in 0..NA {
                            let aidx = (a0 + j) * nb + b;
                            let av = _mm256_loadu_si256(acts.qs.as_ptr().add(aidx * 32) as *const __m256i);
                            let da = *acts.d.get_unchecked(aidx);
                            for i in 0..RW {
                                let p = match w.fmt {
                                    WFormat::Q4_1 => $dot_u8i8(wv[i], av),
                                    // Signed×signed via |w| × (a·sign w).
                                    WFormat::Q8_0 => {
                                        $dot_u8i8(_mm256_sign_epi8(wv[i], wv[i]), _mm256_sign_epi8(av, wv[i]))
                                    }
                                };
                                acc[i][j] =
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw[i] * da), acc[i][j]);
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

            #[inline(always)]
            unsafe fn run(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
                let q41 = w.fmt == WFormat::Q4_1;
                let store = |r: usize, a: usize, v: f32| {
                    let v = if q41 { v + min_term(w, r, acts, a) } else { v };
                    // SAFETY: the caller of gemm_rows owns these output indices.
                    unsafe { *out.0.add(a * stride + r) = v };
                };
                // SAFETY: tiles stay inside rows × acts; see tile().
                unsafe {
                    let n = acts.rows;
                    let mut r = rows.start;
                    // Batch of one (decode): 4 rows at a time for independent FMA chains.
                    if n == 1 {
                        while r + 4 <= rows.end {
                            let t = tile::<4, 1>(w, r, acts, 0);
                            for i in 0..4 {
                                store(r + i, 0, t[i][0]);
                            }
                            r += 4;
                        }
                    }
                    // Batches: 2 rows × 4 activations reuse each expanded weight block 4 times.
                    while r + 2 <= rows.end {
                        let mut a = 0;
                        while a + 4 <= n {
                            let t = tile::<2, 4>(w, r, acts, a);
                            for i in 0..2 {
                                for j in 0..4 {
                                    store(r + i, a + j, t[i][j]);
                                }
                            }
                            a += 4;
                        }
                        while a < n {
                            let t = tile::<2, 1>(w, r, acts, a);
                            store(r, a, t[0][0]);
                            store(r + 1, a, t[1][0]);
                            a += 1;
                        }
                        r += 2;
                    }
                    while r < rows.end {
                        for a in 0..n {
                            store(r, a, tile::<1, 1>(w, r, acts, a)[0][0]);
                        }
                        r += 1;
                    }
                }
            }
        };
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: only called from AVX2-enabled code.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    mod avx2 {
        use super::*;
        #[inline(always)]
        unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
            // SAFETY: only inlined into the avx2 gemm.
            unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)) }
        }
        tiles!(dot);
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn gemm(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
            // SAFETY: features enabled on this fn; contract forwarded from gemm_rows.
            unsafe { run(w, rows, acts, out, stride) }
        }
    }

    mod vnni {
        use super::*;
        #[inline(always)]
        unsafe fn dot(w: __m256i, a: __m256i) -> __m256i {
            // SAFETY: only inlined into the vnni gemm.
            unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a) }
        }
        tiles!(dot);
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
        pub unsafe fn gemm(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
            // SAFETY: features enabled on this fn; contract forwarded from gemm_rows.
            unsafe { run(w, rows, acts, out, stride) }
        }
    }

    pub unsafe fn gemm_avx2(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
        // SAFETY: the caller checked AVX2+FMA.
        unsafe { avx2::gemm(w, rows, acts, out, stride) }
    }
    pub unsafe fn gemm_vnni(w: &QMat, rows: std::ops::Range<usize>, acts: &QActs, out: OutPtr, stride: usize) {
        // SAFETY: the caller checked AVX-512 VNNI/VL.
        unsafe { vnni::gemm(w, rows, acts, out, stride) }
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
        let (rows, cols, n) = (13, 96, 7);
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
            let mut got = vec![0f32; n * rows];
            // SAFETY: feature checked above; single thread.
            unsafe { gemm_rows(isa, &w, 0..rows, &acts, OutPtr(got.as_mut_ptr()), rows) };
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
