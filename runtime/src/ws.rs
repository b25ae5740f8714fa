//! WebSocket routes for any system's gateway (chat, agents' run events, live feeds),
//! served by [`crate::http::serve`] like every other listener.
//!
//! A gateway keeps one [`WsSessions`] (its limits, the count of open sessions, and
//! the signal that closes them all when the gateway stops) and answers an upgrade
//! request with [`WsSessions::accept`], handing it a session function that gets a
//! [`WsSender`] and a [`WsReceiver`]. The runtime owns the socket:
//! - **Heartbeat:** a ping every `ping_every`; a peer that sends nothing (no pong, no
//!   data) for `ping_every + pong_timeout` is closed with 1011 and the reason.
//! - **Backpressure, in bytes:** outbound messages wait in a queue of at most
//!   `outbound_bytes_max` (each message costs its length plus 64).
//!   [`WsSender::send`] waits for room (the producer slows down);
//!   [`WsSender::try_send`] never waits, and a full queue closes the session with
//!   1013 (a consumer too slow to keep up is dropped, not buffered without end). A
//!   write that takes longer than `write_timeout` ends the session. Inbound messages
//!   wait for the session function in a queue of at most `inbound_bytes_max`; while
//!   it is full the socket is not read, so TCP slows the peer down, and a session
//!   function that takes nothing for `ping_every + pong_timeout` gets its session
//!   closed with 1011. A session function that drops its receiver (a push-only feed)
//!   has the peer's messages discarded.
//! - **Size:** a message over `message_bytes_max` closes the session with 1009; a
//!   larger one is refused to the sender ([`WsSendError::TooBig`]).
//! - **Memory:** a session queues at most `outbound_bytes_max + inbound_bytes_max`
//!   plus tungstenite's buffers (about three messages of `message_bytes_max`); with
//!   `sessions_max` that bounds a gateway's WebSocket memory.
//! - **The session function** runs beside the driver: if it panics, the session is
//!   closed with 1011; once the session has ended it has [`SESSION_GRACE`] to finish
//!   before it is aborted.
//! - **Connection limits:** an upgraded connection keeps its slot of the listener's
//!   per-IP and total caps ([`crate::http::HttpLimits`]) for the session's life, and
//!   at most `sessions_max` sessions are open per `WsSessions` (503 past it).
//!
//! Authenticate before accepting: check the request's credentials in the handler and
//! answer 401 instead of calling `accept`.

use crate::http::ConnSlot;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::SinkExt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Close codes the runtime sends (RFC 6455, section 7.4.1).
pub mod close_code {
    /// The session ended normally (the session function returned).
    pub const NORMAL: u16 = 1000;
    /// The gateway is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// A message larger than `message_bytes_max`.
    pub const TOO_BIG: u16 = 1009;
    /// The peer stopped answering pings.
    pub const HEARTBEAT: u16 = 1011;
    /// The server could not do what a message asked (the same code as [`HEARTBEAT`];
    /// the reason says which).
    pub const SERVER_ERROR: u16 = 1011;
    /// The peer read too slowly: its outbound queue was full.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Counted (never sent) when the peer closed without a status code.
    pub const NO_STATUS: u16 = 1005;
    /// Counted (never sent) when the connection was lost without a close.
    pub const ABNORMAL: u16 = 1006;
}

/// What one gateway's WebSocket sessions may hold.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// A ping this often.
    pub ping_every: Duration,
    /// How long after a due ping the peer may stay silent before it is closed.
    pub pong_timeout: Duration,
    /// Bytes waiting to be written to the peer (each message costs its length + 64);
    /// raised to one largest message if set below it.
    pub outbound_bytes_max: usize,
    /// Bytes received and not yet taken by the session function; raised likewise.
    pub inbound_bytes_max: usize,
    /// Largest message, either way, in bytes.
    pub message_bytes_max: usize,
    /// Longest one write to the peer may take.
    pub write_timeout: Duration,
    /// Sessions open at once.
    pub sessions_max: usize,
}

/// A session's read buffer, allocated when it opens.
const READ_BUFFER_BYTES: usize = 4 << 10;

impl Default for WsLimits {
    /// Pings every 15 s, 15 s to answer, 1 MiB queued out and 256 KiB in, 256 KiB
    /// messages, 10 s per write, 10,000 sessions.
    fn default() -> Self {
        WsLimits {
            ping_every: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(15),
            outbound_bytes_max: 1 << 20,
            inbound_bytes_max: 256 << 10,
            message_bytes_max: 256 << 10,
            write_timeout: Duration::from_secs(10),
            sessions_max: 10_000,
        }
    }
}

