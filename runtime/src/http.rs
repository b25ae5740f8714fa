//! Every HTTP listener of a node — the topology routes' gateway, the admin API and the
//! systems' own services — is served by [`serve`], which bounds what one client can
//! hold: a request's headers must arrive within `header_timeout` and its body within
//! `body_timeout` (a slow body is answered 400 with the reason), one IP holds at most
//! `connections_per_ip_max` connections and the listener at most `connections_max`
//! (past either, a new connection is closed at once, before any byte is read). So a
//! thousand slowloris connections from one place cost their own slots and nothing else:
//! other clients are served.
//!
//! Handlers see the peer's address as `axum::extract::ConnectInfo<SocketAddr>`.

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// What one client may hold of a listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Longest a request's headers may take to arrive, from the first byte.
    pub header_timeout: Duration,
    /// Longest a request's body may take to arrive, from the handler's first read.
    pub body_timeout: Duration,
    /// Open connections from one IP address.
    pub connections_per_ip_max: usize,
    /// Open connections in all.
    pub connections_max: usize,
}

impl Default for HttpLimits {
    /// 10 s for headers, 30 s for a body, 256 connections per IP, 8,192 in all.
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            connections_per_ip_max: 256,
            connections_max: 8192,
        }
    }
}

/// Connections turned away, by reason (for metrics and tests).
#[derive(Debug, Default)]
pub struct Refusals {
    /// Closed because their IP held `connections_per_ip_max` already.
    pub per_ip: AtomicU64,
    /// Closed because the listener held `connections_max` already.
    pub total: AtomicU64,
}

/// Open connections per IP, released when a connection ends.
#[derive(Default)]
struct Slots {
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

/// A connection's place in the listener's limits, in every request's extensions: an
/// upgraded connection (a WebSocket, `crate::ws`) keeps it for the session's life,
/// since hyper's connection task ends at the upgrade.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] Arc<Slot>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.total -= 1;
        if let Some(n) = s.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` under `limits` until the listener fails; spawn it. The
/// returned [`Refusals`] count the connections turned away.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
) -> (Arc<Refusals>, impl Future<Output = std::io::Result<()>> + Send) {
    let refusals = Arc::new(Refusals::default());
    let seen = refusals.clone();
    let fut = async move {
        let slots = Arc::new(Mutex::new(Slots::default()));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                // Out of file descriptors and the like: wait, do not spin.
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let slot = {
                let mut s = slots.lock();
                let held = s.by_ip.get(&peer.ip()).copied().unwrap_or(0);
                if s.total >= limits.connections_max {
                    seen.total.fetch_add(1, Ordering::Relaxed);
                    None
                } else if held >= limits.connections_per_ip_max {
                    seen.per_ip.fetch_add(1, Ordering::Relaxed);
                    None
                } else {
                    s.total += 1;
                    *s.by_ip.entry(peer.ip()).or_insert(0) += 1;
                    Some(Slot { slots: slots.clone(), ip: peer.ip() })
                }
            };
            let Some(slot) = slot else {
                drop(stream);
                continue;
            };
            let slot = ConnSlot(Arc::new(slot));
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let body_timeout = limits.body_timeout;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            tokio::spawn(async move {
                let conn_slot = slot.clone();
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let mut req = req.map(|b| Body::new(Deadline::new(b, body_timeout)));
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(conn_slot.clone());
                    let mut app = app.clone();
                    async move { tower::Service::call(&mut app, req).await }
                });
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades().await {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                drop(slot);
            });
        }
    };
    (refusals, fut)
}

/// Binds `addr`, retrying for up to 2 s: a previous incarnation's socket may still be
/// closing after a restart.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for _ in 0..40 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no attempt to bind")))
}

/// A listener served in the background by [`spawn`]; dropping it stops the server (a
/// gateway actor keeps it in its state, so a restarted incarnation binds afresh).
#[derive(Debug)]
pub struct Served(tokio::task::JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`serve`] on a task of its own, logging why it stopped if it does; `what` names the
/// service in that log line.
pub fn spawn(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    what: &'static str,
) -> (Arc<Refusals>, Served) {
    let (refusals, served) = serve(listener, app, limits);
    let task = tokio::spawn(async move {
        if let Err(e) = served.await {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    (refusals, Served(task))
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error().is_some_and(|c| c == 23 || c == 24) // ENFILE, EMFILE
}

/// A request body that must arrive within `timeout` of its first read.
struct Deadline<B> {
    body: Pin<Box<B>>,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    fn new(body: B, timeout: Duration) -> Self {
        Deadline { body: Box::pin(body), timeout, sleep: None }
    }
}

/// The error a body that came too slowly ends with (axum answers 400 with it).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct SlowBody(Duration);

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let timeout = self.timeout;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(SlowBody(timeout)))));
        }
        match self.body.as_mut().poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
