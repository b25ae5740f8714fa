//! Reply ports: how an actor answers an ask or feeds a stream, wherever the caller is.
//!
//! A local caller gets the typed value through a channel (no encoding); a remote
//! caller gets it encoded through a [`ReplySink`] (the link back to the caller's
//! node or client). The actor writes the same code for both.
//!
//! Invariants:
//! - Every ask gets exactly one answer: dropping a [`ReplyTo`] unanswered sends
//!   `NoReply`, so a caller never waits for a reply that cannot come.
//! - A stream ends with exactly one end marker; dropping a [`StreamTo`] without
//!   calling [`StreamTo::end`] ends it with `NoReply`.
//! - Stream buffers are bounded: a producer awaits room, and learns when the
//!   consumer has gone away (that is how a client disconnect cancels work).

use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use troupe_wire::{RemoteError, codec};

/// Where encoded replies for remote requests go (a node link or a client link).
pub trait ReplySink: Send + Sync {
    fn reply(&self, corr: u64, result: Result<Vec<u8>, RemoteError>);
    /// Resolves to `false` when the consumer is gone (cancelled or disconnected).
    fn stream_item(&self, corr: u64, payload: Vec<u8>) -> BoxFuture<'_, bool>;
    fn stream_end(&self, corr: u64, result: Result<(), RemoteError>);
    /// Whether the asker of `corr` has cancelled it (gave up waiting): the request need
    /// not run. Only sinks that hear cancellations know; the others say `false`.
    fn is_cancelled(&self, _corr: u64) -> bool {
        false
    }
}

/// How a message wants to be answered.
pub enum Reply<R> {
    /// A tell: nobody waits.
    None,
    /// An ask: exactly one answer is expected.
    Ask(ReplyTo<R>),
    /// A streamed request: any number of items, then one end.
    Stream(StreamTo<R>),
}

/// The future of [`Reply::send`]: ready at once for an ask (the answer is handed
/// over synchronously), boxed only for a stream, which must wait for room. Keeping
/// the common case tiny keeps every handler's future small — ractor moves that
/// future for each message.
pub struct ReplySend(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for ReplySend {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            None => Poll::Ready(()),
            Some(f) => f.as_mut().poll(cx),
        }
    }
}

impl<R: Serialize + Send + 'static> Reply<R> {
    /// Answers an ask, or sends one item and ends a stream; a tell ignores it.
    pub fn send(self, value: R) -> ReplySend {
        match self {
            Reply::None => ReplySend(None),
            Reply::Ask(r) => {
                r.send(value);
                ReplySend(None)
            }
            Reply::Stream(s) => ReplySend(Some(Box::pin(async move {
                s.send(value).await;
                s.end(Ok(()));
            }))),
        }
    }
}

impl<R: Serialize> Reply<R> {
    /// Fails an ask or a stream with `err`.
    pub fn fail(self, err: RemoteError) {
        match self {
            Reply::None => {}
            Reply::Ask(r) => r.fail(err),
            Reply::Stream(s) => s.end(Err(err)),
        }
    }

    /// Whether the asker of an ask or a stream has given up (timed out, cancelled,
    /// disconnected), so work done only for its answer need not be done; `false` for a
    /// tell.
    pub fn is_abandoned(&self) -> bool {
        match self {
            Reply::None => false,
            Reply::Ask(r) => r.is_closed(),
            Reply::Stream(s) => s.is_closed(),
        }
    }

    /// Whether nobody waits for an answer.
    pub fn is_tell(&self) -> bool {
        matches!(self, Reply::None)
    }

    /// Drops the port without answering: the caller answers some other way.
    pub(crate) fn defuse(self) {
        match self {
            Reply::None => {}
            Reply::Ask(mut r) => {
                r.inner = None;
            }
            Reply::Stream(mut s) => {
                s.inner = None;
            }
        }
    }
}

