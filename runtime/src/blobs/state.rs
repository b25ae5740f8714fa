//! The blob store's protocol and per-node state: the messages between blob agents
//! (`/troupe/blobs/<node>`), where a hash is kept (its homes), and the bookkeeping the
//! collector needs.

use super::disk::Disk;
use crate::config::BlobsConfig;
use crate::metrics::{Counter, Gauge};
use crate::node::Node;
use crate::placement;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_core::directory::Roster;
use troupe_wire::{ActorPath, Blob, Bytes, Hash, Manifest, Protocol, RemoteError};

pub(crate) struct BlobProto;

impl Protocol for BlobProto {
    type Msg = BlobMsg;
    type Reply = BlobReply;
    const NAME: &'static str = "troupe.blobs";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BlobMsg {
    /// Keep this chunk (the receiver checks the hash and that it is one of its homes).
    Put { hash: Hash, bytes: Bytes },
    /// Your copy of this chunk.
    Get { hash: Hash },
    /// Keep this manifest, held by `holder` since `at_ms` (the asking node's clock).
    PutManifest { root: Hash, manifest: Manifest, holder: String, at_ms: u64 },
    /// Your copy of this manifest.
    GetManifest { root: Hash },
    /// `holder` lets go of this blob.
    Release { root: Hash, holder: String, at_ms: u64 },
    /// The collector of another home of `root` shares its holder changes (gc.rs):
    /// merge them and answer with yours.
    Sync { root: Hash, holders: std::collections::BTreeMap<String, (bool, u64)> },
    /// Another home's record of a held blob this home lacks: keep it.
    Restore { root: Hash, manifest: Manifest, holders: std::collections::BTreeMap<String, (bool, u64)> },
    /// Stream the blob's bytes, chunk by chunk (any node serves it).
    Read { blob: Blob },
    /// The collector of `from` starts round `round` (see gc.rs).
    GcBegin { from: String, epoch: u64, round: u64 },
    /// These chunks are named by a live manifest.
    GcMark { hashes: Vec<Hash> },
    /// The collector of `from` sent every mark of round `round` to this node.
    GcDone { from: String, epoch: u64, round: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum BlobReply {
    Stored,
    Chunk(Bytes),
    Missing,
    Manifest(Manifest),
    Released,
    /// A home's holder changes after a `Sync`.
    Holders(std::collections::BTreeMap<String, (bool, u64)>),
    Refused(String),
    /// One chunk's bytes of a `Read` stream.
    Data(Bytes),
    Noted,
}

/// How long one chunk transfer may take.
pub(crate) const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request to a node not live in this node's view may take.
pub(crate) const DOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Metrics of the blob store on one node.
pub(crate) struct Stats {
    pub(crate) chunks_written: Counter,
    pub(crate) bytes_written: Counter,
    pub(crate) chunks_read_local: Counter,
    pub(crate) chunks_read_remote: Counter,
    pub(crate) repaired: Counter,
    pub(crate) damaged: Counter,
    pub(crate) collected_chunks: Counter,
    pub(crate) collected_manifests: Counter,
    pub(crate) chunks: Gauge,
    pub(crate) bytes: Gauge,
}

/// What the collector remembers between rounds, in memory (a restart starts afresh,
/// which only delays collection).
pub(crate) struct GcState {
    pub(crate) boot: Instant,
    /// Chunks stored (or stored again) since boot, and when.
    pub(crate) written: HashMap<Hash, Instant>,
    /// When each chunk was last marked.
    pub(crate) marked: HashMap<Hash, Instant>,
    /// Per node: the round it began, and when its begin arrived here.
    pub(crate) begun: HashMap<String, (u64, u64, Instant)>,
    /// Per node: when the begin of its latest completed round arrived here.
    pub(crate) completed: HashMap<String, Instant>,
}

/// The blob store of one node.
pub(crate) struct Shared {
    pub(crate) disk: Arc<Disk>,
    pub(crate) cfg: BlobsConfig,
    pub(crate) stats: Stats,
    pub(crate) gc: Mutex<GcState>,
    /// Updates of one manifest record are serialized (by the root's first byte).
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Every node of the cluster file.
    pub(crate) nodes: Vec<String>,
    /// Writes to homes in flight from this node, each holding its bytes (a put's
    /// majority and the copies that finish after it): a slow home makes puts wait,
    /// not memory grow.
    pub(crate) writes: Arc<tokio::sync::Semaphore>,
}

/// Writes to homes one node has in flight at most (about as many MiB).
pub(crate) const WRITES_IN_FLIGHT: usize = 256;

impl Shared {
    pub(crate) fn of(node: &Node) -> Result<Arc<Shared>, String> {
        node.extension(|| {
            let cluster = &node.loaded().cluster;
            let dir = cluster.node_data_dir(node.name()).join("blobs");
            let disk = Disk::open(&dir).map_err(|e| format!("cannot open the blob store in {}: {e}", dir.display()))?;
            let m = node.metrics();
            let stats = Stats {
                chunks_written: m.counter("troupe_blob_chunks_written_total", "Blob chunks this node stored", &[]),
                bytes_written: m.counter(
                    "troupe_blob_bytes_written_total",
                    "Bytes of blob chunks this node stored",
                    &[],
                ),
                chunks_read_local: m.counter(
                    "troupe_blob_chunks_read_total",
                    "Blob chunks this node read, by where they came from",
                    &[("from", "local")],
                ),
                chunks_read_remote: m.counter(
                    "troupe_blob_chunks_read_total",
                    "Blob chunks this node read, by where they came from",
                    &[("from", "remote")],
                ),
                repaired: m.counter(
                    "troupe_blob_chunks_repaired_total",
                    "Blob chunk copies written again after a read found them missing",
                    &[],
                ),
                damaged: m.counter(
                    "troupe_blob_chunks_damaged_total",
                    "Blob chunk files whose bytes no longer matched their hash (deleted)",
                    &[],
                ),
                collected_chunks: m.counter(
                    "troupe_blob_collected_chunks_total",
                    "Blob chunks deleted because no live manifest named them",
                    &[],
                ),
                collected_manifests: m.counter(
                    "troupe_blob_collected_manifests_total",
                    "Blob manifests deleted after their last holder released them",
                    &[],
                ),
                chunks: m.gauge("troupe_blob_chunks", "Blob chunks on this node's disk (after the last round)", &[]),
                bytes: m.gauge(
                    "troupe_blob_bytes",
                    "Bytes of blob chunks on this node's disk (after the last round)",
                    &[],
                ),
            };
            let now = Instant::now();
            Ok(Shared {
                disk: Arc::new(disk),
                cfg: cluster.blobs.clone(),
                stats,
                gc: Mutex::new(GcState {
                    boot: now,
                    written: HashMap::new(),
                    marked: HashMap::new(),
                    begun: HashMap::new(),
                    completed: HashMap::new(),
                }),
                locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                nodes: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
                writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            })
        })
    }

    pub(crate) fn lock(&self, root: &Hash) -> &tokio::sync::Mutex<()> {
        &self.locks[root.0[0] as usize % self.locks.len()]
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.cfg.grace_ms)
    }
}

/// The nodes that keep `hash` (a chunk's or a manifest's): the first
/// `replication_factor` nodes with the blob role in the hash's rendezvous order over the
/// cluster file, live or not. Every node computes the same list.
pub(crate) fn homes(node: &Node, cfg: &BlobsConfig, hash: &Hash) -> Vec<String> {
    let key = format!("blob/{}", hash.to_hex());
    let cluster = &node.loaded().cluster;
    placement::top(&key, cluster.members().into_iter(), cfg.role.as_deref(), cfg.replication_factor as usize)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The homes of `hash` in the order to read from: this node first, then those live in
/// its view, then the rest.
pub(crate) fn read_order(node: &Node, homes: &[String]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = homes.iter().map(|h| (h.clone(), is_live(node, h))).collect();
    out.sort_by_key(|(h, live)| (h != node.name(), !live));
    out
}

/// Whether `to` is live in this node's view (or is this node).
pub(crate) fn is_live(node: &Node, to: &str) -> bool {
    to == node.name() || node.candidates_shared().iter().any(|c| c.name == to)
}

/// Asks the blob agent of node `to`; a node not live in this node's view gets a short
/// timeout (it is tried, as the view may lag, but not waited for).
pub(crate) async fn call(node: &Node, to: &str, msg: BlobMsg, timeout: Duration) -> Result<BlobReply, RemoteError> {
    let path =
        ActorPath::new("troupe", "blobs", to).map_err(|e| RemoteError::Invalid(format!("node name `{to}`: {e}")))?;
    let timeout = if is_live(node, to) { timeout } else { timeout.min(DOWN_TIMEOUT) };
    node.handle::<BlobProto>(path).ask_timeout(msg, timeout).await
}
