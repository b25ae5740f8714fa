//! Batched persist on real node processes: a ledger appends batches of entries with one
//! `Ctx::persist_batch` each while its owner is killed with SIGKILL and comes back;
//! afterwards every batch is in the log whole or not at all, and every acknowledged one
//! is there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use troupe_client::{Client, ClientConfig};
use troupe_diag::{Ledger, LedgerMsg, LedgerReply};
use troupe_runtime::ActorPath;
use troupe_testkit::TestCluster;

const ENTRIES: u32 = 200;
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_batch_survives_a_crash_whole_or_not_at_all() {
    let mut c = TestCluster::start(common::Options { systems: vec!["diag"], nodes: 3, ..common::Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let path = ActorPath::new("diag", "ledger", "l1").unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut killed: Option<String> = None;
    rt.block_on(async {
        let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap();
        let client = std::sync::Arc::new(Client::connect(cfg).await.unwrap());
        let started = Instant::now();
        let mut batch = 0u64;
        while acked.len() < 60 {
            assert!(started.elapsed() < WAIT * 2, "only {} batches acknowledged", acked.len());
            batch += 1;
            let msg = LedgerMsg::Append { batch, entries: ENTRIES };
            match client.ask_timeout::<Ledger>(&path, &msg, Duration::from_secs(5)).await {
                Ok(LedgerReply::Appended { node }) => {
                    acked.push(batch);
                    // Kill the owner after 20 batches, with the next one on its way.
                    if acked.len() == 20 && killed.is_none() {
                        let next = LedgerMsg::Append { batch: batch + 1_000_000, entries: ENTRIES };
                        let client2 = client.clone();
                        let p2 = path.clone();
                        let in_flight = tokio::spawn(async move {
                            client2.ask_timeout::<Ledger>(&p2, &next, Duration::from_secs(5)).await
                        });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        c.kill(&node);
                        if let Ok(Ok(LedgerReply::Appended { .. })) = in_flight.await {
                            acked.push(batch + 1_000_000);
                        }
                        killed = Some(node);
                    }
                    // And bring it back after 40.
                    if acked.len() == 40
                        && let Some(n) = &killed
                    {
                        c.spawn(n);
                    }
                }
                Ok(other) => panic!("{other:?}"),
                // The owner is gone or the ledger moves: a refused or lost batch.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let deadline = Instant::now() + WAIT;
        let entries = loop {
            match client.ask_timeout::<Ledger>(&path, &LedgerMsg::Entries, Duration::from_secs(5)).await {
                Ok(LedgerReply::Entries { entries, .. }) => break entries,
                other => {
                    assert!(Instant::now() < deadline, "the ledger never answered: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut per_batch: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (b, i) in entries {
            per_batch.entry(b).or_default().push(i);
        }
        for (b, items) in &per_batch {
            assert_eq!(items, &(0..ENTRIES).collect::<Vec<u32>>(), "batch {b} is in the log in part");
        }
        for b in &acked {
            assert!(per_batch.contains_key(b), "acknowledged batch {b} was lost");
        }
    });
    assert!(killed.is_some(), "the owner was never killed");
}
