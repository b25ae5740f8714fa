//! The blob store: large immutable bytes kept outside the actor log, content-addressed
//! and replicated (docs/ARCHITECTURE.md, "Blob store").
//!
//! - A blob is cut into chunks of at most 1 MiB (half `frame_bytes_max` when that is
//!   smaller); each chunk is named by its SHA-256 and kept on its **homes**: the first
//!   `[blobs] replication_factor` nodes of the cluster file in the hash's rendezvous
//!   order (the fixed-set rule of replicated actor state, so every node computes the
//!   same homes). A chunk write is acknowledged once a **majority** of its homes have
//!   it on disk (synced); the other copies finish in the background.
//! - The blob's manifest (its length and chunk hashes) is named by the SHA-256 of its
//!   encoding, the blob's `root`, and kept on the root's homes with the blob's holders.
//!   An actor keeps the 40-byte [`Blob`] handle in its state or messages.
//! - Reads check every chunk against its hash, try this node first, then live homes,
//!   and write a copy back to a home that lacked it (read repair).
//! - A blob is held by named holders (the putter first; [`Blobs::retain`],
//!   [`Blobs::release`]); one nobody holds is collected after `[blobs] grace_ms` (gc.rs).
//!
//! Each node's agent `/troupe/blobs/<node>` serves its chunks and manifests (nodes
//! only), a [`BlobMsg::Read`] stream of a whole blob, and the collector's marks.

mod disk;
mod gc;
mod state;

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf};
use crate::config::KindSpec;
use crate::node::Node;
use crate::reply::Reply;
use disk::{ChunkRead, ManifestRecord, sha256};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use state::{BlobMsg, BlobProto, BlobReply, CHUNK_TIMEOUT, Shared, call, homes, read_order};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use troupe_core::directory::majority;
use troupe_wire::{ActorPath, Blob, Bytes, Hash, Manifest, RemoteError, codec};

pub use troupe_wire::blob;

/// Largest chunk.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Chunks one put or read has in flight.
const WINDOW: usize = 8;
/// Longest holder name, in bytes.
const HOLDER_BYTES_MAX: usize = 512;

/// Why a blob operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// No home of the blob's root knows it: never stored, or collected after its last
    /// holder released it.
    #[error(
        "blob {root} is not stored: none of its homes ({homes}) knows it (never put, or collected after its last holder released it)"
    )]
    NotFound {
        /// The blob's root hash.
        root: String,
        /// The nodes that would keep it.
        homes: String,
    },
    /// No home could answer for a chunk or manifest (all down or unreachable).
    #[error("{what} could not be read from any of its homes: {reasons}")]
    Unavailable {
        /// What was read.
        what: String,
        /// Each home's answer.
        reasons: String,
    },
    /// Fewer than a majority of homes stored a write.
    #[error("{what} reached {got} of its homes, a majority needs {need}: {reasons}")]
    NoQuorum {
        /// What was written.
        what: String,
        /// Homes that stored it.
        got: usize,
        /// Homes a majority needs.
        need: usize,
        /// What the others said.
        reasons: String,
    },
    /// The request itself is wrong (too large, empty holder...).
    #[error("invalid blob request: {0}")]
    Invalid(String),
    /// This node's blob folder could not be opened or written.
    #[error("blob store: {0}")]
    Disk(String),
}

impl From<BlobError> for RemoteError {
    fn from(e: BlobError) -> RemoteError {
        match e {
            BlobError::Invalid(why) => RemoteError::Invalid(why),
            other => RemoteError::ActorFailed { path: "/troupe/blobs".into(), reason: other.to_string() },
        }
    }
}

/// The blob store, seen from one node: put, read, retain and release blobs. Get it
/// with [`Node::blobs`] or [`Ctx::blobs`].
#[derive(Clone)]
pub struct Blobs {
    node: Node,
    st: Arc<Shared>,
}

