//! Stream reassembly ([`troupe_wire::FrameReader`], what the transport and the SDK read
//! QUIC streams with): the frames read from a byte stream, and the error that ends it,
//! are the same however the network split the bytes into chunks.
//!
//! Input: `[cap selector][chunk sizes ...] 0xFF [stream bytes]`.

use troupe_wire::codec::{FrameReader, decode_frame};

pub fn run(data: &[u8]) {
    let Some((&cap_sel, rest)) = data.split_first() else { return };
    let (sizes, stream) = super::split_at_byte(rest, 0xFF);
    // Small caps reach the "too large" path with small inputs.
    let cap = [16usize, 64, 256, 4096, 1 << 20][cap_sel as usize % 5];

    // Reference: the whole stream decoded at once.
    let mut want = Vec::new();
    let mut at = 0;
    let want_err = loop {
        match decode_frame(&stream[at..], cap) {
            Ok(Some((f, used))) => {
                want.push(f);
                at += used;
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };

    // The same bytes in chunks of the given sizes (cycled; 0 means one byte).
    let mut reader = FrameReader::new(cap);
    let mut got = Vec::new();
    let mut got_err = false;
    let mut pos = 0;
    let mut i = 0;
    'feed: while pos < stream.len() {
        let size = sizes.get(i % sizes.len().max(1)).map_or(stream.len(), |&s| (s as usize).max(1));
        let end = (pos + size).min(stream.len());
        reader.push(&stream[pos..end]);
        pos = end;
        i += 1;
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => got.push(f),
                Ok(None) => break,
                Err(_) => {
                    got_err = true;
                    break 'feed;
                }
            }
        }
        assert!(reader.pending_bytes() <= stream.len(), "the reader holds no more than it was given");
    }
    assert_eq!(got, want, "chunking changed the frames");
    assert_eq!(got_err, want_err, "chunking changed whether the stream is malformed");
}
