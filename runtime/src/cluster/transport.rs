//! QUIC transport (quinn, mutual TLS): links between nodes and from clients.
//!
//! One endpoint per node serves and dials. Each connection carries `lanes_per_peer`
//! unidirectional streams per direction; a frame's lane is chosen by hashing its
//! (sender, target) pair, so order is FIFO per sender→receiver while unrelated
//! traffic does not wait behind it. Each lane has a bounded queue: a full queue is an
//! error the caller sees (`QueueFull`), never memory growth. Frames are length
//! prefixed and capped (`frame_bytes_max`); a peer that sends a malformed or
//! oversize frame loses that stream, nothing else.
//!
//! Replies travel back on the connection the request came in on. The peer's identity
//! comes from its verified certificate, never from a payload.

use super::chaos::{ChaosRules, Verdict};
use super::tls::{self, PeerId};
use crate::config::TransportTuning;
use crate::metrics::{Counter, Metrics};
use crate::placement::stable_hash;
use crate::reply::{ReplySink, StreamEvent};
use crate::slot::WireRequest;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use troupe_wire::codec::{FrameReader, encode_frame};
use troupe_wire::introspect::MemberState;
use troupe_wire::{ActorPath, Envelope, Frame, RemoteError, RequestKind, TraceId};

/// Bytes gathered into one stream write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A lane's write buffer kept between batches at most (a busy lane reuses it; one
/// that grew past it for a large frame lets it go once written).
const WRITE_BUF_KEEP: usize = 2 * WRITE_BATCH_BYTES;

pub(crate) enum Pending {
    Ask(oneshot::Sender<Result<Vec<u8>, RemoteError>>),
    Stream(mpsc::Sender<StreamEvent<Vec<u8>>>),
}

#[derive(Clone)]
struct Stats {
    frames_out: Counter,
    frames_in: Counter,
    bytes_out: Counter,
    bytes_in: Counter,
    queue_full: Counter,
    connects: Counter,
    connect_failures: Counter,
    bad_frames: Counter,
    wrong_owner: Counter,
    chaos_dropped: Counter,
    refused: Counter,
    refused_down: Counter,
}

impl Stats {
    fn new(m: &Metrics) -> Self {
        Stats {
            frames_out: m.counter("troupe_transport_frames_sent_total", "Frames written to QUIC streams.", &[]),
            frames_in: m.counter("troupe_transport_frames_received_total", "Frames read from QUIC streams.", &[]),
            bytes_out: m.counter("troupe_transport_bytes_sent_total", "Bytes written to QUIC streams.", &[]),
            bytes_in: m.counter("troupe_transport_bytes_received_total", "Bytes read from QUIC streams.", &[]),
            queue_full: m.counter(
                "troupe_transport_queue_full_total",
                "Sends refused because a lane queue was full (send_queue_cap).",
                &[],
            ),
            connects: m.counter("troupe_transport_connects_total", "QUIC connections established to peers.", &[]),
            connect_failures: m.counter(
                "troupe_transport_connect_failures_total",
                "Failed attempts to connect to a peer.",
                &[],
            ),
            bad_frames: m.counter(
                "troupe_transport_bad_frames_total",
                "Malformed or oversize frames received (stream closed).",
                &[],
            ),
            wrong_owner: m.counter(
                "troupe_transport_wrong_owner_total",
                "Messages that reached a node that does not own their target.",
                &[],
            ),
            chaos_dropped: m.counter("troupe_transport_chaos_dropped_total", "Frames dropped by chaos rules.", &[]),
            refused: m.counter(
                "troupe_transport_refused_total",
                "Connections refused: no valid troupe certificate.",
                &[],
            ),
            refused_down: m.counter(
                "troupe_transport_sends_to_down_total",
                "Sends refused at once because membership holds the target node down.",
                &[],
            ),
        }
    }
}

