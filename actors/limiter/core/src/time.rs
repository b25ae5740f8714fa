//! Time as the cores see it: plain `u64` nanoseconds on the caller's monotonic clock.
//!
//! Invariants: the cores never read a clock. Every `now_ns` comes from the owner of the state
//! (the limiter shard actor), never from the requester. Each algorithm keeps a high-water mark
//! and clamps a `now_ns` that steps back to it, so a clock step backwards neither panics nor
//! mints quota; it only delays refill until the clock catches up.

/// Nanoseconds per millisecond.
pub const NS_PER_MS: u64 = 1_000_000;
/// Nanoseconds per second.
pub const NS_PER_S: u64 = 1_000_000_000;

/// Converts milliseconds to nanoseconds, saturating instead of overflowing.
pub const fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(NS_PER_MS)
}

/// Whole seconds, rounded up: a client told "retry in 0 s" would retry too early.
pub const fn ns_to_secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_S)
}

/// Narrows a `u128` duration to `u64`, saturating. Durations beyond ~584 years mean "never".
pub(crate) fn sat_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `a / b` for `b > 0`, with a 64-bit fast path: the values are almost always below 2^64 and a
/// 128-bit division is a library call several times slower than the hardware divide.
#[inline]
pub(crate) fn div_u128(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ => a / b,
    }
}

/// `ceil(a / b)` for `b > 0`, with the same fast path.
#[inline]
pub(crate) fn div_ceil_u128(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a.div_ceil(b)),
        _ => a.div_ceil(b),
    }
}

/// A `u128` stored as two `u64` halves: same value, 8-byte alignment instead of 16, which keeps
/// per-key state in the keyed table at 24 bytes instead of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Wide {
    lo: u64,
    hi: u64,
}

impl Wide {
    #[inline]
    pub(crate) fn new(v: u128) -> Self {
        Wide { lo: v as u64, hi: (v >> 64) as u64 }
    }
    #[inline]
    pub(crate) fn halves(self) -> (u64, u64) {
        (self.lo, self.hi)
    }
    #[inline]
    pub(crate) fn from_halves(lo: u64, hi: u64) -> Self {
        Wide { lo, hi }
    }
    #[inline]
    pub(crate) fn get(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}
