//! GPT-2 byte-level BPE built from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Encoding: special (control) tokens are matched literally first when asked to (only
//! in a template's own text: `encode_trusted`), the rest is pre-tokenized (`pretok`),
//! each piece's bytes are mapped to GPT-2's printable "byte chars", and merges are
//! applied lowest rank first — by a scan for short pieces and a heap of candidate pairs
//! for long ones, so encoding is O(n log n) in the text's length (a run of letters with
//! no space is one piece; the scan alone was quadratic: 64 KiB took 23 s). Decoding maps
//! token strings back to bytes. Invariants: `decode(encode(s)) == s` for every
//! string whose bytes all have a token (property-tested). SmolLM's vocabulary
//! lacks 21 byte tokens (a few control characters and bytes that never occur in
//! UTF-8 text); like HF `tokenizers` without an unk token and like llama.cpp,
//! such bytes are dropped, never an error.

pub mod pretok;

use std::collections::HashMap;
use std::ops::Range;

use crate::gguf::{GgufError, GgufFile, Value};

/// Largest text we tokenize in one call (bytes).
pub const PROMPT_BYTES_MAX: usize = 4 << 20;
/// Pieces up to this many symbols are merged by a scan (faster for the short words that
/// are almost all pieces); longer ones by a heap (O(n log n)).
const SCAN_SYMBOLS_MAX: usize = 48;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer model {0:?} is not supported (need \"gpt2\")")]
    UnsupportedModel(String),
    #[error("pre-tokenizer {0:?} is not supported (need \"smollm\")")]
    UnsupportedPre(String),
    #[error("bad tokenizer metadata: {0}")]
    Metadata(String),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("text is {0} bytes, over PROMPT_BYTES_MAX")]
    TooLong(usize),
    #[error("token id {0} out of range")]
    BadId(u32),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Raw bytes each token stands for (specials: their literal text).
    token_bytes: Vec<Vec<u8>>,
    is_special: Vec<bool>,
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token id of each single byte, if the vocabulary has one.
    byte_token: [Option<u32>; 256],
    /// Special token texts, longest first so that prefixes never shadow them.
    specials: Vec<(String, u32)>,
    /// Bytes of the longest non-special token.
    max_token_bytes: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's map from bytes to printable chars: printable Latin-1 maps to itself,
/// the rest to U+0100.. in byte order.
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    map
}

