//! Micro-benchmark of the quantized GEMM kernels on the real model's matrices
//! shapes: time per call at 1 and 32 activation rows, per ISA, one thread.
//! `cargo run -p troupe-llm --release --example kernel_bench`

use std::time::Instant;

use troupe_llm::cpu::kernels::{Isa, OutPtr, gemm_rows};
use troupe_llm::cpu::quant::{QActs, QMat, quantize_acts};
use troupe_llm::gguf::GgmlType;

fn main() {
    let isas = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];
    for (name, ty, rows, cols) in
        [("ffn_gate+up Q4_1", GgmlType::Q4_1, 3072, 576), ("output Q8_0", GgmlType::Q8_0, 49152, 576)]
    {
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
        let m = QMat::quantize_from_f32(ty, &w, rows, cols);
        for n in [1usize, 32] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 40503) % 977) as f32 / 488.0 - 1.0).collect();
            let mut acts = QActs::default();
            quantize_acts(&x, n, cols, &mut acts);
            let mut out = vec![0f32; n * rows];
            for isa in isas {
                if isa == Isa::Avx512Vnni && Isa::detect() != Isa::Avx512Vnni {
                    continue;
                }
                let reps = if isa == Isa::Scalar { 2 } else { 20 };
                let m = if isa == Isa::Avx512Vnni { troupe_llm::cpu::vnni16::interleave(&m) } else { m.clone() };
                let t = Instant::now();
                for _ in 0..reps {
                    // SAFETY: one thread, out sized n*rows.
                    unsafe { gemm_rows(isa, &m, 0..rows, &acts, OutPtr(out.as_mut_ptr()), rows) };
                }
                let dt = t.elapsed().as_secs_f64() / reps as f64;
                let blocks = (rows * cols / 32 * n) as f64;
                println!(
                    "{name:18} n={n:3} {isa:?}: {:8.3} ms  {:6.2} ns/block-dot  {:6.2} GB/s weights",
                    dt * 1e3,
                    dt * 1e9 / blocks,
                    (m.qs.len() + m.d.len() * 4 + m.m.len() * 4) as f64 / dt / 1e9
                );
            }
        }
    }
}
