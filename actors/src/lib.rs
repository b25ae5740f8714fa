//! troupe-actors: the actor kinds of troupe's systems. Each module is one capability:
//! a pure core (no I/O, time passed in) and a thin actor shell around it.
//!
//! [`register_all`] registers every kind with the runtime; topology files name them.

pub mod diag;
pub mod kv;
pub mod limiter;
pub mod llm;
pub mod ranges;
pub mod shortener;

use troupe_runtime::KindRegistry;

/// Every actor kind this build provides, by factory name.
pub fn register_all(kinds: &mut KindRegistry) {
    kinds.register::<diag::CounterActor>("diag.counter");
    kinds.register::<kv::KvStoreActor>("kv.store");
    kinds.register::<ranges::RangesActor>("kv.ranges");
    limiter::register(kinds);
    llm::register(kinds);
    kinds.register::<shortener::link::LinkActor>("shortener.link");
    kinds.register::<shortener::clicklog::ClickLogActor>("shortener.clicklog");
    kinds.register::<shortener::gateway::GatewayActor>("shortener.gateway");
}

/// A registry with every kind.
pub fn registry() -> KindRegistry {
    let mut k = KindRegistry::new();
    register_all(&mut k);
    k
}