/// One QUIC connection and the lanes we write on it.
pub(crate) struct Link {
    pub peer: PeerId,
    conn: quinn::Connection,
    /// Each started on first use (a channel and a writer task): an idle client
    /// connection that was answered on one lane holds one, not `lanes_per_peer`.
    lanes: Vec<std::sync::OnceLock<mpsc::Sender<Frame>>>,
    lane_cap: usize,
    frame_cap: usize,
    stats: Stats,
    me: Weak<Link>,
    /// The runtime the link was made on: a lane may first be used from a thread
    /// outside it (an actor answering from a worker thread).
    rt: tokio::runtime::Handle,
    closed: AtomicBool,
    /// Streams the other side cancelled (by correlation id).
    cancelled: Mutex<HashSet<u64>>,
    /// Requests of a client peer this node is still working on: one permit each
    /// (`client_in_flight_max`), so one connection cannot spawn without bound.
    pub(crate) client_slots: Arc<tokio::sync::Semaphore>,
    client_slots_max: u64,
}

/// A client's request, with the slot it holds on its connection until answered.
pub(crate) struct ClientCall {
    pub peer: PeerId,
    pub _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Link {
    fn new(peer: PeerId, conn: quinn::Connection, tuning: &TransportTuning, stats: Stats) -> Arc<Link> {
        let n = tuning.lanes_per_peer.max(1) as usize;
        let lane_cap = (tuning.send_queue_cap as usize / n).max(8);
        let frame_cap = tuning.frame_bytes_max as usize;
        Arc::new_cyclic(|weak: &Weak<Link>| {
            let slots = tuning.client_in_flight_max.max(1);
            Link {
                peer,
                conn,
                lanes: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
                lane_cap,
                frame_cap,
                stats,
                me: weak.clone(),
                rt: tokio::runtime::Handle::current(),
                closed: AtomicBool::new(false),
                cancelled: Mutex::new(HashSet::new()),
                client_slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
                client_slots_max: slots,
            }
        })
    }

    /// A slot for one more request of this client connection, or the refusal to
    /// answer it with.
    pub(crate) fn client_slot(&self, me: &str) -> Result<tokio::sync::OwnedSemaphorePermit, RemoteError> {
        self.client_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| RemoteError::QueueFull { node: me.to_string(), cap: self.client_slots_max })
    }

    /// Lane `i`'s queue, starting its writer on first use.
    fn lane(&self, i: usize) -> &mpsc::Sender<Frame> {
        self.lanes[i].get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.lane_cap);
            self.rt.spawn(lane_writer(self.conn.clone(), rx, self.frame_cap, self.stats.clone(), self.me.clone()));
            tx
        })
    }

    fn lane_for(&self, key: u64) -> usize {
        (key % self.lanes.len() as u64) as usize
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.conn.close_reason().is_some()
    }

    /// Queues a frame without waiting: a full lane is an error. The frame comes
    /// back with the error so the caller can retry or answer differently.
    #[allow(clippy::result_large_err)]
    fn try_send(&self, lane: usize, frame: Frame) -> Result<(), (RemoteError, Frame)> {
        let name = self.peer_name();
        let tx = self.lane(lane);
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(f)) => {
                Err((RemoteError::QueueFull { node: name, cap: tx.max_capacity() as u64 }, f))
            }
            Err(mpsc::error::TrySendError::Closed(f)) => {
                Err((RemoteError::Unreachable { node: name, reason: "link closed".into() }, f))
            }
        }
    }

    /// Queues a frame, waiting for room (replies and stream items: back-pressure).
    async fn send_wait(&self, lane: usize, frame: Frame) -> bool {
        self.lane(lane).send(frame).await.is_ok()
    }

    /// Queues a frame on the lane of `key`, waiting for room.
    pub(crate) async fn send_frame_wait(&self, key: u64, frame: Frame) -> bool {
        self.send_wait(self.lane_for(key), frame).await
    }

    fn peer_name(&self) -> String {
        self.peer.name().to_string()
    }
}

