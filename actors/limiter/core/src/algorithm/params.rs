//! Validated parameters of one limit, and their bounds.
//!
//! Invariant: a [`LimitParams`] exists only within the bounds below, so every algorithm can rely
//! on `1 <= limit, burst <= LIMIT_MAX` and `1 <= window_ns <= WINDOW_NS_MAX` without checks.

use serde::{Deserialize, Serialize};

use super::AlgorithmKind;

/// Largest `limit` or `burst` accepted: 4.29 billion cost units per window (enough for
/// tokens per minute). It lets the sliding counter keep its counts in `u32` (16-byte state) and
/// keeps every product in the `u128` arithmetic far from overflow: the largest is
/// `now_ns · limit < 2^64 · 2^32`, and `cost` is clamped to capacity before it is multiplied by
/// the window.
pub const LIMIT_MAX: u64 = u32::MAX as u64;
/// Largest window accepted: 366 days.
pub const WINDOW_NS_MAX: u64 = 366 * 24 * 3600 * 1_000_000_000;
/// Largest limit for the sliding log, which stores one entry per admitted timestamp: at most
/// `limit` entries of 16 bytes, so at most 1.6 MB per key at this bound.
pub const SLIDING_LOG_LIMIT_MAX: u64 = 100_000;

/// A parameter set that was rejected by [`LimitParams::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// `limit` was 0 or above [`LIMIT_MAX`].
    #[error("limit must be between 1 and {max}, got {got}")]
    Limit { got: u64, max: u64 },
    /// `window_ns` was 0 or above [`WINDOW_NS_MAX`].
    #[error("window must be between 1 ns and {max_ns} ns, got {got_ns} ns")]
    Window { got_ns: u64, max_ns: u64 },
    /// `burst` was 0 or above [`LIMIT_MAX`].
    #[error("burst must be between 1 and {max}, got {got}")]
    Burst { got: u64, max: u64 },
    /// `burst` differs from `limit` for an algorithm that has no burst.
    #[error("burst applies only to token_bucket and gcra; {kind} uses limit per window")]
    BurstNotApplicable { kind: &'static str },
    /// The sliding log would need more memory than its bound allows.
    #[error("sliding_log stores one entry per admitted request: limit {got} is above {max}; use sliding_counter")]
    LogTooLarge { got: u64, max: u64 },
}

/// Validated parameters of one limit. Fields are private so every algorithm can rely on
/// `limit >= 1`, `window_ns >= 1`, `burst >= 1` and the bounds above.
///
/// Each value carries a 64-bit fingerprint of its fields, computed once here, so the keyed
/// table can tell "same rule parameters" with one integer compare and keep only the fingerprint
/// next to each key's state (a key's state is 24 to 32 bytes; the parameters would double it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ParamsWire", into = "ParamsWire")]
pub struct LimitParams {
    kind: AlgorithmKind,
    limit: u64,
    window_ns: u64,
    burst: u64,
    fingerprint: u64,
}

/// Serde shape of [`LimitParams`]: the fingerprint is recomputed and the bounds re-checked on the
/// way in, never trusted from the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ParamsWire {
    kind: AlgorithmKind,
    limit: u64,
    window_ns: u64,
    burst: u64,
}

impl TryFrom<ParamsWire> for LimitParams {
    type Error = ParamError;
    fn try_from(w: ParamsWire) -> Result<Self, ParamError> {
        LimitParams::new(w.kind, w.limit, w.window_ns, w.burst)
    }
}

impl From<LimitParams> for ParamsWire {
    fn from(p: LimitParams) -> Self {
        ParamsWire { kind: p.kind, limit: p.limit, window_ns: p.window_ns, burst: p.burst }
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of the fields. Collisions need two
/// parameter sets of one key to collide in 64 bits, which we accept.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LimitParams {
    /// Validates and builds. `burst` is the bucket capacity for token bucket and GCRA (pass
    /// `limit` for "no extra burst"); window algorithms require `burst == limit`.
    pub fn new(kind: AlgorithmKind, limit: u64, window_ns: u64, burst: u64) -> Result<Self, ParamError> {
        if limit == 0 || limit > LIMIT_MAX {
            return Err(ParamError::Limit { got: limit, max: LIMIT_MAX });
        }
        if window_ns == 0 || window_ns > WINDOW_NS_MAX {
            return Err(ParamError::Window { got_ns: window_ns, max_ns: WINDOW_NS_MAX });
        }
        if burst == 0 || burst > LIMIT_MAX {
            return Err(ParamError::Burst { got: burst, max: LIMIT_MAX });
        }
        if !kind.uses_burst() && burst != limit {
            return Err(ParamError::BurstNotApplicable { kind: kind.as_str() });
        }
        if kind == AlgorithmKind::SlidingLog && limit > SLIDING_LOG_LIMIT_MAX {
            return Err(ParamError::LogTooLarge { got: limit, max: SLIDING_LOG_LIMIT_MAX });
        }
        let fingerprint = mix(mix(mix(mix(kind as u64) ^ limit) ^ window_ns) ^ burst);
        Ok(LimitParams { kind, limit, window_ns, burst, fingerprint })
    }

    /// Shorthand for `new(kind, limit, window_ns, limit)`: no burst beyond the limit.
    pub fn simple(kind: AlgorithmKind, limit: u64, window_ns: u64) -> Result<Self, ParamError> {
        Self::new(kind, limit, window_ns, limit)
    }

    /// The algorithm.
    pub fn kind(&self) -> AlgorithmKind {
        self.kind
    }
    /// Cost units per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// Window length in nanoseconds.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }
    /// Bucket capacity (equals `limit` for window algorithms).
    pub fn burst(&self) -> u64 {
        self.burst
    }
    /// The most cost one check can ever be admitted with.
    pub fn capacity(&self) -> u64 {
        if self.kind.uses_burst() { self.burst } else { self.limit }
    }
    /// 64-bit fingerprint of the fields (equal parameters, equal fingerprints).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}
