//! The BPE tokenizer on text a user sent (a tiny synthetic vocabulary with GPT-2's
//! byte alphabet, ChatML specials and a few merges, so both the short-piece scan and
//! the heap used for long pieces run). User text never becomes a control token, every
//! byte survives (decode(encode(text)) == text), and with specials parsed the text
//! still decodes to itself.

use std::sync::OnceLock;
use troupe_llm::ChatTemplate;
use troupe_llm::gguf::{GgufFile, writer::tiny_model};
use troupe_llm::tokenizer::Tokenizer;

/// The tiny model's tokenizer and chat template, built once per process.
pub(crate) fn tiny() -> &'static (Tokenizer, ChatTemplate) {
    static TINY: OnceLock<(Tokenizer, ChatTemplate)> = OnceLock::new();
    TINY.get_or_init(|| {
        let bytes = tiny_model(1);
        let file = GgufFile::parse(&bytes).expect("the tiny model parses");
        let tok = Tokenizer::from_gguf(&file).expect("the tiny model has a tokenizer");
        (tok, ChatTemplate::from_gguf(&file).expect("the tiny model has a chat template"))
    })
}

/// Token ids without the BOS the tokenizer may put first.
fn body(tok: &Tokenizer, ids: Vec<u32>) -> Vec<u32> {
    match (tok.add_bos, tok.bos, ids.first()) {
        (true, Some(b), Some(&f)) if f == b => ids[1..].to_vec(),
        _ => ids,
    }
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (tok, _) = tiny();
    let plain = body(tok, tok.encode(text, false).expect("text under PROMPT_BYTES_MAX encodes"));
    assert!(plain.iter().all(|&id| !tok.is_special(id)), "user text became a control token");
    assert_eq!(tok.decode(&plain).expect("own ids decode"), text, "bytes were lost");
    let special = body(tok, tok.encode(text, true).expect("encodes"));
    assert_eq!(tok.decode(&special).expect("own ids decode"), text, "bytes were lost (specials parsed)");
}
