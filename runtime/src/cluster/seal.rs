//! Sealed and signed gossip. Every SWIM packet is encrypted and authenticated with a
//! key derived from the cluster key (ChaCha20-Poly1305, HKDF-SHA256), so a process
//! outside the cluster can neither join, read the membership, nor forge a suspicion or
//! a death; and it is signed by the sending node's TLS key and carries that node's
//! certificate, so a member of the cluster cannot speak as another member: the gossip
//! identity is bound to the TLS identity.
//!
//! Packet: `[version=2][nonce: 12][ciphertext][tag: 16]`; the ciphertext holds
//! `sent_ms: u64 LE, cert_len: u16 LE, cert (DER), signature: 64, payload`. The
//! signature (ECDSA P-256, the node certificate's key) covers the cluster name, the
//! stamp and the payload. The certificate must chain to the cluster CA and name a node
//! (`<name>.node.troupe`); verified certificates are remembered by their SHA-256, so
//! a packet costs one signature check. The gossip shell then checks that the sender
//! named in the SWIM header is the certificate's node.
//!
//! The cluster name is the associated data, so two clusters that share a key still do
//! not mix. A packet older or newer than `SKEW_MS_MAX` is refused, and within that
//! window each signed message is accepted once: a digest of it is remembered (at most
//! `REPLAY_CACHE_MAX`, the oldest forgotten first), so a recorded packet cannot be
//! replayed while it is fresh enough to be believed, not even re-sealed under a new
//! nonce by a member that holds the cluster key.

use super::tls::{self, PeerId};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const VERSION: u8 = 2;
const TAG_LEN: usize = 16;
/// Bytes of an ECDSA P-256 signature in fixed (r || s) form.
const SIG_LEN: usize = 64;
/// Accepted clock difference between sender and receiver, in milliseconds.
pub const SKEW_MS_MAX: u64 = 30_000;
/// Bytes of a cluster key.
pub const KEY_BYTES: usize = 32;
/// Signed messages of accepted packets remembered to refuse replays (about 40 bytes
/// each; a 7-node cluster gossips a few hundred packets a second, so this holds far
/// more than `SKEW_MS_MAX` worth).
pub const REPLAY_CACHE_MAX: usize = 1 << 18;
/// Certificates remembered once verified; past it the memory starts over.
const CERT_CACHE_MAX: usize = 1024;
/// Largest node certificate a packet carries. Every node leaves this much room, so
/// all of them give foca the same packet size whatever their names (a node with a
/// longer certificate would otherwise send packets its peers' foca refuses as too big).
pub const CERT_BYTES_MAX: usize = 512;

/// Why a gossip packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than the smallest sealed packet (header, timestamp, signature and tag).
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
    /// Sealed with the cluster key, but not signed by a node of this cluster: the
    /// certificate does not chain to the cluster CA, is not a node's, or the signature
    /// does not match it.
    #[error("packet is not signed by a node of this cluster: {0}")]
    Identity(String),
}

/// A node whose certificate was verified: its name and public key.
#[derive(Clone)]
struct Signer {
    name: String,
    public_key: Vec<u8>,
}

/// This node's gossip identity (its certificate and key, from its TLS identity) and
/// what it checks other nodes' identities against (the cluster CA).
pub struct GossipIdentity {
    name: String,
    cert: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    verifier: Arc<dyn ClientCertVerifier>,
    known: parking_lot::Mutex<HashMap<[u8; 32], Signer>>,
}

impl std::fmt::Debug for GossipIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GossipIdentity({}, {} byte certificate)", self.name, self.cert.len())
    }
}

