//! System 10, the distributed rate limiter, as actors on the troupe runtime.
//!
//! The algorithms, rules, keyed table, leasing and header values are the pure crate
//! `troupe-limiter` (re-exported as [`core`]); its [`core::proto`] module holds the wire types.
//! This module holds the shells and the **in-cluster call API** other systems use.
//!
//! # In-cluster API (for actors: LLM gateway, URL shortener, ...)
//!
//! ```no_run
//! # async fn demo(ctx_node: &troupe_runtime::Node) -> Result<(), troupe_limiter_shell::LimiterError> {
//! use troupe_limiter_shell::{Check, Limiter};
//!
//! // Once, e.g. in your actor's `init` (cheap to clone; one per node is shared underneath).
//! let limiter = Limiter::new(ctx_node)?;
//!
//! // LLM gateway: requests/min AND tokens/min for the user and the org, all-or-nothing.
//! // Reserve the estimate (prompt + max_tokens) up front ...
//! let verdict = limiter
//!     .check(&[
//!         Check::new("llm-requests", "user-42"),
//!         Check::new("llm-tokens", "user-42").cost(1_200),
//!         Check::new("llm-org-tokens", "org-acme").cost(1_200),
//!     ])
//!     .await?;
//! if !verdict.allowed {
//!     // 429 with these headers (Retry-After included).
//!     let _headers = verdict.headers();
//!     return Ok(());
//! }
//! // ... generate ..., then settle each token limit with the real count (refund or charge).
//! for receipt in verdict.receipts().filter(|r| r.rule.ends_with("tokens")) {
//!     limiter.adjust(receipt, 730).await?;
//! }
//!
//! // URL shortener: link creation per IP and per user.
//! let v = limiter
//!     .check(&[Check::new("shortener-create-ip", "203.0.113.7"), Check::new("shortener-create-user", "u-9")])
//!     .await?;
//! # let _ = v;
//! # Ok(()) }
//! ```
//!
//! - [`Limiter::new`]`(&Node) -> Result<Limiter, LimiterError>`: a clonable client bound to
//!   this node; `NotEnabled` when the cluster does not run `rate-limiter`.
//! - [`Limiter::check`]`(&self, &[Check]) -> Result<Verdict, LimiterError>` (also the free
//!   function [`check`]): every limit of one request; `Err` only for bad input
//!   (`LimiterError::Invalid`, which an HTTP caller maps to 400). An unreachable owner is not an
//!   error: the rule's fail mode decides and [`Mode`] says so.
//! - [`Limiter::adjust`]`(&self, &Receipt, actual: u64)`: estimate-then-adjust for costs known
//!   only afterwards (LLM tokens): refunds or charges the difference.
//! - [`RateLimitLayer`]: tower/axum middleware (user header, IP, endpoint) for HTTP routers.
//! - SDK users (no runtime): `client.ask::<LimiterService>(&agent_path(node)?, &ServiceMsg::Check
//!   { checks })` — see `actors/limiter/core/examples/sdk_check.rs`.
//!
//! # Actors
//!
//! | kind (factory) | placement | job |
//! |---|---|---|
//! | `rules` (`limiter.rules`) | singleton, rf 2 | the versioned [`RuleSet`], durable; pushes updates |
//! | `quota` (`limiter.quota`) | singleton, rf 2 | a [`core::QuotaOwner`] per global rule; writes off dead nodes' slices |
//! | `limiter_shard` (`limiter.shard`) | sharded `s0..s{shards-1}`, rf 2 | a [`core::KeyedTable`]: atomic check-and-consume on the owner's clock; periodic snapshots |
//! | `agent` (`limiter.agent`) | per node | rule cache, global-rule leases, the SDK service |
//! | `http` (`limiter.http`) | per node, role `gateway` | `POST /v1/check`, `GET`/`PUT /v1/rules` on `ports."rate-limiter"` |
//!
//! # Invariants (argued in docs/rate-limiter.md)
//!
//! - A key's state has one owner (its shard); check-and-consume runs inside it, on its clock.
//! - The limits of one subject (one user, one IP, one endpoint) live on one shard and are
//!   checked all-or-nothing there. Limits of a request that span shards are consumed on each,
//!   and refunded on all if any denies: a request may be briefly under-admitted, never
//!   over-admitted (refunds are never more generous than not admitting).
//! - Global limits: leases; grants per window sum to at most the limit, dead nodes' slices are
//!   written off, the owner's state is durable before a grant is answered.
//! - Every wait is bounded: `owner_timeout_ms` per check, then the rule's fail mode.

pub mod agent;
mod batch;
mod client;
pub mod clock;
pub mod config;
pub mod http;
#[cfg(feature = "lab")]
pub mod lab;
mod lease;
mod metrics;
pub mod middleware;
pub mod quota;
pub mod rules;
pub mod shard;
mod state;

/// The pure cores (algorithms, rules, table, leasing, headers, lab, wire protocol).
pub use troupe_limiter as core;

pub use client::{Limiter, LimiterError, check};
pub use middleware::{RateLimitConfig, RateLimitLayer};
pub use troupe_limiter::RuleSet;
pub use troupe_limiter::proto::{
    CheckItem as Check, CheckResult, LimiterService, Mode, Receipt, ServiceMsg, ServiceReply, Verdict, agent_path,
};

/// The rate limiter as the `troupe` binary sees it (`src/systems.rs`).
pub struct RateLimiter;

impl troupe_system::System for RateLimiter {
    fn name(&self) -> &'static str {
        "rate-limiter"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        register(kinds)
    }
    #[cfg(feature = "lab")]
    fn lab(&self) -> Option<troupe_system::Command> {
        Some(troupe_system::Command::args::<lab::Args>(
            "rate-limiter",
            "Rate limiter: fixed window's boundary burst, accuracy against the exact log, fail-open \
             vs fail-closed (simulated and live on a 3-node cluster), leasing a global limit",
            lab::run,
        ))
    }
}

/// Registers the system's kinds under their factory names.
pub fn register(kinds: &mut troupe_runtime::KindRegistry) {
    kinds.register::<rules::RulesActor>("limiter.rules");
    kinds.register::<quota::QuotaActor>("limiter.quota");
    kinds.register::<shard::ShardActor>("limiter.shard");
    kinds.register::<agent::AgentActor>("limiter.agent");
    kinds.register::<http::HttpActor>("limiter.http");
}
