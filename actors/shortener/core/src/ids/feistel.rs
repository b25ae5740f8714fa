//! Keyed permutation of `[0, 62^7)`: a balanced Feistel network on 42 bits with cycle walking.
//!
//! Invariants:
//! - `permute` is a bijection of `[0, DOMAIN_SIZE)` onto itself and `unpermute` is its
//!   inverse, for every key. A Feistel network is a permutation of `[0, 2^42)` whatever the
//!   round function; cycle walking (re-encrypt until the value lands below `DOMAIN_SIZE`)
//!   restricts a permutation of a superset to a permutation of the subset.
//! - Round functions are SipHash-2-4 under round keys derived from a 32-byte secret, so
//!   without the key the output of counter `n + 1` says nothing usable about that of `n`
//!   (8 rounds of a PRF: Luby–Rackoff needs 4 for a strong pseudo-random permutation).
//! - Cycle walking costs 2^42 / 62^7 ≈ 1.25 encryptions on average; the walk always ends
//!   because the start value lies on a finite cycle that contains itself.

use super::siphash::{SipKey, siphash24, siphash24_u64};
use super::{DOMAIN_SIZE, IdError};

const HALF_BITS: u32 = 21;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
/// Rounds of the Feistel network.
pub const FEISTEL_ROUNDS: usize = 8;
// Domain separation for key derivation; bumping it changes every code, so never do.
const KDF_LABEL: &[u8] = b"troupe-shortener/feistel/v1";

const _: () = assert!(DOMAIN_SIZE <= 1 << (2 * HALF_BITS), "42 bits must cover 62^7");

/// The 32-byte secret that fixes the code permutation for a deployment.
///
/// Changing it changes the code of every future counter value, which could then collide
/// with codes already handed out: keep one key for the life of the deployment.
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey([u8; 32]);

impl IdKey {
    /// Wraps 32 secret bytes (e.g. from the cluster's secret store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits (a config-file friendly form).
    pub fn from_hex(text: &str) -> Result<Self, IdError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(IdError::BadKeyHex { reason: "expected exactly 64 hex digits (32 bytes)" });
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| IdError::BadKeyHex { reason: "non-ASCII digit" })?;
            *slot = u8::from_str_radix(hex, 16).map_err(|_| IdError::BadKeyHex { reason: "not a hex digit" })?;
        }
        Ok(Self(out))
    }
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

/// The keyed permutation. Cheap to clone; holds only the derived round keys.
#[derive(Clone, Debug)]
pub struct Permutation {
    round_keys: [SipKey; FEISTEL_ROUNDS],
}

impl Permutation {
    /// Derives the round keys: round `i` gets SipHash of `(label, i)` under each half of
    /// the master key, so every round function is independent of every other.
    pub fn new(key: &IdKey) -> Self {
        let (lo, hi) = key.0.split_at(16);
        let mut lo_key = [0u8; 16];
        let mut hi_key = [0u8; 16];
        lo_key.copy_from_slice(lo);
        hi_key.copy_from_slice(hi);
        let (master_lo, master_hi) = (SipKey::from_bytes(&lo_key), SipKey::from_bytes(&hi_key));
        let round_keys = std::array::from_fn(|round| {
            let mut msg = KDF_LABEL.to_vec();
            msg.push(round as u8);
            msg.push(0);
            let k0 = siphash24(master_lo, &msg);
            if let Some(last) = msg.last_mut() {
                *last = 1;
            }
            let k1 = siphash24(master_hi, &msg);
            SipKey { k0, k1 }
        });
        Self { round_keys }
    }

    fn encrypt42(&self, x: u64) -> u64 {
        let (mut left, mut right) = (x >> HALF_BITS, x & HALF_MASK);
        for key in &self.round_keys {
            let next_right = left ^ (siphash24_u64(*key, right) & HALF_MASK);
            left = right;
            right = next_right;
        }
        (left << HALF_BITS) | right
    }

    fn decrypt42(&self, y: u64) -> u64 {
        let (mut left, mut right) = (y >> HALF_BITS, y & HALF_MASK);
        for key in self.round_keys.iter().rev() {
            let prev_left = right ^ (siphash24_u64(*key, left) & HALF_MASK);
            right = left;
            left = prev_left;
        }
        (left << HALF_BITS) | right
    }

    /// The image of `x` under the permutation; `x` must be below `DOMAIN_SIZE`.
    pub fn permute(&self, x: u64) -> Result<u64, IdError> {
        if x >= DOMAIN_SIZE {
            return Err(IdError::OutOfDomain { value: x });
        }
        let mut y = self.encrypt42(x);
        while y >= DOMAIN_SIZE {
            y = self.encrypt42(y);
        }
        Ok(y)
    }

    /// The inverse of [`Permutation::permute`].
    pub fn unpermute(&self, y: u64) -> Result<u64, IdError> {
        if y >= DOMAIN_SIZE {
            return Err(IdError::OutOfDomain { value: y });
        }
        let mut x = self.decrypt42(y);
        while x >= DOMAIN_SIZE {
            x = self.decrypt42(x);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn perm(seed: u8) -> Permutation {
        Permutation::new(&IdKey::from_bytes([seed; 32]))
    }

    #[test]
    fn feistel_core_inverts_on_full_42_bits() {
        let p = perm(7);
        for x in [0, 1, HALF_MASK, 1 << 41, (1 << 42) - 1] {
            assert_eq!(p.decrypt42(p.encrypt42(x)), x);
            assert!(p.encrypt42(x) < 1 << 42);
        }
    }

    #[test]
    fn rejects_values_outside_domain() {
        assert!(matches!(perm(1).permute(DOMAIN_SIZE), Err(IdError::OutOfDomain { .. })));
        assert!(matches!(perm(1).unpermute(u64::MAX), Err(IdError::OutOfDomain { .. })));
    }

    #[test]
    fn different_keys_give_different_permutations() {
        let (a, b) = (perm(1), perm(2));
        let same = (0..1000u64).filter(|&x| a.permute(x).ok() == b.permute(x).ok()).count();
        assert!(same < 5, "{same} of 1000 values agree under two keys");
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(IdKey::from_hex(hex).is_ok());
        assert!(IdKey::from_hex(&hex[..62]).is_err());
        assert!(IdKey::from_hex(&hex.replace('a', "g")).is_err());
        assert_eq!(format!("{:?}", IdKey::from_hex(hex).ok()), "Some(IdKey(..))");
    }

    proptest! {
        #[test]
        fn unpermute_inverts_permute(seed in any::<u8>(), x in 0..DOMAIN_SIZE) {
            let p = perm(seed);
            let y = p.permute(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(y < DOMAIN_SIZE);
            prop_assert_eq!(p.unpermute(y).ok(), Some(x));
        }

        #[test]
        fn permute_inverts_unpermute(seed in any::<u8>(), y in 0..DOMAIN_SIZE) {
            let p = perm(seed);
            let x = p.unpermute(y).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(x < DOMAIN_SIZE);
            prop_assert_eq!(p.permute(x).ok(), Some(y));
        }

        #[test]
        fn values_near_the_domain_top_stay_inside(seed in any::<u8>(), back in 0u64..10_000) {
            // The cycle-walking region: values just below 62^7.
            let p = perm(seed);
            let x = DOMAIN_SIZE - 1 - back;
            let y = p.permute(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(y < DOMAIN_SIZE);
            prop_assert_eq!(p.unpermute(y).ok(), Some(x));
        }
    }
}
