//! Link expiry: parse what a person typed and bound it.
//!
//! Invariant: an accepted expiry lies in `(now + EXPIRY_MIN_AHEAD_MS, now + EXPIRY_MAX_AHEAD_MS]`,
//! so a link is never born expired and never pins storage for more than ten years.
//! Accepted forms: RFC 3339 (`2027-01-31T12:00:00Z`, `...+02:00`, fractional seconds),
//! a bare UTC date (`2027-01-31`, meaning 00:00:00 UTC at the start of that day), or a
//! duration from now (`90m`, `12h`, `30d`, `2w`, optionally with a leading `+`).

use crate::time::{DAY_MS, days_from_civil, days_in_month};

use super::ExpiryError;

/// An expiry must be at least this far in the future (one minute), so that clock skew
/// between the node that validates and the node that serves cannot make it already past.
pub const EXPIRY_MIN_AHEAD_MS: u64 = 60_000;
/// An expiry may be at most this far in the future (ten years of 365 days).
pub const EXPIRY_MAX_AHEAD_MS: u64 = 3650 * DAY_MS;
const EXPIRY_TEXT_BYTES_MAX: usize = 64;

/// Parses `text` against `now_unix_ms` and checks the bounds; returns Unix milliseconds.
pub fn parse_expiry(text: &str, now_unix_ms: u64) -> Result<u64, ExpiryError> {
    let text = text.trim();
    if text.is_empty() || text.len() > EXPIRY_TEXT_BYTES_MAX {
        return Err(ExpiryError::Malformed { text: text.chars().take(EXPIRY_TEXT_BYTES_MAX).collect() });
    }
    let at = if let Some(ms) = parse_duration_ms(text) {
        now_unix_ms.saturating_add(ms)
    } else {
        parse_timestamp_ms(text).ok_or_else(|| ExpiryError::Malformed { text: text.to_string() })?
    };
    check_expiry(at, now_unix_ms)
}

/// Checks an expiry given as Unix milliseconds (e.g. a JSON number) against the bounds.
pub fn check_expiry(at_unix_ms: u64, now_unix_ms: u64) -> Result<u64, ExpiryError> {
    if at_unix_ms <= now_unix_ms.saturating_add(EXPIRY_MIN_AHEAD_MS) {
        return Err(ExpiryError::NotInFuture { at_unix_ms, now_unix_ms });
    }
    if at_unix_ms > now_unix_ms.saturating_add(EXPIRY_MAX_AHEAD_MS) {
        return Err(ExpiryError::TooFar { max_days: EXPIRY_MAX_AHEAD_MS / DAY_MS });
    }
    Ok(at_unix_ms)
}

fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(unit_at);
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return None,
    };
    count.checked_mul(unit_ms)
}

fn number<T: std::str::FromStr>(text: &str, range: std::ops::RangeInclusive<usize>) -> Option<T> {
    (range.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = number(parts.next()?, 4..=4)?;
    let month: u32 = number(parts.next()?, 2..=2)?;
    let day: u32 = number(parts.next()?, 2..=2)?;
    ((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month))
        .then(|| days_from_civil(year, month, day))
}

fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let Some((date, time)) = text.split_once(['T', 't', ' ']) else {
        let days = parse_date(text)?;
        return u64::try_from(days).ok()?.checked_mul(DAY_MS);
    };
    let days = parse_date(date)?;
    // Split the zone: `Z`, or the last `+`/`-` (the time part itself has none).
    let (clock, offset_s) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0i64)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = zone[1..].split_once(':')?;
        let (hh, mm): (i64, i64) = (number(hh, 2..=2)?, number(mm, 2..=2)?);
        if hh > 23 || mm > 59 {
            return None;
        }
        (clock, sign * (hh * 3600 + mm * 60))
    };
    let (whole, fraction) = match clock.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (clock, None),
    };
    let mut hms = whole.splitn(3, ':');
    let (h, m, s): (i64, i64, i64) =
        (number(hms.next()?, 2..=2)?, number(hms.next()?, 2..=2)?, number(hms.next()?, 2..=2)?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let millis: i64 = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            padded[..3].parse().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    let seconds = days * 86_400 + h * 3600 + m * 60 + s - offset_s;
    u64::try_from(seconds * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_expiry("2026-01-02", NOW), Ok(NOW + DAY_MS));
        assert_eq!(parse_expiry("2026-01-01T12:00:00Z", NOW), Ok(NOW + 12 * 3_600_000));
        assert_eq!(parse_expiry("2026-01-01T12:00:00.250Z", NOW), Ok(NOW + 12 * 3_600_000 + 250));
        assert_eq!(parse_expiry("2026-01-01T14:00:00+02:00", NOW), Ok(NOW + 12 * 3_600_000));
        assert_eq!(parse_expiry("2025-12-31T23:30:00-01:00", NOW), Ok(NOW + 1_800_000));
        assert_eq!(parse_expiry("30d", NOW), Ok(NOW + 30 * DAY_MS));
        assert_eq!(parse_expiry("+90m", NOW), Ok(NOW + 90 * 60_000));
        assert_eq!(parse_expiry(" 2w ", NOW), Ok(NOW + 14 * DAY_MS));
    }

    #[test]
    fn bounds() {
        assert!(matches!(parse_expiry("2025-12-31", NOW), Err(ExpiryError::NotInFuture { .. })));
        assert!(matches!(parse_expiry("30s", NOW), Err(ExpiryError::NotInFuture { .. })));
        assert!(matches!(parse_expiry("3651d", NOW), Err(ExpiryError::TooFar { max_days: 3650 })));
        assert!(parse_expiry("3650d", NOW).is_ok());
        assert!(matches!(parse_expiry("99999999999999d", NOW), Err(ExpiryError::Malformed { .. })));
        assert!(matches!(check_expiry(NOW, NOW), Err(ExpiryError::NotInFuture { .. })));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "tomorrow",
            "2026-13-01",
            "2026-02-30",
            "2026-1-5",
            "2026-01-01T25:00:00Z",
            "10y",
            "d",
            "2026-01-01T12:00Z",
        ] {
            assert!(matches!(parse_expiry(bad, NOW), Err(ExpiryError::Malformed { .. })), "{bad:?}");
        }
    }
}