fn str_array<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = f.require(key)?.as_array().ok_or_else(|| TokenizerError::Metadata(format!("{key} is not an array")))?;
    arr.iter()
        .map(|v| v.as_str().ok_or_else(|| TokenizerError::Metadata(format!("{key} has a non-string element"))))
        .collect()
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.into()));
        }
        // "smollm" is the only pre-tokenizer implemented; accept a missing key as
        // it (older converters) but refuse others rather than mis-tokenize.
        if let Some(pre) = f.get("tokenizer.ggml.pre").and_then(Value::as_str)
            && pre != "smollm"
        {
            return Err(TokenizerError::UnsupportedPre(pre.into()));
        }
        let tokens = str_array(f, "tokenizer.ggml.tokens")?;
        let merges = str_array(f, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() || tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::Metadata("token_type length differs from tokens".into()));
        }
        let b2c = byte_to_char();
        let mut c2b: HashMap<char, u8> = HashMap::new();
        for (b, c) in b2c.iter().enumerate() {
            c2b.insert(*c, b as u8);
        }
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        let mut token_bytes = Vec::with_capacity(tokens.len());
        let mut is_special = Vec::with_capacity(tokens.len());
        let mut specials = Vec::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            ids.insert(t, i as u32);
            let special = *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED;
            if special {
                specials.push((t.to_string(), i as u32));
                token_bytes.push(t.as_bytes().to_vec());
            } else {
                let bytes: Option<Vec<u8>> = t.chars().map(|c| c2b.get(&c).copied()).collect();
                // A token outside the byte alphabet cannot come out of BPE; keep its
                // text so decode still shows something.
                token_bytes.push(bytes.unwrap_or_else(|| t.as_bytes().to_vec()));
            }
            is_special.push(special);
        }
        specials.retain(|(s, _)| !s.is_empty());
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let mut byte_token = [None; 256];
        for (b, c) in b2c.iter().enumerate() {
            byte_token[b] = ids.get(c.to_string().as_str()).copied();
        }
        if byte_token.iter().filter(|t| t.is_some()).count() < 128 {
            return Err(TokenizerError::Metadata("vocabulary is not byte-level (most byte tokens missing)".into()));
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| TokenizerError::Metadata(format!("merge {m:?}")))?;
            let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) else {
                return Err(TokenizerError::Metadata(format!("merge {m:?} names an unknown token")));
            };
            let merged = format!("{a}{b}");
            let &im = ids
                .get(merged.as_str())
                .ok_or_else(|| TokenizerError::Metadata(format!("merge {m:?} result not in vocab")))?;
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let id_key =
            |k: &str| f.get(k).and_then(Value::as_u64).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
        let max_token_bytes = token_bytes
            .iter()
            .zip(&is_special)
            .filter(|(_, special)| !**special)
            .map(|(b, _)| b.len())
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Tokenizer {
            max_token_bytes,
            token_bytes,
            is_special,
            merges: merge_map,
            byte_token,
            specials,
            bos: id_key("tokenizer.ggml.bos_token_id"),
            eos: id_key("tokenizer.ggml.eos_token_id"),
            add_bos: f.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Id of a special token by its text (e.g. `<|im_end|>`).
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials.iter().find(|(s, _)| s == text).map(|&(_, id)| id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Encode `text`. With `parse_special`, control-token texts in it become their
    /// ids (what a trusted template needs); without, they are tokenized as plain text.
    /// Text that users wrote must never be parsed for them: see [`Self::encode_trusted`].
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let whole = 0..text.len();
        self.encode_trusted(text, if parse_special { std::slice::from_ref(&whole) } else { &[] })
    }

    /// Encode `text` in which only the byte ranges `trusted` (a chat template's own text)
    /// may contain control tokens; everything else — roles and contents users sent — is
    /// plain text even where it spells `<|im_start|>`. Ranges are in order and do not
    /// overlap; a range that is out of bounds or not on a char boundary is ignored.
    pub fn encode_trusted(&self, text: &str, trusted: &[Range<usize>]) -> Result<Vec<u32>> {
        if text.len() > PROMPT_BYTES_MAX {
            return Err(TokenizerError::TooLong(text.len()));
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        let mut pos = 0;
        for r in trusted {
            let Some(part) = text.get(r.clone()) else { continue };
            if r.start < pos {
                continue;
            }
            let mut at = 0;
            while let Some((o, len, id)) = self.find_special(&part[at..]) {
                let start = r.start + at + o;
                for piece in pretok::split(&text[pos..start]) {
                    self.bpe(piece.as_bytes(), &mut out);
                }
                out.push(id);
                pos = start + len;
                at += o + len;
            }
        }
        for piece in pretok::split(&text[pos..]) {
            self.bpe(piece.as_bytes(), &mut out);
        }
        Ok(out)
    }

    /// Bytes of the longest token.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// A lower bound on the tokens `text` encodes to, in one pass without merging: its
    /// bytes that have a token (others are dropped), over the longest token's bytes,
    /// rounded up. A prompt whose bound is over the context is refused before the work
    /// of tokenizing it.
    pub fn min_tokens(&self, text: &str) -> usize {
        let kept = text.bytes().filter(|&b| self.byte_token[b as usize].is_some()).count();
        kept.div_ceil(self.max_token_bytes)
    }

    /// Earliest special token in `s`: (byte offset, length, id).
    fn find_special(&self, s: &str) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (t, id) in &self.specials {
            if let Some(at) = s.find(t.as_str())
                && best.is_none_or(|(b, blen, _)| at < b || (at == b && t.len() > blen))
            {
                best = Some((at, t.len(), *id));
            }
        }
        best
    }

    /// Applies the merges to one pre-tokenized piece, lowest rank first (leftmost on a
    /// tie). Short pieces (almost every word) use a scan; longer ones a heap of candidate
    /// pairs over a linked list of symbols, so a piece of n bytes costs O(n log n) — a
    /// 1 MiB run of letters with no space is one piece, and the scan would be O(n²).
    fn bpe(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let syms: Vec<u32> = bytes.iter().filter_map(|&b| self.byte_token[b as usize]).collect();
        if syms.len() <= SCAN_SYMBOLS_MAX { self.bpe_scan(syms, out) } else { self.bpe_heap(syms, out) }
    }

    /// The reference: repeatedly merge the lowest-ranked adjacent pair. O(n²).
    fn bpe_scan(&self, mut syms: Vec<u32>, out: &mut Vec<u32>) {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.merges.get(&(syms[i], syms[i + 1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, merged));
                }
            }
            let Some((_, i, merged)) = best else { break };
            syms[i] = merged;
            syms.remove(i + 1);
        }
        out.extend(syms);
    }

    /// The same merges in O(n log n): every adjacent pair with a merge is a heap entry
    /// keyed by (rank, position); an entry whose pair changed since it was pushed is
    /// skipped when popped. Positions keep their order as symbols merge, so "lowest
    /// position" is "leftmost", as in the scan.
    fn bpe_heap(&self, mut syms: Vec<u32>, out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const NONE: usize = usize::MAX;
        let n = syms.len();
        if n < 2 {
            out.extend(syms);
            return;
        }
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left id, right id)
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>, i: usize, a: u32, b: u32| {
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                heap.push(Reverse((rank, i, a, b)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, i, syms[i], syms[i + 1]);
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE || syms[i] != a || syms[j] != b {
                continue; // stale: one side merged since
            }
            let Some(&(_, merged)) = self.merges.get(&(a, b)) else { continue };
            syms[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                push(&mut heap, prev[i], syms[prev[i]], merged);
            }
            if next[i] != NONE {
                push(&mut heap, i, merged, syms[next[i]]);
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(syms[i]);
            i = next[i];
        }
    }

    /// Bytes of one token (specials: their text). Errors on an unknown id.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice).ok_or(TokenizerError::BadId(id))
    }

    /// Decode to text; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests;
