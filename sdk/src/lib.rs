//! troupe-client: talk to a troupe cluster from any Rust program.
//!
//! The client connects over QUIC with a client certificate from the cluster CA
//! (`troupe certs client <name>`) to any node; that node forwards requests to
//! wherever the target actor lives. If the node dies, the client moves to another
//! one. Messages are typed by protocol (the same `Protocol` types the actors use),
//! or JSON for tools.
//!
//! ```no_run
//! # async fn demo() -> Result<(), troupe_client::ClientError> {
//! use troupe_client::{Client, ClientConfig};
//! use troupe_wire::introspect::{NodeAgent, NodeRequest};
//! let cfg = ClientConfig::from_cluster_file("cluster.toml".as_ref(), "cli")?;
//! let client = Client::connect(cfg).await?;
//! let path = "/troupe/node/n1".parse().unwrap();
//! let health = client.ask::<NodeAgent>(&path, &NodeRequest::Health).await?;
//! println!("{health:?}");
//! # Ok(()) }
//! ```
//!
//! Delivery: a `tell` is at most once. An `ask` whose connection breaks while
//! waiting returns `Unreachable` (it may or may not have been handled); the next
//! call goes to another node.

mod config;
mod conn;
pub mod ws;

pub use config::{ClientConfig, ConfigError};
pub use troupe_wire as wire;
pub use troupe_wire::{ActorPath, Protocol, RemoteError};

use conn::{Conn, Event, Waiter};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use troupe_wire::introspect::{NodeAgent, NodeReply, NodeRequest, SpanRecord};
use troupe_wire::{Envelope, Frame, RequestKind, TraceId, codec};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("encoding: {0}")]
    Codec(String),
}

impl ClientError {
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ClientError::Remote(r) => Some(r),
            _ => None,
        }
    }
}

/// How long a node that failed is skipped.
const BAD_NODE_FOR: Duration = Duration::from_secs(3);

pub struct Client {
    cfg: ClientConfig,
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    corr: AtomicU64,
    bad: parking_lot::Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("nodes", &self.cfg.nodes).finish()
    }
}

fn quic_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cfg.ca_cert).map_err(|e| tls(&format!("{}: {e}", cfg.ca_cert.display())))? {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let chain = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| tls(&format!("{}: {e}", cfg.cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| tls(&format!("{}: {e}", cfg.key.display())))?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls(&e))?;
    c.alpn_protocols = vec![b"troupe/1".to_vec()];
    let mut q =
        quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(|e| tls(&e))?));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(3000))));
    q.transport_config(Arc::new(t));
    Ok(q)
}

