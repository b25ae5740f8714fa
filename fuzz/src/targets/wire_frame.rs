//! The frame decoder every node and client runs on bytes from the network: it must never
//! panic or allocate past the cap, and anything it accepts must re-encode to a frame
//! that decodes to the same value.

use troupe_wire::codec::{decode_frame, encode_frame};

const CAP: usize = 1 << 20;

pub fn run(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode_frame(rest, CAP) {
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf, CAP).expect("a decoded frame re-encodes");
        let (again, n) = decode_frame(&buf, CAP).expect("re-encoded frame decodes").expect("whole frame");
        assert_eq!(n, buf.len());
        assert_eq!(again, frame);
        rest = &rest[used..];
    }
}
