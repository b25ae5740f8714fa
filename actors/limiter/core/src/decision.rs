//! The answer to one check: allowed or not, and what to tell the client.
//!
//! Invariants: `remaining <= limit`; `retry_after_ns == 0` exactly when `allowed`;
//! `retry_after_ns == RETRY_NEVER` when the cost can never fit (cost above capacity).

use serde::{Deserialize, Serialize};

/// `retry_after_ns` when waiting cannot help: the cost is larger than the limiter's capacity.
pub const RETRY_NEVER: u64 = u64::MAX;

/// Result of [`crate::Algorithm::check`] or [`crate::Algorithm::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the cost was (for `check`) or would be (for `peek`) admitted.
    pub allowed: bool,
    /// Capacity in cost units: `burst` for token bucket and GCRA, `limit` for window algorithms.
    /// This is what `X-RateLimit-Limit` reports.
    pub limit: u64,
    /// Cost units that could still be admitted right now, after this decision.
    pub remaining: u64,
    /// Nanoseconds until the limiter is back to full capacity if nothing else arrives
    /// (bucket refilled, log emptied, or the current fixed window ends). `X-RateLimit-Reset`.
    pub reset_after_ns: u64,
    /// 0 when allowed; otherwise nanoseconds until this same cost would be admitted if nothing
    /// else arrives, or [`RETRY_NEVER`]. `Retry-After`.
    pub retry_after_ns: u64,
}

impl Decision {
    /// A fail-open answer for when the owner of the state cannot be reached: admit, and report
    /// the full limit since the real remaining count is unknown.
    pub fn fail_open(limit: u64) -> Self {
        Decision { allowed: true, limit, remaining: limit, reset_after_ns: 0, retry_after_ns: 0 }
    }

    /// A fail-closed answer for when the owner cannot be reached: deny, and ask the client to
    /// come back after `retry_after_ns` (typically the shard's re-homing time).
    pub fn fail_closed(limit: u64, retry_after_ns: u64) -> Self {
        Decision { allowed: false, limit, remaining: 0, reset_after_ns: retry_after_ns, retry_after_ns }
    }

    /// True unless the cost can never be admitted by this limiter (cost above capacity).
    pub fn can_ever_succeed(&self) -> bool {
        self.retry_after_ns != RETRY_NEVER
    }
}
