//! One QUIC connection from a client to one node: lanes to write on, the requests
//! waiting for answers, and a reader that routes answers to them. When the
//! connection dies every waiter gets `Unreachable` at once.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
use troupe_wire::codec::{FrameReader, encode_frame};
use troupe_wire::{Frame, RemoteError};

/// Lanes (unidirectional streams) a client writes on.
const LANES: usize = 4;
/// Frames queued per lane before `send` reports back-pressure.
const LANE_QUEUE_CAP: usize = 1024;

/// One event of a stream as the client sees it.
pub(crate) enum Event {
    Item(Vec<u8>),
    End(Result<(), RemoteError>),
}

pub(crate) enum Waiter {
    Ask(oneshot::Sender<Result<Vec<u8>, RemoteError>>),
    Stream(mpsc::Sender<Event>),
    /// JSON replies: (text, last).
    Json(mpsc::Sender<Result<(String, bool), RemoteError>>),
}

pub(crate) struct Conn {
    pub node: String,
    conn: quinn::Connection,
    lanes: Vec<mpsc::Sender<Frame>>,
    pub pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    closed: Arc<AtomicBool>,
}

impl Conn {
    pub fn new(node: String, conn: quinn::Connection, frame_cap: usize) -> Arc<Conn> {
        let closed = Arc::new(AtomicBool::new(false));
        let pending: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::new(Mutex::new(HashMap::new()));
        let mut lanes = Vec::new();
        for _ in 0..LANES {
            let (tx, mut rx) = mpsc::channel::<Frame>(LANE_QUEUE_CAP);
            lanes.push(tx);
            let conn = conn.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut stream: Option<quinn::SendStream> = None;
                let mut buf = Vec::new();
                while let Some(f) = rx.recv().await {
                    buf.clear();
                    if encode_frame(&f, &mut buf, frame_cap).is_err() {
                        continue;
                    }
                    while let Ok(f) = rx.try_recv() {
                        let _ = encode_frame(&f, &mut buf, frame_cap);
                        if buf.len() > 256 << 10 {
                            break;
                        }
                    }
                    if stream.is_none() {
                        match conn.open_uni().await {
                            Ok(s) => stream = Some(s),
                            Err(_) => break,
                        }
                    }
                    if let Some(s) = stream.as_mut()
                        && s.write_all(&buf).await.is_err()
                    {
                        break;
                    }
                }
                closed.store(true, Ordering::Relaxed);
            });
        }
        let c = Arc::new(Conn { node, conn: conn.clone(), lanes, pending: pending.clone(), closed: closed.clone() });
        let node = c.node.clone();
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                tokio::spawn(read_stream(recv, pending.clone(), frame_cap));
            }
            closed.store(true, Ordering::Relaxed);
            let waiters: Vec<Waiter> = pending.lock().drain().map(|(_, w)| w).collect();
            let err = || RemoteError::Unreachable { node: node.clone(), reason: "connection lost".into() };
            for w in waiters {
                match w {
                    Waiter::Ask(tx) => {
                        let _ = tx.send(Err(err()));
                    }
                    Waiter::Stream(tx) => {
                        let _ = tx.try_send(Event::End(Err(err())));
                    }
                    Waiter::Json(tx) => {
                        let _ = tx.try_send(Err(err()));
                    }
                }
            }
        });
        c
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.conn.close_reason().is_some()
    }

    pub fn send(&self, lane_key: u64, frame: Frame) -> Result<(), RemoteError> {
        let lane = &self.lanes[(lane_key % LANES as u64) as usize];
        lane.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                RemoteError::QueueFull { node: self.node.clone(), cap: LANE_QUEUE_CAP as u64 }
            }
            mpsc::error::TrySendError::Closed(_) => {
                RemoteError::Unreachable { node: self.node.clone(), reason: "connection closed".into() }
            }
        })
    }

    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"client closing");
    }
}

async fn read_stream(mut recv: quinn::RecvStream, pending: Arc<Mutex<HashMap<u64, Waiter>>>, cap: usize) {
    let mut reader = FrameReader::new(cap);
    loop {
        match recv.read_chunk(256 << 10, true).await {
            Ok(Some(c)) => reader.push(&c.bytes),
            _ => return,
        }
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => dispatch(frame, &pending).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed frame from node; dropping the stream");
                    return;
                }
            }
        }
    }
}

async fn dispatch(frame: Frame, pending: &Mutex<HashMap<u64, Waiter>>) {
    match frame {
        Frame::Reply { corr, result } => {
            if let Some(Waiter::Ask(tx)) = pending.lock().remove(&corr) {
                let _ = tx.send(result);
            }
        }
        Frame::StreamItem { corr, payload } => {
            let tx = match pending.lock().get(&corr) {
                Some(Waiter::Stream(tx)) => Some(tx.clone()),
                _ => None,
            };
            if let Some(tx) = tx
                && tx.send(Event::Item(payload)).await.is_err()
            {
                pending.lock().remove(&corr);
            }
        }
        Frame::StreamEnd { corr, result } => {
            let w = pending.lock().remove(&corr);
            if let Some(Waiter::Stream(tx)) = w {
                let _ = tx.send(Event::End(result)).await;
            }
        }
        Frame::JsonReply { corr, result, last } => {
            let tx = {
                let mut p = pending.lock();
                let tx = match p.get(&corr) {
                    Some(Waiter::Json(tx)) => Some(tx.clone()),
                    _ => None,
                };
                if last || result.is_err() {
                    p.remove(&corr);
                }
                tx
            };
            if let Some(tx) = tx {
                let _ = tx.send(result.map(|s| (s, last))).await;
            }
        }
        _ => {}
    }
}
