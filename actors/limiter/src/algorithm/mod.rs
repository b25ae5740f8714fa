//! The five rate-limiting algorithms behind one trait, and the atomic multi-limit check.
//!
//! Every algorithm is a small plain struct: no I/O, no clock, no allocation on the hot path
//! (except the sliding log, whose memory is bounded by its limit). Arithmetic is exact integer
//! arithmetic on `u128` with the rate scaled by the window, so no rounding error accumulates and
//! the promises below hold exactly, not approximately.
//!
//! What each algorithm promises, with `L = limit`, `B = burst`, `W = window_ns`, for the cost
//! it admits (a request of cost `c` counts `c` times):
//!
//! | algorithm        | promise                                                              |
//! |------------------|----------------------------------------------------------------------|
//! | token bucket     | any interval of length `t` admits at most `B + L·t/W`                |
//! | GCRA             | the same as the token bucket (it is the same bucket, stored as a TAT)|
//! | sliding log      | any half-open interval of length `W` admits at most `L` (exact)      |
//! | sliding counter  | each aligned window admits at most `L`; at a check at offset `e` into its window, the last `W` hold at most `L + P·e/W` where `P` is the previous window's count (so `< 2L`) |
//! | fixed window     | each aligned window `[kW, (k+1)W)` admits at most `L`; a rolling window straddling a boundary can hold `2L` (documented, and shown by a test) |
//!
//! Time that steps back is clamped to the highest time seen (see [`crate::time`]).

mod fixed_window;
mod gcra;
mod sliding_counter;
mod sliding_log;
mod token_bucket;

pub use fixed_window::FixedWindowState;
pub use gcra::GcraState;
pub use sliding_counter::SlidingCounterState;
pub use sliding_log::SlidingLogState;
pub use token_bucket::TokenBucketState;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;

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

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    /// Continuous refill of `limit` per window into a bucket of `burst`.
    TokenBucket,
    /// Generic cell rate algorithm: the token bucket stored as a theoretical arrival time.
    Gcra,
    /// Exact: one timestamp per admitted request, counted over the last window.
    SlidingLog,
    /// Cloudflare's estimate: current window count plus the previous one weighted by overlap.
    SlidingCounter,
    /// One counter per aligned window.
    FixedWindow,
}

impl AlgorithmKind {
    /// All kinds, in a stable order (for labs and docs).
    pub const ALL: [AlgorithmKind; 5] = [
        AlgorithmKind::TokenBucket,
        AlgorithmKind::Gcra,
        AlgorithmKind::SlidingLog,
        AlgorithmKind::SlidingCounter,
        AlgorithmKind::FixedWindow,
    ];

    /// The name used in rule files (`token_bucket`, `gcra`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmKind::TokenBucket => "token_bucket",
            AlgorithmKind::Gcra => "gcra",
            AlgorithmKind::SlidingLog => "sliding_log",
            AlgorithmKind::SlidingCounter => "sliding_counter",
            AlgorithmKind::FixedWindow => "fixed_window",
        }
    }

    /// Parses a rule-file name; `None` for an unknown algorithm.
    pub fn parse(name: &str) -> Option<Self> {
        AlgorithmKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether `burst` means something for this algorithm (bucket-style ones only).
    pub fn uses_burst(self) -> bool {
        matches!(self, AlgorithmKind::TokenBucket | AlgorithmKind::Gcra)
    }
}

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

/// The per-key state of one algorithm, without its parameters: what the keyed table stores.
/// Every method must be given the same parameters the state was created with.
pub trait AlgorithmState: Sized {
    /// Fresh state (full capacity).
    fn new(params: &LimitParams) -> Self;
    /// See [`Algorithm::check`].
    fn check(&mut self, params: &LimitParams, now_ns: u64, cost: u64) -> Decision;
    /// See [`Algorithm::peek`].
    fn peek(&self, params: &LimitParams, now_ns: u64, cost: u64) -> Decision;
    /// See [`Algorithm::full_at_ns`].
    fn full_at_ns(&self, params: &LimitParams) -> u64;
}

/// One rate-limiting algorithm's state for one key.
///
/// `check` and `peek` must agree: for any state, `peek(now, c)` returns exactly the decision
/// `check(now, c)` would return, and `check` mutates state only when it admits a positive cost
/// (or to record time passing, which is state-equivalent). [`check_all`] relies on this.
pub trait Algorithm {
    /// The parameters this state was built with.
    fn params(&self) -> &LimitParams;
    /// Admits `cost` units at `now_ns` if the limit allows, consuming them; otherwise consumes
    /// nothing. Cost 0 is always admitted and consumes nothing (a probe).
    fn check(&mut self, now_ns: u64, cost: u64) -> Decision;
    /// The decision `check` would return, without consuming anything.
    fn peek(&self, now_ns: u64, cost: u64) -> Decision;
    /// The earliest time at which this state is indistinguishable from a fresh one if nothing
    /// else is admitted. Dropping the state at or after that time loses nothing, which is how
    /// the keyed table evicts idle keys without minting quota.
    fn full_at_ns(&self) -> u64;
}

