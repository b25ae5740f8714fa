//! System 01, LLM inference serving, as actors on the troupe runtime
//! (topology `systems/llm-serving.toml`, docs/llm-serving.md).
//!
//! ```text
//! client ──HTTP/SSE──► gateway (per gateway node) ── auth, validate, tokenize
//!                        │  breaker per pool ─► 503 fail fast
//!                        │  rate-limiter system: requests/min AND tokens/min, user + org ─► 429
//!                        │  router (same node): session ▸ prefix ▸ least loaded
//!                        ▼
//!                      worker (per gpu node, one engine on its OS thread, priority queue)
//!                        └─ disaggregated: decode worker ◄─KV stream── prefill worker
//!                      scaler (singleton): active ↔ warm per pool, from queue depth
//! ```
//!
//! Pure cores, each with its guarantees in its module docs and tests: [`queue`] (paid >
//! free, short > long, linear aging: no starvation), [`breaker`] (closed / open /
//! half-open), [`route`] (affinity with a load guard), [`scale`] (queue-depth scaling
//! within declared capacity, warm pool), [`openai`] (the API's parsing and shapes). The
//! shells ([`gateway`], [`router`], [`worker`], [`scaler`], [`engine_thread`]) only move
//! messages. The engine is the `troupe-llm` crate.

pub mod breaker;
pub mod config;
pub mod engine_thread;
pub mod gateway;
pub mod lab;
pub mod metrics;
pub mod openai;
pub mod proto;
pub mod queue;
pub mod route;
pub mod router;
pub mod scale;
pub mod scaler;
pub mod worker;

/// Registers the system's kinds under their factory names.
pub fn register(kinds: &mut troupe_runtime::KindRegistry) {
    kinds.register::<worker::WorkerActor>(config::WORKER_FACTORY);
    kinds.register::<router::RouterActor>("llm.router");
    kinds.register::<scaler::ScalerActor>("llm.scaler");
    kinds.register::<gateway::GatewayActor>("llm.gateway");
}
