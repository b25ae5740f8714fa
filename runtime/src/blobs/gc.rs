//! Collection of blobs nobody holds.
//!
//! A manifest's homes keep its holders, each holder's latest change winning (disk.rs).
//! Each round a home exchanges those changes with the other homes of each manifest it
//! keeps, so a home that missed a release (it was down) learns it, and a home that
//! lacks the record gets it back while the blob is held. A blob whose last holder let
//! go is collected on each home `grace_ms` later: its record stays as a tombstone (for
//! a week) that tells a late home of the release, and its chunks are no longer marked. Chunks are collected by marking: every
//! `gc_interval_ms` each node runs a round — it tells every node of the cluster file
//! that its round begins, then reads the manifests it keeps, marks on their homes the
//! chunks of every one still held (or within its grace), and tells each node it
//! reached that its round is done there.
//!
//! A node deletes one of its chunks only when **every** node of the cluster file has
//! completed a round whose begin arrived here after both the chunk's last mark and
//! `grace_ms` after the chunk was last written. The marks of one round reach a node
//! after its begin (the sender waits for the begin's answer), so a chunk a live
//! manifest names is marked in every round of every node that keeps that manifest,
//! and never satisfies the rule; a manifest written after a node read its manifests
//! was written after that round's begin, and names chunks written at most half
//! `grace_ms` before it (a put that took longer fails), so the grace covers it. Every time here is this node's own clock (`Instant`), never
//! compared with another node's. While any node is down or unreachable no chunk is
//! deleted anywhere (a leak, never a loss); after a restart a node deletes nothing
//! until every node has completed a round since it booted. The one comparison across
//! clocks is a blob's expiry: the time of its last release (the releasing node's
//! clock, or later) against the home's — a skew shortens or lengthens the grace by
//! as much.

use super::disk::{Disk, ManifestRecord};
use super::state::{BlobMsg, BlobReply, CHUNK_TIMEOUT, GcState, Shared, call, homes};
use crate::node::Node;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use troupe_wire::Hash;

