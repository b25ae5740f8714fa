//! Durable state on redb: per actor, an append-only log and a snapshot.
//!
//! One redb file per node, one writer thread. Writers hand their operations to the
//! thread, which commits everything waiting in one transaction (group commit) with
//! `Durability::Immediate` and only then answers: when `append` returns, the entry
//! is on disk. redb commits atomically, so after `kill -9` a reader sees each
//! transaction entirely or not at all — nothing half-written.
//!
//! Invariants:
//! - Log keys are (actor path, sequence number); a snapshot at sequence `s` removes
//!   the log entries up to `s` in the same transaction.
//! - A replicated path's terms (`Terms`) live beside its log and are written in the
//!   same transaction as the data they describe; `Remove` keeps them (a replica
//!   never forgets a promise).
//! - The writer's queue is bounded (`WRITE_QUEUE_CAP`): a burst waits, memory does not
//!   grow.
//! - [`Store::version`] answers from memory what the disk holds for a path (terms, last
//!   sequence number, snapshot): the writer applies every committed operation to the
//!   remembered versions, and a reader remembers what it read only if no commit landed
//!   while it read (`VersionCache`).

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use troupe_core::replication::Terms;

const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
const SNAP: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("snapshot");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Per replicated path: the terms this replica promised and accepted (bincode of
/// `troupe_core::replication::Terms`), committed with the data they describe.
const TERMS: TableDefinition<&str, &[u8]> = TableDefinition::new("terms");

/// Operations waiting for the writer, in operations (not bytes).
pub const WRITE_QUEUE_CAP: usize = 4096;
/// Most operations folded into one transaction.
const BATCH_OPS_MAX: usize = 1024;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The state file could not be opened or created, e.g. because another process
    /// holds it.
    #[error("cannot open the state file {path}: {reason}")]
    Open {
        /// The state file.
        path: PathBuf,
        /// What went wrong, in words.
        reason: String,
    },
    /// A transaction failed: none of its operations took effect, nor did those of
    /// the other writes batched with it.
    #[error("state write failed: {0}")]
    Write(String),
    /// Reading the state file or decoding what it holds failed.
    #[error("state read failed: {0}")]
    Read(String),
    /// The writer thread is gone (the store was closed or the node is shutting
    /// down); the write did not happen.
    #[error("the state writer has stopped (node shutting down)")]
    Closed,
    /// A newer owner of the path holds it (a replica promised a newer term): this
    /// actor must recover (a new election) before it serves again.
    #[error("deposed: {0}")]
    Deposed(String),
}

/// One change to the store; a [`Store::write`] applies a list of them in one
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    /// Add (or overwrite) the log entry `seq` of `path`.
    Append {
        /// Actor path the entry belongs to.
        path: String,
        /// Sequence number of the entry.
        seq: u64,
        /// The entry, as the actor encoded it.
        bytes: Vec<u8>,
    },
    /// Replace the snapshot and drop log entries up to `seq`.
    Snapshot {
        /// Actor path the snapshot belongs to.
        path: String,
        /// Last sequence number the snapshot covers.
        seq: u64,
        /// The snapshot, as the actor encoded it.
        bytes: Vec<u8>,
    },
    /// Forget everything about `path`.
    Remove {
        /// Actor path whose snapshot and log are dropped (its terms are kept).
        path: String,
    },
    /// Set a node-wide metadata value.
    Meta {
        /// Metadata key.
        key: String,
        /// The value, replacing any earlier one.
        bytes: Vec<u8>,
    },
    /// Record the terms of a replicated `path`.
    Terms {
        /// Replicated actor path.
        path: String,
        /// The terms this replica promised and accepted.
        terms: Terms,
    },
}

struct WriteReq {
    ops: Vec<WriteOp>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// What is durable for one actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// The latest snapshot as (sequence number, bytes), if one was taken.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Log entries after the snapshot, in order.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// The replica's terms for this path (default for unreplicated paths).
    #[serde(default)]
    pub terms: Terms,
}