impl Client {
    /// Connects to the first reachable node of `cfg`.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let quic = quic_config(&cfg)?;
        let endpoint =
            quinn::Endpoint::client(([0, 0, 0, 0], 0).into()).map_err(|e| ClientError::Tls(e.to_string()))?;
        let c = Client {
            cfg,
            endpoint,
            quic,
            current: tokio::sync::Mutex::new(None),
            corr: AtomicU64::new(1),
            bad: parking_lot::Mutex::new(HashMap::new()),
        };
        c.conn().await?;
        Ok(c)
    }

    /// The node this client currently talks to.
    pub async fn node(&self) -> Option<String> {
        self.current.lock().await.as_ref().map(|c| c.node.clone())
    }

    async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            self.bad.lock().insert(c.node.clone(), Instant::now() + BAD_NODE_FOR);
        }
        *cur = None;
        let now = Instant::now();
        let mut order: Vec<(String, std::net::SocketAddr)> = self.cfg.nodes.clone();
        // Nodes that failed recently go last, not away: they may be all we have.
        order.sort_by_key(|(n, _)| self.bad.lock().get(n).is_some_and(|t| *t > now));
        let mut last_err = String::from("no nodes");
        for (name, addr) in order {
            let server = format!("{name}.node.troupe");
            let attempt = async {
                let connecting =
                    self.endpoint.connect_with(self.quic.clone(), addr, &server).map_err(|e| e.to_string())?;
                connecting.await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
                Ok(Ok(q)) => {
                    let c = Conn::new(name.clone(), q, self.cfg.frame_bytes_max);
                    self.bad.lock().remove(&name);
                    *cur = Some(c.clone());
                    tracing::debug!(node = %name, "connected");
                    return Ok(c);
                }
                Ok(Err(e)) => last_err = format!("{name}: {e}"),
                Err(_) => last_err = format!("{name}: connect timed out"),
            }
            self.bad.lock().insert(name, now + BAD_NODE_FOR);
        }
        Err(RemoteError::Unreachable {
            node: "*".into(),
            reason: format!("no node of the cluster answered (last: {last_err})"),
        }
        .into())
    }

    /// Sends `frame` on a live connection, moving to another node if this one is
    /// gone. Returns the connection used.
    async fn send(&self, key: u64, make: impl Fn() -> Frame) -> Result<Arc<Conn>, ClientError> {
        let mut tries = 0;
        loop {
            let c = self.conn().await?;
            match c.send(key, make()) {
                Ok(()) => return Ok(c),
                Err(RemoteError::Unreachable { .. }) if tries < self.cfg.nodes.len() => {
                    tries += 1;
                    self.forget(&c).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn forget(&self, c: &Arc<Conn>) {
        let mut cur = self.current.lock().await;
        if cur.as_ref().is_some_and(|x| Arc::ptr_eq(x, c)) {
            self.bad.lock().insert(c.node.clone(), Instant::now() + BAD_NODE_FOR);
            c.close();
            *cur = None;
        }
    }

    fn next_corr(&self) -> u64 {
        self.corr.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh sampled trace id: spans of this request are recorded on every node
    /// it touches (`troupe trace <id>`), in memory, and on disk for one trace in
    /// `[tracing] keep_one_in`.
    pub fn new_trace() -> TraceId {
        (rand::random::<u64>() | 1) & !2
    }

    /// A fresh sampled trace id whose spans every node also writes to disk (kept for
    /// `[tracing] retention_ms`, read back after restarts, exported over OTLP): for
    /// requests someone will look at, as `troupe ask` sends.
    pub fn new_kept_trace() -> TraceId {
        rand::random::<u64>() | 3
    }

    pub async fn tell<P: Protocol>(&self, path: &ActorPath, msg: &P::Msg) -> Result<(), ClientError> {
        let payload = codec::encode(msg).map_err(|e| ClientError::Codec(e.to_string()))?;
        let trace = Self::new_trace();
        let key = lane_key(path);
        self.send(key, || {
            Frame::Msg(Envelope {
                target: path.clone(),
                sender: None,
                request: RequestKind::Tell,
                trace,
                payload: payload.clone(),
            })
        })
        .await?;
        Ok(())
    }

    pub async fn ask<P: Protocol>(&self, path: &ActorPath, msg: &P::Msg) -> Result<P::Reply, ClientError> {
        self.ask_timeout::<P>(path, msg, self.cfg.ask_timeout).await
    }

    pub async fn ask_timeout<P: Protocol>(
        &self,
        path: &ActorPath,
        msg: &P::Msg,
        timeout: Duration,
    ) -> Result<P::Reply, ClientError> {
        let payload = codec::encode(msg).map_err(|e| ClientError::Codec(e.to_string()))?;
        let bytes = self.ask_raw(path, payload, timeout, Self::new_trace()).await?;
        codec::decode(&bytes).map_err(|e| ClientError::Codec(format!("reply from {path}: {e}")))
    }

    /// Asks with an already encoded message; returns the encoded reply.
    pub async fn ask_raw(
        &self,
        path: &ActorPath,
        payload: Vec<u8>,
        timeout: Duration,
        trace: TraceId,
    ) -> Result<Vec<u8>, ClientError> {
        let corr = self.next_corr();
        let (tx, rx) = oneshot::channel();
        let timeout_ms = timeout.as_millis().min(u32::MAX as u128) as u32;
        let c = self.conn().await?;
        c.pending.lock().insert(corr, Waiter::Ask(tx));
        let c2 = self
            .send(lane_key(path), || {
                Frame::Msg(Envelope {
                    target: path.clone(),
                    sender: None,
                    request: RequestKind::Ask { corr, timeout_ms },
                    trace,
                    payload: payload.clone(),
                })
            })
            .await?;
        if !Arc::ptr_eq(&c, &c2) {
            // Moved to another node while sending: wait there instead.
            let w = c.pending.lock().remove(&corr);
            if let Some(w) = w {
                c2.pending.lock().insert(corr, w);
            }
        }
        match tokio::time::timeout(timeout + Duration::from_millis(200), rx).await {
            Ok(Ok(r)) => r.map_err(Into::into),
            Ok(Err(_)) => {
                Err(RemoteError::Unreachable { node: c2.node.clone(), reason: "connection lost".into() }.into())
            }
            Err(_) => {
                c2.pending.lock().remove(&corr);
                let _ = c2.send(corr, Frame::Cancel { corr });
                Err(RemoteError::Timeout { path: path.to_string(), ms: timeout.as_millis() as u64 }.into())
            }
        }
    }

    /// A streamed request; items arrive through the returned stream.
    pub async fn stream<P: Protocol>(
        &self,
        path: &ActorPath,
        msg: &P::Msg,
    ) -> Result<ClientStream<P::Reply>, ClientError> {
        let payload = codec::encode(msg).map_err(|e| ClientError::Codec(e.to_string()))?;
        let corr = self.next_corr();
        let (tx, rx) = mpsc::channel(self.cfg.stream_buffer);
        let c = self.conn().await?;
        c.pending.lock().insert(corr, Waiter::Stream(tx));
        let trace = Self::new_trace();
        c.send(
            lane_key(path),
            Frame::Msg(Envelope {
                target: path.clone(),
                sender: None,
                request: RequestKind::Stream { corr },
                trace,
                payload,
            }),
        )?;
        Ok(ClientStream { rx, conn: c, corr, done: false, _p: std::marker::PhantomData })
    }

    /// Asks with a JSON message; the node converts it with the target's protocol.
    /// Returns the reply as JSON.
    pub async fn ask_json(
        &self,
        path: &ActorPath,
        json: &str,
        timeout: Duration,
        trace: TraceId,
    ) -> Result<String, ClientError> {
        let mut s = self.json_request(path, json, timeout, false, trace).await?;
        match s.recv().await {
            Some(Ok((text, _))) => Ok(text),
            Some(Err(e)) => Err(e.into()),
            None => Err(RemoteError::NoReply { path: path.to_string() }.into()),
        }
    }

    /// A streamed JSON request: each item is one JSON reply; the last has `true`.
    pub async fn stream_json(
        &self,
        path: &ActorPath,
        json: &str,
        trace: TraceId,
    ) -> Result<mpsc::Receiver<Result<(String, bool), RemoteError>>, ClientError> {
        self.json_request(path, json, self.cfg.ask_timeout, true, trace).await
    }

    async fn json_request(
        &self,
        path: &ActorPath,
        json: &str,
        timeout: Duration,
        stream: bool,
        trace: TraceId,
    ) -> Result<mpsc::Receiver<Result<(String, bool), RemoteError>>, ClientError> {
        let corr = self.next_corr();
        let (tx, rx) = mpsc::channel(self.cfg.stream_buffer);
        let c = self.conn().await?;
        c.pending.lock().insert(corr, Waiter::Json(tx));
        let timeout_ms = timeout.as_millis().min(u32::MAX as u128) as u32;
        let frame = Frame::JsonAsk { target: path.clone(), corr, timeout_ms, json: json.to_string(), stream, trace };
        if let Err(e) = c.send(lane_key(path), frame) {
            c.pending.lock().remove(&corr);
            self.forget(&c).await;
            return Err(e.into());
        }
        Ok(rx)
    }

    /// Fire and forget with a JSON message.
    pub async fn tell_json(&self, path: &ActorPath, json: &str, trace: TraceId) -> Result<(), ClientError> {
        self.send(lane_key(path), || Frame::JsonTell { target: path.clone(), json: json.to_string(), trace }).await?;
        Ok(())
    }

    /// Asks node `node`'s agent (introspection, chaos).
    pub async fn node_request(&self, node: &str, req: NodeRequest) -> Result<NodeReply, ClientError> {
        let path = ActorPath::new("troupe", "node", node).map_err(|e| ClientError::Codec(e.to_string()))?;
        self.ask::<NodeAgent>(&path, &req).await
    }

    /// Every span of trace `trace` the cluster's nodes keep (`[tracing] retention_ms`,
    /// durable across restarts), by start time, with the nodes that did not answer
    /// (their spans are missing) and why.
    pub async fn trace(&self, trace: TraceId) -> (Vec<SpanRecord>, Vec<(String, ClientError)>) {
        let mut spans = Vec::new();
        let mut missing = Vec::new();
        for n in self.nodes() {
            match self.node_request(&n, NodeRequest::Trace { trace }).await {
                Ok(NodeReply::Trace(s)) => spans.extend(s),
                Ok(other) => missing.push((n, ClientError::Codec(format!("answered {other:?}")))),
                Err(e) => missing.push((n, e)),
            }
        }
        spans.sort_by_key(|s| s.start_unix_us);
        (spans, missing)
    }

    /// Node names of the cluster file.
    pub fn nodes(&self) -> Vec<String> {
        self.cfg.nodes.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn lane_key(path: &ActorPath) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// The client's end of a streamed request. Dropping it cancels the producer.
pub struct ClientStream<R> {
    rx: mpsc::Receiver<Event>,
    conn: Arc<Conn>,
    corr: u64,
    done: bool,
    _p: std::marker::PhantomData<fn() -> R>,
}

impl<R: serde::de::DeserializeOwned> ClientStream<R> {
    /// The next item; `None` once the stream ended successfully.
    pub async fn next(&mut self) -> Option<Result<R, ClientError>> {
        if self.done {
            return None;
        }
        match self.rx.recv().await {
            Some(Event::Item(b)) => Some(codec::decode(&b).map_err(|e| ClientError::Codec(e.to_string()))),
            Some(Event::End(Ok(()))) => {
                self.done = true;
                None
            }
            Some(Event::End(Err(e))) => {
                self.done = true;
                Some(Err(e.into()))
            }
            None => {
                self.done = true;
                Some(Err(
                    RemoteError::Unreachable { node: self.conn.node.clone(), reason: "connection lost".into() }.into()
                ))
            }
        }
    }
}

impl<R> Drop for ClientStream<R> {
    fn drop(&mut self) {
        if !self.done && self.conn.pending.lock().remove(&self.corr).is_some() {
            let _ = self.conn.send(self.corr, Frame::Cancel { corr: self.corr });
        }
    }
}
