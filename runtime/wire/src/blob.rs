//! Blobs on the wire: the handle an actor keeps ([`Blob`]), the list of chunks it
//! names ([`Manifest`]), content hashes ([`Hash`]) and raw bytes ([`Bytes`], encoded
//! as one length-prefixed run instead of a sequence of numbers).
//!
//! A blob is content-addressed twice: each chunk by the SHA-256 of its bytes, and the
//! blob by the SHA-256 of its manifest's encoding (its `root`). Whoever holds a
//! [`Blob`] can check everything it reads against it. The runtime's blob store
//! (troupe-runtime `blobs`) keeps and moves them; this crate only names them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A SHA-256 digest: a chunk's or a manifest's content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Hash, String> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(format!("a blob hash is 64 hex digits, not {} characters", s.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(|| format!("`{}` is not a hex digit", c as char));
            out[i] = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
        }
        Ok(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// A stored blob, as an actor keeps it in its state or sends it in a message: the
/// hash of its manifest and its length. 40 bytes whatever the blob's size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Blob {
    /// SHA-256 of the encoded [`Manifest`].
    pub root: Hash,
    /// Length in bytes.
    pub len: u64,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({}, {} bytes)", &self.root.to_hex()[..16], self.len)
    }
}

impl fmt::Display for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.root, self.len)
    }
}

/// What a blob is made of: its chunks in order. Every chunk but the last holds
/// exactly `chunk_bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Length of the blob in bytes.
    pub len: u64,
    /// Size of every chunk but the last.
    pub chunk_bytes: u32,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<Hash>,
}

impl Manifest {
    /// Whether the chunk count and sizes agree with `len`.
    pub fn check(&self) -> Result<(), String> {
        if self.chunk_bytes == 0 {
            return Err("a manifest's chunk size is 0".into());
        }
        let want = self.len.div_ceil(self.chunk_bytes as u64);
        if want != self.chunks.len() as u64 {
            return Err(format!(
                "a manifest of {} bytes in chunks of {} has {} chunks, not {want}",
                self.len,
                self.chunk_bytes,
                self.chunks.len()
            ));
        }
        Ok(())
    }

    /// Length of chunk `i`.
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_bytes as u64;
        self.len.saturating_sub(start).min(self.chunk_bytes as u64)
    }
}

/// Raw bytes encoded as one run (`serialize_bytes`): a megabyte costs one copy, not a
/// million calls. On the wire it is the same as a `Vec<u8>` (a length, then the bytes).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        raw::deserialize(d).map(Bytes)
    }
}

/// `#[serde(with = "troupe_wire::blob::raw")]` for a `Vec<u8>` field: encoded as one
/// run of bytes (the same encoding bincode gives a `Vec<u8>`, much faster).
pub mod raw {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct Raw;

    impl<'de> Visitor<'de> for Raw {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Formats without a bytes type (JSON) send a list of numbers.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    /// Asks for borrowed bytes: decoding from a slice (as `codec` does) then checks
    /// the length against the input before anything is allocated, so a hostile length
    /// inside a small frame allocates nothing.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(Raw)
    }

    /// The same for a `Result<Vec<u8>, E>` field.
    pub mod result {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize)]
        enum Ser<'a, E> {
            Ok(#[serde(with = "super")] &'a Vec<u8>),
            Err(&'a E),
        }

        #[derive(Deserialize)]
        enum De<E> {
            Ok(#[serde(with = "super")] Vec<u8>),
            Err(E),
        }

        pub fn serialize<S: Serializer, E: Serialize>(v: &Result<Vec<u8>, E>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Ok(b) => Ser::<E>::Ok(b).serialize(s),
                Err(e) => Ser::Err(e).serialize(s),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>, E: Deserialize<'de>>(
            d: D,
        ) -> Result<Result<Vec<u8>, E>, D::Error> {
            Ok(match De::<E>::deserialize(d)? {
                De::Ok(b) => Ok(b),
                De::Err(e) => Err(e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn bytes_encode_exactly_like_a_vec_of_u8() {
        let v: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let plain = codec::encode(&v).unwrap();
        let fast = codec::encode(&Bytes(v.clone())).unwrap();
        assert_eq!(plain, fast, "the wire format must not change");
        let back: Bytes = codec::decode(&plain).unwrap();
        assert_eq!(back.0, v);
        let as_vec: Vec<u8> = codec::decode(&fast).unwrap();
        assert_eq!(as_vec, v);
    }

    #[test]
    fn a_result_of_bytes_encodes_like_the_plain_result() {
        let ok: Result<Vec<u8>, String> = Ok(vec![1, 2, 3, 250]);
        let err: Result<Vec<u8>, String> = Err("no".into());
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct W(#[serde(with = "raw::result")] Result<Vec<u8>, String>);
        for r in [ok, err] {
            let plain = codec::encode(&r).unwrap();
            let fast = codec::encode(&W(r.clone())).unwrap();
            assert_eq!(plain, fast);
            let back: W = codec::decode(&plain).unwrap();
            assert_eq!(back.0, r);
        }
    }

    #[test]
    fn a_hostile_length_is_refused_before_anything_is_allocated() {
        // A frame of a few bytes announcing 60 MiB of payload.
        let mut evil = Vec::new();
        evil.push(252u8); // bincode varint: a u32 follows
        evil.extend_from_slice(&(60u32 << 20).to_le_bytes());
        evil.extend_from_slice(&[1, 2, 3]);
        assert!(codec::decode::<Bytes>(&evil).is_err());
        #[derive(Deserialize, Debug)]
        struct W(
            #[serde(with = "raw")]
            #[allow(dead_code)]
            Vec<u8>,
        );
        assert!(codec::decode::<W>(&evil).is_err());
    }

    #[test]
    fn hashes_read_back_from_hex_and_refuse_garbage() {
        let h = Hash([0xab; 32]);
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(Hash::from_hex("abc").unwrap_err().contains("64 hex digits"));
        assert!(Hash::from_hex(&"zz".repeat(32)).unwrap_err().contains("not a hex digit"));
    }

    #[test]
    fn a_manifest_checks_its_chunk_count() {
        let m = Manifest { len: 10, chunk_bytes: 4, chunks: vec![Hash([0; 32]); 3] };
        m.check().unwrap();
        assert_eq!(m.chunk_len(2), 2);
        let bad = Manifest { chunks: vec![Hash([0; 32]); 2], ..m };
        assert!(bad.check().unwrap_err().contains("not 3"));
    }
}
