//! Coalescing of shard checks per destination node.
//!
//! Under load, many checks from this node go to shards on the same other node at once. Each
//! as its own message costs a frame, a QUIC packet and a wake-up on both sides; coalesced, one
//! message carries them all and the receiving node's agent hands each to its local shard. There
//! is no timer (Nagle without the delay): a batch is sent as soon as an in-flight slot is free,
//! with whatever has queued meanwhile, so an idle system sends batches of one and a loaded one
//! batches more exactly when it pays.
//!
//! Invariants: each request stays its own all-or-nothing shard check (batching changes how
//! requests travel, never what they mean); at most `IN_FLIGHT` batches per destination and
//! `QUEUE_CAP` queued requests, beyond which a request is refused at once (`MailboxFull`, so
//! the rule's fail mode answers); every request gets exactly one answer, within its timeout.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use troupe_limiter::proto::{self, BATCH_MAX, LimiterService, ServiceMsg, ServiceReply, ShardCheck, ShardReply};
use troupe_runtime::metrics::Histogram;
use troupe_runtime::{Node, RemoteError};

/// Requests waiting for a batch slot per destination.
const QUEUE_CAP: usize = 16_384;
/// Batches in flight per destination.
const IN_FLIGHT: usize = 2;

struct Pending {
    check: ShardCheck,
    reply: oneshot::Sender<Result<ShardReply, RemoteError>>,
}

/// One destination's queue; the task draining it ends when this is dropped.
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// The batchers of this node, by destination node.
pub struct Batchers {
    map: RwLock<HashMap<String, Arc<Batcher>>>,
    sizes: Histogram,
}

impl Batchers {
    pub fn new(node: &Node) -> Self {
        let sizes = node.metrics().histogram(
            "troupe_ratelimit_batch_size",
            "Shard checks carried by one node-to-node limiter message.",
            &[],
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        );
        Batchers { map: RwLock::new(HashMap::new()), sizes }
    }

    /// Sends `check` to `dest` (the node owning its shard) in the next batch and waits for its
    /// answer, at most `timeout`.
    pub async fn submit(
        &self,
        node: &Node,
        dest: &str,
        check: ShardCheck,
        timeout: Duration,
    ) -> Result<ShardReply, RemoteError> {
        let b = self.get(node, dest, timeout)?;
        let (tx, rx) = oneshot::channel();
        b.tx.try_send(Pending { check, reply: tx }).map_err(|_| RemoteError::MailboxFull {
            path: format!("limiter batch queue to {dest}"),
            cap: QUEUE_CAP as u64,
        })?;
        let path = || format!("/{}/{}/{dest}", proto::SYSTEM, proto::KIND_AGENT);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RemoteError::NoReply { path: path() }),
            Err(_) => Err(RemoteError::Timeout { path: path(), ms: timeout.as_millis() as u64 }),
        }
    }

    fn get(&self, node: &Node, dest: &str, timeout: Duration) -> Result<Arc<Batcher>, RemoteError> {
        if let Some(b) = self.map.read().get(dest) {
            return Ok(b.clone());
        }
        let path = proto::agent_path(dest).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let mut map = self.map.write();
        let b = map
            .entry(dest.to_string())
            .or_insert_with(|| Arc::new(spawn(node.clone(), path, timeout, self.sizes.clone())))
            .clone();
        Ok(b)
    }
}

fn spawn(node: Node, path: troupe_runtime::ActorPath, timeout: Duration, sizes: Histogram) -> Batcher {
    let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE_CAP);
    let handle = node.handle::<LimiterService>(path);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            // Waiting for a slot before draining is what makes batches grow under load.
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            sizes.observe(batch.len() as f64);
            let handle = handle.clone();
            tokio::spawn(async move {
                let (checks, replies): (Vec<ShardCheck>, Vec<_>) =
                    batch.into_iter().map(|p| (p.check, p.reply)).unzip();
                let n = checks.len();
                match handle.ask_timeout(ServiceMsg::ShardBatch { checks }, timeout).await {
                    Ok(ServiceReply::ShardBatch(results)) if results.len() == n => {
                        for (r, tx) in results.into_iter().zip(replies) {
                            let _ = tx.send(r);
                        }
                    }
                    Ok(other) => {
                        let e = RemoteError::BadMessage {
                            path: handle.path().to_string(),
                            reason: format!("expected {n} shard answers, got {other:?}"),
                        };
                        for tx in replies {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for tx in replies {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    Batcher { tx }
}
