//! SipHash-2-4 (Aumasson & Bernstein), the keyed PRF behind the Feistel rounds.
//!
//! Invariant: output equals the reference implementation's for every key and message
//! (checked against the paper's test vectors). std's `SipHasher` is deprecated and its
//! output is not promised to stay stable, and an ID scheme must never change its
//! output between releases, so we carry our own 60 lines instead of a dependency.

/// A 128-bit SipHash key as two little-endian words.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct SipKey {
    pub(crate) k0: u64,
    pub(crate) k1: u64,
}

impl SipKey {
    pub(crate) fn from_bytes(bytes: &[u8; 16]) -> Self {
        let (lo, hi) = bytes.split_at(8);
        Self { k0: le_u64(lo), k1: le_u64(hi) }
    }
}

// Keys are secrets: never print them.
impl std::fmt::Debug for SipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipKey(..)")
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `msg` under `key`.
pub(crate) fn siphash24(key: SipKey, msg: &[u8]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = msg.chunks_exact(8);
    for chunk in &mut chunks {
        let m = le_u64(chunk);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    // The last block carries the message length (mod 256) in its top byte.
    let last = le_u64(chunks.remainder()) | ((msg.len() as u64 & 0xff) << 56);
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// SipHash-2-4 of one little-endian `u64`: the Feistel hot path.
///
/// Same result as `siphash24(key, &word.to_le_bytes())`, written out on locals: one
/// message block, then the length-only final block. Unrolled by a macro because the
/// collision test runs 10M of these in debug builds, where calls and bounds checks cost.
#[inline]
pub(crate) fn siphash24_u64(key: SipKey, word: u64) -> u64 {
    let mut v0 = key.k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = key.k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = key.k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = key.k1 ^ 0x7465_6462_7974_6573;
    macro_rules! round {
        () => {
            v0 = v0.wrapping_add(v1);
            v1 = v1.rotate_left(13) ^ v0;
            v0 = v0.rotate_left(32);
            v2 = v2.wrapping_add(v3);
            v3 = v3.rotate_left(16) ^ v2;
            v0 = v0.wrapping_add(v3);
            v3 = v3.rotate_left(21) ^ v0;
            v2 = v2.wrapping_add(v1);
            v1 = v1.rotate_left(17) ^ v2;
            v2 = v2.rotate_left(32);
        };
    }
    v3 ^= word;
    round!();
    round!();
    v0 ^= word;
    let last = 8u64 << 56;
    v3 ^= last;
    round!();
    round!();
    v0 ^= last;
    v2 ^= 0xff;
    round!();
    round!();
    round!();
    round!();
    v0 ^ v1 ^ v2 ^ v3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_key() -> SipKey {
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        SipKey::from_bytes(&key)
    }

    #[test]
    fn matches_reference_vectors() {
        // Key 00..0f; message 00..(n-1). Values from the SipHash paper / reference code.
        let msg: Vec<u8> = (0u8..64).collect();
        assert_eq!(siphash24(reference_key(), &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(reference_key(), &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(reference_key(), &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn u64_path_equals_byte_path() {
        let key = reference_key();
        for word in [0u64, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(siphash24_u64(key, word), siphash24(key, &word.to_le_bytes()));
        }
    }

    #[test]
    fn key_changes_output() {
        let other = SipKey { k0: 1, k1: 0 };
        assert_ne!(siphash24(reference_key(), b"troupe"), siphash24(other, b"troupe"));
    }
}
