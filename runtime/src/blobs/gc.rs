//! Collection of blobs nobody holds.
//!
//! A manifest's homes keep its holders, each holder's latest change winning (disk.rs).
//! Each round a home exchanges those changes with the other homes of each manifest it
//! keeps, so a home that missed a release (it was down) learns it; a home whose
//! manifest a majority of the homes no longer knows (collected there) deletes its own.
//! A blob whose last holder let go is deleted from each home `grace_ms` later. Chunks are collected by marking: every
//! `gc_interval_ms` each node runs a round — it tells every node of the cluster file
//! that its round begins, marks on their homes the chunks of every manifest it keeps
//! that is still held (or within its grace), and tells each node it reached that its
//! round is done there.
//!
//! A node deletes one of its chunks only when **every** node of the cluster file has
//! completed a round whose begin arrived here after both the chunk's last mark and
//! `grace_ms` after the chunk was last written. The marks of one round reach a node
//! after its begin (the sender waits for the begin's answer), so a chunk a live
//! manifest names is marked in every round of every node that keeps that manifest,
//! and never satisfies the rule; a manifest put after a node's round began names
//! chunks written at most `grace_ms` before (an upload finishes within the grace), so
//! the grace covers it. Every time here is this node's own clock (`Instant`), never
//! compared with another node's. While any node is down or unreachable no chunk is
//! deleted anywhere (a leak, never a loss); after a restart a node deletes nothing
//! until every node has completed a round since it booted.

use super::disk::{Disk, ManifestRecord};
use super::state::{BlobMsg, BlobReply, CHUNK_TIMEOUT, GcState, Shared, call, homes};
use crate::node::Node;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use troupe_core::directory::majority;
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
    // 1. Manifests: agree on holders with the other homes, delete those unheld past
    // their grace, gather the chunks of the rest.
    let disk = st.disk.clone();
    let records = blocking(move || read_records(&disk)).await??;
    let synced: Vec<(Hash, bool)> = futures::stream::iter(records)
        .map(|(root, rec)| sync(node, st, root, rec))
        .buffer_unordered(SYNC_PARALLEL)
        .collect()
        .await;
    let gone: Vec<Hash> = synced.iter().filter(|(_, gone)| *gone).map(|(r, _)| *r).collect();
    let disk = st.disk.clone();
    let grace_ms = st.cfg.grace_ms;
    let (live_chunks, collected) = blocking(move || live_manifests(&disk, grace_ms, &gone)).await??;
    st.stats.collected_manifests.add(collected);

    // 2. Begin, marks, done — per node; a node that misses any of them does not hear
    // `done` from this round.
    let me = node.name().to_string();
    let epoch = node.epoch();
    let mut per_node: BTreeMap<String, Vec<Hash>> = st.nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    for h in live_chunks {
        for home in homes(node, &st.cfg, &h) {
            per_node.entry(home).or_default().push(h);
        }
    }
    let timeout = CHUNK_TIMEOUT;
    let sends = per_node.into_iter().map(|(to, hashes)| {
        let me = me.clone();
        async move {
            let begin = BlobMsg::GcBegin { from: me.clone(), epoch, round };
            if !matches!(call(node, &to, begin, timeout).await, Ok(BlobReply::Noted)) {
                return;
            }
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

    // 3. This node's chunks: delete those the rule allows.
    let disk = st.disk.clone();
    let on_disk = blocking(move || disk.chunks()).await?.map_err(|e| e.to_string())?;
    let doomed: Vec<Hash> = {
        let g = st.gc.lock();
        on_disk.iter().filter(|(h, _)| collectable(&g, &st.nodes, h, st.grace())).map(|(h, _)| *h).collect()
    };
    let disk = st.disk.clone();
    let (removed, freed) = if doomed.is_empty() {
        (Vec::new(), 0)
    } else {
        let todo = doomed.clone();
        blocking(move || {
            let mut removed = Vec::new();
            let mut freed = 0;
            for h in todo {
                match disk.remove_chunk(&h) {
                    Ok(n) => {
                        freed += n;
                        removed.push(h);
                    }
                    Err(e) => tracing::warn!(chunk = %h, error = %e, "could not delete a blob chunk"),
                }
            }
            (removed, freed)
        })
        .await?
    };
    {
        let mut g = st.gc.lock();
        for h in &removed {
            g.written.remove(h);
            g.marked.remove(h);
        }
    }
    st.stats.collected_chunks.add(removed.len() as u64);
    let total: u64 = on_disk.iter().map(|(_, n)| n).sum::<u64>() - freed;
    st.stats.chunks.set((on_disk.len() - removed.len()) as f64);
    st.stats.bytes.set(total as f64);
    let disk = st.disk.clone();
    let grace = st.grace();
    let _ = blocking(move || disk.sweep_tmp(grace)).await;
    if !removed.is_empty() {
        tracing::info!(node = node.name(), chunks = removed.len(), bytes = freed, "blob chunks collected");
    }
    Ok(())
}

fn read_records(disk: &Disk) -> Result<Vec<(Hash, ManifestRecord)>, String> {
    let roots = disk.manifests().map_err(|e| e.to_string())?;
    Ok(roots.into_iter().filter_map(|r| Some((r, disk.read_manifest(&r).ok()??))).collect())
}

/// Exchanges the holder changes of `root` with its other homes and keeps the merge.
/// Returns whether the record should go: a majority of the homes no longer know the
/// blob (collected there, or its put never reached them), past the grace.
async fn sync(node: &Node, st: &Shared, root: Hash, rec: ManifestRecord) -> (Hash, bool) {
    let homes = homes(node, &st.cfg, &root);
    let me = node.name();
    let asks = homes
        .iter()
        .filter(|h| *h != me)
        .map(|to| call(node, to, BlobMsg::Sync { root, holders: rec.holders.clone() }, SYNC_TIMEOUT));
    let answers = futures::future::join_all(asks).await;
    let mut merged = rec.clone();
    let mut missing = 0;
    for a in answers {
        match a {
            Ok(BlobReply::Holders(h)) => {
                merged.merge(&h);
            }
            Ok(BlobReply::Missing) => missing += 1,
            _ => {}
        }
    }
    let old = unix_ms().saturating_sub(rec.created_ms) > st.cfg.grace_ms;
    if missing >= majority(homes.len()) && old {
        return (root, true);
    }
    if merged.holders != rec.holders {
        let _guard = st.lock(&root).lock().await;
        let disk = st.disk.clone();
        let _ = blocking(move || {
            if let Ok(Some(mut now)) = disk.read_manifest(&root)
                && now.merge(&merged.holders)
            {
                let _ = disk.write_manifest(&root, &now);
            }
        })
        .await;
    }
    (root, false)
}

/// Deletes the manifests unheld for longer than the grace, and those in `gone`;
/// returns the chunks the others name, and how many were deleted.
fn live_manifests(disk: &Disk, grace_ms: u64, gone: &[Hash]) -> Result<(HashSet<Hash>, u64), String> {
    let now = unix_ms();
    let mut live = HashSet::new();
    let mut collected = 0;
    for root in disk.manifests().map_err(|e| e.to_string())? {
        let Ok(Some(rec)) = disk.read_manifest(&root) else { continue };
        let expired = rec.unheld_since_ms().is_some_and(|since| now.saturating_sub(since) > grace_ms);
        if expired || gone.contains(&root) {
            if disk.remove_manifest(&root).is_ok() {
                collected += 1;
            }
        } else {
            live.extend(rec.manifest.chunks.iter().copied());
        }
    }
    Ok((live, collected))
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
