//! The `diag` system's wire protocol: a counter and an echo, for smoke tests and
//! benchmarks of the runtime itself. No I/O and no runtime here.

use serde::{Deserialize, Serialize};
use troupe_wire::Protocol;

pub struct Counter;

impl Protocol for Counter {
    type Msg = CounterMsg;
    type Reply = CounterReply;
    const NAME: &'static str = "diag.counter";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterMsg {
    Add {
        n: u64,
    },
    Get,
    /// Answers with the same bytes (payload-size experiments).
    Echo {
        bytes: Vec<u8>,
    },
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterReply {
    Count { total: u64, messages: u64, node: String },
    Echo { bytes: Vec<u8> },
}

/// The diag gateway: a WebSocket echo on `ports.diag` (`GET /ws/echo`), whose frames
/// go through this node's counter actor — the runtime's WebSocket service end to end.
pub struct Gateway;

impl Protocol for Gateway {
    type Msg = GatewayMsg;
    type Reply = GatewayReply;
    const NAME: &'static str = "diag.gateway";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayMsg {
    /// Where the gateway listens, and how many WebSocket sessions it holds.
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayReply {
    Status { addr: Option<String>, sessions: u64 },
}

/// The diag topic actor (one per node): subscribes to topics and publishes numbered
/// messages, to exercise the runtime's pub/sub across nodes in tests.
pub struct Topic;

impl Protocol for Topic {
    type Msg = TopicMsg;
    type Reply = TopicReply;
    const NAME: &'static str = "diag.topic";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TopicMsg {
    /// Subscribe this actor to `topic`.
    Subscribe { topic: String },
    /// Publish the numbers 1..=count on `topic` from a publisher named `publisher`
    /// (acknowledged: wait until every subscriber has each).
    Publish { topic: String, publisher: String, count: u64, acked: bool },
    /// What this actor received on `topic`: (publisher, seq, payload) in arrival order.
    Received { topic: String },
    /// The nodes with subscribers to `topic`, as this node knows them.
    Nodes { topic: String },
    /// Join this actor to the process group `group`.
    Join { group: String },
    /// The members of `group` across the cluster, as this node knows them.
    Members { group: String },
    /// A message arrived (from the subscription, not from clients).
    Got { topic: String, publisher: String, seq: u64, value: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TopicReply {
    Done,
    /// The last publish went to `nodes`; `subscribers` got each message (acknowledged
    /// publishes); `failed` nodes did not answer.
    Published {
        nodes: Vec<String>,
        subscribers: u64,
        failed: Vec<String>,
    },
    Received(Vec<(String, u64, u64)>),
    Nodes(Vec<String>),
    Members(Vec<String>),
}

/// The diag ledger (sharded, replicated): appends batches of entries with one batched
/// persist each, to check in tests that a batch survives a crash whole or not at all.
pub struct Ledger;

impl Protocol for Ledger {
    type Msg = LedgerMsg;
    type Reply = LedgerReply;
    const NAME: &'static str = "diag.ledger";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LedgerMsg {
    /// Appends entries (batch, 0..entries) in one batched persist.
    Append { batch: u64, entries: u32 },
    /// Every entry in the log, in order.
    Entries,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LedgerReply {
    /// Durable on a majority; `node` owns the ledger.
    Appended {
        node: String,
    },
    Entries {
        node: String,
        entries: Vec<(u64, u32)>,
    },
}

/// The diag keeper (sharded, replicated, remembered): counts its activations and keeps
/// the ids of the durable reminders it received, to check in tests that a remembered
/// entity comes back on its own after its node dies and that a reminder fires after a
/// crash.
pub struct Keeper;

impl Protocol for Keeper {
    type Msg = KeeperMsg;
    type Reply = KeeperReply;
    const NAME: &'static str = "diag.keeper";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeeperMsg {
    /// Where it runs, how often it was activated, which reminders it received.
    Status,
    /// Set durable reminder `id`: `Reminded { id }` comes back after `after_ms`, and
    /// then every `every_ms` when given.
    RemindMe { id: String, after_ms: u64, every_ms: Option<u64> },
    /// Cancel reminder `id`.
    Cancel { id: String },
    /// A reminder arrived (sent by the reminder bucket).
    Reminded { id: String },
    /// Stop on purpose (a passivation: a remembered entity is then forgotten).
    Sleep,
    /// The cluster's remembered entities, from the registry: (path, node).
    Remembered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeeperReply {
    Status {
        node: String,
        /// Activations so far, this one included (durable).
        activations: u64,
        /// Reminder ids received, in order, each with the node's clock (unix ms).
        reminded: Vec<(String, u64)>,
    },
    Done,
    /// Whether the cancelled reminder existed.
    Cancelled(bool),
    Remembered(Vec<(String, String)>),
}

/// The diag blobber (one per node): puts blobs of seeded pseudo-random bytes into the
/// runtime's blob store and reads them back, so tests and benchmarks can move large
/// blobs between nodes without sending them through a client.
pub struct Blobber;

impl Protocol for Blobber {
    type Msg = BlobberMsg;
    type Reply = BlobberReply;
    const NAME: &'static str = "diag.blobber";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobberMsg {
    /// Put `len` bytes made from `seed` (`bytes_of`), held by `holder`.
    Put { seed: u64, len: u64, holder: String },
    /// Read the blob back (through node `via`'s blob agent as a stream when given)
    /// and hash what arrived.
    Digest { blob: troupe_wire::Blob, via: Option<String> },
    /// Add a holder.
    Retain { blob: troupe_wire::Blob, holder: String },
    /// Remove a holder.
    Release { blob: troupe_wire::Blob, holder: String },
    /// The holders this node's copy of the manifest lists (`None`: no copy here).
    Holders { blob: troupe_wire::Blob },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlobberReply {
    /// Stored: the handle, the SHA-256 (hex) of the bytes and how long the put took.
    Stored {
        blob: troupe_wire::Blob,
        sha256: String,
        micros: u64,
    },
    /// Read back: the SHA-256 (hex) and length of what arrived, and how long it took.
    Digest {
        sha256: String,
        len: u64,
        micros: u64,
    },
    Holders(Option<Vec<String>>),
    Done,
    /// The blob store's error, in words.
    Failed(String),
}

/// `len` pseudo-random bytes from `seed` (xorshift64*; the same on every node).
pub fn bytes_of(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}