/// An algorithm's state bundled with its parameters: the convenient form for one limit.
#[derive(Debug, Clone)]
pub struct WithParams<S> {
    params: LimitParams,
    state: S,
}

impl<S: AlgorithmState> WithParams<S> {
    /// Fresh state for `params`. The caller picks `S` to match `params.kind()`; [`Limiter::new`]
    /// does that from the kind.
    pub fn new(params: LimitParams) -> Self {
        WithParams { state: S::new(&params), params }
    }
    /// The bare state.
    pub fn state(&self) -> &S {
        &self.state
    }
}

impl<S: AlgorithmState> Algorithm for WithParams<S> {
    fn params(&self) -> &LimitParams {
        &self.params
    }
    #[inline]
    fn check(&mut self, now_ns: u64, cost: u64) -> Decision {
        self.state.check(&self.params, now_ns, cost)
    }
    #[inline]
    fn peek(&self, now_ns: u64, cost: u64) -> Decision {
        self.state.peek(&self.params, now_ns, cost)
    }
    fn full_at_ns(&self) -> u64 {
        self.state.full_at_ns(&self.params)
    }
}

/// Token bucket with its parameters.
pub type TokenBucket = WithParams<TokenBucketState>;
/// GCRA with its parameters.
pub type Gcra = WithParams<GcraState>;
/// Sliding log with its parameters.
pub type SlidingLog = WithParams<SlidingLogState>;
/// Sliding counter with its parameters.
pub type SlidingCounter = WithParams<SlidingCounterState>;
/// Fixed window with its parameters.
pub type FixedWindow = WithParams<FixedWindowState>;

/// Any algorithm's bare state, dispatched by `match` (no allocation except the log's entries,
/// boxed so the common states stay small: 32 bytes with the tag). The keyed table packs states
/// tighter still (see `table`).
#[derive(Debug, Clone)]
pub enum AnyState {
    /// See [`TokenBucketState`].
    TokenBucket(TokenBucketState),
    /// See [`GcraState`].
    Gcra(GcraState),
    /// See [`SlidingLogState`].
    SlidingLog(Box<SlidingLogState>),
    /// See [`SlidingCounterState`].
    SlidingCounter(SlidingCounterState),
    /// See [`FixedWindowState`].
    FixedWindow(FixedWindowState),
}

macro_rules! dispatch {
    ($self:ident, $inner:ident => $e:expr) => {
        match $self {
            AnyState::TokenBucket($inner) => $e,
            AnyState::Gcra($inner) => $e,
            AnyState::SlidingLog($inner) => $e,
            AnyState::SlidingCounter($inner) => $e,
            AnyState::FixedWindow($inner) => $e,
        }
    };
}

impl AlgorithmState for AnyState {
    fn new(p: &LimitParams) -> Self {
        match p.kind() {
            AlgorithmKind::TokenBucket => AnyState::TokenBucket(TokenBucketState::new(p)),
            AlgorithmKind::Gcra => AnyState::Gcra(GcraState::new(p)),
            AlgorithmKind::SlidingLog => AnyState::SlidingLog(Box::new(SlidingLogState::new(p))),
            AlgorithmKind::SlidingCounter => AnyState::SlidingCounter(SlidingCounterState::new(p)),
            AlgorithmKind::FixedWindow => AnyState::FixedWindow(FixedWindowState::new(p)),
        }
    }
    #[inline]
    fn check(&mut self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        dispatch!(self, s => s.check(p, now_ns, cost))
    }
    #[inline]
    fn peek(&self, p: &LimitParams, now_ns: u64, cost: u64) -> Decision {
        dispatch!(self, s => s.peek(p, now_ns, cost))
    }
    fn full_at_ns(&self, p: &LimitParams) -> u64 {
        dispatch!(self, s => s.full_at_ns(p))
    }
}

/// Any of the five algorithms with its parameters: one limit, ready to use.
pub type Limiter = WithParams<AnyState>;

/// Outcome of [`check_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// True when every limit allowed and all were consumed; false when none was consumed.
    pub admitted: bool,
    /// One decision per limit, in input order. When `admitted` is false, limits that would have
    /// allowed report `allowed: true` with their unchanged remaining count.
    pub decisions: Vec<Decision>,
}

/// Checks several limits for one request atomically: consumes from all of them only if all
/// allow (e.g. requests/min AND tokens/min). `checks` pairs each limiter with its cost.
pub fn check_all<A: Algorithm>(checks: &mut [(&mut A, u64)], now_ns: u64) -> MultiDecision {
    let mut decisions: Vec<Decision> = checks.iter().map(|(a, cost)| a.peek(now_ns, *cost)).collect();
    let admitted = decisions.iter().all(|d| d.allowed);
    if admitted {
        for ((a, cost), d) in checks.iter_mut().zip(decisions.iter_mut()) {
            *d = a.check(now_ns, *cost);
            debug_assert!(d.allowed, "peek and check disagree");
        }
    }
    MultiDecision { admitted, decisions }
}
