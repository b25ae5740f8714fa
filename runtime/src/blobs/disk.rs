//! The blob store's files, under `<data_dir>/<node>/blobs/`: one file per chunk
//! (`chunks/<2 hex>/<hash>`) and one per manifest this node is a home of
//! (`manifests/<2 hex>/<root>`, the manifest with its holders).
//!
//! Every file is written under a temporary name, synced, renamed into place and its
//! folder synced: after `kill -9` a file is there whole or not at all. A chunk is read
//! back only if its bytes still hash to its name; a file that does not (a damaged
//! disk) is deleted and reported as missing, so a reader fetches another copy.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use troupe_wire::{Hash, Manifest, codec};

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Hash {
    Hash(Sha256::digest(bytes).into())
}

/// A manifest as its home keeps it, with its holders. Each holder's latest change
/// wins, so two homes that saw different changes agree once they exchange records
/// (gc.rs). A change a home applies is stamped after every change it already has for
/// that holder (`apply`): a retain that follows a release on a majority is newer than
/// it on at least one home whatever the clocks say, and the exchange spreads that. A
/// released holder is kept (a tombstone) until the record goes; a collected blob's
/// record stays as a tombstone too (`collected_ms`), so a home that was down when the
/// blob was released learns the release from it instead of bringing the blob back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestRecord {
    pub(crate) manifest: Manifest,
    /// Holder → (held, unix ms of the change).
    pub(crate) holders: BTreeMap<String, (bool, u64)>,
    /// Unix ms at which this home first stored it.
    pub(crate) created_ms: u64,
    /// Unix ms at which this home collected it (its chunks are no longer marked).
    pub(crate) collected_ms: Option<u64>,
}

impl ManifestRecord {
    pub(crate) fn new(manifest: Manifest, now_ms: u64) -> ManifestRecord {
        ManifestRecord { manifest, holders: BTreeMap::new(), created_ms: now_ms, collected_ms: None }
    }

    /// A change asked for at `at_ms` (the asking node's clock), stamped after any change
    /// this home has for the holder. `true` when it changed anything.
    pub(crate) fn apply(&mut self, holder: &str, held: bool, at_ms: u64) -> bool {
        let at = match self.holders.get(holder) {
            Some(&(h, _)) if h == held => return false,
            Some(&(_, prev)) => at_ms.max(prev + 1),
            None => at_ms,
        };
        self.holders.insert(holder.to_string(), (held, at));
        true
    }

    /// Takes a change from another home: the later stamp wins (ties to held).
    pub(crate) fn set(&mut self, holder: &str, held: bool, at_ms: u64) -> bool {
        match self.holders.get(holder) {
            Some(&(h, at)) if (at, h) >= (at_ms, held) => false,
            _ => {
                self.holders.insert(holder.to_string(), (held, at_ms));
                true
            }
        }
    }

    /// Takes every newer change of `other`; `true` when it changed anything.
    pub(crate) fn merge(&mut self, other: &BTreeMap<String, (bool, u64)>) -> bool {
        let mut changed = false;
        for (h, &(held, at)) in other {
            changed |= self.set(h, held, at);
        }
        changed
    }

    /// A tombstone whose exchange brought a newer hold is live again; `true` when it
    /// was revived.
    pub(crate) fn revive_if_held(&mut self) -> bool {
        if self.collected_ms.is_some() && self.unheld_since_ms().is_none() {
            self.collected_ms = None;
            return true;
        }
        false
    }

    /// The current holders.
    pub(crate) fn held(&self) -> BTreeSet<String> {
        self.holders.iter().filter(|(_, (held, _))| *held).map(|(h, _)| h.clone()).collect()
    }

    /// When the last holder let go (`None` while someone holds it).
    pub(crate) fn unheld_since_ms(&self) -> Option<u64> {
        if self.holders.values().any(|(held, _)| *held) {
            return None;
        }
        Some(self.holders.values().map(|(_, at)| *at).max().unwrap_or(self.created_ms))
    }
}

/// What reading a chunk found.
pub(crate) enum ChunkRead {
    Found(Vec<u8>),
    Missing,
    /// The file's bytes did not hash to its name; it was deleted.
    Damaged,
}

pub(crate) struct Disk {
    dir: PathBuf,
    tmp_seq: AtomicU64,
}

const TMP_PREFIX: &str = ".tmp-";

impl Disk {
    pub(crate) fn open(dir: &Path) -> io::Result<Disk> {
        fs::create_dir_all(dir.join("chunks"))?;
        fs::create_dir_all(dir.join("manifests"))?;
        Ok(Disk { dir: dir.to_path_buf(), tmp_seq: AtomicU64::new(0) })
    }

    fn path(&self, area: &str, h: &Hash) -> PathBuf {
        let hex = h.to_hex();
        self.dir.join(area).join(&hex[..2]).join(hex)
    }

    /// Stores chunk `h` (the caller checked that `bytes` hash to it). `false`: it was
    /// here already.
    pub(crate) fn write_chunk(&self, h: &Hash, bytes: &[u8]) -> io::Result<bool> {
        let path = self.path("chunks", h);
        if path.exists() {
            return Ok(false);
        }
        self.write_atomic(&path, bytes)?;
        Ok(true)
    }