impl Node {
    /// This node's handle on the cluster's blob store.
    pub fn blobs(&self) -> Result<Blobs, BlobError> {
        let st = Shared::of(self).map_err(BlobError::Disk)?;
        Ok(Blobs { node: self.clone(), st })
    }
}

impl<P: troupe_wire::Protocol> Ctx<P> {
    /// The cluster's blob store ([`Blobs`]).
    pub fn blobs(&self) -> Result<Blobs, BlobError> {
        self.node().blobs()
    }
}

/// The homes to read from, in order, each with its timeout: every home once with a
/// short one (a node killed moments ago, not yet declared down, costs seconds, not
/// the whole transfer timeout), then the live ones again with the full one (a slow
/// transfer under load still succeeds).
///
/// Last, every other live node of the cluster file: after the node list changed, a
/// chunk or manifest may still be only on a node that was one of its homes before
/// (a node never deletes a chunk it is not a home of, gc.rs); a read that finds it
/// there writes it back to its homes.
fn attempts(node: &Node, homes: &[String]) -> Vec<(String, std::time::Duration)> {
    let order = read_order(node, homes);
    let mut out: Vec<_> = order.iter().map(|(h, _)| (h.clone(), HEDGE)).collect();
    out.extend(order.into_iter().filter(|(h, live)| *live && h != node.name()).map(|(h, _)| (h, CHUNK_TIMEOUT)));
    let others = node.candidates_shared();
    out.extend(
        others.iter().filter(|c| c.name != node.name() && !homes.contains(&c.name)).map(|c| (c.name.clone(), HEDGE)),
    );
    out
}

/// The first try at each home.
const HEDGE: std::time::Duration = std::time::Duration::from_secs(3);

fn check_holder(holder: &str) -> Result<(), BlobError> {
    if holder.is_empty() || holder.len() > HOLDER_BYTES_MAX {
        return Err(BlobError::Invalid(format!(
            "a holder name is 1 to {HOLDER_BYTES_MAX} bytes (an actor path, say), not {}",
            holder.len()
        )));
    }
    Ok(())
}

impl Blobs {
    /// The size of the chunks this node cuts.
    pub fn chunk_bytes(&self) -> usize {
        let frame = self.node.loaded().cluster.transport.frame_bytes_max as usize;
        CHUNK_BYTES_MAX.min(frame / 2).max(512)
    }

    /// Stores `data` and returns its handle, held by `holder` (an actor path, say)
    /// until it is released. Returns once every chunk and the manifest are on disk on
    /// a majority of their homes. Putting the same bytes again stores nothing new and
    /// adds the holder.
    pub async fn put(&self, data: &[u8], holder: &str) -> Result<Blob, BlobError> {
        check_holder(holder)?;
        let max = self.st.cfg.blob_bytes_max;
        if data.len() as u64 > max {
            return Err(BlobError::Invalid(format!(
                "a blob of {} bytes is over [blobs] blob_bytes_max = {max}",
                data.len()
            )));
        }
        let cb = self.chunk_bytes();
        let started = Instant::now();
        let me = self.clone();
        // Owned pieces and an owned store handle in each future: the put's future is
        // `Send` for any caller (no closure over borrowed slices).
        let chunks: Vec<Hash> = stream::iter(data.chunks(cb).map(<[u8]>::to_vec))
            .map(move |piece: Vec<u8>| {
                let me = me.clone();
                async move {
                    let (hash, piece) = tokio::task::spawn_blocking(move || (sha256(&piece), piece))
                        .await
                        .map_err(|e| BlobError::Disk(e.to_string()))?;
                    me.put_chunk(hash, piece).await.map(|()| hash)
                }
            })
            .buffered(WINDOW)
            .try_collect()
            .await?;
        let manifest = Manifest { len: data.len() as u64, chunk_bytes: cb as u32, chunks };
        let encoded = codec::encode(&manifest).map_err(|e| BlobError::Invalid(e.to_string()))?;
        let frame = self.node.loaded().cluster.transport.frame_bytes_max as usize;
        if encoded.len() + 4096 > frame {
            return Err(BlobError::Invalid(format!(
                "a blob of {} bytes needs a manifest of {} bytes, over the frame limit (frame_bytes_max = {frame})",
                data.len(),
                encoded.len()
            )));
        }
        // Chunks no manifest names yet are collected `grace_ms` after they were
        // written: the manifest must land well within that (gc.rs).
        let took = started.elapsed();
        if took > self.st.grace() / 2 {
            return Err(BlobError::Invalid(format!(
                "storing the chunks took {took:?}, over half of [blobs] grace_ms ({} ms): some may be collected before the blob names them; raise grace_ms",
                self.st.cfg.grace_ms
            )));
        }
        let root = sha256(&encoded);
        self.put_manifest(root, manifest, holder).await?;
        Ok(Blob { root, len: data.len() as u64 })
    }