async fn lane_writer(
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Frame>,
    frame_cap: usize,
    stats: Stats,
    link: Weak<Link>,
) {
    let mut stream: Option<quinn::SendStream> = None;
    // Grows with the first batch; one that grew past WRITE_BUF_KEEP (a large frame) is
    // let go once written, so an idle lane holds little.
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut n = 0u64;
        let mut push = |f: &Frame, buf: &mut Vec<u8>| match encode_frame(f, buf, frame_cap) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(error = %e, "frame not sent"),
        };
        push(&first, &mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(f) => push(&f, &mut buf),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            // Every frame refused (too large): encoding may have grown the buffer.
            if buf.capacity() > WRITE_BUF_KEEP {
                buf = Vec::new();
            }
            continue;
        }
        if stream.is_none() {
            match conn.open_uni().await {
                Ok(s) => stream = Some(s),
                Err(_) => break,
            }
        }
        let Some(s) = stream.as_mut() else { break };
        if s.write_all(&buf).await.is_err() {
            break;
        }
        stats.frames_out.add(n);
        stats.bytes_out.add(buf.len() as u64);
        if buf.capacity() > WRITE_BUF_KEEP {
            buf = Vec::new();
        }
    }
    if let Some(l) = link.upgrade() {
        l.closed.store(true, Ordering::Relaxed);
    }
}

/// Cancellations a link remembers at most (correlation ids).
const CANCELLED_MAX: usize = 65_536;

/// Where replies to a request go: back on the link it came from.
struct LinkSink {
    link: Arc<Link>,
    lane: usize,
}

impl ReplySink for LinkSink {
    fn reply(&self, corr: u64, result: Result<Vec<u8>, RemoteError>) {
        // The asker cancelled (it timed out): nobody reads this answer, and the
        // cancellation is settled.
        if self.link.cancelled.lock().remove(&corr) {
            return;
        }
        if let Err((_, frame)) = self.link.try_send(self.lane, Frame::Reply { corr, result }) {
            // Never drop an answer because a lane is momentarily full.
            let link = self.link.clone();
            let lane = self.lane;
            tokio::spawn(async move {
                link.send_wait(lane, frame).await;
            });
        }
    }
    fn stream_item(&self, corr: u64, payload: Vec<u8>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if self.link.cancelled.lock().contains(&corr) || self.link.is_closed() {
                return false;
            }
            self.link.send_wait(self.lane, Frame::StreamItem { corr, payload }).await
        })
    }
    fn stream_end(&self, corr: u64, result: Result<(), RemoteError>) {
        self.link.cancelled.lock().remove(&corr);
        if let Err((_, frame)) = self.link.try_send(self.lane, Frame::StreamEnd { corr, result }) {
            let link = self.link.clone();
            let lane = self.lane;
            tokio::spawn(async move {
                link.send_wait(lane, frame).await;
            });
        }
    }
    fn is_cancelled(&self, corr: u64) -> bool {
        self.link.cancelled.lock().contains(&corr)
    }
}

/// State of our outgoing link to one node.
struct Peer {
    addr: SocketAddr,
    link: RwLock<Option<Arc<Link>>>,
    connecting: tokio::sync::Mutex<()>,
    /// No new attempt before this instant (reconnect backoff).
    retry_at: Mutex<Option<Instant>>,
    backoff_ms: AtomicU64,
    /// The membership view holds this node down: nothing is sent to it.
    down: AtomicBool,
    /// Its boot epoch as membership last reported it (0: not heard of yet).
    epoch: AtomicU64,
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    tuning: TransportTuning,
    peers: HashMap<String, Peer>,
    corr: AtomicU64,
    /// Requests waiting for an answer: correlation id → (node asked, waiter).
    pending: Mutex<HashMap<u64, (String, Pending)>>,
    chaos: Arc<RwLock<ChaosRules>>,
    /// Where arriving requests go (the node's `cluster::inbound`), set by `serve`.
    inbound: OnceLock<Arc<dyn Inbound>>,
    /// This transport, for tasks it spawns from `&self`.
    me: Weak<Transport>,
    /// This node's name.
    name: String,
    stats: Stats,
}

/// Where the transport hands what arrives for this node's actors. The node implements
/// it (`cluster/inbound.rs`), so the transport never names the node.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A handler for one incoming stream, whose requests it takes in order; `None`
    /// once the node is gone.
    fn lane(&self) -> Option<Box<dyn LaneInbound>>;
}

