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
mod params;
mod sliding_counter;
mod sliding_log;
mod token_bucket;

pub use fixed_window::FixedWindowState;
pub use gcra::GcraState;
pub use params::{LIMIT_MAX, LimitParams, ParamError, SLIDING_LOG_LIMIT_MAX, WINDOW_NS_MAX};
pub use sliding_counter::SlidingCounterState;
pub use sliding_log::SlidingLogState;
pub use token_bucket::TokenBucketState;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;

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
    /// See [`Algorithm::refund`].
    fn refund(&mut self, params: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64);
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
    /// Gives back `cost` units that `check` admitted at `admitted_at_ns` (a request that was
    /// admitted here but denied by another shard, or an estimate larger than the real cost).
    ///
    /// Never more generous than if the admission had not happened: the state afterwards admits
    /// no more, at any later time, than the state without that admission would. Window
    /// algorithms subtract from the window the admission was counted in (nothing once that
    /// window has left the state); the log removes the admission's entry; the bucket algorithms
    /// give back `cost` minus the refill the bucket may have lost at its cap since
    /// `admitted_at_ns` (`limit·Δt/W`), because with the admission undone that refill could have
    /// overflowed. A refund for an admission this state never made is the caller's bug; it can
    /// only make the key more generous by at most `cost`.
    fn refund(&mut self, admitted_at_ns: u64, now_ns: u64, cost: u64);
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
    fn refund(&mut self, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        self.state.refund(&self.params, admitted_at_ns, now_ns, cost)
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
    fn refund(&mut self, p: &LimitParams, admitted_at_ns: u64, now_ns: u64, cost: u64) {
        dispatch!(self, s => s.refund(p, admitted_at_ns, now_ns, cost))
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
