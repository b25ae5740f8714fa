//! Typed handles: tell, ask with a timeout, and streamed replies, to an actor
//! anywhere in the cluster. The same handle works whether the actor is on this node
//! or another; the caller only sees the difference in the errors (unreachable node,
//! unknown path and timeout are distinct).
//!
//! A handle resolves its path lazily and caches a local target (the slot stays valid
//! across restarts). Transient refusals — the actor restarting or passivating, the
//! owner changing — are retried a bounded number of times within the deadline.

use crate::current::current_trace;
use crate::node::{Node, Target};
use crate::reply::{Reply, ReplyStream, ReplyTo, StreamTo};
use crate::retry::{Retry, rerouted, worth_retrying};
use crate::slot::{Delivery, LocalSlot};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use troupe_wire::{ActorPath, Protocol, RemoteError, codec};

/// A typed handle to the actor at one path, local or remote; it resolves where the
/// actor is on each use and caches what it found.
pub struct ActorHandle<P: Protocol> {
    node: Node,
    path: ActorPath,
    local: Mutex<Option<Arc<LocalSlot<P>>>>,
    /// The remote owner, and the membership version it was computed from: valid
    /// until membership changes (resolving costs a placement computation).
    remote: Mutex<Option<(Arc<str>, u64)>>,
}

impl<P: Protocol> Clone for ActorHandle<P> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            path: self.path.clone(),
            local: Mutex::new(self.local.lock().clone()),
            remote: Mutex::new(self.remote.lock().clone()),
        }
    }
}

impl<P: Protocol> std::fmt::Debug for ActorHandle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle<{}>({})", P::NAME, self.path)
    }
}

enum Resolved<P: Protocol> {
    Local(Arc<LocalSlot<P>>),
    Remote(Arc<str>),
}

impl Node {
    /// A typed handle to `path`. (Here rather than in node/: the node hands out
    /// handles without naming them, so handles may call back into the node.)
    pub fn handle<P: Protocol>(&self, path: ActorPath) -> ActorHandle<P> {
        ActorHandle::new(self.clone(), path)
    }
}

impl<P: Protocol> ActorHandle<P> {
    pub(crate) fn new(node: Node, path: ActorPath) -> Self {
        Self { node, path, local: Mutex::new(None), remote: Mutex::new(None) }
    }

    /// The path this handle addresses.
    pub fn path(&self) -> &ActorPath {
        &self.path
    }

    async fn resolve(&self) -> Result<Resolved<P>, RemoteError> {
        if let Some(slot) = self.local.lock().as_ref()
            && crate::slot::ErasedSlot::is_live(slot.as_ref())
        {
            return Ok(Resolved::Local(slot.clone()));
        }
        let version = self.node.placement_version();
        if let Some((owner, v)) = self.remote.lock().as_ref()
            && *v == version
        {
            return Ok(Resolved::Remote(owner.clone()));
        }
        match self.node.resolve(&self.path).await? {
            Target::Local(slot) => {
                let typed = slot.as_any().downcast::<LocalSlot<P>>().map_err(|_| RemoteError::BadMessage {
                    path: self.path.to_string(),
                    reason: format!("the actor does not speak protocol `{}`", P::NAME),
                })?;
                *self.local.lock() = Some(typed.clone());
                Ok(Resolved::Local(typed))
            }
            Target::Remote(node) => {
                *self.local.lock() = None;
                let node: Arc<str> = node.into();
                *self.remote.lock() = Some((node.clone(), version));
                Ok(Resolved::Remote(node))
            }
        }
    }