impl troupe_core::replication::Versioned for Recovered {
    fn last_seq(&self) -> u64 {
        Recovered::last_seq(self)
    }
}

impl Recovered {
    /// The operations that make another store hold exactly this data (not the terms).
    pub fn as_ops(&self, path: &str) -> Vec<WriteOp> {
        let mut ops = vec![WriteOp::Remove { path: path.to_string() }];
        if let Some((seq, bytes)) = &self.snapshot {
            ops.push(WriteOp::Snapshot { path: path.to_string(), seq: *seq, bytes: bytes.clone() });
        }
        for (seq, bytes) in &self.entries {
            ops.push(WriteOp::Append { path: path.to_string(), seq: *seq, bytes: bytes.clone() });
        }
        ops
    }

    /// The highest sequence number covered (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map(|e| e.0).or(self.snapshot.as_ref().map(|s| s.0)).unwrap_or(0)
    }

    /// Where this copy stands: its terms, last sequence number and snapshot.
    pub fn version(&self) -> Version {
        Version {
            terms: self.terms.clone(),
            last_seq: self.last_seq(),
            snapshot_at: self.snapshot.as_ref().map_or(0, |s| s.0),
        }
    }

    /// The same data, without the terms (what replicas compare and hand over).
    pub fn data(&self) -> Recovered {
        Recovered { terms: Terms::default(), ..self.clone() }
    }
}

/// Where a path's copy stands, without its data ([`Store::version`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// The replica's terms for the path.
    pub terms: Terms,
    /// The highest sequence number covered (0 when empty), as [`Recovered::last_seq`].
    pub last_seq: u64,
    /// The sequence number of the snapshot (0 without one).
    pub snapshot_at: u64,
}

/// A remembered version, with the highest key in the path's log (entries at or below
/// the snapshot included: they stay on disk until a snapshot covers them, and a later
/// snapshot below them keeps them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    version: Version,
    log_last: Option<u64>,
}

impl Cached {
    /// After `op` (as the store applies it), when `op` is about this path.
    fn apply(&mut self, op: &WriteOp) {
        let v = &mut self.version;
        match op {
            WriteOp::Append { seq, .. } => self.log_last = Some(self.log_last.map_or(*seq, |l| l.max(*seq))),
            WriteOp::Snapshot { seq, .. } => {
                v.snapshot_at = *seq;
                // The log up to `seq` goes; a key above it (the highest) stays.
                self.log_last = self.log_last.filter(|l| l > seq);
            }
            WriteOp::Remove { .. } => {
                v.snapshot_at = 0;
                self.log_last = None;
            }
            WriteOp::Terms { terms, .. } => v.terms = terms.clone(),
            WriteOp::Meta { .. } => {}
        }
        v.last_seq = self.log_last.unwrap_or(0).max(v.snapshot_at);
    }
}

fn op_path(op: &WriteOp) -> Option<&str> {
    match op {
        WriteOp::Append { path, .. }
        | WriteOp::Snapshot { path, .. }
        | WriteOp::Remove { path }
        | WriteOp::Terms { path, .. } => Some(path),
        WriteOp::Meta { .. } => None,
    }
}

/// Paths whose version is remembered at most (past it the cache starts over).
const VERSION_CACHE_CAP: usize = 100_000;

/// The versions of recently checked paths, kept current by the writer after each
/// commit (replication checks one on every write; reading it from redb each time
/// cost more CPU than the rest of the check). **Invariant:** an entry equals what
/// `version_on_disk` would read: the writer applies every committed operation to it,
/// and a reader inserts what it read only if no commit landed meanwhile (`commits`).
/// Applying a batch again to a version that already has it changes nothing.
#[derive(Default)]
struct VersionCache {
    map: std::collections::HashMap<String, Cached>,
    commits: u64,
}