    /// Writes one chunk to its homes; returns once a majority has it.
    async fn put_chunk(&self, hash: Hash, bytes: Vec<u8>) -> Result<(), BlobError> {
        let homes = homes(&self.node, &self.st.cfg, &hash);
        let bytes = Arc::new(bytes);
        let msgs = homes.iter().map(|_| BlobMsg::Put { hash, bytes: Bytes(bytes.as_ref().clone()) }).collect();
        self.quorum(format!("chunk {hash}"), homes, msgs, |r| matches!(r, BlobReply::Stored)).await
    }

    async fn put_manifest(&self, root: Hash, manifest: Manifest, holder: &str) -> Result<(), BlobError> {
        let at_ms = gc::unix_ms();
        let homes = homes(&self.node, &self.st.cfg, &root);
        let msgs = homes
            .iter()
            .map(|_| BlobMsg::PutManifest { root, manifest: manifest.clone(), holder: holder.to_string(), at_ms })
            .collect();
        self.quorum(format!("the manifest of blob {root}"), homes, msgs, |r| matches!(r, BlobReply::Stored)).await
    }

    /// Sends `msgs[i]` to `homes[i]`, all at once; returns when a majority answered as
    /// `ok` says. The rest go on in the background.
    async fn quorum(
        &self,
        what: String,
        homes: Vec<String>,
        msgs: Vec<BlobMsg>,
        ok: fn(&BlobReply) -> bool,
    ) -> Result<(), BlobError> {
        if homes.is_empty() {
            return Err(BlobError::Invalid("no node keeps blobs (check [blobs] role)".into()));
        }
        let need = majority(homes.len());
        let (tx, mut rx) = tokio::sync::mpsc::channel(homes.len());
        for (to, msg) in homes.iter().cloned().zip(msgs) {
            let node = self.node.clone();
            let tx = tx.clone();
            let permit = self.st.writes.clone().acquire_owned().await;
            tokio::spawn(async move {
                let r = call(&node, &to, msg, CHUNK_TIMEOUT).await;
                drop(permit);
                let _ = tx.send((to, r)).await;
            });
        }
        drop(tx);
        let (mut got, mut reasons) = (0, Vec::new());
        while let Some((to, r)) = rx.recv().await {
            match r {
                Ok(r) if ok(&r) => got += 1,
                Ok(BlobReply::Refused(why)) => reasons.push(format!("{to}: {why}")),
                Ok(other) => reasons.push(format!("{to}: answered {other:?}")),
                Err(e) => reasons.push(format!("{to}: {e}")),
            }
            if got >= need {
                return Ok(());
            }
        }
        Err(BlobError::NoQuorum { what, got, need, reasons: reasons.join("; ") })
    }

