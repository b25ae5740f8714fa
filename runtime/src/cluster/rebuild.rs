//! A node that came back with an empty store (a replacement machine, a wiped data
//! directory) rebuilds its replicas before it votes again. The decisions and the
//! argument are troupe-core's `rebuild` (and docs/replication.md, "A replica that lost
//! its disk"); this module asks the other nodes and writes what it learns.
//!
//! Invariants:
//! - The store's `replica.standing` metadata says `voter` only once a rebuild finished
//!   (or the store held state from before the marker existed); a node killed halfway
//!   through a rebuild starts it again.
//! - While rebuilding, the node's replica refuses every request about a path it has
//!   not relearned (`replica::serve`), and an entity this node owns relearns its path
//!   before its election (`replica::elect`).

use super::replica::{self, ReplicaMsg, ReplicaReply, SEEN_BLANK_KEY, STORE_ID_KEY, store_id};
use crate::node::Node;
use crate::store::{StoreError, WriteOp};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use troupe_core::rebuild::{Inventory, NextStep, Standing};

/// The store's metadata key for this node's standing.
const STANDING_KEY: &str = "replica.standing";
const VOTER: &[u8] = b"voter";
const REBUILDING: &[u8] = b"rebuilding";

/// Paths relearned at once.
const LEARN_CONCURRENCY: usize = 16;
/// Pause before asking again a node that did not answer, or relearning a path again.
const RETRY: Duration = Duration::from_millis(200);
/// How long the rebuild waits for the other nodes' inventories before it says so.
const QUIET_WAIT: Duration = Duration::from_secs(2);
/// How often a long rebuild logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// This node's standing from its store at boot. A store that holds nothing and never
/// finished a rebuild rebuilds (it is marked so at once, so a crash halfway keeps it
/// rebuilding); a store from before the marker that holds state votes.
pub(crate) async fn standing_at_boot(node: &Node) -> Result<Standing, StoreError> {
    let store = node.store();
    let marker = store.meta(STANDING_KEY)?;
    let rebuilding = match marker.as_deref() {
        Some(VOTER) => false,
        Some(_) => true,
        None => store.is_blank()?,
    };
    let want = if rebuilding { REBUILDING } else { VOTER };
    let mut ops = Vec::new();
    if marker.as_deref() != Some(want) {
        ops.push(WriteOp::Meta { key: STANDING_KEY.into(), bytes: want.to_vec() });
    }
    if store.meta(STORE_ID_KEY)?.is_none() {
        ops.push(WriteOp::Meta { key: STORE_ID_KEY.into(), bytes: rand::random::<u64>().to_le_bytes().to_vec() });
    }
    if !ops.is_empty() {
        store.write(ops).await?;
    }
    Ok(if rebuilding { Standing::rebuilding() } else { Standing::Voter })
}

