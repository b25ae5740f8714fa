//! The one codec: serde + bincode 2, and length-prefixed frames.
//!
//! A frame on a stream is `u32 little-endian length` followed by that many bytes of
//! bincode. The length is checked against a cap *before* anything is allocated, and
//! bincode's own decode limit bounds what a hostile length field inside a frame can
//! make us allocate.

use crate::envelope::Frame;
use serde::{Serialize, de::DeserializeOwned};

/// Default cap on one frame, in bytes (16 MiB: room for a batch of KV-cache blocks).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Hard ceiling that bincode enforces while decoding, whatever the configured cap.
const DECODE_LIMIT: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("malformed data: {0}")]
    Decode(String),
    #[error("frame of {len} bytes exceeds the cap of {cap} bytes (frame_bytes_max)")]
    TooLarge { len: usize, cap: usize },
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes exactly one value that fills `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes`; returns it and the bytes used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Appends one length-prefixed frame to `out`. On error `out` is left as it was.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>, cap: usize) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = encode_into(frame, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    if len > cap {
        out.truncate(start);
        return Err(CodecError::TooLarge { len, cap });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Reads the length prefix at the start of `buf`: `Ok(None)` when fewer than 4 bytes
/// are there, an error when the announced length is over `cap`.
pub fn frame_len(buf: &[u8], cap: usize) -> Result<Option<usize>, CodecError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > cap {
        return Err(CodecError::TooLarge { len, cap });
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`. Returns the frame and the bytes used, or
/// `Ok(None)` when `buf` does not hold a whole frame yet.
pub fn decode_frame(buf: &[u8], cap: usize) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some(len) = frame_len(buf, cap)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, 4 + len)))
}

/// Reassembles frames from a byte stream that arrives in chunks of any size (QUIC
/// delivers a stream's bytes split wherever the network split them). The transport and
/// the client SDK both read their streams through it.
///
/// Invariant: the frames returned for a byte stream are the same however it was split,
/// and a malformed or oversize frame is an error at the point it starts, after every
/// whole frame before it was returned (fuzzed: `fuzz/src/targets/frame_stream.rs`).
/// Memory held is at most one partial frame (below `cap`) plus the last chunk.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    cap: usize,
}

/// A reader's buffer kept between frames at most once everything in it was read.
const READ_BUF_KEEP: usize = 512 << 10;

impl FrameReader {
    /// A reader refusing frames over `cap` bytes (`frame_bytes_max`).
    pub fn new(cap: usize) -> Self {
        // Grows with the first chunk: an idle stream (a client's, answered once) holds
        // no more than what it read.
        FrameReader { buf: Vec::new(), start: 0, cap }
    }

    /// Appends bytes as they arrived.
    pub fn push(&mut self, chunk: &[u8]) {
        // Drop what was consumed once it is at least half the buffer (amortized O(1)).
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or the error that
    /// ends this stream (the reader must not be used after it).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        match decode_frame(&self.buf[self.start..], self.cap)? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => {
                if self.start == self.buf.len() {
                    // Everything read: start over, and let a buffer a large frame grew
                    // go (a busy stream keeps a moderate one).
                    self.start = 0;
                    if self.buf.capacity() > READ_BUF_KEEP {
                        self.buf = Vec::new();
                    } else {
                        self.buf.clear();
                    }
                }
                Ok(None)
            }
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, RemoteError, RequestKind};
    use crate::path::ActorPath;
    use proptest::prelude::*;

    fn sample() -> Frame {
        Frame::Msg(Envelope {
            target: ActorPath::parse("/kv/store/a").unwrap(),
            sender: None,
            request: RequestKind::Ask { corr: 7, timeout_ms: 1000 },
            trace: 42,
            payload: vec![1, 2, 3],
        })
    }

    #[test]
    fn frame_roundtrip_and_partial() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
        encode_frame(
            &Frame::Reply { corr: 7, result: Err(RemoteError::Timeout { path: "/kv/store/a".into(), ms: 5 }) },
            &mut buf,
            1024,
        )
        .unwrap();
        for cut in 0..buf.len() {
            // A prefix never decodes into garbage: it is either whole frames or "need more".
            if let Ok(Some((_, used))) = decode_frame(&buf[..cut], 1024) {
                assert!(used <= cut);
            }
        }
        let (f1, n1) = decode_frame(&buf, 1024).unwrap().unwrap();
        assert!(matches!(f1, Frame::Msg(_)));
        let (f2, n2) = decode_frame(&buf[n1..], 1024).unwrap().unwrap();
        assert!(matches!(f2, Frame::Reply { corr: 7, .. }));
        assert_eq!(n1 + n2, buf.len());
    }

    #[test]
    fn oversize_is_refused_before_allocation() {
        let buf = (u32::MAX).to_le_bytes();
        assert!(matches!(decode_frame(&buf, 1024), Err(CodecError::TooLarge { .. })));
        let mut out = vec![9];
        let big = Frame::StreamItem { corr: 1, payload: vec![0; 2048] };
        assert!(encode_frame(&big, &mut out, 1024).is_err());
        assert_eq!(out, vec![9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn hostile_inner_length_is_an_error_not_an_allocation() {
        // A Vec length prefix that claims ~2^62 elements inside a small frame.
        let mut body = vec![2u8]; // Frame variant index for StreamItem is irrelevant; any garbage
        body.extend_from_slice(&[0xff; 12]);
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&body);
        assert!(decode_frame(&buf, 1024).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes, 4096);
        }
    }
}
