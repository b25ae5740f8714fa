//! System 07, the URL shortener, as actors on the troupe runtime.
//!
//! The algorithms live in the pure crate `troupe-shortener` (re-exported as [`core`]): IDs,
//! validation, abuse screening, the LRU cache, click aggregation, geo lookup and the lab.
//! This module holds the thin shells around them:
//!
//! | kind (factory) | placement | job |
//! |---|---|---|
//! | `link` (`shortener.link`) | sharded, one entity per code, rf = 2 | the link: target, expiry, 301/302, owner, tombstone |
//! | `clicklog` (`shortener.clicklog`) | sharded, `click_shards` entities, rf = 2 | durable log of click batches, folded idempotently into per-link statistics |
//! | `gateway` (`shortener.gateway`) | per node with role `gateway` | HTTP API, code minting, LRU cache, rate limits, abuse checks, click buffer |
//!
//! Invariants (argued in docs/url-shortener.md):
//! - a link is acknowledged (201) only after its creation is on disk on two nodes;
//! - a redirect never waits for analytics: its click goes to a bounded in-memory buffer
//!   with `try_send`, and a full buffer drops the click (counted), never the redirect;
//! - a click batch is acknowledged by its `clicklog` shard only after it is on disk on two
//!   nodes; redelivery after any failure is absorbed by the event-id dedup window, so a
//!   click that reached a shard is counted exactly once;
//! - a delete or edit reaches every gateway's cache by a broadcast, and no cached entry is
//!   served for longer than `cache_ttl_ms` after it was read from its link (the bound when a
//!   broadcast is lost).
//!
//! Kind names inside the system are fixed (`link`, `clicklog`, `gateway`): the shells
//! address each other by them.

pub mod clicklog;
pub mod gateway;
pub mod geo;
#[cfg(feature = "lab")]
pub mod lab;
pub mod limiter;
pub mod link;

/// The pure cores (IDs, validation, abuse, cache, analytics, geo, lab).
pub use troupe_shortener as core;
pub use troupe_shortener::proto::{KIND_CLICKLOG, KIND_GATEWAY, KIND_LINK, shard_of, stable_hash};

/// The pub/sub topic on which link entities tell every gateway to drop a code from its
/// cache (the payload: the code).
pub fn invalidation_topic(system: &str) -> String {
    format!("{system}/invalidate")
}

/// The URL shortener as the `troupe` binary sees it (`src/systems.rs`).
pub struct UrlShortener;

impl troupe_system::System for UrlShortener {
    fn name(&self) -> &'static str {
        "url-shortener"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        kinds.register::<link::LinkActor>("shortener.link");
        kinds.register::<clicklog::ClickLogActor>("shortener.clicklog");
        kinds.register::<gateway::GatewayActor>("shortener.gateway");
    }
    #[cfg(feature = "lab")]
    fn lab(&self) -> Option<troupe_system::Command> {
        Some(troupe_system::Command::args::<lab::Args>(
            "url-shortener",
            "URL shortener: clicks lost with 301 vs 302, enumeration of sequential vs permuted \
             codes, cache hit rate vs cache size on a Zipf workload",
            lab::run,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_choice_is_stable_and_spread() {
        // Fixed values: a change here would move every code's statistics to another shard.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("code{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");
        assert_eq!(shard_of("x", 0), 0);
    }
}