    pub(crate) fn read_chunk(&self, h: &Hash) -> io::Result<ChunkRead> {
        let path = self.path("chunks", h);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ChunkRead::Missing),
            Err(e) => return Err(e),
        };
        if sha256(&bytes) != *h {
            let _ = fs::remove_file(&path);
            return Ok(ChunkRead::Damaged);
        }
        Ok(ChunkRead::Found(bytes))
    }

    /// Deletes chunk `h`; returns the bytes it freed.
    pub(crate) fn remove_chunk(&self, h: &Hash) -> io::Result<u64> {
        let path = self.path("chunks", h);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn read_manifest(&self, root: &Hash) -> io::Result<Option<ManifestRecord>> {
        match fs::read(self.path("manifests", root)) {
            Ok(b) => match codec::decode::<ManifestRecord>(&b) {
                // A record names its manifest by hash: one that does not match is damage.
                Ok(r) if codec::encode(&r.manifest).map(|e| sha256(&e) == *root).unwrap_or(false) => Ok(Some(r)),
                _ => {
                    tracing::warn!(%root, "a damaged blob manifest was deleted");
                    let _ = fs::remove_file(self.path("manifests", root));
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the record of `root` (callers hold the root's lock).
    pub(crate) fn write_manifest(&self, root: &Hash, rec: &ManifestRecord) -> io::Result<()> {
        let bytes = codec::encode(rec).map_err(io::Error::other)?;
        self.write_atomic(&self.path("manifests", root), &bytes)
    }

    pub(crate) fn remove_manifest(&self, root: &Hash) -> io::Result<()> {
        match fs::remove_file(self.path("manifests", root)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every chunk on disk, with its size.
    pub(crate) fn chunks(&self) -> io::Result<Vec<(Hash, u64)>> {
        self.list("chunks")
    }

    pub(crate) fn manifests(&self) -> io::Result<Vec<Hash>> {
        Ok(self.list("manifests")?.into_iter().map(|(h, _)| h).collect())
    }

    fn list(&self, area: &str) -> io::Result<Vec<(Hash, u64)>> {
        let mut out = Vec::new();
        for sub in fs::read_dir(self.dir.join(area))? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                if let Some(h) = name.to_str().and_then(|n| Hash::from_hex(n).ok()) {
                    out.push((h, f.metadata().map(|m| m.len()).unwrap_or(0)));
                }
            }
        }
        Ok(out)
    }

    /// Deletes temporary files older than `age` (writes a crash interrupted).
    pub(crate) fn sweep_tmp(&self, age: Duration) -> usize {
        let mut n = 0;
        for area in ["chunks", "manifests"] {
            let Ok(subs) = fs::read_dir(self.dir.join(area)) else { continue };
            for sub in subs.flatten() {
                let Ok(files) = fs::read_dir(sub.path()) else { continue };
                for f in files.flatten() {
                    let stale = f.file_name().to_str().is_some_and(|n| n.starts_with(TMP_PREFIX))
                        && f.metadata()
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age);
                    if stale && fs::remove_file(f.path()).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let parent = path.parent().ok_or_else(|| io::Error::other("a blob file has no folder"))?;
        fs::create_dir_all(parent)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            fs::rename(&tmp, path)?;
            fs::File::open(parent)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_chunk_reads_as_damaged_and_is_gone() {
        let dir = std::env::temp_dir().join(format!("troupe-blob-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let d = Disk::open(&dir).unwrap();
        let bytes = b"hello blob".to_vec();
        let h = sha256(&bytes);
        assert!(d.write_chunk(&h, &bytes).unwrap());
        assert!(!d.write_chunk(&h, &bytes).unwrap(), "a second write of the same chunk is a no-op");
        assert!(matches!(d.read_chunk(&h).unwrap(), ChunkRead::Found(b) if b == bytes));
        fs::write(d.path("chunks", &h), b"hellO blob").unwrap();
        assert!(matches!(d.read_chunk(&h).unwrap(), ChunkRead::Damaged));
        assert!(matches!(d.read_chunk(&h).unwrap(), ChunkRead::Missing));
        assert_eq!(d.chunks().unwrap().len(), 0);
        fs::write(d.path("chunks", &h).with_file_name(".tmp-1-1"), b"x").unwrap();
        assert_eq!(d.sweep_tmp(Duration::ZERO), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn holder_changes_merge_to_the_latest_whatever_the_order() {
        let m = Manifest { len: 0, chunk_bytes: 1, chunks: vec![] };
        let mut a = ManifestRecord::new(m.clone(), 1);
        let mut b = ManifestRecord::new(m.clone(), 1);
        a.set("x", true, 10);
        b.set("x", true, 10);
        // `a` saw the release, `b` did not; `b` saw another holder come.
        a.set("x", false, 20);
        b.set("y", true, 15);
        assert_eq!(a.unheld_since_ms(), Some(20));
        let (a0, b0) = (a.clone(), b.clone());
        assert!(b.merge(&a0.holders));
        assert!(a.merge(&b0.holders));
        assert_eq!(a, b);
        assert_eq!(a.held().into_iter().collect::<Vec<_>>(), ["y"]);
        // An older change never undoes a newer one.
        assert!(!a.set("x", true, 19));
        assert!(!a.merge(&b0.holders));
        a.set("y", false, 30);
        assert_eq!(a.unheld_since_ms(), Some(30));

        // A retain asked from a node whose clock is behind the release's is stamped
        // after the release on a home that saw it, and wins the exchange.
        let mut saw = ManifestRecord::new(m.clone(), 1);
        let mut missed = ManifestRecord::new(m, 1);
        saw.apply("z", true, 100);
        missed.apply("z", true, 100);
        assert!(saw.apply("z", false, 500)); // released on a node with a fast clock
        assert!(saw.apply("z", true, 200)); // held again from a slow one
        assert!(!missed.apply("z", true, 200)); // already held here: nothing to do
        let (s0, m0) = (saw.clone(), missed.clone());
        saw.merge(&m0.holders);
        missed.merge(&s0.holders);
        assert_eq!(saw.held(), missed.held());
        assert!(saw.held().contains("z"), "the later retain was lost to a clock");
    }
}