enum ReplyInner<R> {
    Local(oneshot::Sender<Result<R, RemoteError>>),
    Remote { sink: Arc<dyn ReplySink>, corr: u64 },
}

/// The answer port of one ask. Dropping it unanswered answers `NoReply`.
pub struct ReplyTo<R> {
    inner: Option<ReplyInner<R>>,
    path: Arc<str>,
}

impl<R> ReplyTo<R> {
    pub(crate) fn local(tx: oneshot::Sender<Result<R, RemoteError>>, path: Arc<str>) -> Self {
        Self { inner: Some(ReplyInner::Local(tx)), path }
    }
    pub(crate) fn remote(sink: Arc<dyn ReplySink>, corr: u64, path: Arc<str>) -> Self {
        Self { inner: Some(ReplyInner::Remote { sink, corr }), path }
    }
}

impl<R: Serialize> ReplyTo<R> {
    /// Answers with `value`. For a remote caller a value that fails to encode is
    /// answered as `ActorFailed`.
    pub fn send(mut self, value: R) {
        match self.inner.take() {
            Some(ReplyInner::Local(tx)) => {
                let _ = tx.send(Ok(value));
            }
            Some(ReplyInner::Remote { sink, corr }) => {
                let path = self.path.to_string();
                sink.reply(
                    corr,
                    codec::encode(&value).map_err(|e| RemoteError::ActorFailed { path, reason: e.to_string() }),
                );
            }
            None => {}
        }
    }

    /// Answers with the error `err`.
    pub fn fail(mut self, err: RemoteError) {
        self.finish_with(err);
    }

    /// Whether the caller has stopped waiting: a local caller that dropped its answer
    /// (it timed out), or a remote one whose `Cancel` frame has arrived.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Some(ReplyInner::Local(tx)) => tx.is_closed(),
            Some(ReplyInner::Remote { sink, corr }) => sink.is_cancelled(*corr),
            None => true,
        }
    }
}

impl<R> ReplyTo<R> {
    fn finish_with(&mut self, err: RemoteError) {
        match self.inner.take() {
            Some(ReplyInner::Local(tx)) => {
                let _ = tx.send(Err(err));
            }
            Some(ReplyInner::Remote { sink, corr }) => sink.reply(corr, Err(err)),
            None => {}
        }
    }
}

impl<R> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let path = self.path.to_string();
            self.finish_with(RemoteError::NoReply { path });
        }
    }
}

/// One event of a stream: an item, or the end with its outcome.
pub enum StreamEvent<R> {
    Item(R),
    End(Result<(), RemoteError>),
}

enum StreamInner<R> {
    Local(mpsc::Sender<StreamEvent<R>>),
    Remote { sink: Arc<dyn ReplySink>, corr: u64 },
}

/// The port of one streamed request: send items, then [`StreamTo::end`]. Dropping
/// it without ending ends the stream with `NoReply`.
pub struct StreamTo<R> {
    inner: Option<StreamInner<R>>,
    path: Arc<str>,
}

impl<R> StreamTo<R> {
    pub(crate) fn local(tx: mpsc::Sender<StreamEvent<R>>, path: Arc<str>) -> Self {
        Self { inner: Some(StreamInner::Local(tx)), path }
    }
    pub(crate) fn remote(sink: Arc<dyn ReplySink>, corr: u64, path: Arc<str>) -> Self {
        Self { inner: Some(StreamInner::Remote { sink, corr }), path }
    }
}

