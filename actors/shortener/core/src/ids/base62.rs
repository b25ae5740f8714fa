//! Fixed-width Base62: a number in `[0, 62^7)` <-> exactly 7 characters of `[0-9A-Za-z]`.
//!
//! Invariants: `decode(encode(x)) == x` for every `x < DOMAIN_SIZE`; every valid code has
//! exactly `CODE_LEN` characters (leading zeros are written as `'0'`), so codes sort and
//! compare as fixed-width strings and no two numbers share a code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::IdError;

/// Characters in a generated code.
pub const CODE_LEN: usize = 7;
/// Number of distinct codes: 62^7 = 3,521,614,606,208.
pub const DOMAIN_SIZE: u64 = 62u64.pow(CODE_LEN as u32);

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A generated short code: exactly 7 Base62 characters.
///
/// Parse one from a request path with `str::parse`; it never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code([u8; CODE_LEN]);

impl Code {
    /// The code as text (always ASCII, always `CODE_LEN` bytes).
    pub fn as_str(&self) -> &str {
        // Built only from ALPHABET bytes, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({})", self.as_str())
    }
}

impl FromStr for Code {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        let bytes = text.as_bytes();
        if bytes.len() != CODE_LEN {
            return Err(IdError::BadCodeLength { len_chars: text.chars().count() });
        }
        let mut out = [0u8; CODE_LEN];
        for (slot, &b) in out.iter_mut().zip(bytes) {
            if digit_value(b).is_none() {
                return Err(IdError::BadCodeChar { found: b as char });
            }
            *slot = b;
        }
        Ok(Code(out))
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn digit_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'A'..=b'Z' => Some(u64::from(b - b'A') + 10),
        b'a'..=b'z' => Some(u64::from(b - b'a') + 36),
        _ => None,
    }
}

/// Writes `value` as 7 Base62 digits, most significant first.
pub fn encode(value: u64) -> Result<Code, IdError> {
    if value >= DOMAIN_SIZE {
        return Err(IdError::OutOfDomain { value });
    }
    let mut out = [b'0'; CODE_LEN];
    let mut rest = value;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(rest % 62) as usize];
        rest /= 62;
    }
    Ok(Code(out))
}

/// The number a code stands for; always `< DOMAIN_SIZE`.
pub fn decode(code: &Code) -> u64 {
    // Every byte of a Code is a valid digit (checked when it was built).
    code.0.iter().fold(0u64, |acc, &b| acc * 62 + digit_value(b).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges_of_the_domain() {
        assert_eq!(encode(0).map(|c| c.to_string()).ok().as_deref(), Some("0000000"));
        assert_eq!(encode(DOMAIN_SIZE - 1).map(|c| c.to_string()).ok().as_deref(), Some("zzzzzzz"));
        assert!(matches!(encode(DOMAIN_SIZE), Err(IdError::OutOfDomain { .. })));
        assert_eq!(encode(61).map(|c| c.to_string()).ok().as_deref(), Some("000000z"));
        assert_eq!(encode(62).map(|c| c.to_string()).ok().as_deref(), Some("0000010"));
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!("abc".parse::<Code>(), Err(IdError::BadCodeLength { len_chars: 3 })));
        assert!(matches!("abcdefgh".parse::<Code>(), Err(IdError::BadCodeLength { len_chars: 8 })));
        assert!(matches!("abc-def".parse::<Code>(), Err(IdError::BadCodeChar { found: '-' })));
        // Seven characters but more than seven bytes.
        assert!(matches!("abcdefé".parse::<Code>(), Err(IdError::BadCodeLength { .. })));
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(x in 0..DOMAIN_SIZE) {
            let code = encode(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode(&code), x);
            prop_assert_eq!(code.as_str().len(), CODE_LEN);
            let reparsed: Code = code.as_str().parse().map_err(|e: IdError| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(reparsed, code);
        }

        #[test]
        fn order_is_preserved(a in 0..DOMAIN_SIZE, b in 0..DOMAIN_SIZE) {
            // Fixed width + ASCII-ordered alphabet: string order equals numeric order.
            let (ca, cb) = (encode(a).ok(), encode(b).ok());
            prop_assert_eq!(a.cmp(&b), ca.cmp(&cb));
        }
    }
}
