//! Sealed gossip: every SWIM packet is encrypted and authenticated with a key derived
//! from the cluster key (ChaCha20-Poly1305, HKDF-SHA256), so a process outside the
//! cluster can neither join, read the membership, nor forge a suspicion or a death.
//!
//! Packet: `[version=1][nonce: 12][ciphertext of (sent_ms: u64 LE, payload)][tag: 16]`.
//! The cluster name is the associated data, so two clusters that share a key still
//! do not mix. A packet older or newer than `SKEW_MS_MAX` is refused, and within that
//! window each authentic packet is accepted once: its nonce is remembered (at most
//! `REPLAY_CACHE_MAX` of them, the oldest forgotten first), so a recorded packet cannot
//! be replayed at all while it is fresh enough to be believed.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use std::path::Path;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Accepted clock difference between sender and receiver, in milliseconds.
pub const SKEW_MS_MAX: u64 = 30_000;
/// Bytes of a cluster key.
pub const KEY_BYTES: usize = 32;
/// Nonces of accepted packets remembered to refuse replays (about 40 bytes each; a
/// 7-node cluster gossips a few hundred packets a second, so this holds far more
/// than `SKEW_MS_MAX` worth).
pub const REPLAY_CACHE_MAX: usize = 1 << 18;

/// Why a gossip packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than the smallest sealed packet (header, timestamp and tag).
    #[error("packet too short")]
    TooShort,
    /// The first byte is not a packet version this node knows.
    #[error("unknown packet version {0}")]
    Version(u8),
    /// Decryption failed: the packet was not sealed with this cluster's key and
    /// name, or was altered.
    #[error("packet failed authentication (not sealed with this cluster's key)")]
    Auth,
    /// The packet's send time is further than `SKEW_MS_MAX` from our clock; the
    /// value is the difference, in milliseconds.
    #[error("packet is {0} ms away from our clock (replayed or clocks too far apart)")]
    Stale(u64),
    /// An authentic packet this node already accepted: a replay (or a duplicate the
    /// network made, which SWIM does not need either).
    #[error("packet was already received (replayed)")]
    Replayed,
}

/// Seals and opens gossip packets with the key derived from one cluster's key and
/// name.
pub struct Sealer {
    key: LessSafeKey,
    aad: Vec<u8>,
    seen: parking_lot::Mutex<Seen>,
}

/// Nonces of accepted packets with their send stamps, oldest first.
#[derive(Default)]
struct Seen {
    nonces: std::collections::HashSet<[u8; NONCE_LEN]>,
    order: std::collections::VecDeque<([u8; NONCE_LEN], u64)>,
}

impl Seen {
    /// Records `nonce`; false when it was already there.
    fn first_time(&mut self, nonce: [u8; NONCE_LEN], sent_ms: u64, now_ms: u64) -> bool {
        // Forget what is too old to be believed anyway, then the oldest past the cap.
        while let Some(&(n, sent)) = self.order.front() {
            if sent.saturating_add(SKEW_MS_MAX) < now_ms || self.order.len() >= REPLAY_CACHE_MAX {
                self.order.pop_front();
                self.nonces.remove(&n);
            } else {
                break;
            }
        }
        if !self.nonces.insert(nonce) {
            return false;
        }
        self.order.push_back((nonce, sent_ms));
        true
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_BYTES
    }
}

