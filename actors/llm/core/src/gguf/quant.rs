//! ggml tensor types we read, their block layouts, and reference dequantization.
//!
//! Layouts (ggml `block_*`, little-endian, packed):
//! - Q4_0: f16 d, 16 bytes of nibbles; `x[j] = (lo(q[j]) - 8) d`, `x[j+16] = (hi(q[j]) - 8) d`
//! - Q4_1: f16 d, f16 m, 16 bytes; `x[j] = lo(q[j]) d + m`, `x[j+16] = hi(q[j]) d + m`
//! - Q8_0: f16 d, 32 i8; x = q d
//! - Q8_1: f16 d, f16 s (= d Σq, unused here), 32 i8; x = q d
//!
//! Dequantization here is the slow, obviously-correct path used by tests, the
//! reference checks and GPU upload; the CPU backend's fast kernels are checked
//! against it.

use crate::f16::{bf16_to_f32, f16_to_f32};

/// Elements per quantization block for the 32-wide formats.
pub const QK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q8_1,
    Bf16,
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<GgmlType> {
        Some(match v {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }
    pub fn to_u32(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Bf16 => 30,
        }
    }
    /// (elements per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
        }
    }
    /// Bytes of one row of `n` elements (n must be a block multiple).
    pub fn row_bytes(self, n: usize) -> usize {
        let (b, s) = self.block();
        n / b as usize * s as usize
    }
}

fn h(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Dequantize `src` (whole blocks of `ty`) into `dst`; `dst.len()` elements are
/// produced and `src` must hold exactly `ty.row_bytes(dst.len())` bytes.
///
/// Panics only on a caller bug (length mismatch), never on data values.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), ty.row_bytes(dst.len()), "dequantize: length mismatch");
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Bf16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(18)) {
                let d = h(b, 0);
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0xf) as i32 - 8) as f32 * d;
                    o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(20)) {
                let (d, m) = (h(b, 0), h(b, 2));
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0xf) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            let (bytes, off) = if ty == GgmlType::Q8_0 { (34, 2) } else { (36, 4) };
            for (o, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(bytes)) {
                let d = h(b, 0);
                for j in 0..QK {
                    o[j] = (b[off + j] as i8) as f32 * d;
                }
            }
        }
    }
}

/// Encode f32 values (a multiple of 32) as GGUF Q4_1 blocks (ggml's reference
/// quantizer: min/max per block). For synthetic test models.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    use crate::f16::{f16_to_f32, f32_to_f16};
    let mut out = Vec::with_capacity(x.len() / 32 * 20);
    for blk in x.chunks_exact(QK) {
        let (mn, mx) = blk.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let d = f16_to_f32(f32_to_f16((mx - mn) / 15.0));
        let m = f16_to_f32(f32_to_f16(mn));
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f32_to_f16(d).to_le_bytes());
        out.extend(f32_to_f16(m).to_le_bytes());
        let q = |v: f32| (((v - m) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out.push(q(blk[j]) | (q(blk[j + 16]) << 4));
        }
    }
    out
}

/// Encode f32 values (a multiple of 32) as GGUF Q8_0 blocks.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    use crate::f16::{f16_to_f32, f32_to_f16};
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = f16_to_f32(f32_to_f16(amax / 127.0));
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f32_to_f16(d).to_le_bytes());
        out.extend(blk.iter().map(|&v| ((v * id).round() as i32).clamp(-127, 127) as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::f16::f32_to_f16;

    #[test]
    fn q4_1_block_decodes_low_then_high_nibbles() {
        let mut b = Vec::new();
        b.extend_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b.extend_from_slice(&f32_to_f16(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 0.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut b = f32_to_f16(2.0).to_le_bytes().to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out);
        assert_eq!(out[0], -32.0);
        assert_eq!(out[31], 30.0);
        let mut b = f32_to_f16(1.0).to_le_bytes().to_vec();
        b.extend([0x80u8; 16]);
        dequantize(GgmlType::Q4_0, &b, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[16], 0.0);
    }
}