    /// The manifest of `blob`, from this node or its homes, checked against its root.
    pub async fn manifest(&self, blob: &Blob) -> Result<Manifest, BlobError> {
        let homes = homes(&self.node, &self.st.cfg, &blob.root);
        let mut reasons = Vec::new();
        let mut missing = 0;
        let mut answered = BTreeSet::new();
        for (to, timeout) in attempts(&self.node, &homes) {
            if answered.contains(&to) {
                continue;
            }
            let r = call(&self.node, &to, BlobMsg::GetManifest { root: blob.root }, timeout).await;
            if r.is_ok() {
                answered.insert(to.clone());
            }
            match r {
                Ok(BlobReply::Manifest(m)) => {
                    let good = codec::encode(&m).map(|e| sha256(&e) == blob.root).unwrap_or(false);
                    if good && m.len == blob.len && m.check().is_ok() {
                        return Ok(m);
                    }
                    reasons.push(format!("{to}: a manifest that does not match the blob"));
                }
                Ok(BlobReply::Missing) => {
                    missing += usize::from(homes.contains(&to));
                    reasons.push(format!("{to}: not here"));
                }
                Ok(other) => reasons.push(format!("{to}: answered {other:?}")),
                Err(e) => reasons.push(format!("{to}: {e}")),
            }
        }
        // A majority that does not know it: the manifest write (which reached a
        // majority) never happened, or it was collected.
        if missing >= majority(homes.len()) {
            return Err(BlobError::NotFound { root: blob.root.to_hex(), homes: homes.join(", ") });
        }
        Err(BlobError::Unavailable { what: format!("the manifest of blob {}", blob.root), reasons: reasons.join("; ") })
    }

