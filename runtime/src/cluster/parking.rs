//! Requests from another node for an entity that must first be activated here.
//!
//! A lane reader handles its frames in order and must never wait on the network.
//! Activation recovers the entity's durable state, which asks other nodes — and their
//! answers, or their handling of our asks, may sit behind a lane that is itself
//! waiting: two nodes activating entities at once then wait on each other until a
//! timeout (seen as 3 s stalls of every request on both lanes; docs/replication.md has
//! the timeline). So a request whose target must be activated is parked: a task
//! activates the target and delivers the parked requests in arrival order, and later
//! frames of the same lane for the same target join that queue until it is empty.
//!
//! Invariants:
//! - Order per sender → receiver is kept: while a queue for a target exists, every
//!   frame of the lane for that target goes into it; the task closes the queue (under
//!   its lock) only when it is empty, so a frame delivered directly afterwards cannot
//!   overtake a parked one.
//! - An ask that outlived its timeout while parked, or that its asker cancelled, is
//!   answered `Timeout` (not sent, if cancelled) and not delivered: its caller has given up, and acting on it anyway would, for example,
//!   consume a rate-limit token nobody was granted.
//! - A queue is closed when its task ends however it ends (a drop guard): requests
//!   still in it are answered `Restarting`, and the lane delivers directly again.
//! - Bounded: a queue holds at most the kind's `mailbox_cap` requests (beyond that the
//!   request is refused with `MailboxFull`, as a full mailbox would refuse it); closed
//!   queues are dropped from the lane's map when a new activation starts, and all of
//!   them once none is open — then a frame costs one atomic load here, no hashing.

use crate::node::Node;
use crate::slot::WireRequest;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use troupe_wire::{ActorPath, RemoteError, TraceId};

/// A request waiting for its target's activation.
pub(crate) struct Parked {
    pub path: ActorPath,
    pub payload: Vec<u8>,
    pub request: WireRequest,
    pub trace: TraceId,
    /// When the asker gives up (arrival + the ask's timeout) and that timeout in ms;
    /// `None` for tells and streams.
    pub expires: Option<(Instant, u64)>,
}

/// `None` once the activation task has delivered everything and gone.
type Queue = Arc<Mutex<Option<VecDeque<Parked>>>>;

/// The activations under way for one lane (one receiving stream).
#[derive(Default)]
pub(crate) struct Parking {
    queues: HashMap<ActorPath, Queue>,
    /// Queues not yet closed by their task (0: nothing parked anywhere on this lane).
    open: Arc<AtomicUsize>,
}

impl Parking {
    /// Queues `p` behind the activation of its target if one is under way on this
    /// lane (then `None`: it is queued, or refused when the queue is full); gives it
    /// back when there is none.
    pub(crate) fn try_join(&mut self, node: &Node, p: Parked) -> Option<Parked> {
        // The common case, on every frame: nothing parked on this lane (no hashing).
        // A task closes its queue only after delivering all of it, so with none open
        // a direct delivery cannot overtake a parked request.
        if self.open.load(Ordering::Acquire) == 0 {
            if !self.queues.is_empty() {
                self.queues.clear();
            }
            return Some(p);
        }
        let Some(queue) = self.queues.get(&p.path).cloned() else { return Some(p) };
        let mut guard = queue.lock();
        let Some(q) = guard.as_mut() else {
            drop(guard);
            self.queues.remove(&p.path);
            return Some(p);
        };
        let cap = node.kind_spec(p.path.system(), p.path.kind()).map(|k| k.mailbox_cap).unwrap_or(1024);
        if q.len() as u64 >= cap {
            let path = p.path.to_string();
            p.request.fail(RemoteError::MailboxFull { path, cap });
        } else {
            q.push_back(p);
        }
        None
    }

    /// Activates `p`'s target in a task of its own, then delivers `p` and whatever
    /// joined it, in order.
    pub(crate) fn start(&mut self, node: Node, p: Parked) {
        self.queues.retain(|_, q| q.lock().is_some());
        let path = p.path.clone();
        let queue: Queue = Arc::new(Mutex::new(Some(VecDeque::from([p]))));
        self.queues.insert(path.clone(), queue.clone());
        self.open.fetch_add(1, Ordering::AcqRel);
        let guard = CloseOnDrop { queue: queue.clone(), open: self.open.clone(), path: path.clone() };
        tokio::spawn(async move {
            let _guard = guard;
            let slot = node.activate_local(&path).await;
            loop {
                let next = {
                    let mut guard = queue.lock();
                    let next = guard.as_mut().and_then(VecDeque::pop_front);
                    if next.is_none() {
                        *guard = None;
                    }
                    next
                };
                let Some(p) = next else { return };
                if let WireRequest::Ask { sink, corr } = &p.request
                    && sink.is_cancelled(*corr)
                {
                    // The asker cancelled while the request was parked: do not run it.
                    // (Answering settles the cancellation; the answer is not sent.)
                    let (path, ms) = (p.path.to_string(), p.expires.map_or(0, |(_, ms)| ms));
                    p.request.fail(RemoteError::Timeout { path, ms });
                    continue;
                }
                if let Some((at, ms)) = p.expires
                    && Instant::now() >= at
                {
                    // The asker has given up: running it now would act on a request
                    // nobody waits for (a rate-limit check would consume a token).
                    p.request.fail(RemoteError::Timeout { path: p.path.to_string(), ms });
                    continue;
                }
                match &slot {
                    // A refused delivery is answered by the slot itself.
                    Ok(s) => {
                        if let Err(e) = s.deliver_bytes(&p.payload, p.request, p.trace) {
                            tracing::debug!(target = %p.path, error = %e, "message not delivered");
                        }
                    }
                    Err(e) => p.request.fail(e.clone()),
                }
            }
        });
    }
}

/// Closes an activation's queue when its task ends, however it ends: a task that
/// panicked or was aborted must not leave its target's later requests queued forever.
/// What is still queued then is answered `Restarting` (the caller's handle retries).
struct CloseOnDrop {
    queue: Queue,
    open: Arc<AtomicUsize>,
    path: ActorPath,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let left = self.queue.lock().take().unwrap_or_default();
        for p in left {
            p.request.fail(RemoteError::Restarting { path: self.path.to_string(), retry_after_ms: 20 });
        }
        // Only now, with the queue closed and emptied, may the lane deliver directly.
        self.open.fetch_sub(1, Ordering::Release);
    }
}
