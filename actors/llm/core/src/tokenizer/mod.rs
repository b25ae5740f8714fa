//! GPT-2 byte-level BPE built from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Encoding: special (control) tokens are matched literally first when asked to,
//! the rest is pre-tokenized (`pretok`), each piece's bytes are mapped to GPT-2's
//! printable "byte chars", and merges are applied lowest rank first. Decoding maps
//! token strings back to bytes. Invariants: `decode(encode(s)) == s` for every
//! string whose bytes all have a token (property-tested). SmolLM's vocabulary
//! lacks 21 byte tokens (a few control characters and bytes that never occur in
//! UTF-8 text); like HF `tokenizers` without an unk token and like llama.cpp,
//! such bytes are dropped, never an error.

pub mod pretok;

use std::collections::HashMap;

use crate::gguf::{GgufError, GgufFile, Value};

/// Largest text we tokenize in one call (bytes).
pub const PROMPT_BYTES_MAX: usize = 4 << 20;

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
        Ok(Tokenizer {
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
    /// ids (what chat templates need); without, they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() > PROMPT_BYTES_MAX {
            return Err(TokenizerError::TooLong(text.len()));
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        let mut rest = text;
        while !rest.is_empty() {
            let hit = if parse_special { self.find_special(rest) } else { None };
            let (plain, special) = match hit {
                Some((at, len, id)) => (&rest[..at], Some((len, id))),
                None => (rest, None),
            };
            for piece in pretok::split(plain) {
                self.bpe(piece.as_bytes(), &mut out);
            }
            match special {
                Some((len, id)) => {
                    out.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => rest = "",
            }
        }
        Ok(out)
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

    fn bpe(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = bytes.iter().filter_map(|&b| self.byte_token[b as usize]).collect();
        // Words are short (pre-tokenized), so a quadratic lowest-rank scan is
        // faster than a heap here.
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
