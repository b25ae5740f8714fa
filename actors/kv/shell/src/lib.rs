//! The `kv` system: a replicated key-value store (`kv.store`, one durable entity per
//! key) and a singleton handing out disjoint ranges of named counters (`kv.ranges`).
//! It is the runtime's own end-to-end system. The wire protocols are in `troupe-kv`
//! (re-exported here), so clients need not link the runtime.

pub mod ranges;
pub mod store;

pub use ranges::RangesActor;
pub use store::KvStoreActor;

/// kv as the `troupe` binary sees it (`src/systems.rs`).
pub struct Kv;

impl troupe_system::System for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        kinds.register::<store::KvStoreActor>("kv.store");
        kinds.register::<ranges::RangesActor>("kv.ranges");
    }
}
