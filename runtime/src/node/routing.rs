//! Sending raw (encoded) messages: tell, ask and stream to local or remote actors
//! under the one retry policy, and durable writes through replication.

use super::*;
use crate::reply::{ReplySink, ReplyStream, StreamEvent};
use crate::retry::{Retry, rerouted};
use crate::slot::WireRequest;
use crate::store::{Recovered, StoreError, WriteOp};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use troupe_core::replication::Term;
use troupe_wire::{ActorPath, RemoteError, TraceId};

type RawReplyTx = oneshot::Sender<Result<Vec<u8>, RemoteError>>;

/// Answers a local raw ask through a oneshot.
struct OnceSink(Mutex<Option<RawReplyTx>>);

impl ReplySink for OnceSink {
    fn reply(&self, _corr: u64, result: Result<Vec<u8>, RemoteError>) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(result);
        }
    }
    fn stream_item(&self, _corr: u64, _payload: Vec<u8>) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    fn stream_end(&self, _corr: u64, _result: Result<(), RemoteError>) {}
}

/// Feeds a local raw stream.
struct ChanSink(mpsc::Sender<StreamEvent<Vec<u8>>>);

impl ReplySink for ChanSink {
    fn reply(&self, _corr: u64, _result: Result<Vec<u8>, RemoteError>) {}
    fn stream_item(&self, _corr: u64, payload: Vec<u8>) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(async move { self.0.send(StreamEvent::Item(payload)).await.is_ok() })
    }
    fn stream_end(&self, _corr: u64, result: Result<(), RemoteError>) {
        let _ = self.0.try_send(StreamEvent::End(result));
    }
}

impl Node {
    pub(super) fn not_clustered(node: &str) -> RemoteError {
        RemoteError::Unreachable { node: node.into(), reason: "this node is not clustered".into() }
    }

    pub(crate) async fn send_remote(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<(), RemoteError> {
        match self.cluster() {
            Some(c) => c.transport.tell(node, path, trace, payload).await,
            None => Err(Self::not_clustered(node)),
        }
    }

    pub(crate) async fn ask_remote(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        match self.cluster() {
            Some(c) => c.transport.ask(node, path, trace, payload, timeout).await,
            None => Err(Self::not_clustered(node)),
        }
    }

    pub(crate) async fn stream_remote<R: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<ReplyStream<R>, RemoteError> {
        match self.cluster() {
            Some(c) => {
                let (rx, cancel) = c.transport.stream(node, path, trace, payload).await?;
                Ok(ReplyStream::remote(rx, path.to_string().into(), cancel))
            }
            None => Err(Self::not_clustered(node)),
        }
    }

    /// Runs `attempt` under the one retry policy (`retry`): a failure the policy retries
    /// is tried again after its pause, and a membership change during the attempt
    /// counts as a reroute. Every raw send goes through here.
    async fn retrying<T, F, Fut>(&self, mut retry: Retry, mut attempt: F) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        loop {
            let routed_in = self.placement_version();
            let e = match attempt().await {
                Err(e) => e,
                ok => return ok,
            };
            match retry.after(&rerouted(e.clone(), self.placement_version() != routed_in), Instant::now()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(e),
            }
        }
    }

    /// Sends an encoded message to `path` wherever it lives (no type needed).
    pub async fn tell_raw(&self, path: &ActorPath, payload: Vec<u8>, trace: TraceId) -> Result<(), RemoteError> {
        let payload = &payload;
        self.retrying(Retry::new(), move || async move {
            match self.resolve(path).await? {
                Target::Local(slot) => slot.deliver_bytes(payload, WireRequest::Tell, trace),
                Target::Remote(n) => self.send_remote(&n, path, trace, payload.clone()).await,
            }
        })
        .await
    }

