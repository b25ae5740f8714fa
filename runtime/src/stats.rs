//! Per-actor counters and the live supervision tree that introspection reads.
//!
//! Every actor and supervisor owns one [`ActorEntry`]; its supervisor keeps it in
//! its children list. Introspection walks these entries without messaging any
//! actor, so a busy or stuck actor still shows up (with its mailbox growing).
//! Entries outlive restarts: counters accumulate over every incarnation of a path.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use troupe_wire::introspect::{ActorInfo, ActorState};

/// Keeps a hot counter on its own cache line: senders and the receiving actor both
/// write `queued`, and sharing a line with the receiver-only counters would make
/// every message bounce it between cores.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

#[derive(Debug)]
pub struct ActorStats {
    /// Messages enqueued and not yet handled.
    queued: Padded,
    pub cap: u64,
    handled: Padded,
    restarts: AtomicU64,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
}

const ERROR_CHARS_MAX: usize = 300;

impl ActorStats {
    pub fn new(cap: u64) -> Self {
        Self {
            queued: Padded(AtomicU64::new(0)),
            cap,
            handled: Padded(AtomicU64::new(0)),
            restarts: AtomicU64::new(0),
            state: AtomicU8::new(ActorState::Starting as u8),
            last_error: Mutex::new(None),
        }
    }

    /// Reserves one mailbox place; false when the mailbox is at `cap`.
    #[inline]
    pub fn try_enqueue(&self) -> bool {
        // fetch_add then undo keeps the common case to one atomic op.
        if self.queued.0.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.queued.0.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives a place back when a send failed after `try_enqueue`.
    #[inline]
    pub fn unenqueue(&self) {
        self.queued.0.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn dequeued(&self) {
        self.queued.0.fetch_sub(1, Ordering::Relaxed);
        self.handled.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A dead incarnation's mailbox is dropped with it.
    pub fn reset_queue(&self) {
        self.queued.0.store(0, Ordering::Relaxed);
    }

    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_error(&self, err: &str) {
        let mut e: String = err.chars().take(ERROR_CHARS_MAX).collect();
        if err.chars().count() > ERROR_CHARS_MAX {
            e.push('…');
        }
        *self.last_error.lock() = Some(e);
    }

    pub fn set_state(&self, s: ActorState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ActorState {
        match self.state.load(Ordering::Relaxed) {
            0 => ActorState::Starting,
            1 => ActorState::Running,
            2 => ActorState::Restarting,
            3 => ActorState::Stopped,
            _ => ActorState::Failed,
        }
    }

    pub fn queued(&self) -> u64 {
        self.queued.0.load(Ordering::Relaxed)
    }
    pub fn handled(&self) -> u64 {
        self.handled.0.load(Ordering::Relaxed)
    }
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

/// One node of the live supervision tree.
#[derive(Debug)]
pub struct ActorEntry {
    pub path: String,
    pub kind: String,
    /// Empty for workers; the strategy name for supervisors.
    pub strategy: String,
    pub stats: Arc<ActorStats>,
    /// By path: a kind may have many thousands of entities, and activations and
    /// passivations must not scan them all.
    children: Mutex<std::collections::BTreeMap<String, Arc<ActorEntry>>>,
}

impl ActorEntry {
    pub fn new(
        path: impl Into<String>,
        kind: impl Into<String>,
        strategy: impl Into<String>,
        stats: Arc<ActorStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            path: path.into(),
            kind: kind.into(),
            strategy: strategy.into(),
            stats,
            children: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    pub fn add_child(&self, child: Arc<ActorEntry>) {
        self.children.lock().insert(child.path.clone(), child);
    }

    pub fn remove_child(&self, path: &str) {
        self.children.lock().remove(path);
    }

    /// Children in path order.
    pub fn children(&self) -> Vec<Arc<ActorEntry>> {
        self.children.lock().values().cloned().collect()
    }

    pub fn snapshot(&self) -> ActorInfo {
        ActorInfo {
            path: self.path.clone(),
            kind: self.kind.clone(),
            state: self.stats.state(),
            strategy: self.strategy.clone(),
            mailbox_len: self.stats.queued(),
            mailbox_cap: self.stats.cap,
            handled: self.stats.handled(),
            restarts: self.stats.restarts(),
            last_error: self.stats.last_error(),
            children: self.children().iter().map(|c| c.snapshot()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_bound_is_exact() {
        let s = ActorStats::new(3);
        assert!(s.try_enqueue() && s.try_enqueue() && s.try_enqueue());
        assert!(!s.try_enqueue(), "the fourth message must be refused");
        assert_eq!(s.queued(), 3);
        s.dequeued();
        assert!(s.try_enqueue());
        assert_eq!((s.queued(), s.handled()), (3, 1));
    }

    #[test]
    fn errors_are_truncated() {
        let s = ActorStats::new(1);
        s.record_error(&"x".repeat(10_000));
        assert!(s.last_error().unwrap().chars().count() <= ERROR_CHARS_MAX + 1);
    }
}