/// Hashes in one mark message (33 bytes each on the wire).
const MARK_PAGE: usize = 8192;
/// Manifests whose holders are exchanged at once.
const SYNC_PARALLEL: usize = 16;
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The collector's loop on one node: a round every `gc_interval_ms`.
pub(crate) async fn run(node: Node, st: Arc<Shared>) {
    let every = Duration::from_millis(st.cfg.gc_interval_ms);
    let mut round = 0u64;
    loop {
        tokio::time::sleep(every).await;
        round += 1;
        if let Err(e) = one_round(&node, &st, round).await {
            tracing::warn!(node = node.name(), error = %e, "blob collection round failed");
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
}

async fn one_round(node: &Node, st: &Arc<Shared>, round: u64) -> Result<(), String> {
    let me = node.name().to_string();
    let epoch = node.epoch();
    let timeout = CHUNK_TIMEOUT;
    // 1. Begin on every node, before the manifests are read: a manifest that is not
    // read below was written after every begin of this round (gc.rs's rule).
    let begins = st.nodes.iter().map(|to| {
        let msg = BlobMsg::GcBegin { from: me.clone(), epoch, round };
        async move { matches!(call(node, to, msg, timeout).await, Ok(BlobReply::Noted)).then(|| to.clone()) }
    });
    let begun: HashSet<String> = futures::future::join_all(begins).await.into_iter().flatten().collect();

    // 2. Manifests: agree on holders with the other homes, turn those unheld past
    // their grace into tombstones, gather the chunks of the rest.
    let disk = st.disk.clone();
    let records = blocking(move || read_records(&disk)).await??;
    let records: Vec<(Hash, ManifestRecord)> = records.into_iter().filter(|(_, r)| r.collected_ms.is_none()).collect();
    let live: Vec<Hash> = records.iter().map(|(h, _)| *h).collect();
    futures::stream::iter(records).for_each_concurrent(SYNC_PARALLEL, |(root, rec)| sync(node, st, root, rec)).await;
    let mut live_chunks = HashSet::new();
    let mut collected = 0;
    for root in live {
        let _guard = st.lock(&root).lock().await;
        let disk = st.disk.clone();
        let grace_ms = st.cfg.grace_ms;
        match blocking(move || settle(&disk, &root, grace_ms)).await? {
            Settled::Live(chunks) => live_chunks.extend(chunks),
            Settled::Collected => collected += 1,
            Settled::Gone => {}
        }
    }
    st.stats.collected_manifests.add(collected);
    let disk = st.disk.clone();
    let _ = blocking(move || drop_old_tombstones(&disk)).await;

    // 3. Marks and done, per node that heard the begin; a node that misses any mark
    // does not hear `done` from this round.
    let mut per_node: BTreeMap<String, Vec<Hash>> = begun.iter().map(|n| (n.clone(), Vec::new())).collect();
    for h in live_chunks {
        for home in homes(node, &st.cfg, &h) {
            if let Some(v) = per_node.get_mut(&home) {
                v.push(h);
            }
        }
    }
    let sends = per_node.into_iter().map(|(to, hashes)| {
        let me = me.clone();
        async move {
            for page in hashes.chunks(MARK_PAGE) {
                let mark = BlobMsg::GcMark { hashes: page.to_vec() };
                if !matches!(call(node, &to, mark, timeout).await, Ok(BlobReply::Noted)) {
                    return;
                }
            }
            let _ = call(node, &to, BlobMsg::GcDone { from: me, epoch, round }, timeout).await;
        }
    });
    futures::future::join_all(sends).await;

    // 4. This node's chunks: delete those the rule allows, each checked again under
    // the collector's lock as it goes (a put of the same bytes notes its write under
    // that lock before it looks for the file).
    let disk = st.disk.clone();
    let on_disk = blocking(move || disk.chunks()).await?.map_err(|e| e.to_string())?;
    let st2 = st.clone();
    let present: Vec<Hash> = on_disk.iter().map(|(h, _)| *h).collect();
    let node2 = node.clone();
    let (removed, freed) = blocking(move || {
        let mut removed = 0u64;
        let mut freed = 0u64;
        for h in &present {
            // Not one of its homes (the node list changed): nobody marks it here, and
            // it may be the only copy; kept (reads look for it here too).
            if !homes(&node2, &st2.cfg, h).iter().any(|n| n == node2.name()) {
                continue;
            }
            let mut g = st2.gc.lock();
            if !collectable(&g, &st2.nodes, h, st2.grace()) {
                continue;
            }
            match st2.disk.remove_chunk(h) {
                Ok(n) => {
                    freed += n;
                    removed += 1;
                    g.written.remove(h);
                    g.marked.remove(h);
                }
                Err(e) => tracing::warn!(chunk = %h, error = %e, "could not delete a blob chunk"),
            }
        }
        // Marks of chunks this node does not have (marked before they arrived, or
        // collected) go: the maps stay as large as the disk.
        let mut g = st2.gc.lock();
        let keep: HashSet<&Hash> = present.iter().collect();
        g.marked.retain(|h, _| keep.contains(h));
        (removed, freed)
    })
    .await?;
    st.stats.collected_chunks.add(removed);
    let total: u64 = on_disk.iter().map(|(_, n)| n).sum::<u64>().saturating_sub(freed);
    st.stats.chunks.set(on_disk.len().saturating_sub(removed as usize) as f64);
    st.stats.bytes.set(total as f64);
    let disk = st.disk.clone();
    let grace = st.grace();
    let _ = blocking(move || disk.sweep_tmp(grace)).await;
    if removed > 0 {
        tracing::info!(node = node.name(), chunks = removed, bytes = freed, "blob chunks collected");
    }
    Ok(())
}

fn read_records(disk: &Disk) -> Result<Vec<(Hash, ManifestRecord)>, String> {
    let roots = disk.manifests().map_err(|e| e.to_string())?;
    Ok(roots.into_iter().filter_map(|r| Some((r, disk.read_manifest(&r).ok()??))).collect())
}

/// Exchanges the holder changes of `root` with its other homes and keeps the merge. A
/// home that does not have the record (it missed the put, or lost its disk) gets it
/// back while the blob is held: `Missing` never makes a home drop its own copy.
async fn sync(node: &Node, st: &Shared, root: Hash, rec: ManifestRecord) {
    let homes = homes(node, &st.cfg, &root);
    let me = node.name();
    let others: Vec<&String> = homes.iter().filter(|h| *h != me).collect();
    let asks =
        others.iter().map(|to| call(node, to, BlobMsg::Sync { root, holders: rec.holders.clone() }, SYNC_TIMEOUT));
    let answers = futures::future::join_all(asks).await;
    let mut merged = rec.clone();
    let mut lacking = Vec::new();
    for (to, a) in others.into_iter().zip(answers) {
        match a {
            Ok(BlobReply::Holders(h)) => {
                merged.merge(&h);
            }
            Ok(BlobReply::Missing) => lacking.push(to.clone()),
            _ => {}
        }
    }
    if merged.unheld_since_ms().is_none() {
        for to in lacking {
            let msg = BlobMsg::Restore { root, manifest: merged.manifest.clone(), holders: merged.holders.clone() };
            let _ = call(node, &to, msg, SYNC_TIMEOUT).await;
        }
    }
    if merged.holders != rec.holders {
        let _guard = st.lock(&root).lock().await;
        let disk = st.disk.clone();
        let changes = merged.holders.clone();
        let _ = blocking(move || {
            if let Ok(Some(mut now)) = disk.read_manifest(&root)
                && now.merge(&changes)
            {
                let _ = disk.write_manifest(&root, &now);
            }
        })
        .await;
    }
}

enum Settled {
    Live(Vec<Hash>),
    Collected,
    Gone,
}

/// Under the root's lock: a record unheld past the grace becomes a tombstone (its
/// chunks are no longer marked); the others are live.
fn settle(disk: &Disk, root: &Hash, grace_ms: u64) -> Settled {
    let Ok(Some(mut rec)) = disk.read_manifest(root) else { return Settled::Gone };
    if rec.collected_ms.is_some() {
        return Settled::Gone;
    }
    let now = unix_ms();
    if rec.unheld_since_ms().is_some_and(|since| now.saturating_sub(since) > grace_ms) {
        rec.collected_ms = Some(now);
        return match disk.write_manifest(root, &rec) {
            Ok(()) => Settled::Collected,
            Err(_) => Settled::Live(rec.manifest.chunks),
        };
    }
    Settled::Live(rec.manifest.chunks)
}

/// How long a collected blob's tombstone answers other homes (one that was down for
/// longer and still holds the blob keeps it: a leak, never a loss).
const TOMBSTONE_KEEP_MS: u64 = 7 * 86_400_000;

fn drop_old_tombstones(disk: &Disk) {
    let now = unix_ms();
    for (root, rec) in read_records(disk).unwrap_or_default() {
        if rec.collected_ms.is_some_and(|at| now.saturating_sub(at) > TOMBSTONE_KEEP_MS) {
            let _ = disk.remove_manifest(&root);
        }
    }
}

/// The rule in the module comment.
pub(crate) fn collectable(g: &GcState, nodes: &[String], h: &Hash, grace: Duration) -> bool {
    let written = g.written.get(h).copied().unwrap_or(g.boot) + grace;
    let after = g.marked.get(h).map_or(written, |m| written.max(*m));
    nodes.iter().all(|n| g.completed.get(n).is_some_and(|begun| *begun > after))
}

/// A collector message from another node (or this one), arriving at `now`.
pub(crate) fn note(g: &mut GcState, msg: BlobMsg, now: Instant) -> BlobReply {
    match msg {
        BlobMsg::GcBegin { from, epoch, round } => {
            g.begun.insert(from, (epoch, round, now));
        }
        BlobMsg::GcMark { hashes } => {
            for h in hashes {
                g.marked.insert(h, now);
            }
        }
        BlobMsg::GcDone { from, epoch, round } => {
            if let Some(&(e, r, at)) = g.begun.get(&from)
                && (e, r) == (epoch, round)
            {
                g.completed.insert(from, at);
            }
        }
        _ => return BlobReply::Refused("not a collector message".into()),
    }
    BlobReply::Noted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn state(boot: Instant) -> GcState {
        GcState {
            boot,
            written: HashMap::new(),
            marked: HashMap::new(),
            begun: HashMap::new(),
            completed: HashMap::new(),
        }
    }

    #[test]
    fn a_chunk_goes_only_after_every_node_completed_a_round_past_its_grace_and_marks() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let nodes = vec!["a".to_string(), "b".to_string()];
        let h = Hash([1; 32]);
        let mut g = state(t0);
        g.written.insert(h, t0);
        // Rounds that began within the grace do not count.
        g.completed.insert("a".into(), t0 + Duration::from_secs(5));
        g.completed.insert("b".into(), t0 + Duration::from_secs(20));
        assert!(!collectable(&g, &nodes, &h, grace));
        // Both past it: collectable.
        g.completed.insert("a".into(), t0 + Duration::from_secs(11));
        assert!(collectable(&g, &nodes, &h, grace));
        // A mark after a node's round began keeps it.
        g.marked.insert(h, t0 + Duration::from_secs(15));
        assert!(!collectable(&g, &nodes, &h, grace));
        g.completed.insert("a".into(), t0 + Duration::from_secs(16));
        assert!(collectable(&g, &nodes, &h, grace));
        // A node that never completed a round (down) keeps everything.
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert!(!collectable(&g, &three, &h, grace));
        // Written again later (a new upload names it): its grace starts again.
        g.written.insert(h, t0 + Duration::from_secs(30));
        assert!(!collectable(&g, &nodes, &h, grace));
    }

    #[test]
    fn done_counts_only_for_the_round_that_began_here() {
        let t0 = Instant::now();
        let mut g = state(t0);
        let begin = |round| BlobMsg::GcBegin { from: "a".into(), epoch: 1, round };
        let done = |epoch, round| BlobMsg::GcDone { from: "a".into(), epoch, round };
        assert!(matches!(note(&mut g, begin(7), t0), BlobReply::Noted));
        // A done of another round, or of an older boot, is ignored.
        note(&mut g, done(1, 6), t0 + Duration::from_secs(1));
        note(&mut g, done(0, 7), t0 + Duration::from_secs(1));
        assert!(g.completed.is_empty());
        note(&mut g, BlobMsg::GcMark { hashes: vec![Hash([2; 32])] }, t0 + Duration::from_secs(2));
        note(&mut g, done(1, 7), t0 + Duration::from_secs(3));
        // The round counts from when its begin arrived, not its done.
        assert_eq!(g.completed["a"], t0);
        assert_eq!(g.marked[&Hash([2; 32])], t0 + Duration::from_secs(2));
        assert!(matches!(note(&mut g, BlobMsg::Get { hash: Hash([0; 32]) }, t0), BlobReply::Refused(_)));
    }
}
