//! Slots: the registry's record of one local actor, which outlives the actor's
//! incarnations (a restart swaps the actor reference, handles stay valid).
//!
//! The slot is where the mailbox bound is enforced: a send first reserves a place in
//! the actor's counters, and is refused with `MailboxFull` at `mailbox_cap`.
//!
//! Invariant (passivation): a slot that is `closing` accepts no message. The actor
//! closes its slot only when its count of queued messages is zero; because a sender
//! increments the count before reading `closing` and the actor sets `closing` before
//! reading the count (both SeqCst), one of them always sees the other, so no message
//! is accepted into a mailbox that is about to be dropped.

use crate::reply::{Reply, ReplySink, ReplyTo, StreamTo};
use crate::stats::ActorEntry;
use parking_lot::RwLock;
use ractor::{ActorCell, ActorRef};
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use troupe_wire::{ActorPath, Protocol, RemoteError, TraceId, codec};

/// What an actor's mailbox carries.
pub(crate) enum Delivery<P: Protocol> {
    Msg { msg: P::Msg, reply: Reply<P::Reply>, trace: TraceId },
    Tick,
    IdleCheck,
}

/// How a request that arrived as bytes wants its answer. Whoever consumes it
/// answers it exactly once (or not at all for a tell).
pub enum WireRequest {
    Tell,
    Ask { sink: Arc<dyn ReplySink>, corr: u64 },
    Stream { sink: Arc<dyn ReplySink>, corr: u64 },
}

impl WireRequest {
    pub fn new(kind: troupe_wire::RequestKind, sink: Arc<dyn ReplySink>) -> Self {
        match kind {
            troupe_wire::RequestKind::Tell => WireRequest::Tell,
            troupe_wire::RequestKind::Ask { corr, .. } => WireRequest::Ask { sink, corr },
            troupe_wire::RequestKind::Stream { corr } => WireRequest::Stream { sink, corr },
        }
    }

    /// Answers the request with an error.
    pub fn fail(self, e: RemoteError) {
        match self {
            WireRequest::Tell => {}
            WireRequest::Ask { sink, corr } => sink.reply(corr, Err(e)),
            WireRequest::Stream { sink, corr } => sink.stream_end(corr, Err(e)),
        }
    }
}

/// What the node needs from any slot, whatever its protocol.
pub trait ErasedSlot: Send + Sync {
    fn path(&self) -> &ActorPath;
    fn entry(&self) -> &Arc<ActorEntry>;
    /// Decodes `payload` as this actor's message and enqueues it. On failure the
    /// request is answered with the error, which is also returned.
    fn deliver_bytes(&self, payload: &[u8], request: WireRequest, trace: TraceId) -> Result<(), RemoteError>;
    fn cell(&self) -> Option<ActorCell>;
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn is_closing(&self) -> bool;
    /// Marks the slot as no longer in the registry (cached handles re-resolve).
    fn mark_removed(&self);
    /// Registered and accepting messages.
    fn is_live(&self) -> bool;
}

pub(crate) struct LocalSlot<P: Protocol> {
    path: ActorPath,
    path_str: Arc<str>,
    entry: Arc<ActorEntry>,
    actor: RwLock<Option<ActorRef<Delivery<P>>>>,
    closing: AtomicBool,
    removed: AtomicBool,
}

impl<P: Protocol> LocalSlot<P> {
    pub(crate) fn new(path: ActorPath, entry: Arc<ActorEntry>) -> Self {
        let path_str: Arc<str> = path.to_string().into();
        Self {
            path,
            path_str,
            entry,
            actor: RwLock::new(None),
            closing: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn path_str(&self) -> &Arc<str> {
        &self.path_str
    }

    pub(crate) fn entry_stats(&self) -> &crate::stats::ActorStats {
        &self.entry.stats
    }

    pub(crate) fn attach(&self, actor: ActorRef<Delivery<P>>) {
        self.entry.stats.reset_queue();
        *self.actor.write() = Some(actor);
    }

    /// Enqueues one delivery, enforcing the mailbox bound. On failure the delivery
    /// is handed back, so the caller decides how its reply port learns the cause.
    #[inline]
    pub(crate) fn enqueue(&self, d: Delivery<P>) -> Result<(), (RemoteError, Delivery<P>)> {
        let stats = &self.entry.stats;
        if !stats.try_enqueue() {
            return Err((RemoteError::MailboxFull { path: self.path_str.to_string(), cap: stats.cap }, d));
        }
        if self.closing.load(Ordering::SeqCst) {
            stats.unenqueue();
            return Err((RemoteError::Restarting { path: self.path_str.to_string(), retry_after_ms: 5 }, d));
        }
        let guard = self.actor.read();
        let Some(actor) = guard.as_ref() else {
            stats.unenqueue();
            return Err((RemoteError::Restarting { path: self.path_str.to_string(), retry_after_ms: 20 }, d));
        };
        match actor.send_message(d) {
            Ok(()) => Ok(()),
            Err(e) => {
                stats.unenqueue();
                let err = RemoteError::Restarting { path: self.path_str.to_string(), retry_after_ms: 20 };
                match e {
                    ractor::MessagingErr::SendErr(d) => Err((err, d)),
                    // The message is gone with the error; only a tell can get here
                    // without its reply port answering, which is acceptable.
                    _ => Err((err, Delivery::Tick)),
                }
            }
        }
    }

    /// Tries to close the slot for passivation; false if messages are waiting.
    pub(crate) fn try_close(&self) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        if self.entry.stats.queued() > 0 {
            self.closing.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }
}

impl<P: Protocol> ErasedSlot for LocalSlot<P> {
    fn path(&self) -> &ActorPath {
        &self.path
    }
    fn entry(&self) -> &Arc<ActorEntry> {
        &self.entry
    }
    fn deliver_bytes(&self, payload: &[u8], request: WireRequest, trace: TraceId) -> Result<(), RemoteError> {
        let reply = match request {
            WireRequest::Tell => Reply::None,
            WireRequest::Ask { sink, corr } => Reply::Ask(ReplyTo::remote(sink, corr, self.path_str.clone())),
            WireRequest::Stream { sink, corr } => Reply::Stream(StreamTo::remote(sink, corr, self.path_str.clone())),
        };
        let msg: P::Msg = match codec::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                let err = RemoteError::BadMessage { path: self.path_str.to_string(), reason: e.to_string() };
                reply.fail(err.clone());
                return Err(err);
            }
        };
        self.enqueue(Delivery::Msg { msg, reply, trace }).map_err(|(err, d)| {
            if let Delivery::Msg { reply, .. } = d {
                reply.fail(err.clone());
            }
            err
        })
    }
    fn cell(&self) -> Option<ActorCell> {
        self.actor.read().as_ref().map(|a| a.get_cell())
    }
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
    fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }
    fn is_live(&self) -> bool {
        !self.closing.load(Ordering::Relaxed) && !self.removed.load(Ordering::Relaxed)
    }
}
