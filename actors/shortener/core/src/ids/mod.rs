//! Short codes: a counter value -> keyed permutation -> 7 Base62 characters.
//!
//! Invariants:
//! - Distinct counter values below `DOMAIN_SIZE` always get distinct codes (the map is a
//!   bijection), so codes never collide as long as no counter value is used twice; the
//!   runtime's range singleton hands each node disjoint [`CounterBlock`]s, so nodes mint
//!   codes without talking to each other.
//! - Codes of consecutive counters look unrelated without the [`IdKey`] (see `feistel`).
//! - Generated codes are exactly `CODE_LEN` Base62 characters; custom aliases of that exact
//!   shape are refused by `validate::alias` so an alias can never take a future code.

mod base62;
mod feistel;
mod siphash;

pub use base62::{CODE_LEN, Code, DOMAIN_SIZE, decode, encode};
pub use feistel::{FEISTEL_ROUNDS, IdKey, Permutation};

/// Errors from code generation and parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A number at or above 62^7 cannot be a code.
    #[error("value {value} is outside the code space [0, 62^7)")]
    OutOfDomain { value: u64 },
    /// Codes are exactly 7 characters.
    #[error("a short code has exactly 7 characters; this one has {len_chars}")]
    BadCodeLength { len_chars: usize },
    /// Codes use only `0-9`, `A-Z`, `a-z`.
    #[error("a short code uses only letters and digits; found {found:?}")]
    BadCodeChar { found: char },
    /// The configured ID key is malformed.
    #[error("the ID key must be 64 hex digits: {reason}")]
    BadKeyHex { reason: &'static str },
    /// A counter block with `start > end` or `end > 62^7`.
    #[error("counter block [{start}, {end}) is not inside [0, 62^7)")]
    BadBlock { start: u64, end: u64 },
}

/// Mints codes from counter values under one secret key.
#[derive(Clone, Debug)]
pub struct CodeGen {
    permutation: Permutation,
}

impl CodeGen {
    /// A generator for the deployment's key.
    pub fn new(key: &IdKey) -> Self {
        Self { permutation: Permutation::new(key) }
    }

    /// The code for counter value `counter` (which must be below `DOMAIN_SIZE`).
    pub fn code_for(&self, counter: u64) -> Result<Code, IdError> {
        encode(self.permutation.permute(counter)?)
    }

    /// The counter value a code was minted from (for audits and tests; the redirect path
    /// never needs it).
    pub fn counter_of(&self, code: &Code) -> u64 {
        // decode() is always inside the domain, so unpermute cannot fail; map defensively.
        self.permutation.unpermute(decode(code)).unwrap_or(u64::MAX)
    }
}

/// A half-open range `[next, end)` of counter values owned by one node.
///
/// Ranges come from the runtime's allocator singleton; the node takes values from its
/// block with no coordination and asks for a new block when [`CounterBlock::take`]
/// returns `None`. A taken value is never returned again, even across a restart, only if
/// the caller persists `next` (or abandons the block and asks for a fresh one on restart,
/// which wastes at most one block and is the simpler choice).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterBlock {
    next: u64,
    end: u64,
}

impl CounterBlock {
    /// The block `[start, end)`; both bounds must lie within `[0, DOMAIN_SIZE]`.
    pub fn new(start: u64, end: u64) -> Result<Self, IdError> {
        if start > end || end > DOMAIN_SIZE {
            return Err(IdError::BadBlock { start, end });
        }
        Ok(Self { next: start, end })
    }

    /// The next unused counter value, or `None` when the block is spent.
    pub fn take(&mut self) -> Option<u64> {
        if self.next >= self.end {
            return None;
        }
        let value = self.next;
        self.next += 1;
        Some(value)
    }

    /// Values still available.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> CodeGen {
        CodeGen::new(&IdKey::from_bytes(*b"troupe-test-key-0123456789abcdef"))
    }

    #[test]
    fn code_round_trips_through_counter() {
        let g = generator();
        for n in [0, 1, 2, 1_000_000, DOMAIN_SIZE - 1] {
            let code = g.code_for(n).ok();
            assert_eq!(code.map(|c| g.counter_of(&c)), Some(n));
        }
        assert!(g.code_for(DOMAIN_SIZE).is_err());
    }

    #[test]
    fn consecutive_counters_do_not_give_neighbouring_codes() {
        let g = generator();
        let a = g.code_for(41).map(|c| decode(&c)).unwrap_or(0);
        let b = g.code_for(42).map(|c| decode(&c)).unwrap_or(0);
        assert!(a.abs_diff(b) > 1_000_000, "codes of 41 and 42 are numerically close: {a} {b}");
    }

    #[test]
    fn counter_block_hands_out_each_value_once() {
        let mut block = CounterBlock::new(10, 13).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(block.remaining(), 3);
        assert_eq!((block.take(), block.take(), block.take(), block.take()), (Some(10), Some(11), Some(12), None));
        assert_eq!(block.remaining(), 0);
        assert!(CounterBlock::new(5, 4).is_err());
        assert!(CounterBlock::new(0, DOMAIN_SIZE + 1).is_err());
    }
}
