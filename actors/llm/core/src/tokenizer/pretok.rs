//! SmolLM's pre-tokenizer: digits isolated one by one, then the GPT-2 split regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! applied to each remaining piece (HF: `Digits(individual_digits) + ByteLevel`;
//! llama.cpp: `LLAMA_VOCAB_PRE_TYPE_SMOLLM`).
//!
//! Hand-written instead of a regex engine because the look-ahead `(?!\S)` is not
//! supported by the `regex` crate, and a state machine is faster. Invariant: the
//! pieces concatenate back to the input exactly (property-tested).

use unicode_general_category::{GeneralCategory as G, get_general_category};

fn is_letter(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter
    )
}

fn is_number(c: char) -> bool {
    matches!(get_general_category(c), G::DecimalNumber | G::LetterNumber | G::OtherNumber)
}

fn is_other(c: char) -> bool {
    !c.is_whitespace() && !is_letter(c) && !is_number(c)
}

/// Split `text` into pre-tokens (byte ranges), in order.
pub fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    // Digits first: each numeric char is its own piece; the GPT-2 rules then run
    // on the text between digits.
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if is_number(c) {
            if start < i {
                gpt2_split(&text[start..i], &mut out);
            }
            out.push(&text[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    if start < text.len() {
        gpt2_split(&text[start..], &mut out);
    }
    out
}

const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

fn gpt2_split<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let n = chars.len();
    let byte_at = |k: usize| if k < n { chars[k].0 } else { s.len() };
    let run = |mut k: usize, pred: fn(char) -> bool| {
        while k < n && pred(chars[k].1) {
            k += 1;
        }
        k
    };
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let next = chars.get(i + 1).map(|x| x.1);
        let end = if c == '\'' {
            let rest = &s[byte_at(i + 1)..];
            match CONTRACTIONS.iter().find(|p| rest.starts_with(*p)) {
                Some(p) => i + 1 + p.len(), // contractions are ASCII: bytes == chars
                None => run(i + 1, is_other),
            }
        } else if is_letter(c) {
            run(i, is_letter)
        } else if is_number(c) {
            run(i, is_number)
        } else if c == ' ' && next.is_some_and(is_letter) {
            run(i + 1, is_letter)
        } else if c == ' ' && next.is_some_and(is_number) {
            run(i + 1, is_number)
        } else if c == ' ' && next.is_some_and(is_other) {
            run(i + 1, is_other)
        } else if is_other(c) {
            run(i, is_other)
        } else {
            // Whitespace run: keep its last char for the next piece when a
            // non-space follows (`\s+(?!\S)`), unless the run is a single char.
            let j = run(i, char::is_whitespace);
            if j < n && j - i > 1 { j - 1 } else { j }
        };
        out.push(&s[byte_at(i)..byte_at(end)]);
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_hf_byte_level_examples() {
        // Expected pieces printed by HF tokenizers 0.23 (ByteLevel, use_regex).
        assert_eq!(split("a  b\t\tc \n\n d?!  "), ["a", " ", " b", "\t", "\t", "c", " \n\n", " d", "?!", "  "]);
        assert_eq!(split("a²½٣3 x"), ["a", "²", "½", "٣", "3", " x"]);
        assert_eq!(split("I'm 12"), ["I", "'m", " ", "1", "2"]);
        assert_eq!(split("don't'S"), ["don", "'t", "'", "S"]);
        assert_eq!(split("x '' y"), ["x", " ''", " y"]);
    }

    proptest! {
        #[test]
        fn pieces_concatenate_to_input(s in "\\PC{0,40}") {
            let pieces = split(&s);
            prop_assert_eq!(pieces.concat(), s.clone());
            prop_assert!(pieces.iter().all(|p| !p.is_empty()));
        }
    }
}