    /// The blob's bytes, chunk by chunk, each checked against its hash; up to eight
    /// chunks are fetched ahead.
    pub fn read(&self, blob: Blob) -> BoxStream<'static, Result<Vec<u8>, BlobError>> {
        let me = self.clone();
        stream::once(async move {
            let m = me.manifest(&blob).await?;
            let me2 = me.clone();
            Ok::<_, BlobError>(
                stream::iter(m.chunks)
                    .map(move |h| {
                        let me = me2.clone();
                        async move { me.chunk(h).await }
                    })
                    .buffered(WINDOW),
            )
        })
        .try_flatten()
        .boxed()
    }

    /// The whole blob in memory.
    pub async fn get(&self, blob: &Blob) -> Result<Vec<u8>, BlobError> {
        // The handle's length is checked against the manifest as it is read: reserve
        // little up front.
        let mut out = Vec::with_capacity(blob.len.min(64 << 20) as usize);
        let mut s = self.read(*blob);
        while let Some(piece) = s.next().await {
            out.extend_from_slice(&piece?);
        }
        if out.len() as u64 != blob.len {
            return Err(BlobError::Invalid(format!("read {} bytes of a blob of {}", out.len(), blob.len)));
        }
        Ok(out)
    }

    /// The blob streamed by node `from`'s agent over [`crate::ActorHandle::stream`]
    /// (it reads the chunks where they are and sends them on).
    pub async fn read_via(
        &self,
        from: &str,
        blob: Blob,
    ) -> Result<BoxStream<'static, Result<Vec<u8>, RemoteError>>, RemoteError> {
        let path = ActorPath::new("troupe", "blobs", from).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let s = self.node.handle::<BlobProto>(path).stream(BlobMsg::Read { blob }).await?;
        Ok(stream::unfold(s, |mut s| async move {
            let item = s.next().await?;
            let item = match item {
                Ok(BlobReply::Data(b)) => Ok(b.0),
                Ok(other) => Err(RemoteError::Invalid(format!("a blob stream sent {other:?}"))),
                Err(e) => Err(e),
            };
            Some((item, s))
        })
        .boxed())
    }

    /// One chunk: this node's copy, else the first home that has it. A home found
    /// without it gets a copy (read repair).
    async fn chunk(&self, h: Hash) -> Result<Vec<u8>, BlobError> {
        let disk = self.st.disk.clone();
        match tokio::task::spawn_blocking(move || disk.read_chunk(&h)).await {
            Ok(Ok(ChunkRead::Found(b))) => {
                self.st.stats.chunks_read_local.inc();
                return Ok(b);
            }
            Ok(Ok(ChunkRead::Damaged)) => self.st.stats.damaged.inc(),
            _ => {}
        }
        let homes = homes(&self.node, &self.st.cfg, &h);
        let me = self.node.name();
        // This node's copy was just looked for: a home of the chunk gets it back.
        let mut lacking: Vec<String> = homes.iter().filter(|n| *n == me).cloned().collect();
        let mut reasons = if lacking.is_empty() { Vec::new() } else { vec![format!("{me}: not here")] };
        let mut answered = BTreeSet::new();
        for (to, timeout) in attempts(&self.node, &homes) {
            if to == me || answered.contains(&to) {
                continue;
            }
            let r = call(&self.node, &to, BlobMsg::Get { hash: h }, timeout).await;
            if r.is_ok() {
                answered.insert(to.clone());
            }
            match r {
                Ok(BlobReply::Chunk(b)) if sha256(&b.0) == h => {
                    self.st.stats.chunks_read_remote.inc();
                    self.repair(h, &b.0, lacking);
                    return Ok(b.0);
                }
                Ok(BlobReply::Chunk(_)) => reasons.push(format!("{to}: bytes that do not match the hash")),
                Ok(BlobReply::Missing) => {
                    reasons.push(format!("{to}: not here"));
                    if homes.contains(&to) {
                        lacking.push(to);
                    }
                }
                Ok(other) => reasons.push(format!("{to}: answered {other:?}")),
                Err(e) => reasons.push(format!("{to}: {e}")),
            }
        }
        Err(BlobError::Unavailable { what: format!("chunk {h}"), reasons: reasons.join("; ") })
    }

    fn repair(&self, h: Hash, bytes: &[u8], lacking: Vec<String>) {
        for to in lacking {
            let node = self.node.clone();
            let st = self.st.clone();
            let msg = BlobMsg::Put { hash: h, bytes: Bytes(bytes.to_vec()) };
            tokio::spawn(async move {
                if let Ok(BlobReply::Stored) = call(&node, &to, msg, CHUNK_TIMEOUT).await {
                    st.stats.repaired.inc();
                }
            });
        }
    }

    /// Adds `holder` to the blob's holders (on a majority of its homes, and back on a
    /// home that lost the manifest). `NotFound` when it was already collected.
    pub async fn retain(&self, blob: &Blob, holder: &str) -> Result<(), BlobError> {
        check_holder(holder)?;
        let m = self.manifest(blob).await?;
        self.put_manifest(blob.root, m, holder).await
    }

    /// Removes `holder` from the blob's holders; once none is left, the blob is
    /// deleted `[blobs] grace_ms` later. Releasing a holder the blob does not have is
    /// not an error.
    pub async fn release(&self, blob: &Blob, holder: &str) -> Result<(), BlobError> {
        check_holder(holder)?;
        let homes = homes(&self.node, &self.st.cfg, &blob.root);
        let at_ms = gc::unix_ms();
        let msgs =
            homes.iter().map(|_| BlobMsg::Release { root: blob.root, holder: holder.to_string(), at_ms }).collect();
        self.quorum(format!("the release of blob {}", blob.root), homes, msgs, |r| {
            matches!(r, BlobReply::Released | BlobReply::Missing)
        })
        .await
    }

    /// Releases `holder` as of `after` from now: the blob stays at least that long plus
    /// the grace even if nobody else holds it (a hand-over whose reader needs time).
    pub(crate) async fn release_after(
        &self,
        blob: &Blob,
        holder: &str,
        after: std::time::Duration,
    ) -> Result<(), BlobError> {
        let homes = homes(&self.node, &self.st.cfg, &blob.root);
        let at_ms = gc::unix_ms() + after.as_millis() as u64;
        let msgs =
            homes.iter().map(|_| BlobMsg::Release { root: blob.root, holder: holder.to_string(), at_ms }).collect();
        self.quorum(format!("the release of blob {}", blob.root), homes, msgs, |r| {
            matches!(r, BlobReply::Released | BlobReply::Missing)
        })
        .await
    }

    /// The holders of the blob as this node's copy of the manifest records them
    /// (`None`: this node keeps no copy).
    pub async fn holders_here(&self, blob: &Blob) -> Option<BTreeSet<String>> {
        let disk = self.st.disk.clone();
        let root = blob.root;
        tokio::task::spawn_blocking(move || disk.read_manifest(&root)).await.ok()?.ok()?.map(|r| r.held())
    }
}