    /// Asks `path` with an encoded message; returns the encoded reply.
    pub async fn ask_raw(
        &self,
        path: &ActorPath,
        payload: Vec<u8>,
        trace: TraceId,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || RemoteError::Timeout { path: path.to_string(), ms: timeout.as_millis() as u64 };
        let payload = &payload;
        let r = self
            .retrying(Retry::until(deadline), move || async move {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                match self.resolve(path).await? {
                    Target::Local(slot) => {
                        let (tx, rx) = oneshot::channel();
                        let sink = Arc::new(OnceSink(Mutex::new(Some(tx))));
                        slot.deliver_bytes(payload, WireRequest::Ask { sink, corr: 0 }, trace)?;
                        match tokio::time::timeout(left, rx).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => Err(RemoteError::NoReply { path: path.to_string() }),
                            Err(_) => Err(timed_out()),
                        }
                    }
                    Target::Remote(n) => self.ask_remote(&n, path, trace, payload.clone(), left).await,
                }
            })
            .await;
        match r {
            // Past the deadline a transient refusal is reported as the timeout it is.
            Err(e) if Instant::now() >= deadline && crate::retry::worth_retrying(&e) => Err(timed_out()),
            r => r,
        }
    }

    /// Starts a stream from `path` with an encoded message.
    pub async fn stream_raw(
        &self,
        path: &ActorPath,
        payload: Vec<u8>,
        trace: TraceId,
    ) -> Result<RawStream, RemoteError> {
        let payload = &payload;
        self.retrying(Retry::new(), move || async move {
            match self.resolve(path).await? {
                Target::Local(slot) => {
                    let (tx, rx) = mpsc::channel(self.stream_buffer());
                    let sink = Arc::new(ChanSink(tx));
                    slot.deliver_bytes(payload, WireRequest::Stream { sink, corr: 0 }, trace)
                        .map(|()| (rx, Box::new(|| {}) as Box<dyn FnOnce() + Send>))
                }
                Target::Remote(n) => match self.cluster() {
                    Some(c) => c.transport.stream(&n, path, trace, payload.clone()).await,
                    None => Err(Self::not_clustered(&n)),
                },
            }
        })
        .await
    }

    /// The JSON conversions of the protocol spoken at `path`.
    pub fn json_codec(&self, path: &ActorPath) -> Result<&dyn troupe_wire::JsonCodec, RemoteError> {
        let ks = self.kind_spec(path.system(), path.kind()).ok_or_else(|| RemoteError::UnknownPath {
            path: path.to_string(),
            reason: format!("no kind `{}` in system `{}`", path.kind(), path.system()),
        })?;
        self.0
            .kinds
            .get_ref(&ks.factory)
            .map(|f| f.json())
            .ok_or_else(|| RemoteError::UnknownPath { path: path.to_string(), reason: "kind has no factory".into() })
    }

    /// Makes `op` durable: replicated (`rf` > 1, clustered), on a majority of the
    /// path's replica set under its owner's `term`; else on this node's disk.
    pub async fn persist(&self, path: &ActorPath, rf: u64, term: &Term, op: WriteOp) -> Result<(), StoreError> {
        self.persist_all(path, rf, term, vec![op]).await
    }

    /// Writes `ops` of `path` as one atomic step: one store transaction here and, when
    /// replicated, one append at each replica (a majority has all of them, or the
    /// write fails; no replica ever holds some of them).
    pub async fn persist_all(
        &self,
        path: &ActorPath,
        rf: u64,
        term: &Term,
        ops: Vec<WriteOp>,
    ) -> Result<(), StoreError> {
        match self.cluster() {
            Some(_) if rf > 1 => crate::cluster::replica::replicate(self, path, term, ops).await,
            _ => self.0.store.write(ops).await,
        }
    }

    /// Reads `path`'s durable state as its owner: replicated, after an election (the
    /// result's `terms` hold the owner's new term); unreplicated and clustered, the
    /// newest copy among live nodes (an entity that moved finds its state on the node
    /// it moved from).
    pub async fn recover(&self, path: &ActorPath, rf: u64) -> Result<Recovered, StoreError> {
        match self.cluster() {
            Some(_) => crate::cluster::replica::recover(self, path, rf).await,
            _ => {
                let store = self.0.store.clone();
                let p = path.to_string();
                tokio::task::spawn_blocking(move || store.load(&p))
                    .await
                    .map_err(|e| StoreError::Read(e.to_string()))?
            }
        }
    }

    /// A read barrier for the owner of `path` under `term`: returns once a majority of
    /// the replica set still backs it (at once when not replicated).
    pub async fn confirm(&self, path: &ActorPath, rf: u64, term: &Term) -> Result<(), StoreError> {
        match self.cluster() {
            Some(_) if rf > 1 => crate::cluster::replica::confirm(self, path, term).await,
            _ => Ok(()),
        }
    }
}
