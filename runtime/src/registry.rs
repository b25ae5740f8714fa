//! The per-node registry of local actors by path.
//!
//! ractor's named registry is process-global; troupe keeps its own per node, so
//! several nodes can share a test process and a path resolves on the node that owns
//! it. The registry holds slots, which outlive incarnations.

use crate::slot::ErasedSlot;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use troupe_wire::ActorPath;

#[derive(Default)]
pub(crate) struct Registry {
    slots: RwLock<HashMap<ActorPath, Arc<dyn ErasedSlot>>>,
}

impl Registry {
    pub(crate) fn get(&self, path: &ActorPath) -> Option<Arc<dyn ErasedSlot>> {
        self.slots.read().get(path).cloned()
    }

    pub(crate) fn insert(&self, path: ActorPath, slot: Arc<dyn ErasedSlot>) {
        self.slots.write().insert(path, slot);
    }

    /// Removes `path` only if it still maps to `slot` (a newer incarnation's slot
    /// stays).
    pub(crate) fn remove_if(&self, path: &ActorPath, slot: &Arc<dyn ErasedSlot>) -> bool {
        let mut s = self.slots.write();
        match s.get(path) {
            Some(cur) if Arc::ptr_eq(cur, slot) => {
                s.remove(path);
                true
            }
            _ => false,
        }
    }

    /// Every local path of one kind (for re-homing after a membership change).
    pub(crate) fn paths_of(&self, system: &str, kind: &str) -> Vec<ActorPath> {
        self.slots.read().keys().filter(|p| p.system() == system && p.kind() == kind).cloned().collect()
    }
}
