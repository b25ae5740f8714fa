//! The range file format (`TRGEO`, version 1), written by `tools/build_geo.py`.
//!
//! ```text
//! magic        8 bytes  "TRGEO\0" then version u16 LE (= 1)
//! source_len   u16 LE   <= SOURCE_BYTES_MAX
//! source       UTF-8    where the data came from (attribution), e.g. "geoip2fast 1.2.2 ..."
//! v4_count     u32 LE
//! v6_count     u32 LE
//! v4 ranges    v4_count x { start u32 LE, end u32 LE, cc [u8; 2] }     (10 bytes each)
//! v6 ranges    v6_count x { start u128 LE, end u128 LE, cc [u8; 2] }   (34 bytes each)
//! ```
//!
//! Invariants checked on load: exact length, `start <= end`, ranges sorted by start and not
//! overlapping within each family, country codes two ASCII uppercase letters, counts
//! at most `RANGES_MAX`. Any violation rejects the file (a half-trusted table would give
//! silently wrong countries).

use super::{CountryCode, GeoError};

pub(super) const MAGIC: &[u8; 6] = b"TRGEO\0";
pub(super) const VERSION: u16 = 1;
/// Longest attribution string, in bytes.
pub const SOURCE_BYTES_MAX: usize = 1024;
/// Most ranges per address family.
pub const RANGES_MAX: usize = 4_000_000;
const V4_RECORD_BYTES: usize = 10;
const V6_RECORD_BYTES: usize = 34;

pub(super) struct Parsed {
    pub source: String,
    pub v4: Vec<(u32, u32, CountryCode)>,
    pub v6: Vec<(u128, u128, CountryCode)>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GeoError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(GeoError::Truncated { needed_bytes: self.at.saturating_add(n), file_bytes: self.bytes.len() })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GeoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

fn country(bytes: [u8; 2], index: usize) -> Result<CountryCode, GeoError> {
    CountryCode::from_bytes(bytes).ok_or(GeoError::BadRecord { index, reason: "country code is not two letters A-Z" })
}

pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, GeoError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(GeoError::BadMagic);
    }
    let version = u16::from_le_bytes(r.array()?);
    if version != VERSION {
        return Err(GeoError::UnsupportedVersion { version });
    }
    let source_len = usize::from(u16::from_le_bytes(r.array()?));
    if source_len > SOURCE_BYTES_MAX {
        return Err(GeoError::BadHeader { reason: "attribution string longer than 1024 bytes" });
    }
    let source = String::from_utf8(r.take(source_len)?.to_vec())
        .map_err(|_| GeoError::BadHeader { reason: "attribution string is not UTF-8" })?;
    let v4_count = u32::from_le_bytes(r.array()?) as usize;
    let v6_count = u32::from_le_bytes(r.array()?) as usize;
    if v4_count > RANGES_MAX || v6_count > RANGES_MAX {
        return Err(GeoError::BadHeader { reason: "more ranges than RANGES_MAX" });
    }
    let expected = r.at + v4_count * V4_RECORD_BYTES + v6_count * V6_RECORD_BYTES;
    if expected != bytes.len() {
        return Err(GeoError::LengthMismatch { expected_bytes: expected, file_bytes: bytes.len() });
    }
    let mut v4 = Vec::with_capacity(v4_count);
    for index in 0..v4_count {
        let start = u32::from_le_bytes(r.array()?);
        let end = u32::from_le_bytes(r.array()?);
        v4.push((start, end, country(r.array()?, index)?));
    }
    let mut v6 = Vec::with_capacity(v6_count);
    for index in 0..v6_count {
        let start = u128::from_le_bytes(r.array()?);
        let end = u128::from_le_bytes(r.array()?);
        v6.push((start, end, country(r.array()?, v4_count + index)?));
    }
    check_sorted(v4.iter().map(|&(s, e, _)| (u128::from(s), u128::from(e))), 0)?;
    check_sorted(v6.iter().map(|&(s, e, _)| (s, e)), v4_count)?;
    Ok(Parsed { source, v4, v6 })
}

fn check_sorted(ranges: impl Iterator<Item = (u128, u128)>, first_index: usize) -> Result<(), GeoError> {
    let mut prev_end: Option<u128> = None;
    for (i, (start, end)) in ranges.enumerate() {
        let index = first_index + i;
        if start > end {
            return Err(GeoError::BadRecord { index, reason: "range start is after its end" });
        }
        if prev_end.is_some_and(|p| start <= p) {
            return Err(GeoError::BadRecord { index, reason: "ranges are not sorted or they overlap" });
        }
        prev_end = Some(end);
    }
    Ok(())
}

/// Encodes ranges in the file format (tests, and tools that prefer Rust to Python).
/// Ranges must already be sorted and disjoint; `parse` re-checks.
pub fn encode(source: &str, v4: &[(u32, u32, CountryCode)], v6: &[(u128, u128, CountryCode)]) -> Vec<u8> {
    let mut cut = source.len().min(SOURCE_BYTES_MAX);
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let source = &source.as_bytes()[..cut];
    let mut out = Vec::with_capacity(24 + source.len() + v4.len() * V4_RECORD_BYTES + v6.len() * V6_RECORD_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(source.len() as u16).to_le_bytes());
    out.extend_from_slice(source);
    out.extend_from_slice(&(v4.len() as u32).to_le_bytes());
    out.extend_from_slice(&(v6.len() as u32).to_le_bytes());
    for (start, end, cc) in v4 {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(cc.as_str().as_bytes());
    }
    for (start, end, cc) in v6 {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(cc.as_str().as_bytes());
    }
    out
}