    /// Fire and forget. `Ok` means the message was accepted into the target's
    /// mailbox (local) or send queue (remote), not that it was handled.
    pub async fn tell(&self, msg: P::Msg) -> Result<(), RemoteError> {
        let trace = current_trace();
        // Fast path: a cached live local slot, without cloning it.
        let msg = {
            let cached = self.local.lock();
            match cached.as_ref() {
                Some(slot) if crate::slot::ErasedSlot::is_live(slot.as_ref()) => {
                    match slot.enqueue(Delivery::Msg { msg, reply: Reply::None, trace }) {
                        Ok(()) => return Ok(()),
                        Err((e, Delivery::Msg { msg, .. })) if worth_retrying(&e) => msg,
                        Err((e, _)) => return Err(e),
                    }
                }
                _ => msg,
            }
        };
        let mut msg = msg;
        let mut retry = Retry::new();
        loop {
            let routed_in = self.node.placement_version();
            let err = match self.resolve().await {
                Ok(Resolved::Local(slot)) => match slot.enqueue(Delivery::Msg { msg, reply: Reply::None, trace }) {
                    Ok(()) => return Ok(()),
                    Err((e, d)) => match d {
                        Delivery::Msg { msg: m, .. } => {
                            msg = m;
                            e
                        }
                        _ => return Err(e),
                    },
                },
                Ok(Resolved::Remote(node)) => {
                    let payload = encode_msg::<P>(&self.path, &msg)?;
                    match self.node.send_remote(&node, &self.path, trace, payload).await {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let err = rerouted(err, self.node.placement_version() != routed_in);
            let Some(pause) = retry.after(&err, Instant::now()) else { return Err(err) };
            // The target moved or its node is gone: resolve afresh next time.
            self.remote.lock().take();
            tokio::time::sleep(pause).await;
        }
    }

    /// Asks with the cluster's default timeout (`ask_timeout_ms`).
    pub async fn ask(&self, msg: P::Msg) -> Result<P::Reply, RemoteError> {
        self.ask_timeout(msg, self.node.default_ask_timeout()).await
    }

    /// Asks and waits at most `timeout` for the reply, retrying transient refusals
    /// within it; past it the error is `Timeout`.
    pub async fn ask_timeout(&self, msg: P::Msg, timeout: Duration) -> Result<P::Reply, RemoteError> {
        let deadline = Instant::now() + timeout;
        let trace = current_trace();
        let timeout_err = || RemoteError::Timeout { path: self.path.to_string(), ms: timeout.as_millis() as u64 };
        let mut msg = msg;
        let mut retry = Retry::until(deadline);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout_err());
            }
            let routed_in = self.node.placement_version();
            let err = match self.resolve().await {
                Ok(Resolved::Local(slot)) => {
                    let (tx, rx) = oneshot::channel();
                    let reply = Reply::Ask(ReplyTo::local(tx, slot.path_str().clone()));
                    match slot.enqueue(Delivery::Msg { msg, reply, trace }) {
                        Ok(()) => {
                            return match tokio::time::timeout(left, rx).await {
                                Ok(Ok(r)) => r,
                                Ok(Err(_)) => Err(RemoteError::NoReply { path: self.path.to_string() }),
                                Err(_) => Err(timeout_err()),
                            };
                        }
                        Err((e, d)) => match d {
                            Delivery::Msg { msg: m, reply, .. } => {
                                reply.defuse();
                                msg = m;
                                e
                            }
                            _ => return Err(e),
                        },
                    }
                }
                Ok(Resolved::Remote(node)) => {
                    let payload = encode_msg::<P>(&self.path, &msg)?;
                    match self.node.ask_remote(&node, &self.path, trace, payload, left).await {
                        Ok(bytes) => {
                            return codec::decode::<P::Reply>(&bytes).map_err(|e| RemoteError::BadMessage {
                                path: self.path.to_string(),
                                reason: format!("reply: {e}"),
                            });
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let err = rerouted(err, self.node.placement_version() != routed_in);
            let now = Instant::now();
            let Some(pause) = retry.after(&err, now) else {
                // Past the deadline a transient refusal is reported as the timeout it is.
                return Err(if now >= deadline && worth_retrying(&err) { timeout_err() } else { err });
            };
            // The target moved or its node is gone: resolve afresh next time.
            self.remote.lock().take();
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts a streamed request. Items arrive through the returned stream, which
    /// holds at most `stream_buffer` undelivered items; dropping it cancels the
    /// producer.
    pub async fn stream(&self, msg: P::Msg) -> Result<ReplyStream<P::Reply>, RemoteError> {
        let trace = current_trace();
        let mut msg = msg;
        let mut retry = Retry::new();
        loop {
            let routed_in = self.node.placement_version();
            let err = match self.resolve().await {
                Ok(Resolved::Local(slot)) => {
                    let (tx, rx) = mpsc::channel(self.node.stream_buffer());
                    let reply = Reply::Stream(StreamTo::local(tx, slot.path_str().clone()));
                    match slot.enqueue(Delivery::Msg { msg, reply, trace }) {
                        Ok(()) => return Ok(ReplyStream::local(rx, slot.path_str().clone())),
                        Err((e, d)) => match d {
                            Delivery::Msg { msg: m, reply, .. } => {
                                reply.defuse();
                                msg = m;
                                e
                            }
                            _ => return Err(e),
                        },
                    }
                }
                Ok(Resolved::Remote(node)) => {
                    let payload = encode_msg::<P>(&self.path, &msg)?;
                    match self.node.stream_remote(&node, &self.path, trace, payload).await {
                        Ok(s) => return Ok(s),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let err = rerouted(err, self.node.placement_version() != routed_in);
            let Some(pause) = retry.after(&err, Instant::now()) else { return Err(err) };
            // The target moved or its node is gone: resolve afresh next time.
            self.remote.lock().take();
            tokio::time::sleep(pause).await;
        }
    }
}

fn encode_msg<P: Protocol>(path: &ActorPath, msg: &P::Msg) -> Result<Vec<u8>, RemoteError> {
    codec::encode(msg).map_err(|e| RemoteError::BadMessage { path: path.to_string(), reason: e.to_string() })
}