/// One WebSocket message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    fn into_axum(self) -> Message {
        match self {
            WsMessage::Text(t) => Message::Text(t.into()),
            WsMessage::Binary(b) => Message::Binary(b),
        }
    }
    /// The message's bytes (a text message's UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            WsMessage::Text(t) => t.as_bytes(),
            WsMessage::Binary(b) => b,
        }
    }
}

/// Why a message could not be queued for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsSendError {
    /// The session has ended.
    #[error("the WebSocket session has ended")]
    Closed,
    /// The outbound queue was full ([`WsSender::try_send`]); the session is being
    /// closed with 1013.
    #[error("the peer reads too slowly: its queue is full, and the session is closing")]
    Full,
    /// The message is larger than `message_bytes_max`; nothing was sent.
    #[error("the message is larger than the session's limit")]
    TooBig,
}

/// How long a session function may run on after its session ended.
pub const SESSION_GRACE: Duration = Duration::from_secs(5);

/// What a queued message costs of a byte budget.
fn cost(msg: &WsMessage) -> usize {
    msg.as_bytes().len() + 64
}

fn permits(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

enum Out {
    Msg(WsMessage, OwnedSemaphorePermit),
    Close(u16, String),
}

/// Queues messages to one peer; clone it to send from several tasks or actors.
#[derive(Clone)]
pub struct WsSender {
    tx: mpsc::UnboundedSender<Out>,
    budget: Arc<Semaphore>,
    overflow: Arc<Notify>,
    message_max: usize,
}

impl std::fmt::Debug for WsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSender").field("closed", &self.tx.is_closed()).finish()
    }
}

impl WsSender {
    /// Queues `msg`, waiting while the queue is full.
    pub async fn send(&self, msg: WsMessage) -> Result<(), WsSendError> {
        if msg.as_bytes().len() > self.message_max {
            return Err(WsSendError::TooBig);
        }
        let permit =
            self.budget.clone().acquire_many_owned(permits(cost(&msg))).await.map_err(|_| WsSendError::Closed)?;
        self.tx.send(Out::Msg(msg, permit)).map_err(|_| WsSendError::Closed)
    }
    /// Queues `msg` without waiting; a full queue closes the session with 1013.
    pub fn try_send(&self, msg: WsMessage) -> Result<(), WsSendError> {
        if msg.as_bytes().len() > self.message_max {
            return Err(WsSendError::TooBig);
        }
        match self.budget.clone().try_acquire_many_owned(permits(cost(&msg))) {
            Ok(permit) => self.tx.send(Out::Msg(msg, permit)).map_err(|_| WsSendError::Closed),
            Err(tokio::sync::TryAcquireError::Closed) => Err(WsSendError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.overflow.notify_one();
                Err(WsSendError::Full)
            }
        }
    }
    /// Closes the session with `code` and `reason` after what is already queued.
    pub async fn close(&self, code: u16, reason: impl Into<String>) {
        let _ = self.tx.send(Out::Close(code, reason.into()));
    }
    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
    /// Waits until the session has ended (for a push-only session function).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Messages from the peer, in order; `None` once the session has ended.
#[derive(Debug)]
pub struct WsReceiver {
    rx: mpsc::UnboundedReceiver<(WsMessage, OwnedSemaphorePermit)>,
}

impl WsReceiver {
    /// The next message from the peer (its bytes leave the inbound budget).
    pub async fn recv(&mut self) -> Option<WsMessage> {
        self.rx.recv().await.map(|(msg, _permit)| msg)
    }
}

/// An upgrade request, as a handler extracts it (axum's `WebSocketUpgrade` plus the
/// connection's slot of the listener's limits, which the session keeps).
pub struct WsUpgrade {
    upgrade: WebSocketUpgrade,
    slot: Option<ConnSlot>,
}

impl std::fmt::Debug for WsUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsUpgrade").finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let slot = parts.extensions.get::<ConnSlot>().cloned();
        Ok(WsUpgrade { upgrade, slot })
    }
}

/// One gateway's WebSocket sessions. Dropping it (the gateway stopping) closes every
/// session with 1001: the sessions' shutdown signal goes with it.
#[derive(Debug)]
pub struct WsSessions {
    limits: WsLimits,
    open: Arc<AtomicUsize>,
    closes: Arc<Closes>,
    shutdown: watch::Sender<bool>,
}

/// Ended sessions by close code.
#[derive(Debug, Default)]
struct Closes(parking_lot::Mutex<std::collections::BTreeMap<u16, u64>>);

impl Closes {
    fn count(&self, code: u16) {
        *self.0.lock().entry(code).or_insert(0) += 1;
    }
}

