//! Punycode decoding (RFC 3492) and coarse script classification, for homograph checks.
//!
//! Invariants: decoding is bounded (labels are at most 63 bytes, every arithmetic step is
//! checked, so hostile input yields `None`, never a panic or a long loop); classification
//! looks only at the few scripts that phishing mixes with Latin.

const BASE: u32 = 36;
const T_MIN: u32 = 1;
const T_MAX: u32 = 26;
const SKEW: u32 = 38;
const DAMP: u32 = 700;
const INITIAL_BIAS: u32 = 72;
const INITIAL_N: u32 = 128;
const LABEL_BYTES_MAX: usize = 63;

/// Decodes the part of an `xn--` label after the prefix; `None` if it is not valid punycode.
pub(crate) fn decode(encoded: &str) -> Option<String> {
    if encoded.len() > LABEL_BYTES_MAX || !encoded.is_ascii() {
        return None;
    }
    let (basic, extended) = match encoded.rfind('-') {
        Some(at) => (&encoded[..at], &encoded[at + 1..]),
        None => ("", encoded),
    };
    let mut output: Vec<char> = basic.chars().collect();
    let (mut n, mut i, mut bias) = (INITIAL_N, 0u32, INITIAL_BIAS);
    let mut digits = extended.bytes();
    while digits.len() > 0 {
        let old_i = i;
        let mut weight = 1u32;
        let mut k = BASE;
        loop {
            let digit = digit_value(digits.next()?)?;
            i = i.checked_add(digit.checked_mul(weight)?)?;
            let t = if k <= bias {
                T_MIN
            } else if k >= bias + T_MAX {
                T_MAX
            } else {
                k - bias
            };
            if digit < t {
                break;
            }
            weight = weight.checked_mul(BASE - t)?;
            k += BASE;
        }
        let points = u32::try_from(output.len() + 1).ok()?;
        bias = adapt(i - old_i, points, old_i == 0);
        n = n.checked_add(i / points)?;
        i %= points;
        output.insert(i as usize, char::from_u32(n)?);
        i += 1;
    }
    Some(output.into_iter().collect())
}

fn digit_value(b: u8) -> Option<u32> {
    match b {
        b'a'..=b'z' => Some(u32::from(b - b'a')),
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 26),
        _ => None,
    }
}

fn adapt(delta: u32, points: u32, first: bool) -> u32 {
    let mut delta = if first { delta / DAMP } else { delta / 2 };
    delta += delta / points;
    let mut k = 0;
    while delta > ((BASE - T_MIN) * T_MAX) / 2 {
        delta /= BASE - T_MIN;
        k += BASE;
    }
    k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
}

/// The scripts a homograph check distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Script {
    Latin,
    Cyrillic,
    Greek,
    Other,
}

impl Script {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Script::Latin => "Latin",
            Script::Cyrillic => "Cyrillic",
            Script::Greek => "Greek",
            Script::Other => "other",
        }
    }
}

/// The script of a letter; `None` for digits, `-` and other script-neutral characters.
pub(crate) fn script_of(c: char) -> Option<Script> {
    match c {
        '0'..='9' | '-' | '_' => None,
        'a'..='z' | 'A'..='Z' | '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' => Some(Script::Latin),
        '\u{0400}'..='\u{052F}' => Some(Script::Cyrillic),
        '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}' => Some(Script::Greek),
        _ => Some(Script::Other),
    }
}

/// Cyrillic letters that render like Latin ones (а е о р с у х і ј ѕ ԁ ӏ һ ԛ ԝ).
pub(crate) fn is_latin_lookalike(c: char) -> bool {
    matches!(
        c,
        '\u{0430}'
            | '\u{0435}'
            | '\u{043E}'
            | '\u{0440}'
            | '\u{0441}'
            | '\u{0443}'
            | '\u{0445}'
            | '\u{0456}'
            | '\u{0458}'
            | '\u{0455}'
            | '\u{0501}'
            | '\u{04CF}'
            | '\u{04BB}'
            | '\u{051B}'
            | '\u{051D}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_labels() {
        assert_eq!(decode("bcher-kva").as_deref(), Some("bücher"));
        assert_eq!(decode("mnchen-3ya").as_deref(), Some("münchen"));
        // The classic all-Cyrillic "apple".
        assert_eq!(decode("80ak6aa92e").as_deref(), Some("\u{0430}\u{0440}\u{0440}\u{04CF}\u{0435}"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in ["!!!", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "99999999999", "a-\u{e9}"] {
            let _ = decode(bad);
        }
        assert_eq!(decode("a-!"), None);
        assert_eq!(decode(&"a".repeat(64)), None);
    }

    #[test]
    fn scripts() {
        assert_eq!(script_of('a'), Some(Script::Latin));
        assert_eq!(script_of('\u{0430}'), Some(Script::Cyrillic));
        assert_eq!(script_of('\u{03BF}'), Some(Script::Greek));
        assert_eq!(script_of('7'), None);
        assert_eq!(script_of('\u{4E2D}'), Some(Script::Other));
        assert!(is_latin_lookalike('\u{0440}') && !is_latin_lookalike('\u{0436}'));
    }
}