/// The handler of one incoming stream.
pub(crate) trait LaneInbound: Send {
    /// A request for an actor from a node, or from a client (`client`: its
    /// certificate's identity); `request` answers it on its link. Must not wait: the
    /// stream's next frames are behind it.
    fn request(&mut self, env: Envelope, request: WireRequest, client: Option<ClientCall>);
    /// A JSON ask from a client (CLI, SDK), answered on `link`.
    #[allow(clippy::too_many_arguments)]
    fn json_ask(
        &mut self,
        link: Arc<Link>,
        target: ActorPath,
        corr: u64,
        timeout_ms: u32,
        json: String,
        stream: bool,
        trace: TraceId,
    );
    /// A JSON tell from client `call.peer`, holding its slot until delivered.
    fn json_tell(&mut self, call: ClientCall, target: ActorPath, json: String, trace: TraceId);
}

impl Transport {
    pub fn bind(
        me: &str,
        bind: SocketAddr,
        identity: &tls::Identity,
        tuning: &TransportTuning,
        peers: &[(String, SocketAddr)],
        metrics: &Metrics,
        chaos: Arc<RwLock<ChaosRules>>,
    ) -> Result<Arc<Transport>, String> {
        let mut tc = quinn::TransportConfig::default();
        tc.keep_alive_interval(Some(Duration::from_millis(tuning.keep_alive_ms)));
        let idle =
            quinn::IdleTimeout::try_from(Duration::from_millis(tuning.idle_timeout_ms)).map_err(|e| e.to_string())?;
        tc.max_idle_timeout(Some(idle));
        tc.max_concurrent_uni_streams(quinn::VarInt::from_u32(256));
        tc.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
        tc.send_window(16 << 20);
        let tc = Arc::new(tc);
        let server = tls::server_config(identity).map_err(|e| e.to_string())?;
        let client = tls::client_config(identity).map_err(|e| e.to_string())?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| e.to_string())?,
        ));
        sc.transport_config(tc.clone());
        let mut cc = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| e.to_string())?,
        ));
        cc.transport_config(tc);
        let endpoint =
            quinn::Endpoint::server(sc, bind).map_err(|e| format!("cannot bind QUIC endpoint {bind}: {e}"))?;
        let peers = peers
            .iter()
            .filter(|(n, _)| n != me)
            .map(|(n, a)| {
                (
                    n.clone(),
                    Peer {
                        addr: *a,
                        link: RwLock::new(None),
                        connecting: tokio::sync::Mutex::new(()),
                        retry_at: Mutex::new(None),
                        backoff_ms: AtomicU64::new(tuning.reconnect_backoff_min_ms),
                        down: AtomicBool::new(false),
                        epoch: AtomicU64::new(0),
                    },
                )
            })
            .collect();
        let name = me.to_string();
        Ok(Arc::new_cyclic(|me| Transport {
            endpoint,
            client_cfg: cc,
            tuning: tuning.clone(),
            peers,
            // Not guessable from outside: an id alone never identified a request (answers
            // are also checked against the node asked), but there is no reason to make
            // one predictable.
            corr: AtomicU64::new(rand::random::<u64>() >> 2),
            pending: Mutex::new(HashMap::new()),
            chaos,
            inbound: OnceLock::new(),
            me: me.clone(),
            name,
            stats: Stats::new(metrics),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Starts accepting connections; requests are handed to `inbound`.
    pub(crate) fn serve(self: &Arc<Self>, inbound: Arc<dyn Inbound>) {
        let _ = self.inbound.set(inbound);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(incoming) = me.endpoint.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            me.stats.refused.inc();
                            tracing::debug!(error = %e, "incoming connection failed");
                            return;
                        }
                    };
                    let Some(peer) = peer_of(&conn) else {
                        me.stats.refused.inc();
                        conn.close(quinn::VarInt::from_u32(1), b"no troupe identity in certificate");
                        return;
                    };
                    let link = Link::new(peer, conn.clone(), &me.tuning, me.stats.clone());
                    me.read_connection(conn, link).await;
                });
            }
        });
    }

    /// Our link to `node`, connecting (once, shared by concurrent callers) if needed.
    async fn link(&self, node: &str) -> Result<Arc<Link>, RemoteError> {
        let unreachable = |reason: String| RemoteError::Unreachable { node: node.to_string(), reason };
        let peer = self.peers.get(node).ok_or_else(|| unreachable("not a node of this cluster".into()))?;
        if peer.down.load(Ordering::Acquire) {
            self.stats.refused_down.inc();
            return Err(RemoteError::NodeDown { node: node.to_string() });
        }
        if let Some(l) = peer.link.read().as_ref()
            && !l.is_closed()
        {
            return Ok(l.clone());
        }
        if let Some(t) = *peer.retry_at.lock()
            && Instant::now() < t
        {
            return Err(unreachable("reconnect backoff".into()));
        }
        let _guard = peer.connecting.lock().await;
        if let Some(l) = peer.link.read().as_ref()
            && !l.is_closed()
        {
            return Ok(l.clone());
        }
        let connect = async {
            let connecting = self
                .endpoint
                .connect_with(self.client_cfg.clone(), peer.addr, &tls::node_server_name(node))
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_millis(self.tuning.connect_timeout_ms), connect).await {
            Ok(Ok(conn)) => {
                if peer_of(&conn) != Some(PeerId::Node(node.to_string())) {
                    conn.close(quinn::VarInt::from_u32(2), b"unexpected identity");
                    return Err(unreachable("peer presented another node's certificate".into()));
                }
                self.stats.connects.inc();
                peer.backoff_ms.store(self.tuning.reconnect_backoff_min_ms, Ordering::Relaxed);
                *peer.retry_at.lock() = None;
                let link = Link::new(PeerId::Node(node.to_string()), conn.clone(), &self.tuning, self.stats.clone());
                *peer.link.write() = Some(link.clone());
                // Replies and stream items come back on this connection.
                if let Some(me) = self.self_arc() {
                    let l2 = link.clone();
                    tokio::spawn(async move { me.read_connection(conn, l2).await });
                }
                Ok(link)
            }
            Ok(Err(e)) => Err(self.connect_failed(peer, node, e)),
            Err(_) => Err(self.connect_failed(peer, node, "connect timed out".into())),
        }
    }

    fn connect_failed(&self, peer: &Peer, node: &str, reason: String) -> RemoteError {
        self.stats.connect_failures.inc();
        let b = peer.backoff_ms.load(Ordering::Relaxed);
        *peer.retry_at.lock() = Some(Instant::now() + Duration::from_millis(b));
        peer.backoff_ms.store((b * 2).min(self.tuning.reconnect_backoff_max_ms), Ordering::Relaxed);
        RemoteError::Unreachable { node: node.to_string(), reason }
    }

    fn self_arc(&self) -> Option<Arc<Transport>> {
        self.me.upgrade()
    }

    /// A request that reached a node which does not own its target.
    pub(crate) fn note_wrong_owner(&self) {
        self.stats.wrong_owner.inc();
    }

    fn chaos_verdict(&self, node: &str) -> Verdict {
        let c = self.chaos.read();
        if c.is_empty() { Verdict::Pass } else { c.verdict(node, Instant::now(), rand::random()) }
    }

    /// Sends a frame to `node` on the lane of `key`, applying chaos rules. (Boxed:
    /// the send path and the receive path call each other, which plain async fns
    /// cannot express.)
    fn send_frame<'a>(&'a self, node: &'a str, key: u64, frame: Frame) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            let link = self.link(node).await?;
            let lane = link.lane_for(key);
            match self.chaos_verdict(node) {
                Verdict::Pass => link.try_send(lane, frame).map_err(|(e, _)| {
                    if matches!(e, RemoteError::QueueFull { .. }) {
                        self.stats.queue_full.inc();
                    }
                    e
                }),
                Verdict::Drop => {
                    self.stats.chaos_dropped.inc();
                    Ok(())
                }
                Verdict::Delay(d) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        link.send_wait(lane, frame).await;
                    });
                    Ok(())
                }
            }
        })
    }

    fn lane_key(path: &ActorPath) -> u64 {
        let target = path.as_str().as_bytes();
        match crate::current::CURRENT.try_with(|c| stable_hash(&[c.actor.as_bytes(), target])) {
            Ok(h) => h,
            Err(_) => stable_hash(&[target]),
        }
    }

    pub async fn tell(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<(), RemoteError> {
        let env = Envelope { target: path.clone(), sender: None, request: RequestKind::Tell, trace, payload };
        self.send_frame(node, Self::lane_key(path), Frame::Msg(env)).await
    }

    pub async fn ask(
        &self,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        let corr = self.corr.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(corr, (node.to_string(), Pending::Ask(tx)));
        let env = Envelope {
            target: path.clone(),
            sender: None,
            request: RequestKind::Ask { corr, timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32 },
            trace,
            payload,
        };
        if let Err(e) = self.send_frame(node, Self::lane_key(path), Frame::Msg(env)).await {
            self.pending.lock().remove(&corr);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                Err(RemoteError::Unreachable { node: node.into(), reason: "link closed before the reply".into() })
            }
            Err(_) => {
                self.pending.lock().remove(&corr);
                let _ = self.send_frame(node, corr, Frame::Cancel { corr }).await;
                Err(RemoteError::Timeout { path: path.to_string(), ms: timeout.as_millis() as u64 })
            }
        }
    }

    /// Starts a stream; returns the receiver of its events and a cancel hook.
    pub async fn stream(
        self: &Arc<Self>,
        node: &str,
        path: &ActorPath,
        trace: TraceId,
        payload: Vec<u8>,
    ) -> Result<(mpsc::Receiver<StreamEvent<Vec<u8>>>, Box<dyn FnOnce() + Send>), RemoteError> {
        let corr = self.corr.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.tuning.stream_buffer as usize);
        self.pending.lock().insert(corr, (node.to_string(), Pending::Stream(tx)));
        let env =
            Envelope { target: path.clone(), sender: None, request: RequestKind::Stream { corr }, trace, payload };
        if let Err(e) = self.send_frame(node, Self::lane_key(path), Frame::Msg(env)).await {
            self.pending.lock().remove(&corr);
            return Err(e);
        }
        let me = self.clone();
        let node = node.to_string();
        let cancel: Box<dyn FnOnce() + Send> = Box::new(move || {
            if me.pending.lock().remove(&corr).is_some() {
                tokio::spawn(async move {
                    let _ = me.send_frame(&node, corr, Frame::Cancel { corr }).await;
                });
            }
        });
        Ok((rx, cancel))
    }

    /// Reads every stream the peer opens on `conn` until it closes.
    async fn read_connection(self: Arc<Self>, conn: quinn::Connection, link: Arc<Link>) {
        while let Ok(recv) = conn.accept_uni().await {
            let me = self.clone();
            let link = link.clone();
            tokio::spawn(async move { me.read_stream(recv, link).await });
        }
        link.closed.store(true, Ordering::Relaxed);
        // Requests that were waiting on this peer will not be answered.
        if let PeerId::Node(n) = &link.peer
            && self.peers.get(n).is_some_and(|p| p.link.read().as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)))
        {
            tracing::debug!(peer = %n, "link closed");
            self.fail_pending_to(n, "connection lost");
        }
    }

    async fn read_stream(self: Arc<Self>, mut recv: quinn::RecvStream, link: Arc<Link>) {
        let mut reader = FrameReader::new(self.tuning.frame_bytes_max as usize);
        let mut lane: Option<Box<dyn LaneInbound>> = None;
        loop {
            let chunk = match recv.read_chunk(256 << 10, true).await {
                Ok(Some(c)) => c,
                _ => return,
            };
            self.stats.bytes_in.add(chunk.bytes.len() as u64);
            reader.push(&chunk.bytes);
            loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        self.stats.frames_in.inc();
                        self.on_frame(frame, &link, &mut lane).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.stats.bad_frames.inc();
                        tracing::warn!(peer = %link.peer, error = %e, "malformed frame; closing the stream");
                        let _ = recv.stop(quinn::VarInt::from_u32(3));
                        return;
                    }
                }
            }
        }
    }

    /// The pending request `corr`, looked up once: removed when `take` (a final answer),
    /// else its stream sender cloned (an item). `Err` when `peer` is not the node it was
    /// sent to; `Ok(None)` when nothing is pending (a late answer, after a timeout).
    fn pending_for(&self, corr: u64, peer: &PeerId, take: bool) -> Result<Option<Pending>, ()> {
        let mut p = self.pending.lock();
        let Some((node, waiter)) = p.get(&corr) else { return Ok(None) };
        if !answer_accepted(node, peer) {
            return Err(());
        }
        Ok(match waiter {
            _ if take => p.remove(&corr).map(|(_, w)| w),
            Pending::Stream(tx) => Some(Pending::Stream(tx.clone())),
            Pending::Ask(_) => None,
        })
    }

    fn foreign_answer(&self, link: &Link) {
        self.stats.bad_frames.inc();
        tracing::warn!(peer = %link.peer, "an answer to a request this peer was not sent; ignored");
    }

    /// The stream's handler, made on its first request.
    fn lane<'a>(&self, lane: &'a mut Option<Box<dyn LaneInbound>>) -> Option<&'a mut Box<dyn LaneInbound>> {
        if lane.is_none() {
            *lane = self.inbound.get()?.lane();
        }
        lane.as_mut()
    }

    async fn on_frame(self: &Arc<Self>, frame: Frame, link: &Arc<Link>, lane: &mut Option<Box<dyn LaneInbound>>) {
        let from = match &link.peer {
            PeerId::Node(n) => n.clone(),
            PeerId::Client(c) | PeerId::Admin(c) => format!("client:{c}"),
        };
        if matches!(link.peer, PeerId::Node(_)) && self.chaos_verdict(&from) == Verdict::Drop {
            self.stats.chaos_dropped.inc();
            return;
        }
        match frame {
            Frame::Msg(env) => self.on_msg(env, link, lane),
            // An answer counts only from the node the request went to: another node or a
            // client cannot complete (or end) someone else's request by its id.
            Frame::Reply { corr, result } => match self.pending_for(corr, &link.peer, true) {
                Err(()) => self.foreign_answer(link),
                Ok(Some(Pending::Ask(tx))) => {
                    let _ = tx.send(result);
                }
                Ok(_) => {}
            },
            Frame::StreamItem { corr, payload } => match self.pending_for(corr, &link.peer, false) {
                Err(()) => self.foreign_answer(link),
                Ok(Some(Pending::Stream(tx))) => {
                    if tx.send(StreamEvent::Item(payload)).await.is_err() {
                        self.pending.lock().remove(&corr);
                        let _ = link.try_send(link.lane_for(corr), Frame::Cancel { corr });
                    }
                }
                Ok(_) => {}
            },
            Frame::StreamEnd { corr, result } => match self.pending_for(corr, &link.peer, true) {
                Err(()) => self.foreign_answer(link),
                Ok(Some(Pending::Stream(tx))) => {
                    let _ = tx.send(StreamEvent::End(result)).await;
                }
                Ok(_) => {}
            },
            Frame::Cancel { corr } => {
                let mut c = link.cancelled.lock();
                // Bounded: a cancel that raced its own answer is never settled; past the
                // cap the oldest knowledge goes (at worst a cancelled request still runs).
                if c.len() >= CANCELLED_MAX {
                    c.clear();
                }
                c.insert(corr);
            }
            Frame::JsonAsk { target, corr, timeout_ms, json, stream, trace } => {
                if let Some(l) = self.lane(lane) {
                    l.json_ask(link.clone(), target, corr, timeout_ms, json, stream, trace);
                }
            }
            Frame::JsonTell { target, json, trace } => {
                if let Some(l) = self.lane(lane) {
                    // At most once: a tell past the connection's in-flight bound is dropped.
                    match link.client_slot(&self.name) {
                        Ok(slot) => {
                            l.json_tell(ClientCall { peer: link.peer.clone(), _slot: slot }, target, json, trace)
                        }
                        Err(e) => tracing::debug!(peer = %link.peer, error = %e, "client JSON tell dropped"),
                    }
                }
            }
            Frame::JsonReply { .. } => {}
        }
    }

    /// Hands a request to the stream's handler, with the sink that answers it here.
    fn on_msg(&self, env: Envelope, link: &Arc<Link>, lane: &mut Option<Box<dyn LaneInbound>>) {
        let Some(l) = self.lane(lane) else { return };
        let corr = match env.request {
            RequestKind::Ask { corr, .. } | RequestKind::Stream { corr } => corr,
            RequestKind::Tell => 0,
        };
        let sink = Arc::new(LinkSink { link: link.clone(), lane: link.lane_for(corr) });
        let request = WireRequest::new(env.request, sink);
        let client = match &link.peer {
            PeerId::Node(_) => None,
            other => match link.client_slot(&self.name) {
                Ok(slot) => Some(ClientCall { peer: other.clone(), _slot: slot }),
                Err(e) => {
                    tracing::debug!(peer = %other, error = %e, "client request refused: too many in flight");
                    request.fail(e);
                    return;
                }
            },
        };
        l.request(env, request, client);
    }

    /// Fails every request waiting for an answer from `node`: its link closed or
    /// it was declared down, so the answer cannot come.
    pub fn fail_pending_to(&self, node: &str, reason: &str) {
        let failed: Vec<(u64, Pending)> = {
            let mut p = self.pending.lock();
            let ids: Vec<u64> = p.iter().filter(|(_, (n, _))| n == node).map(|(c, _)| *c).collect();
            ids.into_iter().filter_map(|c| p.remove(&c).map(|(_, w)| (c, w))).collect()
        };
        for (_, w) in failed {
            let e = RemoteError::Unreachable { node: node.to_string(), reason: reason.to_string() };
            match w {
                Pending::Ask(tx) => {
                    let _ = tx.send(Err(e));
                }
                Pending::Stream(tx) => {
                    let _ = tx.try_send(StreamEvent::End(Err(e)));
                }
            }
        }
    }

    /// Follows membership; the gossip driver calls it for every change, before anyone
    /// else hears of it. A member held down gets nothing more: its link is dropped,
    /// every request waiting on it fails now, and sends to it fail at once with
    /// [`RemoteError::NodeDown`] until it rejoins. A member that restarted (a new boot
    /// epoch) gets a fresh link.
    pub fn note_member(&self, node: &str, epoch: u64, state: MemberState) {
        let Some(p) = self.peers.get(node) else { return };
        let down = state == MemberState::Down;
        p.down.store(down, Ordering::Release);
        let before = p.epoch.swap(epoch, Ordering::AcqRel);
        if down {
            self.reset_peer(node, "member declared down");
        } else if before != 0 && before != epoch {
            self.reset_peer(node, "member restarted");
        }
    }

    /// Drops our link to `node` (it died or restarted): the next send reconnects
    /// instead of writing into a connection nobody reads.
    pub fn reset_peer(&self, node: &str, reason: &str) {
        if let Some(p) = self.peers.get(node) {
            if let Some(link) = p.link.write().take() {
                link.closed.store(true, Ordering::Relaxed);
                link.conn.close(quinn::VarInt::from_u32(4), reason.as_bytes());
            }
            *p.retry_at.lock() = None;
            p.backoff_ms.store(self.tuning.reconnect_backoff_min_ms, Ordering::Relaxed);
        }
        self.fail_pending_to(node, reason);
    }

    pub async fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"node stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn peer_of(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    tls::peer_from_cert(certs.first()?)
}

/// Whether an answer from `peer` may settle a request sent to node `asked`.
fn answer_accepted(asked: &str, peer: &PeerId) -> bool {
    matches!(peer, PeerId::Node(n) if n == asked)
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn only_the_node_asked_settles_a_request() {
        assert!(answer_accepted("n2", &PeerId::Node("n2".into())));
        assert!(!answer_accepted("n2", &PeerId::Node("n3".into())), "another node");
        assert!(!answer_accepted("n2", &PeerId::Client("n2".into())), "a client named like the node");
    }
}