impl GossipIdentity {
    /// From a node's TLS identity (`tls::load_identity`): its leaf certificate and
    /// ECDSA P-256 key (what `troupe certs init` makes), and the cluster CA.
    pub fn new(id: &tls::Identity) -> Result<GossipIdentity, String> {
        let leaf = id.chain.first().ok_or("the node's certificate chain is empty")?;
        let name = match tls::peer_from_cert(leaf) {
            Some(PeerId::Node(n)) => n,
            other => return Err(format!("gossip needs a node certificate, this one is {other:?}")),
        };
        if leaf.as_ref().len() > CERT_BYTES_MAX {
            return Err(format!(
                "the node certificate is {} bytes; gossip carries at most {CERT_BYTES_MAX} (use a shorter node name)",
                leaf.as_ref().len()
            ));
        }
        let PrivateKeyDer::Pkcs8(pkcs8) = &id.key else {
            return Err("the node key must be a PKCS#8 ECDSA P-256 key (as `troupe certs init` makes)".into());
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.secret_pkcs8_der(), &rng)
            .map_err(|e| format!("the node key is not an ECDSA P-256 key ({e}); remake it with `troupe certs init`"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            id.roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(GossipIdentity {
            name,
            cert: leaf.as_ref().to_vec(),
            key,
            rng,
            verifier,
            known: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// This node's name, as its certificate says.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes a packet may carry besides the SWIM payload, the same on every node
    /// (what `packet_bytes_max` must leave room for).
    pub fn overhead(&self) -> usize {
        1 + NONCE_LEN + 8 + 2 + CERT_BYTES_MAX + SIG_LEN + TAG_LEN
    }

    /// The node that owns `cert`, verified against the cluster CA (remembered once
    /// verified; a refused certificate is checked again each time, so refusals cannot
    /// flush what is remembered).
    fn signer(&self, cert: &[u8]) -> Result<Signer, String> {
        if cert.len() > CERT_BYTES_MAX {
            return Err(format!("its certificate is {} bytes, over {CERT_BYTES_MAX}", cert.len()));
        }
        let digest = sha256(&[cert]);
        if let Some(known) = self.known.lock().get(&digest) {
            return Ok(known.clone());
        }
        let der = CertificateDer::from(cert.to_vec());
        self.verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .map_err(|e| format!("its certificate is not from this cluster's CA ({e})"))?;
        let name = match tls::peer_from_cert(&der) {
            Some(PeerId::Node(name)) => name,
            other => return Err(format!("its certificate is not a node's ({other:?})")),
        };
        let (_, x) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
        let signer = Signer { name, public_key: x.public_key().subject_public_key.data.to_vec() };
        let mut known = self.known.lock();
        if known.len() >= CERT_CACHE_MAX {
            known.clear();
        }
        known.insert(digest, signer.clone());
        Ok(signer)
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An opened packet: the node that signed it and its SWIM payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The node whose certificate signed it.
    pub sender: String,
    /// The SWIM payload.
    pub payload: Vec<u8>,
}

/// Seals and opens gossip packets with the key derived from one cluster's key and
/// name, signing with this node's identity.
pub struct Sealer {
    key: LessSafeKey,
    aad: Vec<u8>,
    identity: GossipIdentity,
    seen: parking_lot::Mutex<Seen>,
}

/// Digests of accepted messages with their send stamps, oldest first.
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
    /// `cluster_name`; signs with `identity`.
    pub fn new(cluster_key: &[u8], cluster_name: &str, identity: GossipIdentity) -> Self {
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
        Self { key, aad: cluster_name.as_bytes().to_vec(), identity, seen: parking_lot::Mutex::new(Seen::default()) }
    }

    /// This node's gossip identity.
    pub fn identity(&self) -> &GossipIdentity {
        &self.identity
    }

    /// Signs and encrypts `payload` into a packet stamped with `now_ms` (ms since the
    /// Unix epoch), under a fresh random nonce.
    pub fn seal(&self, payload: &[u8], now_ms: u64) -> Vec<u8> {
        let stamp = now_ms.to_le_bytes();
        let sig = match self.identity.key.sign(&self.identity.rng, &[&self.aad[..], &stamp, payload].concat()) {
            Ok(s) => s,
            Err(_) => unreachable!("ECDSA signing fails only when the system RNG does"),
        };
        let cert = &self.identity.cert;
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(self.identity.overhead() + payload.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce_bytes);
        let mut body = Vec::with_capacity(self.identity.overhead() + payload.len());
        body.extend_from_slice(&stamp);
        body.extend_from_slice(&(cert.len() as u16).to_le_bytes());
        body.extend_from_slice(cert);
        body.extend_from_slice(sig.as_ref());
        body.extend_from_slice(payload);
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        if self.key.seal_in_place_append_tag(nonce, Aad::from(&self.aad), &mut body).is_err() {
            unreachable!("sealing only fails on oversize input (> 256 GiB)");
        }
        out.extend_from_slice(&body);
        out
    }

    /// Checks, decrypts and verifies a packet, returning its signer and payload;
    /// refuses it when its stamp is more than `SKEW_MS_MAX` from `now_ms` (ms since
    /// the Unix epoch), when no node of this cluster signed it, or when it was seen.
    pub fn open(&self, packet: &[u8], now_ms: u64) -> Result<Opened, SealError> {
        if packet.len() < 1 + NONCE_LEN + 8 + 2 + SIG_LEN + TAG_LEN {
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
        let (stamp, rest) = plain.split_at(8);
        let sent = u64::from_le_bytes(stamp.try_into().map_err(|_| SealError::TooShort)?);
        let skew = sent.abs_diff(now_ms);
        if skew > SKEW_MS_MAX {
            return Err(SealError::Stale(skew));
        }
        let (cert_len, rest) = rest.split_at(2);
        let cert_len = u16::from_le_bytes([cert_len[0], cert_len[1]]) as usize;
        if rest.len() < cert_len + SIG_LEN {
            return Err(SealError::TooShort);
        }
        let (cert, rest) = rest.split_at(cert_len);
        let (sig, payload) = rest.split_at(SIG_LEN);
        let signer = self.identity.signer(cert).map_err(SealError::Identity)?;
        let message = [&self.aad[..], stamp, payload].concat();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &signer.public_key)
            .verify(&message, sig)
            .map_err(|_| SealError::Identity(format!("the signature does not match {}'s certificate", signer.name)))?;
        // Only signed packets reach the cache, so forgeries cannot flush it. The key
        // is the signed message, not the nonce: re-sealing a recorded message under a
        // new nonce is still a replay.
        let mut key = [0u8; NONCE_LEN];
        key.copy_from_slice(&sha256(&[&message])[..NONCE_LEN]);
        if !self.seen.lock().first_time(key, sent, now_ms) {
            return Err(SealError::Replayed);
        }
        Ok(Opened { sender: signer.name, payload: payload.to_vec() })
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

/// Gossip identities for tests: nodes of a fresh cluster whose CA lives in a temporary
/// folder.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh cluster's TLS folder with certificates for `nodes`.
    pub(crate) fn tls_dir(cluster: &str, nodes: &[&str]) -> tls::TlsDir {
        let d = std::env::temp_dir().join(format!("troupe-seal-{cluster}-{}", rand::random::<u64>()));
        let dir = tls::TlsDir(d);
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        tls::init_cluster(&dir, cluster, &names).expect("test certificates");
        dir
    }

    /// The gossip identity of node `name` in `dir`.
    pub(crate) fn identity(dir: &tls::TlsDir, name: &str) -> GossipIdentity {
        let id = tls::load_identity(dir, &PeerId::Node(name.into())).expect("a node identity");
        GossipIdentity::new(&id).expect("a gossip identity")
    }

    /// Node identities of a fresh cluster.
    pub(crate) fn identities(cluster: &str, nodes: &[&str]) -> Vec<GossipIdentity> {
        let dir = tls_dir(cluster, nodes);
        nodes.iter().map(|n| identity(&dir, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_and_refusals() {
        let dir = tls_dir("dev", &["n1", "n2"]);
        let s = Sealer::new(&[7; 32], "dev", identity(&dir, "n1"));
        let r = Sealer::new(&[7; 32], "dev", identity(&dir, "n2"));
        let p = s.seal(b"hello", 1_000_000);
        let got = r.open(&p, 1_000_500).unwrap();
        assert_eq!((got.sender.as_str(), got.payload.as_slice()), ("n1", &b"hello"[..]));
        // Another key, or another cluster name with the same key: refused.
        assert_eq!(Sealer::new(&[8; 32], "dev", identity(&dir, "n2")).open(&p, 1_000_000), Err(SealError::Auth));
        assert_eq!(Sealer::new(&[7; 32], "prod", identity(&dir, "n2")).open(&p, 1_000_000), Err(SealError::Auth));
        // A replay long after: refused.
        assert!(matches!(r.open(&p, 1_000_000 + SKEW_MS_MAX + 1), Err(SealError::Stale(_))));
        // A replay while fresh: refused too; a new packet with the same payload is not.
        assert_eq!(r.open(&p, 1_000_600), Err(SealError::Replayed));
        assert_eq!(r.open(&s.seal(b"hello", 1_000_700), 1_000_700).unwrap().payload, b"hello");
        // Any flipped bit: refused.
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 1;
            assert!(r.open(&q, 1_000_000).is_err(), "bit flip at {i} accepted");
        }
    }

    /// A member that holds the cluster key (a compromised node) re-seals what it
    /// recorded under a fresh nonce: still a replay.
    #[test]
    fn a_recorded_message_resealed_under_a_new_nonce_is_a_replay() {
        let dir = tls_dir("dev", &["n1", "n2", "n3"]);
        let (s, r, evil) = (identity(&dir, "n1"), identity(&dir, "n2"), identity(&dir, "n3"));
        let (s, r) = (Sealer::new(&[7; 32], "dev", s), Sealer::new(&[7; 32], "dev", r));
        let p = s.seal(b"probe", 5_000_000);
        assert!(r.open(&p, 5_000_000).is_ok());
        // n3 opens it with the cluster key and seals the same plaintext again.
        let evil = Sealer::new(&[7; 32], "dev", evil);
        let mut body = p[1 + NONCE_LEN..].to_vec();
        let nonce = Nonce::assume_unique_for_key(p[1..1 + NONCE_LEN].try_into().unwrap());
        let plain = evil.key.open_in_place(nonce, Aad::from(b"dev"), &mut body).unwrap().to_vec();
        let fresh: [u8; NONCE_LEN] = rand::random();
        let mut again = plain.clone();
        evil.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(fresh), Aad::from(b"dev"), &mut again).unwrap();
        let resealed = [&[VERSION][..], &fresh, &again].concat();
        assert_eq!(r.open(&resealed, 5_000_001), Err(SealError::Replayed));
    }

    /// Sealed with the right cluster key, signed by someone who is not a node of this
    /// cluster: a node certificate of another CA, a client certificate of this CA, or
    /// a signature that is not the certificate's.
    #[test]
    fn only_a_node_of_this_cluster_can_sign() {
        let dir = tls_dir("dev", &["n1", "n2"]);
        let r = Sealer::new(&[7; 32], "dev", identity(&dir, "n2"));
        let foreign = Sealer::new(&[7; 32], "dev", identities("dev", &["n1"]).remove(0));
        let why = r.open(&foreign.seal(b"x", 1_000), 1_000).unwrap_err();
        assert!(matches!(&why, SealError::Identity(w) if w.contains("not from this cluster's CA")), "{why}");
        // A client certificate of the right CA, with its own key.
        tls::ensure_cert(&dir, &PeerId::Client("app".into())).unwrap();
        let client = tls::load_identity(&dir, &PeerId::Client("app".into())).unwrap();
        assert!(GossipIdentity::new(&client).unwrap_err().contains("needs a node certificate"));
        let mut forged = identity(&dir, "n1");
        forged.cert = client.chain[0].as_ref().to_vec();
        if let PrivateKeyDer::Pkcs8(k) = &client.key {
            forged.key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der(), &forged.rng).unwrap();
        }
        let why = r.open(&Sealer::new(&[7; 32], "dev", forged).seal(b"x", 1_000), 1_000).unwrap_err();
        assert!(matches!(&why, SealError::Identity(w) if w.contains("not a node's")), "{why}");
        // n1's certificate with another key: the signature does not match.
        let mut stolen = identity(&dir, "n2");
        stolen.cert = identity(&dir, "n1").cert.clone();
        let why = r.open(&Sealer::new(&[7; 32], "dev", stolen).seal(b"x", 1_000), 1_000).unwrap_err();
        assert_eq!(why, SealError::Identity("the signature does not match n1's certificate".into()));
        let _ = std::fs::remove_dir_all(&dir.0);
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
            static ID: std::sync::OnceLock<Sealer> = std::sync::OnceLock::new();
            let s = ID.get_or_init(|| Sealer::new(&[1; 32], "c", identities("c", &["n1"]).remove(0)));
            prop_assert!(s.open(&bytes, 0).is_err());
        }
    }
}
