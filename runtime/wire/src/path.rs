//! Actor paths: `/<system>/<kind>/<key>`.
//!
//! A path names one actor anywhere in the cluster. System and kind are identifiers
//! (`[a-z0-9_-]`, as in topology files); the key is free text of bounded length
//! without `/` or control characters, so a path always splits into exactly three
//! segments.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest accepted key, in bytes. Keys come from users (a conversation id, a short
/// code), so they are bounded like every other input.
pub const KEY_BYTES_MAX: usize = 200;
/// Longest system or kind name, in bytes.
pub const NAME_BYTES_MAX: usize = 48;

/// One shared string `/<system>/<kind>/<key>` and where its segments start: cloning
/// a path (every envelope, handle and registry entry does) is a reference count, not
/// three allocations. On the wire it is that one string, checked when decoded.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorPath {
    full: Arc<str>,
    /// Byte offsets of the kind and the key in `full`.
    kind_at: u16,
    key_at: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("actor path `{0}` must look like /<system>/<kind>/<key>")]
    Shape(String),
    #[error("{what} `{value}` must be 1..={max} characters of a-z, 0-9, `_` or `-`")]
    BadName { what: &'static str, value: String, max: usize },
    #[error("key `{0}` must be 1..={KEY_BYTES_MAX} bytes without `/` or control characters")]
    BadKey(String),
}

/// Checks a system or kind name.
pub fn check_name(what: &'static str, value: &str) -> Result<(), PathError> {
    let ok = !value.is_empty()
        && value.len() <= NAME_BYTES_MAX
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(PathError::BadName { what, value: value.to_string(), max: NAME_BYTES_MAX }) }
}

/// Checks an entity key.
pub fn check_key(key: &str) -> Result<(), PathError> {
    let ok = !key.is_empty() && key.len() <= KEY_BYTES_MAX && !key.chars().any(|c| c == '/' || c.is_control());
    if ok { Ok(()) } else { Err(PathError::BadKey(shorten(key))) }
}

fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 61;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl ActorPath {
    pub fn new(system: &str, kind: &str, key: &str) -> Result<Self, PathError> {
        check_name("system", system)?;
        check_name("kind", kind)?;
        check_key(key)?;
        let full: Arc<str> = format!("/{system}/{kind}/{key}").into();
        let kind_at = (1 + system.len() + 1) as u16;
        let key_at = kind_at + kind.len() as u16 + 1;
        Ok(Self { full, kind_at, key_at })
    }

    pub fn parse(s: &str) -> Result<Self, PathError> {
        let rest = s.strip_prefix('/').ok_or_else(|| PathError::Shape(shorten(s)))?;
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(system), Some(kind), Some(key)) => Self::new(system, kind, key),
            _ => Err(PathError::Shape(shorten(s))),
        }
    }

    pub fn system(&self) -> &str {
        &self.full[1..self.kind_at as usize - 1]
    }
    pub fn kind(&self) -> &str {
        &self.full[self.kind_at as usize..self.key_at as usize - 1]
    }
    pub fn key(&self) -> &str {
        &self.full[self.key_at as usize..]
    }

    /// The whole path, `/<system>/<kind>/<key>`, without allocating.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl Serialize for ActorPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for ActorPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ActorPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ActorPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let p = ActorPath::parse("/kv/store/user:42").unwrap();
        assert_eq!((p.system(), p.kind(), p.key()), ("kv", "store", "user:42"));
        assert_eq!(p.to_string(), "/kv/store/user:42");
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in ["", "/", "kv/store/k", "/kv/store", "/kv//k", "/KV/store/k", "/kv/store/a/b", "/kv/st ore/k"] {
            assert!(ActorPath::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("/kv/store/{}", "x".repeat(KEY_BYTES_MAX + 1));
        assert!(matches!(ActorPath::parse(&long), Err(PathError::BadKey(_))));
    }

    #[test]
    fn wire_form_is_the_string_and_is_checked_on_decode() {
        let p = ActorPath::parse("/kv/store/k").unwrap();
        let bytes = crate::codec::encode(&p).unwrap();
        assert_eq!(crate::codec::decode::<ActorPath>(&bytes).unwrap(), p);
        let bad = crate::codec::encode(&"/KV/store/k".to_string()).unwrap();
        assert!(crate::codec::decode::<ActorPath>(&bad).is_err(), "an invalid path must not decode");
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(system in "[a-z0-9_-]{1,20}", kind in "[a-z0-9_-]{1,20}", key in "[^/\\p{Cc}]{1,50}") {
            let p = ActorPath::new(&system, &kind, &key).unwrap();
            prop_assert_eq!((p.system(), p.kind(), p.key()), (system.as_str(), kind.as_str(), key.as_str()));
            prop_assert_eq!(ActorPath::parse(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = ActorPath::parse(&s);
        }
    }
}
