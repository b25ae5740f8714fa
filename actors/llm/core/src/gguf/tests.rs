use super::writer::sample_file;
use super::*;
use proptest::prelude::*;

#[test]
fn parses_the_sample_file() {
    let buf = sample_file();
    let f = GgufFile::parse(&buf).expect("sample parses");
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture").ok(), Some("llama"));
    assert_eq!(f.get("a.i16"), Some(&Value::I16(-700)));
    assert_eq!(f.get_u64("a.u64").ok(), Some(1 << 40));
    let t = f.require_tensor("w.f32").expect("tensor");
    assert_eq!((t.row_len(), t.n_rows(), t.n_bytes), (3, 2, 24));
    assert_eq!(t.offset % 32, 0);
    let bytes = f.tensor_bytes(&buf, t).expect("bytes");
    let mut v = [0f32; 6];
    quant::dequantize(t.ty, bytes, &mut v);
    assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // Lookup is by name; order in the file is irrelevant.
    assert!(f.tensor("w.q8_0").is_some() && f.tensor("nope").is_none());
}

#[test]
fn every_truncation_is_an_error() {
    let buf = sample_file();
    let last_tensor_end = {
        let f = GgufFile::parse(&buf).expect("parses");
        f.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap_or(0) as usize
    };
    for n in 0..last_tensor_end {
        assert!(GgufFile::parse(&buf[..n]).is_err(), "prefix of {n} bytes parsed");
    }
}

#[test]
fn hostile_counts_do_not_allocate() {
    let mut b = Vec::new();
    b.extend(GGUF_MAGIC.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(9u32.to_le_bytes()); // array
    b.extend(10u32.to_le_bytes()); // of u64
    b.extend((ARRAY_LEN_MAX).to_le_bytes());
    assert!(matches!(GgufFile::parse(&b), Err(GgufError::Truncated { .. })));
}

#[test]
fn overlapping_or_unaligned_tensors_are_rejected() {
    let mut w = writer::GgufWriter::new();
    w.tensor_f32("t", &[8], &[0.0; 8]);
    let mut buf = w.to_bytes();
    // Tensor info = name len (8) + "t" + n_dims (4) + dim (8) + type (4) + offset (8).
    let name_pos = buf.windows(1).position(|w| w == b"t").expect("name");
    let rel_pos = name_pos + 1 + 4 + 8 + 4;
    buf[rel_pos..rel_pos + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(GgufFile::parse(&buf), Err(GgufError::BadTensor { .. })));
    buf[rel_pos..rel_pos + 8].copy_from_slice(&4096u64.to_le_bytes());
    assert!(matches!(GgufFile::parse(&buf), Err(GgufError::BadTensor { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random truncation plus random bit flips: parse returns (Ok or Err), never
    /// panics, and anything it accepts has every tensor inside the buffer.
    #[test]
    fn corrupt_files_never_panic(cut in 0usize..2000, flips in prop::collection::vec((0usize..2000, 0u8..8), 0..6)) {
        let mut buf = sample_file();
        for (pos, bit) in flips {
            if !buf.is_empty() {
                let p = pos % buf.len();
                buf[p] ^= 1 << bit;
            }
        }
        buf.truncate(cut.min(buf.len()));
        if let Ok(f) = GgufFile::parse(&buf) {
            for t in &f.tensors {
                prop_assert!(f.tensor_bytes(&buf, t).is_ok());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if bytes.len() >= 8 {
            bytes[..4].copy_from_slice(&GGUF_MAGIC.to_le_bytes());
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        let _ = GgufFile::parse(&bytes);
    }
}