impl WsSessions {
    /// Sessions under `limits`.
    pub fn new(limits: WsLimits) -> Self {
        WsSessions {
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            closes: Arc::default(),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Sessions that have ended with `code`: the code the runtime sent ([`close_code`]),
    /// the peer's own when it closed first, [`close_code::NO_STATUS`] when it closed
    /// without one, [`close_code::ABNORMAL`] when the connection was lost.
    pub fn closed_with(&self, code: u16) -> u64 {
        self.closes.0.lock().get(&code).copied().unwrap_or(0)
    }

    /// The limits sessions run under.
    pub fn limits(&self) -> &WsLimits {
        &self.limits
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes every open session with 1001 (as dropping does).
    pub fn close_all(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes the upgrade and runs `session` with the peer's sender and receiver;
    /// the runtime drives the socket (heartbeat, queues, limits) beside it. The
    /// session ends when the peer closes or fails, when a limit closes it, or when
    /// `session` returns and every [`WsSender`] clone is dropped.
    pub fn accept<F, Fut>(&self, upgrade: WsUpgrade, session: F) -> Response
    where
        F: FnOnce(WsSender, WsReceiver) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut limits = self.limits.clone();
        // A budget holds at least one largest message.
        limits.outbound_bytes_max = limits.outbound_bytes_max.max(limits.message_bytes_max + 64);
        limits.inbound_bytes_max = limits.inbound_bytes_max.max(limits.message_bytes_max + 64);
        // Claim a session place before upgrading.
        let claimed = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limits.sessions_max).then_some(n + 1))
            .is_ok();
        if !claimed {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": format!("this gateway holds {} WebSocket sessions already; retry later", limits.sessions_max)
                })),
            )
                .into_response();
        }
        let open = OpenGuard(self.open.clone());
        let shutdown = self.shutdown.subscribe();
        let closes = self.closes.clone();
        let WsUpgrade { upgrade, slot } = upgrade;
        upgrade
            // tungstenite allocates its read buffer up front (128 KiB by default): an
            // idle session should not hold that (bench/src/bin/memory.rs measured 141
            // KB per idle WebSocket with it). A larger frame reserves its own length.
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(limits.message_bytes_max)
            .max_frame_size(limits.message_bytes_max)
            // A write that cannot drain fails instead of growing the buffer further.
            .max_write_buffer_size(limits.message_bytes_max.saturating_mul(2).max(256 << 10))
            .on_upgrade(move |socket| async move {
                let _open = open;
                let _slot = slot;
                let (out_tx, out_rx) = mpsc::unbounded_channel();
                let (in_tx, in_rx) = mpsc::unbounded_channel();
                let overflow = Arc::new(Notify::new());
                let out_budget = Arc::new(Semaphore::new(limits.outbound_bytes_max));
                let sender = WsSender {
                    tx: out_tx,
                    budget: out_budget.clone(),
                    overflow: overflow.clone(),
                    message_max: limits.message_bytes_max,
                };
                let app = tokio::spawn(session(sender, WsReceiver { rx: in_rx }));
                // `None` once the driver has seen the task end.
                let mut app = Some(app);
                let queues = Queues { out_rx, in_tx, in_budget: Arc::new(Semaphore::new(limits.inbound_bytes_max)) };
                let code = drive(socket, &limits, queues, overflow, shutdown, &mut app).await;
                // Senders waiting for room learn the session is over.
                out_budget.close();
                closes.count(code);
                // The session function sees its receiver end and gets a grace period
                // to finish what it does with what it received.
                if let Some(mut app) = app
                    && tokio::time::timeout(SESSION_GRACE, &mut app).await.is_err()
                {
                    app.abort();
                }
            })
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the driver ends a session.
enum End {
    /// The peer closed (with this code), or the connection failed: nothing more to
    /// send.
    Gone(u16),
    /// Close with this code and reason.
    Close(u16, String),
}

/// The session's two queues, as the driver holds them.
struct Queues {
    out_rx: mpsc::UnboundedReceiver<Out>,
    in_tx: mpsc::UnboundedSender<(WsMessage, OwnedSemaphorePermit)>,
    in_budget: Arc<Semaphore>,
}