/// A node's state file: per actor path a snapshot and a log, written by one writer
/// thread with group commit. Clones share the same file and writer.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    versions: Arc<parking_lot::Mutex<VersionCache>>,
    tx: mpsc::Sender<WriteReq>,
    path: PathBuf,
    writer: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the state file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |reason: String| StoreError::Open { path: path.to_path_buf(), reason };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                err("it is already open (is another node using the same data_dir?)".into())
            }
            other => err(other.to_string()),
        })?;
        // Create the tables so read transactions never meet a missing one.
        let w = db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            w.open_table(LOG).map_err(|e| err(e.to_string()))?;
            w.open_table(SNAP).map_err(|e| err(e.to_string()))?;
            w.open_table(META).map_err(|e| err(e.to_string()))?;
            w.open_table(TERMS).map_err(|e| err(e.to_string()))?;
        }
        w.commit().map_err(|e| err(e.to_string()))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAP);
        let (wdb, versions) = (db.clone(), Arc::new(parking_lot::Mutex::new(VersionCache::default())));
        let wversions = versions.clone();
        let writer = std::thread::Builder::new()
            .name("troupe-store".into())
            .spawn(move || writer_loop(wdb, wversions, rx))
            .map_err(|e| err(e.to_string()))?;
        Ok(Store {
            db,
            versions,
            tx,
            path: path.to_path_buf(),
            writer: Arc::new(parking_lot::Mutex::new(Some(writer))),
        })
    }

    /// Closes the file: waits for queued writes, then releases the lock so another
    /// process may open it. Other clones of this store must be dropped first.
    pub fn close(self) {
        let Store { db, tx, writer, .. } = self;
        drop(tx);
        drop(db);
        if let Some(h) = writer.lock().take() {
            let _ = h.join();
        }
    }

    /// Applies `ops` atomically and durably.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(WriteReq { ops, done }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The same, for code that is not async (tests, tools). Never call it from
    /// inside the async runtime.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx.blocking_send(WriteReq { ops, done }).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Appends log entry `seq` of `path`; returns once it is on disk.
    pub async fn append(&self, path: &str, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.write(vec![WriteOp::Append { path: path.to_string(), seq, bytes }]).await
    }

    /// Stores the snapshot of `path` at `seq` and drops its log entries up to `seq`;
    /// returns once it is on disk.
    pub async fn snapshot(&self, path: &str, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.write(vec![WriteOp::Snapshot { path: path.to_string(), seq, bytes }]).await
    }

    /// Everything durable for `path`.
    pub fn load(&self, path: &str) -> Result<Recovered, StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        let snap = r.open_table(SNAP).map_err(|e| rerr(&e))?;
        let snapshot = snap.get(path).map_err(|e| rerr(&e))?.map(|g| {
            let (seq, bytes) = g.value();
            (seq, bytes.to_vec())
        });
        let from = snapshot.as_ref().map(|s| s.0 + 1).unwrap_or(0);
        let log = r.open_table(LOG).map_err(|e| rerr(&e))?;
        let mut entries = Vec::new();
        for item in log.range((path, from)..=(path, u64::MAX)).map_err(|e| rerr(&e))? {
            let (k, v) = item.map_err(|e| rerr(&e))?;
            entries.push((k.value().1, v.value().to_vec()));
        }
        let terms = r.open_table(TERMS).map_err(|e| rerr(&e))?;
        let terms = match terms.get(path).map_err(|e| rerr(&e))? {
            Some(g) => troupe_wire::codec::decode(g.value()).map_err(|e| rerr(&e))?,
            None => Terms::default(),
        };
        Ok(Recovered { snapshot, entries, terms })
    }

    /// Where `path`'s copy stands — its terms, last sequence number and snapshot — read
    /// without copying its entries (what replication checks on every write).
    pub fn version(&self, path: &str) -> Result<Version, StoreError> {
        let seen = {
            let c = self.versions.lock();
            if let Some(v) = c.map.get(path) {
                return Ok(v.version.clone());
            }
            c.commits
        };
        let cached = self.version_on_disk(path)?;
        let v = cached.version.clone();
        let mut c = self.versions.lock();
        // Only if no commit landed meanwhile: the copy read may predate it.
        if c.commits == seen {
            if c.map.len() >= VERSION_CACHE_CAP {
                c.map.clear();
            }
            c.map.insert(path.to_string(), cached);
        }
        Ok(v)
    }

    fn version_on_disk(&self, path: &str) -> Result<Cached, StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        let snap = r.open_table(SNAP).map_err(|e| rerr(&e))?;
        let snapshot_at = snap.get(path).map_err(|e| rerr(&e))?.map_or(0, |g| g.value().0);
        let log = r.open_table(LOG).map_err(|e| rerr(&e))?;
        let last_entry = match log.range((path, 0)..=(path, u64::MAX)).map_err(|e| rerr(&e))?.next_back() {
            Some(item) => Some(item.map_err(|e| rerr(&e))?.0.value().1),
            None => None,
        };
        let terms = r.open_table(TERMS).map_err(|e| rerr(&e))?;
        let terms = match terms.get(path).map_err(|e| rerr(&e))? {
            Some(g) => troupe_wire::codec::decode(g.value()).map_err(|e| rerr(&e))?,
            None => Terms::default(),
        };
        // An entry at or below the snapshot is not part of the copy (`load` skips it).
        let version = Version { terms, last_seq: last_entry.unwrap_or(0).max(snapshot_at), snapshot_at };
        Ok(Cached { version, log_last: last_entry })
    }

    /// Paths that have durable state and start with `prefix` (e.g. `/kv/store/`).
    pub fn paths_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        let mut out = std::collections::BTreeSet::new();
        let snap = r.open_table(SNAP).map_err(|e| rerr(&e))?;
        for item in snap.range(prefix..).map_err(|e| rerr(&e))? {
            let (k, _) = item.map_err(|e| rerr(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.insert(k.value().to_string());
        }
        let log = r.open_table(LOG).map_err(|e| rerr(&e))?;
        for item in log.range((prefix, 0)..).map_err(|e| rerr(&e))? {
            let (k, _) = item.map_err(|e| rerr(&e))?;
            if !k.value().0.starts_with(prefix) {
                break;
            }
            out.insert(k.value().0.to_string());
        }
        Ok(out.into_iter().collect())
    }

    /// Replicated paths (those with terms), in order, after `after` (from the first
    /// when `None`), at most `limit`; `true` when more follow.
    pub fn replicated_paths(&self, after: Option<&str>, limit: usize) -> Result<(Vec<String>, bool), StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        let t = r.open_table(TERMS).map_err(|e| rerr(&e))?;
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => t.range::<&str>(..),
        }
        .map_err(|e| rerr(&e))?;
        let mut out = Vec::new();
        for item in range {
            let (k, _) = item.map_err(|e| rerr(&e))?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(k.value().to_string());
        }
        Ok((out, false))
    }

    /// Whether this store holds nothing at all (a new node, or one whose disk was lost).
    pub fn is_blank(&self) -> Result<bool, StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        use redb::ReadableTableMetadata;
        Ok(r.open_table(TERMS).map_err(|e| rerr(&e))?.is_empty().map_err(|e| rerr(&e))?
            && r.open_table(LOG).map_err(|e| rerr(&e))?.is_empty().map_err(|e| rerr(&e))?
            && r.open_table(SNAP).map_err(|e| rerr(&e))?.is_empty().map_err(|e| rerr(&e))?
            && r.open_table(META).map_err(|e| rerr(&e))?.is_empty().map_err(|e| rerr(&e))?)
    }

    /// The metadata value stored under `key`, if any.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rerr = |e: &dyn std::fmt::Display| StoreError::Read(e.to_string());
        let r = self.db.begin_read().map_err(|e| rerr(&e))?;
        let t = r.open_table(META).map_err(|e| rerr(&e))?;
        Ok(t.get(key).map_err(|e| rerr(&e))?.map(|g| g.value().to_vec()))
    }
}

