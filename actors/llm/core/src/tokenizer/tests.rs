use super::*;
use crate::gguf::writer::GgufWriter;
use proptest::prelude::*;

/// A tiny byte-level vocab: specials, the 256 byte chars, and merges building
/// "Ġthe", "he" and "ll".
pub(crate) fn tiny() -> Tokenizer {
    let b2c = byte_to_char();
    let mut toks: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    let mut types = vec![3i32, 3, 3];
    for c in b2c {
        toks.push(c.to_string());
        types.push(1);
    }
    let merges = ["h e", "Ġ t", "Ġt he", "l l"];
    for m in merges {
        toks.push(m.replace(' ', ""));
        types.push(1);
    }
    let mut w = GgufWriter::new();
    w.kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String("smollm".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(toks.into_iter().map(Value::String).collect()))
        .kv("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()))
        .kv("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| Value::String(m.to_string())).collect()))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2));
    let buf = w.to_bytes();
    let f = GgufFile::parse(&buf).expect("tiny gguf");
    Tokenizer::from_gguf(&f).expect("tiny tokenizer")
}

#[test]
fn merges_apply_by_rank() {
    let t = tiny();
    let ids = t.encode("the hello the", false).expect("encode");
    let pieces: Vec<String> =
        ids.iter().map(|&i| String::from_utf8_lossy(t.token_bytes(i).expect("id")).into_owned()).collect();
    // "h e" (rank 0) fires before "Ġ t" (rank 1), and "Ġt he" needs both.
    assert_eq!(pieces, ["t", "he", " ", "he", "ll", "o", " the"]);
    assert_eq!(t.decode(&ids).expect("decode"), "the hello the");
}

#[test]
fn specials_are_parsed_only_when_asked() {
    let t = tiny();
    let with = t.encode("<|im_start|>x<|im_end|>", true).expect("encode");
    assert_eq!(with.first(), Some(&1));
    assert_eq!(with.last(), Some(&2));
    let without = t.encode("<|im_start|>", false).expect("encode");
    assert!(without.len() > 1 && !without.contains(&1));
    assert_eq!(t.decode(&without).expect("decode"), "<|im_start|>");
}

proptest! {
    #[test]
    fn round_trip_any_text(s in "\\PC{0,64}") {
        let t = tiny();
        let ids = t.encode(&s, false).expect("encode");
        prop_assert_eq!(t.decode(&ids).expect("decode"), s);
    }
}