/// Owns the socket for one session until it ends; returns the close code to count.
async fn drive(
    mut socket: WebSocket,
    limits: &WsLimits,
    queues: Queues,
    overflow: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    app: &mut Option<tokio::task::JoinHandle<()>>,
) -> u16 {
    let Queues { mut out_rx, in_tx, in_budget } = queues;
    // A message read and waiting for room in the inbound budget, and since when.
    let mut pending: Option<(WsMessage, Instant)> = None;
    // The session function dropped its receiver: the peer's messages are discarded.
    let mut discard = false;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + limits.ping_every, limits.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence_max = limits.ping_every + limits.pong_timeout;
    let end = loop {
        if *shutdown.borrow() {
            break End::Close(close_code::GOING_AWAY, "the gateway is stopping".into());
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                break End::Close(close_code::GOING_AWAY, "the gateway is stopping".into());
            }
            () = overflow.notified() => {
                break End::Close(
                    close_code::TRY_AGAIN_LATER,
                    format!("reading too slowly: {} bytes were waiting", limits.outbound_bytes_max),
                );
            }
            done = async {
                match app.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            }, if app.is_some() => {
                *app = None;
                if done.is_err_and(|e| e.is_panic()) {
                    break End::Close(close_code::SERVER_ERROR, "the session failed".into());
                }
                // Returned: the session goes on while any of its senders lives.
            }
            frame = socket.recv(), if pending.is_none() => match frame {
                None => break End::Gone(close_code::ABNORMAL),
                Some(Ok(Message::Text(t))) => {
                    last_heard = Instant::now();
                    if !discard {
                        pending = Some((WsMessage::Text(t.as_str().to_owned()), Instant::now()));
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    last_heard = Instant::now();
                    if !discard {
                        pending = Some((WsMessage::Binary(b), Instant::now()));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = Instant::now(),
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite has queued the answer to the close: write it.
                    let _ = tokio::time::timeout(limits.write_timeout, socket.flush()).await;
                    break End::Gone(frame.map_or(close_code::NO_STATUS, |f| f.code));
                }
                Some(Err(e)) => break match too_long(e) {
                    Some(size) => End::Close(
                        close_code::TOO_BIG,
                        format!("a message of {size} bytes; at most {} bytes", limits.message_bytes_max),
                    ),
                    None => End::Gone(close_code::ABNORMAL),
                },
            },
            permit = in_budget.clone().acquire_many_owned(
                permits(pending.as_ref().map_or(0, |(m, _)| cost(m)))
            ), if pending.is_some() => {
                if let (Ok(permit), Some((msg, _))) = (permit, pending.take())
                    && in_tx.send((msg, permit)).is_err()
                {
                    // The session function dropped its receiver (a push-only feed).
                    discard = true;
                }
                // The peer was waiting on us, not silent.
                last_heard = Instant::now();
            },
            out = out_rx.recv() => match out {
                Some(Out::Msg(msg, permit)) => {
                    let written = write(&mut socket, msg.into_axum(), limits.write_timeout).await;
                    drop(permit);
                    if !written {
                        break End::Gone(close_code::ABNORMAL);
                    }
                }
                Some(Out::Close(code, reason)) => break End::Close(code, reason),
                // Every sender is gone: the session function ended, or panicked (its
                // sender dropped while unwinding, before its task reports it).
                None => {
                    let mut panicked = false;
                    if let Some(task) = app.as_mut()
                        && let Ok(done) = tokio::time::timeout(limits.write_timeout, task).await
                    {
                        panicked = done.is_err_and(|e| e.is_panic());
                        *app = None;
                    }
                    break if panicked {
                        End::Close(close_code::SERVER_ERROR, "the session failed".into())
                    } else {
                        End::Close(close_code::NORMAL, String::new())
                    };
                }
            },
            _ = ping.tick() => {
                if let Some((_, since)) = &pending && since.elapsed() >= silence_max {
                    break End::Close(
                        close_code::SERVER_ERROR,
                        format!("the session took none of its messages for {} ms", silence_max.as_millis()),
                    );
                }
                if pending.is_none() && last_heard.elapsed() >= silence_max {
                    break End::Close(
                        close_code::HEARTBEAT,
                        format!("no pong within {} ms", silence_max.as_millis()),
                    );
                }
                if !write(&mut socket, Message::Ping(Bytes::new()), limits.write_timeout).await {
                    break End::Gone(close_code::ABNORMAL);
                }
            }
        }
    };
    match end {
        End::Gone(code) => code,
        End::Close(code, reason) => {
            let frame = CloseFrame { code, reason: reason.into() };
            if write(&mut socket, Message::Close(Some(frame)), limits.write_timeout).await {
                // The closing handshake: the peer answers the close (briefly waited
                // for, since a peer that is closed for its silence will not).
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(frame)) = socket.recv().await {
                        if matches!(frame, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            code
        }
    }
}

/// How long a session that the runtime closed waits for the peer's close answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Writes one message within `timeout`; false when the peer is gone or too slow.
async fn write(socket: &mut WebSocket, msg: Message, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, socket.send(msg)).await, Ok(Ok(())))
}

/// The size of a message refused for its length, if that is what `e` says.
fn too_long(e: axum::Error) -> Option<usize> {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { size, .. })) => {
            Some(*size)
        }
        _ => None,
    }
}
