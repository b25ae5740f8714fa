//! The blob store on real node processes: a 200 MB blob survives `kill -9` of each
//! node in turn and is read back byte-identical by the survivors (from their disks,
//! from other homes, and streamed by another node's agent); a damaged chunk file is
//! replaced from another home on read; a home that lost a manifest gets it back; a
//! released blob is collected on every node, chunks another blob shares stay, and
//! nothing is collected while a node is down; a copy of actor state larger than a
//! frame reaches a new owner through the blob store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::TestCluster;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use troupe_client::{Client, ClientConfig};
use troupe_diag::{Blobber, BlobberMsg, BlobberReply};
use troupe_runtime::ActorPath;
use troupe_runtime::wire::Blob;

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
/// A 200 MB transfer on a loaded 2-core machine, with room.
const BIG: Duration = Duration::from_secs(180);

fn blobber(node: &str) -> ActorPath {
    ActorPath::new("diag", "blobber", node).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn connect(c: &TestCluster) -> Client {
    Client::connect(ClientConfig::from_cluster_file(&c.cluster_file(), "cli").unwrap()).await.unwrap()
}

async fn ask(client: &Client, node: &str, msg: BlobberMsg, timeout: Duration) -> BlobberReply {
    let deadline = Instant::now() + timeout;
    loop {
        match client.ask_timeout::<Blobber>(&blobber(node), &msg, timeout).await {
            Ok(r) => return r,
            // The client's own node may be the one just killed: it reconnects.
            Err(e) if e.remote().is_some_and(|r| r.is_retryable()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{node}'s blobber did not answer {msg:?}: {e}"),
        }
    }
}

async fn put(client: &Client, node: &str, seed: u64, len: u64, holder: &str) -> (Blob, String) {
    match ask(client, node, BlobberMsg::Put { seed, len, holder: holder.into() }, BIG).await {
        BlobberReply::Stored { blob, sha256, micros } => {
            eprintln!("put {len} bytes on {node} in {:.2} s", micros as f64 / 1e6);
            (blob, sha256)
        }
        other => panic!("put on {node}: {other:?}"),
    }
}

async fn digest(client: &Client, node: &str, blob: Blob, via: Option<&str>) -> Result<(String, u64), String> {
    match ask(client, node, BlobberMsg::Digest { blob, via: via.map(str::to_string) }, BIG).await {
        BlobberReply::Digest { sha256, len, micros } => {
            eprintln!("read {len} bytes at {node} (via {via:?}) in {:.2} s", micros as f64 / 1e6);
            Ok((sha256, len))
        }
        BlobberReply::Failed(why) => Err(why),
        other => panic!("digest at {node}: {other:?}"),
    }
}

fn chunk_files(c: &TestCluster, node: &str) -> Vec<PathBuf> {
    let root = c.data_dir(node).join("blobs/chunks");
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
                .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
                .map(|f| f.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_200_mb_blob_survives_kill_9_of_any_node_and_reads_back_identical() {
    let mut c = TestCluster::start(common::Options { systems: vec!["diag"], nodes: 5, ..common::Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = runtime();
    let client = rt.block_on(connect(&c));
    let len = 200 * MB;
    let (blob, sha) = rt.block_on(put(&client, "n1", 42, len, "test"));
    assert_eq!(blob.len, len);
    // Five nodes, three copies of each chunk: each node keeps about three fifths.
    let held: Vec<usize> = c.names.iter().map(|n| chunk_files(&c, n).len()).collect();
    eprintln!("chunk files per node: {held:?}");
    let chunks = len.div_ceil(MIB) as usize;
    assert!(held.iter().all(|h| *h < chunks), "every node holds every chunk: {held:?}");
    assert!(held.iter().sum::<usize>() >= chunks * 2, "fewer than a majority of copies: {held:?}");
    let names = c.names.clone();
    for (i, victim) in names.iter().enumerate() {
        // Killed right away, not yet seen down: the reads must not wait for that.
        c.kill(victim);
        let alive = c.alive();
        let reader = &alive[i % alive.len()];
        let via = alive.iter().find(|n| *n != reader).unwrap();
        let local = rt.block_on(digest(&client, reader, blob, None)).unwrap();
        assert_eq!(local, (sha.clone(), len), "{reader} read a different blob with {victim} killed");
        let streamed = rt.block_on(digest(&client, reader, blob, Some(via))).unwrap();
        assert_eq!(streamed, (sha.clone(), len), "{via} streamed a different blob with {victim} killed");
        c.spawn(victim);
        c.wait_converged(&[], Duration::from_secs(60));
    }
    let remote: f64 = names.iter().map(|n| c.metric(n, "troupe_blob_chunks_read_total{from=\"remote\"}")).sum();
    assert!(remote > 0.0, "no chunk was read from another node");
}

#[test]
fn a_released_blob_is_collected_everywhere_but_not_while_a_node_is_down() {
    let extra = "[blobs]\ngrace_ms = 500\ngc_interval_ms = 200\n".to_string();
    let mut c = TestCluster::start(common::Options { systems: vec!["diag"], extra, ..common::Options::default() });
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = runtime();
    let client = rt.block_on(connect(&c));
    // `long`'s first two chunks are `short`'s.
    let (long, long_sha) = rt.block_on(put(&client, "n1", 5, 3 * MIB, "a"));
    let (short, short_sha) = rt.block_on(put(&client, "n2", 5, 2 * MIB, "b"));
    assert_eq!(rt.block_on(digest(&client, "n3", long, None)).unwrap(), (long_sha, 3 * MIB));
    let files = |c: &TestCluster| -> Vec<usize> { c.names.iter().map(|n| chunk_files(c, n).len()).collect() };
    // Three copies on three nodes: every node keeps all three chunks (eventually: a put
    // returns on two of them).
    common::wait_for("three copies of each chunk", Duration::from_secs(30), || (files(&c) == [3, 3, 3]).then_some(()));

    // A damaged copy is replaced from another home when read.
    let victim_file = chunk_files(&c, "n2").into_iter().next().unwrap();
    let good = std::fs::read(&victim_file).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&victim_file, &bad).unwrap();
    let (_, len) = rt.block_on(digest(&client, "n2", long, None)).unwrap();
    assert_eq!(len, 3 * MIB);
    assert_eq!(c.metric("n2", "troupe_blob_chunks_damaged_total"), 1.0);
    common::wait_for("the damaged copy replaced", Duration::from_secs(30), || {
        (std::fs::read(&victim_file).ok()? == good).then_some(())
    });

    // A home that lost a manifest gets it back from the others while the blob is held.
    let hex = short.root.to_hex();
    let lost = c.data_dir("n1").join("blobs/manifests").join(&hex[..2]).join(&hex);
    std::fs::remove_file(&lost).unwrap();
    common::wait_for("the lost manifest restored", Duration::from_secs(30), || lost.exists().then_some(()));

    // Released: collected on every node; the chunks `short` shares stay.
    assert_eq!(
        rt.block_on(ask(&client, "n3", BlobberMsg::Release { blob: long, holder: "a".into() }, BIG)),
        BlobberReply::Done
    );
    common::wait_for("the released blob collected everywhere", Duration::from_secs(60), || {
        (files(&c) == [2, 2, 2]).then_some(())
    });
    let gone = rt.block_on(digest(&client, "n1", long, None)).unwrap_err();
    assert!(gone.contains("not stored"), "{gone}");
    assert_eq!(rt.block_on(digest(&client, "n3", short, None)).unwrap(), (short_sha.clone(), 2 * MIB));
    let collected: f64 = c.names.iter().map(|n| c.metric(n, "troupe_blob_collected_chunks_total")).sum();
    assert_eq!(collected, 3.0, "one chunk on each of three nodes");

    // With a node down nothing is collected (its manifests might still name the
    // chunks); once it is back, the rounds complete again.
    c.kill("n3");
    c.wait_converged(&["n3"], Duration::from_secs(30));
    assert_eq!(
        rt.block_on(ask(&client, "n1", BlobberMsg::Release { blob: short, holder: "b".into() }, BIG)),
        BlobberReply::Done
    );
    // Many rounds past the grace.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(chunk_files(&c, "n1").len(), 2, "collected while a node was down");
    assert_eq!(chunk_files(&c, "n2").len(), 2, "collected while a node was down");
    c.spawn("n3");
    c.wait_converged(&[], Duration::from_secs(60));
    common::wait_for("collected once every node is back", Duration::from_secs(60), || {
        (files(&c) == [0, 0, 0]).then_some(())
    });
}

/// With `frame_bytes_max` at 32 KiB, a replicated ledger whose copy is ~50 KB cannot
/// be handed to a new owner in one reply: it goes through the blob store.
#[test]
fn a_copy_larger_than_a_frame_reaches_the_new_owner_through_the_blob_store() {
    use troupe_diag::{Ledger, LedgerMsg, LedgerReply};
    let mut c = TestCluster::prepare(common::Options { systems: vec!["diag"], ..common::Options::default() });
    let file = c.cluster_file();
    let text =
        std::fs::read_to_string(&file).unwrap().replace("[transport]\n", "[transport]\nframe_bytes_max = 32768\n");
    std::fs::write(&file, text).unwrap();
    for n in c.names.clone() {
        c.spawn(&n);
    }
    c.wait_converged(&[], Duration::from_secs(30));
    let rt = runtime();
    let client = rt.block_on(connect(&c));
    let path = ActorPath::new("diag", "ledger", "big").unwrap();
    let (batches, per) = (40u64, 200u32);
    let owner = rt.block_on(async {
        let mut owner = String::new();
        for batch in 0..batches {
            match client.ask_timeout::<Ledger>(&path, &LedgerMsg::Append { batch, entries: per }, BIG).await {
                Ok(LedgerReply::Appended { node }) => owner = node,
                other => panic!("batch {batch}: {other:?}"),
            }
        }
        owner
    });
    c.kill(&owner);
    let deadline = Instant::now() + BIG;
    let (node, entries) = rt.block_on(async {
        loop {
            match client.ask_timeout::<Ledger>(&path, &LedgerMsg::Entries, Duration::from_secs(10)).await {
                Ok(LedgerReply::Entries { node, entries }) => break (node, entries),
                other => {
                    assert!(Instant::now() < deadline, "the ledger never came back: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    assert_ne!(node, owner);
    let want: Vec<(u64, u32)> = (0..batches).flat_map(|b| (0..per).map(move |i| (b, i))).collect();
    assert!(entries == want, "{} entries came back, {} were written", entries.len(), want.len());
    let via: f64 = c.alive().iter().map(|n| c.metric(n, "troupe_replica_copies_via_blob_total")).sum();
    assert!(via >= 1.0, "no copy went through the blob store");
}