fn writer_loop(db: Arc<Database>, versions: Arc<parking_lot::Mutex<VersionCache>>, mut rx: mpsc::Receiver<WriteReq>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let mut ops = batch[0].ops.len();
        while ops < BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(req) => {
                    ops += req.ops.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let result = commit(&db, &batch);
        if result.is_ok() {
            let mut c = versions.lock();
            for op in batch.iter().flat_map(|r| &r.ops) {
                if let Some(v) = op_path(op).and_then(|p| c.map.get_mut(p)) {
                    v.apply(op);
                }
            }
            c.commits += 1;
        } else {
            // What did land is unknown: read it from disk again.
            let mut c = versions.lock();
            c.map.clear();
            c.commits += 1;
        }
        for req in batch {
            let _ = req.done.send(result.clone());
        }
    }
}

fn commit(db: &Database, batch: &[WriteReq]) -> Result<(), StoreError> {
    let werr = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
    let mut w = db.begin_write().map_err(|e| werr(&e))?;
    w.set_durability(Durability::Immediate).map_err(|e| werr(&e))?;
    {
        let mut log = w.open_table(LOG).map_err(|e| werr(&e))?;
        let mut snap = w.open_table(SNAP).map_err(|e| werr(&e))?;
        let mut meta = w.open_table(META).map_err(|e| werr(&e))?;
        let mut terms = w.open_table(TERMS).map_err(|e| werr(&e))?;
        for op in batch.iter().flat_map(|r| &r.ops) {
            match op {
                WriteOp::Append { path, seq, bytes } => {
                    log.insert((path.as_str(), *seq), bytes.as_slice()).map_err(|e| werr(&e))?;
                }
                WriteOp::Snapshot { path, seq, bytes } => {
                    snap.insert(path.as_str(), (*seq, bytes.as_slice())).map_err(|e| werr(&e))?;
                    log.retain_in((path.as_str(), 0)..=(path.as_str(), *seq), |_, _| false).map_err(|e| werr(&e))?;
                }
                WriteOp::Remove { path } => {
                    snap.remove(path.as_str()).map_err(|e| werr(&e))?;
                    log.retain_in((path.as_str(), 0)..=(path.as_str(), u64::MAX), |_, _| false)
                        .map_err(|e| werr(&e))?;
                }
                WriteOp::Meta { key, bytes } => {
                    meta.insert(key.as_str(), bytes.as_slice()).map_err(|e| werr(&e))?;
                }
                WriteOp::Terms { path, terms: t } => {
                    let bytes = troupe_wire::codec::encode(t).map_err(|e| werr(&e))?;
                    terms.insert(path.as_str(), bytes.as_slice()).map_err(|e| werr(&e))?;
                }
            }
        }
    }
    w.commit().map_err(|e| werr(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn append_snapshot_load() {
        let dir = tempdir();
        let s = Store::open(&dir.join("state.redb")).unwrap();
        for i in 1..=5u64 {
            s.append("/kv/store/a", i, vec![i as u8]).await.unwrap();
        }
        s.append("/kv/store/b", 1, vec![9]).await.unwrap();
        let r = s.load("/kv/store/a").unwrap();
        assert_eq!(r.entries.len(), 5);
        assert_eq!(r.last_seq(), 5);
        s.snapshot("/kv/store/a", 3, b"snap".to_vec()).await.unwrap();
        let r = s.load("/kv/store/a").unwrap();
        assert_eq!(r.snapshot, Some((3, b"snap".to_vec())));
        assert_eq!(r.entries, vec![(4, vec![4]), (5, vec![5])]);
        assert_eq!(s.paths_with_prefix("/kv/store/").unwrap(), vec!["/kv/store/a", "/kv/store/b"]);
        // The version replication checks agrees with the whole copy, without reading it.
        let v = s.version("/kv/store/a").unwrap();
        assert_eq!((v.last_seq, v.snapshot_at), (5, 3));
        assert_eq!(s.version("/kv/store/b").unwrap().last_seq, 1, "a neighbouring path is not counted");
        assert_eq!(s.version("/kv/store/none").unwrap(), Version::default());
        s.snapshot("/kv/store/a", 5, b"all".to_vec()).await.unwrap();
        let v = s.version("/kv/store/a").unwrap();
        assert_eq!((v.last_seq, v.snapshot_at), (5, 5), "a snapshot that covers the whole log");
        s.write(vec![WriteOp::Remove { path: "/kv/store/a".into() }]).await.unwrap();
        assert_eq!(s.load("/kv/store/a").unwrap(), Recovered::default());
        assert_eq!(s.load("/kv/store/b").unwrap().entries, vec![(1, vec![9])]);
    }

    #[tokio::test]
    async fn terms_are_kept_with_the_data_and_survive_a_removal() {
        use troupe_core::replication::Term;
        let dir = tempdir();
        let s = Store::open(&dir.join("state.redb")).unwrap();
        let t = Term { n: 3, node: "n1".into(), epoch: 7 };
        let terms = Terms { promised: t.clone(), accepted: t };
        s.write(vec![
            WriteOp::Append { path: "/kv/store/a".into(), seq: 1, bytes: vec![1] },
            WriteOp::Terms { path: "/kv/store/a".into(), terms: terms.clone() },
        ])
        .await
        .unwrap();
        let r = s.load("/kv/store/a").unwrap();
        assert_eq!(r.terms, terms);
        assert_eq!(r.data().terms, Terms::default());
        s.write(vec![WriteOp::Remove { path: "/kv/store/a".into() }]).await.unwrap();
        let r = s.load("/kv/store/a").unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.terms, terms, "a replica never forgets a promise");
        s.close();
        let s = Store::open(&dir.join("state.redb")).unwrap();
        assert_eq!(s.load("/kv/store/a").unwrap().terms, terms);
    }

    /// The remembered versions stay equal to what the disk holds through every kind of
    /// write, read before, between and after them.
    #[tokio::test]
    async fn remembered_versions_follow_every_write() {
        use troupe_core::replication::Term;
        let dir = tempdir();
        let s = Store::open(&dir.join("state.redb")).unwrap();
        let paths = ["/kv/store/a", "/kv/store/b"];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..2000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let path = paths[(x % 2) as usize].to_string();
            let seq = (x >> 8) % 20;
            let op = match (x >> 16) % 5 {
                0 | 1 => WriteOp::Append { path, seq, bytes: vec![1] },
                2 => WriteOp::Snapshot { path, seq, bytes: vec![2] },
                3 => WriteOp::Remove { path },
                _ => WriteOp::Terms {
                    path,
                    terms: Terms { promised: Term { n: step, node: "n1".into(), epoch: 1 }, accepted: Term::default() },
                },
            };
            if step % 3 == 0 {
                let _ = s.version(paths[0]).unwrap();
            }
            s.write(vec![op]).await.unwrap();
            for p in paths {
                assert_eq!(s.version(p).unwrap(), s.version_on_disk(p).unwrap().version, "{p} after step {step}");
                assert_eq!(
                    s.version(p).unwrap(),
                    s.load(p).unwrap().version(),
                    "{p}: the version agrees with the copy"
                );
            }
        }
    }

    #[test]
    fn second_open_is_a_clear_error() {
        let dir = tempdir();
        let _s = Store::open(&dir.join("state.redb")).unwrap();
        let e = Store::open(&dir.join("state.redb")).unwrap_err().to_string();
        assert!(e.contains("already open"), "{e}");
    }

    pub(crate) fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("troupe-test-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