/// Rebuilds this node's replicas: the inventory of every other node, then every path
/// in it relearned; then this node votes on every path. Runs until it is done.
pub(crate) async fn run(node: Node) {
    let Some(cluster) = node.cluster().cloned() else { return };
    let started = Instant::now();
    let me = node.name().to_string();
    let roster: Vec<String> = node.loaded().cluster.nodes.iter().map(|n| n.name.clone()).collect();
    tracing::info!(node = %me, "this node's store is empty (a new node, or its disk was lost): it votes on replicated state once the other nodes' answers show it holds nothing it must relearn");
    let mut inventory = Inventory::default();
    // Per node not yet answered in full: where its listing resumes, what it listed, and
    // whether its first page said it holds nothing.
    let mut listing: BTreeMap<String, (Option<String>, Vec<String>, bool)> =
        roster.iter().filter(|n| **n != me).map(|n| (n.clone(), (None, Vec::new(), true))).collect();
    let mut last_missing = Vec::new();
    let mine = loop {
        match store_id(&node) {
            Ok(id) => break id,
            Err(e) => {
                tracing::error!(error = %e, "rebuilding: cannot read this store's identity; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    // The store identity each peer reported, for the record of a new cluster.
    let mut stores: BTreeMap<String, u64> = BTreeMap::new();
    let paths = loop {
        // Nodes of a new cluster start at about the same time: a round that began in
        // the first QUIET_WAIT forms a new cluster only with every node's empty answer,
        // so the one that forms it vouches for all of them (taken before the asks, which
        // can take a connect timeout).
        let patient = started.elapsed() < QUIET_WAIT;
        let mut paging = false;
        let asks = listing.iter().map(|(peer, (cursor, _, _))| {
            let msg = ReplicaMsg::Inventory { for_node: me.clone(), after: cursor.clone(), store: mine };
            let node = node.clone();
            async move { (peer.clone(), replica::ask(&node, peer, msg).await) }
        });
        for (peer, answer) in futures::future::join_all(asks).await {
            let Some((cursor, paths, blank)) = listing.get_mut(&peer) else { continue };
            match answer {
                Ok(ReplicaReply::Inventory { paths: page, next, blank: b, vouch, store, rebuilding }) => {
                    if vouch {
                        inventory.vouched(&peer);
                    }
                    stores.insert(peer.clone(), store);
                    // Empty, and has not voted since its store was made.
                    *blank &= b && rebuilding && store != 0;
                    paths.extend(page);
                    match next {
                        // More pages: asked for in the next round, at once.
                        Some(n) => {
                            *cursor = Some(n);
                            paging = true;
                        }
                        None => inventory.answered(&peer, std::mem::take(paths), *blank),
                    }
                }
                Ok(other) => tracing::debug!(peer = %peer, answer = ?other, "inventory refused"),
                Err(e) => tracing::debug!(peer = %peer, error = %e, "inventory not answered"),
            }
        }
        match inventory.next(&me, &roster, patient) {
            NextStep::NewCluster => {
                // A decision by the majority rule, on this round's answers, records whom
                // it saw empty: they may follow it. One that followed another's word
                // vouches for nobody.
                let (why, seen) = match inventory.vouched_by() {
                    Some(by) => (format!("{by} formed a new cluster after it saw this node's store empty"), Vec::new()),
                    None => (
                        "the other nodes hold no replicated state: a new cluster".to_string(),
                        inventory.blank().map(|n| (n.to_string(), stores.get(n).copied().unwrap_or(0))).collect(),
                    ),
                };
                finish(&node, &cluster, 0, started, &why, seen).await;
                return;
            }
            NextStep::Learn(paths) => {
                cluster.set_inventoried();
                break paths;
            }
            NextStep::Waiting(missing) => {
                listing.retain(|n, _| missing.contains(n));
                // An empty answer is asked again every round: the new-cluster rule counts
                // only answers of the round that decides (an empty peer may have started
                // voting since), and a node that formed the cluster since may vouch.
                let empty: Vec<String> = inventory.blank().map(str::to_string).collect();
                for p in empty {
                    inventory.forget(&p);
                    listing.insert(p, (None, Vec::new(), true));
                }
                if paging {
                    continue;
                }
                // Nodes of a new cluster start at about the same time: only a wait
                // longer than that is worth a warning.
                if missing != last_missing && started.elapsed() >= QUIET_WAIT {
                    tracing::warn!(waiting_for = %missing.join(", "),
                        "rebuilding: waiting for the inventory of every other node (one of them may hold the only copy of a write this node held)");
                    last_missing = missing;
                }
                tokio::time::sleep(if started.elapsed() < QUIET_WAIT { RETRY } else { RETRY * 5 }).await;
            }
        }
    };
    let total = paths.len();
    tracing::info!(paths = total, "rebuilding: relearning the replicated paths the other nodes listed");
    let mut left = paths;
    let mut last_log = Instant::now();
    while !left.is_empty() {
        let results: Vec<(String, Result<(), String>)> = futures::stream::iter(left)
            .map(|p| {
                let node = node.clone();
                async move {
                    let r = replica::learn(&node, &p).await;
                    (p, r)
                }
            })
            .buffer_unordered(LEARN_CONCURRENCY)
            .collect()
            .await;
        left = Vec::new();
        for (p, r) in results {
            if let Err(why) = r {
                if last_log.elapsed() >= PROGRESS_EVERY {
                    tracing::warn!(path = %p, why = %why, "rebuilding: a path cannot be relearned yet");
                }
                left.push(p);
            }
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            tracing::info!(relearned = total - left.len(), of = total, "rebuilding");
            last_log = Instant::now();
        }
        if !left.is_empty() {
            // The node that formed a new cluster may have answered this node's inventory
            // before it recorded whom it saw empty (this node among them): its word, asked
            // again, ends the rebuild as at the inventory. Without it this node waits for
            // a copy from every other member of a set, and one of them may be down
            // (found by the suite: tests/batch_persist.rs, the decider killed at once).
            if let Some(by) = vouched(&node, &me, &roster, mine).await {
                let why = format!("{by} formed a new cluster after it saw this node's store empty");
                finish(&node, &cluster, total - left.len(), started, &why, Vec::new()).await;
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }
    finish(&node, &cluster, total, started, "every path the other nodes listed is relearned", Vec::new()).await;
}

/// A node that formed a new cluster after it saw this node's current store (`mine`)
/// empty, if one says so now.
async fn vouched(node: &Node, me: &str, roster: &[String], mine: u64) -> Option<String> {
    let asks = roster.iter().filter(|n| n.as_str() != me).map(|peer| {
        let msg = ReplicaMsg::Inventory { for_node: me.to_string(), after: None, store: mine };
        async move { (peer.clone(), replica::ask(node, peer, msg).await) }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .find(|(_, a)| matches!(a, Ok(ReplicaReply::Inventory { vouch: true, .. })))
        .map(|(peer, _)| peer)
}

/// Marks this node a voter, on disk first.
async fn finish(
    node: &Node,
    cluster: &super::Cluster,
    paths: usize,
    started: Instant,
    why: &str,
    seen_blank: Vec<(String, u64)>,
) {
    let mut ops = vec![WriteOp::Meta { key: STANDING_KEY.into(), bytes: VOTER.to_vec() }];
    if !seen_blank.is_empty() {
        match troupe_wire::codec::encode(&seen_blank) {
            Ok(bytes) => ops.push(WriteOp::Meta { key: SEEN_BLANK_KEY.into(), bytes }),
            Err(e) => tracing::error!(error = %e, "cannot record whom this node saw empty"),
        }
    }
    loop {
        match node.store().write(ops.clone()).await {
            Ok(()) => break,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::error!(error = %e, "rebuilding: cannot record the end of the rebuild; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    cluster.set_standing(Standing::Voter);
    // Singletons this node owns may have failed to start while it rebuilt.
    node.rehome().await;
    tracing::info!(
        paths,
        took_ms = started.elapsed().as_millis() as u64,
        "rebuilt: {why}; this node votes on replicated state"
    );
}