/// The per-node blob agent, `/troupe/blobs/<node>`.
pub(crate) struct BlobAgent;

impl FromParams for BlobAgent {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, node: &Node) -> Result<Self, String> {
        Shared::of(node)?;
        Ok(BlobAgent)
    }
}

impl Behavior for BlobAgent {
    type Proto = BlobProto;
    type State = ();

    async fn init(&self, ctx: &Ctx<BlobProto>) -> Result<(), ActorError> {
        let node = ctx.node().clone();
        let st = Shared::of(&node).map_err(crate::actor::fail)?;
        ctx.link(tokio::spawn(gc::run(node, st)));
        Ok(())
    }

    async fn handle(
        &self,
        ctx: &Ctx<BlobProto>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let node = ctx.node().clone();
        let st = Shared::of(&node).map_err(crate::actor::fail)?;
        // Every request on its own task: disk work and transfers proceed in parallel.
        tokio::spawn(async move {
            match (msg, reply) {
                (BlobMsg::Read { blob }, Reply::Stream(to)) => {
                    let blobs = Blobs { node, st };
                    let mut s = blobs.read(blob);
                    while let Some(piece) = s.next().await {
                        match piece {
                            Ok(b) => {
                                if !to.send(BlobReply::Data(Bytes(b))).await {
                                    return;
                                }
                            }
                            Err(e) => return to.end(Err(e.into())),
                        }
                    }
                    to.end(Ok(()));
                }
                (BlobMsg::Read { .. }, reply) => {
                    reply.fail(RemoteError::Invalid("a blob `Read` is a streamed request".into()));
                }
                (msg, reply) => {
                    let answer = serve(&node, &st, msg).await;
                    reply.send(answer).await;
                }
            }
        });
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Stores or changes this home's record of `root` under the root's lock: `change`
/// gets the record (a new one, `fresh`, when there is none) and says whether to write
/// it. Refused when this node is not a home of `root` or the manifest is not `root`'s.
async fn update_manifest(
    node: &Node,
    st: &Arc<Shared>,
    root: Hash,
    manifest: Manifest,
    change: impl FnOnce(&mut ManifestRecord, bool) -> bool + Send + 'static,
) -> BlobReply {
    if !homes(node, &st.cfg, &root).iter().any(|n| n == node.name()) {
        return BlobReply::Refused(format!("{} is not a home of blob {root}", node.name()));
    }
    let good = codec::encode(&manifest).map(|e| sha256(&e) == root).unwrap_or(false);
    if !good || manifest.check().is_err() {
        return BlobReply::Refused(format!("the manifest sent as blob {root} does not match it"));
    }
    let _guard = st.lock(&root).lock().await;
    let disk = st.disk.clone();
    let r = blocking(move || {
        let existing = disk.read_manifest(&root)?;
        let fresh = existing.is_none();
        let mut rec = existing.unwrap_or_else(|| ManifestRecord::new(manifest, gc::unix_ms()));
        if change(&mut rec, fresh) {
            disk.write_manifest(&root, &rec)?;
        }
        Ok(())
    })
    .await;
    match r {
        Ok(()) => BlobReply::Stored,
        Err(e) => BlobReply::Refused(e),
    }
}

/// One request to this node's blob agent.
async fn serve(node: &Node, st: &Arc<Shared>, msg: BlobMsg) -> BlobReply {
    let is_home = |h: &Hash| homes(node, &st.cfg, h).iter().any(|n| n == node.name());
    match msg {
        BlobMsg::Put { hash, bytes } => {
            if !is_home(&hash) {
                return BlobReply::Refused(format!("{} is not a home of chunk {hash}", node.name()));
            }
            let len = bytes.0.len() as u64;
            let st2 = st.clone();
            let wrote = blocking(move || {
                if sha256(&bytes.0) != hash {
                    return Err(std::io::Error::other(format!("the bytes sent as chunk {hash} hash differently")));
                }
                // Noted before the file is looked for: the collector checks again under
                // the same lock before it deletes (gc.rs), so a chunk found here is
                // not deleted under this put.
                st2.gc.lock().written.insert(hash, Instant::now());
                st2.disk.write_chunk(&hash, &bytes.0)
            })
            .await;
            match wrote {
                Ok(new) => {
                    if new {
                        st.stats.chunks_written.inc();
                        st.stats.bytes_written.add(len);
                    }
                    BlobReply::Stored
                }
                Err(e) => BlobReply::Refused(e),
            }
        }
        BlobMsg::Get { hash } => {
            let disk = st.disk.clone();
            match blocking(move || disk.read_chunk(&hash)).await {
                Ok(ChunkRead::Found(b)) => BlobReply::Chunk(Bytes(b)),
                Ok(ChunkRead::Missing) => BlobReply::Missing,
                Ok(ChunkRead::Damaged) => {
                    st.stats.damaged.inc();
                    BlobReply::Missing
                }
                Err(e) => BlobReply::Refused(e),
            }
        }
        BlobMsg::PutManifest { root, manifest, holder, at_ms } => {
            if let Err(why) = check_holder(&holder) {
                return BlobReply::Refused(why.to_string());
            }
            update_manifest(node, st, root, manifest, move |rec, fresh| {
                // Put again after it was collected here: alive again (the put stored
                // its chunks first).
                let revived = rec.collected_ms.take().is_some();
                rec.apply(&holder, true, at_ms) || fresh || revived
            })
            .await
        }
        BlobMsg::GetManifest { root } => {
            let disk = st.disk.clone();
            match blocking(move || disk.read_manifest(&root)).await {
                Ok(Some(rec)) if rec.collected_ms.is_none() => BlobReply::Manifest(rec.manifest),
                Ok(Some(_)) => BlobReply::Missing,
                Ok(None) => BlobReply::Missing,
                Err(e) => BlobReply::Refused(e),
            }
        }
        BlobMsg::Release { root, holder, at_ms } => {
            let _guard = st.lock(&root).lock().await;
            let disk = st.disk.clone();
            let r = blocking(move || {
                let Some(mut rec) = disk.read_manifest(&root)? else { return Ok(false) };
                if rec.holders.contains_key(&holder) && rec.apply(&holder, false, at_ms) {
                    disk.write_manifest(&root, &rec)?;
                }
                Ok(true)
            })
            .await;
            match r {
                Ok(true) => BlobReply::Released,
                Ok(false) => BlobReply::Missing,
                Err(e) => BlobReply::Refused(e),
            }
        }
        BlobMsg::Sync { root, holders } => {
            let _guard = st.lock(&root).lock().await;
            let disk = st.disk.clone();
            let r = blocking(move || {
                // No record: not created from a sync (it may have been collected here).
                let Some(mut rec) = disk.read_manifest(&root)? else { return Ok(None) };
                let merged = rec.merge(&holders);
                if rec.revive_if_held() || merged {
                    disk.write_manifest(&root, &rec)?;
                }
                Ok(Some(rec.holders))
            })
            .await;
            match r {
                Ok(Some(h)) => BlobReply::Holders(h),
                Ok(None) => BlobReply::Missing,
                Err(e) => BlobReply::Refused(e),
            }
        }
        BlobMsg::Restore { root, manifest, holders } => {
            update_manifest(node, st, root, manifest, move |rec, fresh| {
                let merged = rec.merge(&holders);
                rec.revive_if_held() || merged || fresh
            })
            .await
        }
        BlobMsg::Read { .. } => BlobReply::Refused("a blob `Read` is a streamed request".into()),
        msg @ (BlobMsg::GcBegin { .. } | BlobMsg::GcMark { .. } | BlobMsg::GcDone { .. }) => {
            gc::note(&mut st.gc.lock(), msg, Instant::now())
        }
    }
}
