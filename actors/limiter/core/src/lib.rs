//! troupe-limiter: the pure cores of troupe's rate limiter (system 10).
//!
//! Everything here is plain data and functions: no I/O, no async, no threads, no clock. Time
//! is passed in as **`u64` nanoseconds** (`now_ns`) on the owner's monotonic clock; rule files
//! use milliseconds (`window_ms`) and are converted once at parse time. The limiter shard
//! actors, the HTTP service and the SDK are thin shells around these types.
//!
//! - [`algorithm`]: token bucket, GCRA, sliding log, sliding counter, fixed window behind
//!   [`Algorithm`] (`check` / `peek`), and [`algorithm::check_all`] for atomic multi-limit checks.
//! - [`rules`]: rules from TOML, validated with every error reported; versioned [`RuleSet`]s
//!   with diffs, applied cluster-wide by version through [`ActiveRules`].
//! - [`key`]: `(rule, value)` → bounded shard key.
//! - [`table`]: [`KeyedTable`], many keys with bounded memory, all-or-nothing `check_many`,
//!   shadow mode.
//! - [`lease`]: [`QuotaOwner`] / [`QuotaLease`], global limits without a round trip per request.
//! - [`headers`]: `X-RateLimit-*`, `Retry-After`, and the IETF `RateLimit-Policy` / `RateLimit`.
//! - [`lab`]: seeded simulations for `troupe lab rate-limiter` (PNG plot with feature `plot`).
//! - [`proto`]: the system's wire protocol (service, shard, rules, quota messages) so that an
//!   SDK user can talk to the limiter without linking the runtime; the only non-pure module
//!   (it names `troupe_wire::Protocol`, still no I/O).
//!
//! # Example
//!
//! ```
//! use troupe_limiter::{KeyedTable, LimitCheck, RuleSet, TableConfig, shard_key};
//!
//! let rules = RuleSet::from_toml_str(r#"
//!     version = 1
//!     [[rule]]
//!     name = "chat-requests"
//!     dimension = "user"
//!     algorithm = "token_bucket"
//!     limit = 60
//!     window_ms = 60000
//!
//!     [[rule]]
//!     name = "chat-tokens"
//!     dimension = "user"
//!     algorithm = "sliding_counter"
//!     limit = 40000
//!     window_ms = 60000
//! "#).expect("valid rules");
//!
//! let requests = rules.get("chat-requests").expect("rule exists");
//! let tokens = rules.get("chat-tokens").expect("rule exists");
//! let k_req = shard_key(requests, "user-42").expect("short key");
//! let k_tok = shard_key(tokens, "user-42").expect("short key");
//!
//! let mut table = KeyedTable::new(TableConfig { keys_max: 100_000 }).expect("keys_max > 0");
//! let now_ns = 5_000_000_000;
//! // One chat completion: 1 request and 730 tokens, admitted only if both limits allow.
//! let outcome = table
//!     .check_many(
//!         &[
//!             LimitCheck { key: &k_req, params: *requests.params(), cost: 1, shadow: requests.shadow() },
//!             LimitCheck { key: &k_tok, params: *tokens.params(), cost: 730, shadow: tokens.shadow() },
//!         ],
//!         now_ns,
//!     )
//!     .expect("table has room");
//! assert!(outcome.admitted);
//! let binding = &outcome.results[outcome.binding.expect("enforced limits")].decision;
//! let headers = troupe_limiter::headers::x_ratelimit_headers(binding);
//! assert_eq!(headers[0], ("X-RateLimit-Limit", "60".to_string()));
//! ```
//!
//! # Rules file
//!
//! ```toml
//! version = 3                  # bump on every change; nodes apply only newer versions
//! [[rule]]
//! name = "api-per-ip"          # [A-Za-z0-9_.-], at most 64 bytes, unique
//! dimension = "ip"             # user | ip | endpoint | global
//! algorithm = "gcra"           # token_bucket | gcra | sliding_log | sliding_counter | fixed_window
//! limit = 100                  # cost units per window, >= 1
//! window_ms = 1000             # >= 1
//! burst = 150                  # token_bucket and gcra only; default = limit
//! cost = 1                     # default cost per request; default 1
//! fail_mode = "open"           # open (default) | closed: answer when the owner is unreachable
//! shadow = false               # true: evaluate and report would_block, never deny
//! ```
//!
//! # Global limits: the accuracy / latency trade-off of leasing
//!
//! A global limit `L` per window is owned by one [`QuotaOwner`]; each node admits from a local
//! [`QuotaLease`] slice and asks for more when it falls to `low_watermark`. With `n` nodes,
//! slice size `s` (between `slice_min` and `slice_max`) and owner round trip `rtt`:
//!
//! - **Over-admission: none, by construction.** Grants per window sum to at most `L`, a slice
//!   is usable only within its window (validity anchored at the request's send time), and a dead
//!   node's slice is written off, never re-granted.
//! - **Under-admission is the cost**: up to `n·s` units can sit stranded in slices of nodes whose
//!   demand dropped, plus the unused part of any dead node's slice, until the window ends. Small
//!   slices make the cluster-wide limit accurate.
//! - **Round trips**: a node with demand `d` per window asks about `d/s` times per window, off the
//!   request path as long as `low_watermark >= d·rtt/W` (the refill lands before the slice is
//!   gone). Below that, requests are denied locally while a refill is in flight. Big slices mean
//!   fewer round trips and less owner load.
//! - Rule of thumb: `s ≈ max(demand during a few rtt, L/(10·n))` keeps the owner off the hot
//!   path and strands at most ~10% of `L`; `slice_max` caps what a single failure can lose.

pub mod algorithm;
pub mod decision;
pub mod headers;
pub mod json;
pub mod key;
pub mod lab;
pub mod lease;
pub mod proto;
pub mod rng;
pub mod rules;
pub mod table;
pub mod time;

pub use algorithm::{
    Algorithm, AlgorithmKind, AlgorithmState, AnyState, LimitParams, Limiter, MultiDecision, ParamError, check_all,
};
pub use decision::{Decision, RETRY_NEVER};
pub use key::{KEY_BYTES_MAX, KeyError, shard_key};
pub use lease::{
    LeaseCheck, LeaseConfig, LeaseError, LeaseGrant, LeaseRequest, NodeId, QuotaConfig, QuotaLease, QuotaOwner,
};
pub use rules::{ActiveRules, Dimension, FailMode, Rule, RuleDiff, RuleErrors, RuleSet, RuleUpdateError};
pub use table::{CheckOutcome, KeyedTable, LimitCheck, LimitResult, TableConfig, TableError, TableSnapshot};