impl Sealer {
    /// Derives the packet key from `cluster_key` (as [`load_key`] returns it) and
    /// `cluster_name`.
    pub fn new(cluster_key: &[u8], cluster_name: &str) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"troupe-gossip-v1");
        let prk = salt.extract(cluster_key);
        let mut okm = [0u8; KEY_BYTES];
        let info = [cluster_name.as_bytes()];
        // Expanding 32 bytes from SHA-256 cannot fail (limit is 255 * 32).
        if let Ok(o) = prk.expand(&info, Len32) {
            let _ = o.fill(&mut okm);
        }
        let key = match UnboundKey::new(&CHACHA20_POLY1305, &okm) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("a 32-byte key is valid for ChaCha20-Poly1305"),
        };
        Self { key, aad: cluster_name.as_bytes().to_vec(), seen: parking_lot::Mutex::new(Seen::default()) }
    }

    /// Encrypts `payload` into a packet stamped with `now_ms` (ms since the Unix
    /// epoch), under a fresh random nonce.
    pub fn seal(&self, payload: &[u8], now_ms: u64) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + 8 + payload.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        let mut body = Vec::with_capacity(8 + payload.len() + TAG_LEN);
        body.extend_from_slice(&now_ms.to_le_bytes());
        body.extend_from_slice(payload);
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        if self.key.seal_in_place_append_tag(nonce, Aad::from(&self.aad), &mut body).is_err() {
            unreachable!("sealing only fails on oversize input (> 256 GiB)");
        }
        out.extend_from_slice(&body);
        out
    }

    /// Checks and decrypts a packet, returning its payload; refuses it when its
    /// stamp is more than `SKEW_MS_MAX` from `now_ms` (ms since the Unix epoch).
    pub fn open(&self, packet: &[u8], now_ms: u64) -> Result<Vec<u8>, SealError> {
        if packet.len() < 1 + NONCE_LEN + 8 + TAG_LEN {
            return Err(SealError::TooShort);
        }
        if packet[0] != VERSION {
            return Err(SealError::Version(packet[0]));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&packet[1..1 + NONCE_LEN]);
        let mut body = packet[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&self.aad), &mut body)
            .map_err(|_| SealError::Auth)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&plain[..8]);
        let sent = u64::from_le_bytes(ts);
        let skew = sent.abs_diff(now_ms);
        if skew > SKEW_MS_MAX {
            return Err(SealError::Stale(skew));
        }
        // Only authentic packets reach the cache, so forgeries cannot flush it.
        if !self.seen.lock().first_time(nonce, sent, now_ms) {
            return Err(SealError::Replayed);
        }
        Ok(plain[8..].to_vec())
    }
}

/// Reads the cluster key file (64 hex characters), creating it when `create` is set
/// and it does not exist yet.
pub fn load_key(path: &Path, create: bool) -> Result<Vec<u8>, String> {
    if !path.exists() {
        if !create {
            return Err(format!("cluster key {} is missing (run `troupe certs init`)", path.display()));
        }
        super::tls::write_random_hex(path, KEY_BYTES).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let hex = super::tls::read_hex(path, KEY_BYTES, "a cluster key")?;
    Ok((0..KEY_BYTES).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_refusals() {
        let s = Sealer::new(&[7; 32], "dev");
        let p = s.seal(b"hello", 1_000_000);
        assert_eq!(s.open(&p, 1_000_500).unwrap(), b"hello");
        // Another key, or another cluster name with the same key: refused.
        assert_eq!(Sealer::new(&[8; 32], "dev").open(&p, 1_000_000), Err(SealError::Auth));
        assert_eq!(Sealer::new(&[7; 32], "prod").open(&p, 1_000_000), Err(SealError::Auth));
        // A replay long after: refused.
        assert!(matches!(s.open(&p, 1_000_000 + SKEW_MS_MAX + 1), Err(SealError::Stale(_))));
        // A replay while fresh: refused too; a new packet with the same payload is not.
        assert_eq!(s.open(&p, 1_000_600), Err(SealError::Replayed));
        assert_eq!(s.open(&s.seal(b"hello", 1_000_700), 1_000_700).unwrap(), b"hello");
        // Any flipped bit: refused.
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 1;
            assert!(s.open(&q, 1_000_000).is_err(), "bit flip at {i} accepted");
        }
    }

    #[test]
    fn the_replay_cache_forgets_only_what_is_stale_or_past_its_cap() {
        let mut seen = Seen::default();
        assert!(seen.first_time([1; NONCE_LEN], 1_000, 1_000));
        assert!(!seen.first_time([1; NONCE_LEN], 1_000, 2_000), "a repeat within the window");
        // Once the first is older than the skew window it is forgotten (and a replay
        // of it is refused as stale instead).
        assert!(seen.first_time([2; NONCE_LEN], 40_000, 40_000));
        assert!(!seen.nonces.contains(&[1; NONCE_LEN]));
        for i in 0..REPLAY_CACHE_MAX + 10 {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            n[11] = 9;
            seen.first_time(n, 40_000, 40_000);
        }
        assert!(seen.order.len() <= REPLAY_CACHE_MAX && seen.nonces.len() == seen.order.len());
    }

    proptest! {
        #[test]
        fn garbage_never_opens(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = Sealer::new(&[1; 32], "c");
            prop_assert!(s.open(&bytes, 0).is_err());
        }
    }
}
