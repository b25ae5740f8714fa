//! The blob store on one node: blobs of every size around the chunk size read back
//! byte-identical (whole, as a stream, and through the agent's stream); the same bytes
//! stored twice are one blob with two holders; bad requests are refused with the
//! reason; a damaged chunk file is detected, not served; a blob nobody holds is
//! collected while the chunks another blob shares stay. (Copies across nodes and
//! kill -9 are tested on real processes in tests/blobs.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_runtime::blobs::{BlobError, CHUNK_BYTES_MAX};
use troupe_runtime::wire::Blob;
use troupe_runtime::{KindRegistry, Node, config};

const MIB: usize = 1 << 20;

async fn node(extra: &str) -> (Node, PathBuf) {
    let d = std::env::temp_dir().join(format!(
        "troupe-blobs-{}-{}",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    ));
    std::fs::create_dir_all(d.join("systems")).unwrap();
    std::fs::write(
        d.join("cluster.toml"),
        format!("[cluster]\nname = \"t\"\nseeds = [\"n1\"]\n{extra}\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n"),
    )
    .unwrap();
    let kinds = KindRegistry::new();
    let loaded = config::load(&d.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    let node = Node::start(Arc::new(loaded), kinds, "n1").await.unwrap();
    (node, d)
}

/// Seeded pseudo-random bytes (xorshift64*).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn metrics(node: &Node) -> String {
    troupe_runtime::metrics::render_prometheus(&node.metrics().snapshot())
}

fn chunk_files(dir: &Path) -> usize {
    let root = dir.join(".troupe/data/n1/blobs/chunks");
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_size_read_back_identical() {
    let (node, dir) = node("").await;
    let blobs = node.blobs().unwrap();
    assert_eq!(blobs.chunk_bytes(), CHUNK_BYTES_MAX);
    for (i, len) in [0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB + MIB / 2].into_iter().enumerate() {
        let data = bytes(i as u64 + 1, len);
        let blob = blobs.put(&data, "test").await.unwrap();
        assert_eq!(blob.len, len as u64);
        assert!(blobs.get(&blob).await.unwrap() == data, "{len} bytes read back differently");
        // As a stream: whole chunks, in order.
        let pieces: Vec<Vec<u8>> = blobs.read(blob).map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces.len(), len.div_ceil(MIB));
        assert!(pieces.iter().rev().skip(1).all(|p| p.len() == MIB));
        assert!(pieces.concat() == data);
        // Through the agent's stream (ActorHandle::stream).
        let mut s = blobs.read_via("n1", blob).await.unwrap();
        let mut via = Vec::new();
        while let Some(p) = s.next().await {
            via.extend_from_slice(&p.unwrap());
        }
        assert!(via == data, "{len} bytes streamed by the agent differently");
        let m = blobs.manifest(&blob).await.unwrap();
        assert_eq!(m.chunks.len(), len.div_ceil(MIB));
    }
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_are_one_blob_with_both_holders() {
    let (node, dir) = node("").await;
    let blobs = node.blobs().unwrap();
    let data = bytes(9, 2 * MIB + 5);
    let a = blobs.put(&data, "/app/x/1").await.unwrap();
    let b = blobs.put(&data, "/app/x/2").await.unwrap();
    assert_eq!(a, b, "content addressing: the same bytes, the same blob");
    assert_eq!(chunk_files(&dir), 3, "stored once");
    let holders: Vec<String> = blobs.holders_here(&a).await.unwrap().into_iter().collect();
    assert_eq!(holders, ["/app/x/1", "/app/x/2"]);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let (node, dir) = node("[blobs]\nblob_bytes_max = 4194304\n").await;
    let blobs = node.blobs().unwrap();
    let e = blobs.put(b"x", "").await.unwrap_err();
    assert!(matches!(&e, BlobError::Invalid(why) if why.contains("holder name")), "{e}");
    let e = blobs.put(&bytes(1, 4 * MIB + 1), "t").await.unwrap_err();
    assert!(matches!(&e, BlobError::Invalid(why) if why.contains("blob_bytes_max")), "{e}");
    // A handle nobody stored.
    let ghost = Blob { root: troupe_runtime::wire::Hash([7; 32]), len: 10 };
    let e = blobs.get(&ghost).await.unwrap_err();
    assert!(matches!(&e, BlobError::NotFound { .. }) && e.to_string().contains("not stored"), "{e}");
    // A handle with the right root and a wrong length is not served either.
    let blob = blobs.put(&bytes(2, 1000), "t").await.unwrap();
    let e = blobs.get(&Blob { len: 999, ..blob }).await.unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // A damaged chunk file: detected by its hash, deleted, never served.
    let root = dir.join(".troupe/data/n1/blobs/chunks");
    let f = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .next()
        .unwrap();
    let mut b = std::fs::read(f.path()).unwrap();
    b[10] ^= 1;
    std::fs::write(f.path(), &b).unwrap();
    let e = blobs.get(&blob).await.unwrap_err();
    assert!(matches!(&e, BlobError::Unavailable { reasons, .. } if reasons.contains("not here")), "{e}");
    assert!(!f.path().exists(), "the damaged file is deleted");
    let damaged = metrics(&node);
    assert!(damaged.contains("troupe_blob_chunks_damaged_total 1"), "{damaged}");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_nobody_holds_is_collected_and_shared_chunks_stay() {
    let (node, dir) = node("[blobs]\ngrace_ms = 300\ngc_interval_ms = 100\n").await;
    let blobs = node.blobs().unwrap();
    // `long`'s first two chunks are `short`'s two chunks.
    let long = blobs.put(&bytes(5, 3 * MIB), "a").await.unwrap();
    let short = blobs.put(&bytes(5, 2 * MIB), "b").await.unwrap();
    let kept = blobs.put(&bytes(6, MIB), "c").await.unwrap();
    assert_eq!(chunk_files(&dir), 4);
    // Released and held again within the grace: kept.
    blobs.release(&kept, "c").await.unwrap();
    blobs.retain(&kept, "c2").await.unwrap();
    blobs.release(&long, "a").await.unwrap();
    blobs.release(&long, "never-held").await.unwrap();
    let t = Instant::now();
    loop {
        if matches!(blobs.get(&long).await, Err(BlobError::NotFound { .. })) && chunk_files(&dir) == 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never collected: {} chunk files", chunk_files(&dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more rounds: what is held stays.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(chunk_files(&dir), 3);
    assert!(blobs.get(&short).await.unwrap() == bytes(5, 2 * MIB));
    assert!(blobs.get(&kept).await.unwrap() == bytes(6, MIB));
    // A collected blob cannot be held again.
    let e = blobs.retain(&long, "late").await.unwrap_err();
    assert!(matches!(e, BlobError::NotFound { .. }), "{e}");
    let m = metrics(&node);
    assert!(m.contains("troupe_blob_collected_manifests_total 1"), "{m}");
    assert!(m.contains("troupe_blob_collected_chunks_total 1"), "{m}");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