impl<R: Serialize> StreamTo<R> {
    /// Sends one item, waiting for room. Returns `false` when the consumer has gone
    /// away: stop producing.
    pub async fn send(&self, item: R) -> bool {
        match &self.inner {
            Some(StreamInner::Local(tx)) => tx.send(StreamEvent::Item(item)).await.is_ok(),
            Some(StreamInner::Remote { sink, corr }) => match codec::encode(&item) {
                Ok(bytes) => sink.stream_item(*corr, bytes).await,
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Whether the consumer has gone away.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Some(StreamInner::Local(tx)) => tx.is_closed(),
            _ => false,
        }
    }

    /// Ends the stream: `Ok` for a complete stream, `Err` for one that failed.
    pub fn end(mut self, result: Result<(), RemoteError>) {
        self.finish(result);
    }
}

impl<R> StreamTo<R> {
    fn finish(&mut self, result: Result<(), RemoteError>) {
        match self.inner.take() {
            // If the buffer is full the consumer sees the channel close without an
            // end marker, which it reports as NoReply: still exactly one outcome.
            Some(StreamInner::Local(tx)) => {
                let _ = tx.try_send(StreamEvent::End(result));
            }
            Some(StreamInner::Remote { sink, corr }) => sink.stream_end(corr, result),
            None => {}
        }
    }
}

impl<R> Drop for StreamTo<R> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let path = self.path.to_string();
            self.finish(Err(RemoteError::NoReply { path }));
        }
    }
}

enum StreamSource<R> {
    Local(mpsc::Receiver<StreamEvent<R>>),
    Remote(mpsc::Receiver<StreamEvent<Vec<u8>>>, Option<Box<dyn FnOnce() + Send>>),
}

/// The caller's end of a stream. Dropping it cancels the producer.
pub struct ReplyStream<R> {
    source: StreamSource<R>,
    path: Arc<str>,
    done: bool,
}

impl<R: DeserializeOwned> ReplyStream<R> {
    pub(crate) fn local(rx: mpsc::Receiver<StreamEvent<R>>, path: Arc<str>) -> Self {
        Self { source: StreamSource::Local(rx), path, done: false }
    }

    /// `on_cancel` runs if the stream is dropped before it ended.
    pub(crate) fn remote(
        rx: mpsc::Receiver<StreamEvent<Vec<u8>>>,
        path: Arc<str>,
        on_cancel: Box<dyn FnOnce() + Send>,
    ) -> Self {
        Self { source: StreamSource::Remote(rx, Some(on_cancel)), path, done: false }
    }

    /// The next item; `None` once the stream ended successfully.
    pub async fn next(&mut self) -> Option<Result<R, RemoteError>> {
        if self.done {
            return None;
        }
        let event = match &mut self.source {
            StreamSource::Local(rx) => rx.recv().await.map(|e| match e {
                StreamEvent::Item(v) => StreamEvent::Item(Ok(v)),
                StreamEvent::End(r) => StreamEvent::End(r),
            }),
            StreamSource::Remote(rx, _) => rx.recv().await.map(|e| match e {
                StreamEvent::Item(bytes) => StreamEvent::Item(
                    codec::decode::<R>(&bytes)
                        .map_err(|e| RemoteError::BadMessage { path: self.path.to_string(), reason: e.to_string() }),
                ),
                StreamEvent::End(r) => StreamEvent::End(r),
            }),
        };
        match event {
            Some(StreamEvent::Item(item)) => Some(item),
            Some(StreamEvent::End(Ok(()))) => {
                self.mark_done();
                None
            }
            Some(StreamEvent::End(Err(e))) => {
                self.mark_done();
                Some(Err(e))
            }
            None => {
                self.mark_done();
                Some(Err(RemoteError::NoReply { path: self.path.to_string() }))
            }
        }
    }

    /// Collects the whole stream, failing on the first error.
    pub async fn collect(mut self) -> Result<Vec<R>, RemoteError> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }

    fn mark_done(&mut self) {
        self.done = true;
        if let StreamSource::Remote(_, cancel) = &mut self.source {
            cancel.take();
        }
    }
}

impl<R> Drop for ReplyStream<R> {
    fn drop(&mut self) {
        if let StreamSource::Remote(_, cancel) = &mut self.source
            && let Some(f) = cancel.take()
        {
            f();
        }
    }
}
