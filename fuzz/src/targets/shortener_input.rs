//! The URL shortener's input rules, applied to what anyone sends to `POST /api/links`:
//! target URL, custom alias, expiry. Each refusal is an error with a sentence; each
//! acceptance is a fixed point (the normalized URL and the alias validate to
//! themselves) and an accepted expiry lies within its documented bounds.
//!
//! Input: the first byte picks the rule, the rest is the text.

use troupe_shortener::validate::{
    EXPIRY_MAX_AHEAD_MS, EXPIRY_MIN_AHEAD_MS, URL_BYTES_MAX, validate_alias, validate_url,
};

/// A fixed "now" (2026-12-07T00:00:00Z), so a run is reproducible.
const NOW_MS: u64 = 1_796_601_600_000;

pub fn run(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    match which % 3 {
        0 => match validate_url(text) {
            Ok(url) => {
                assert!(url.as_str().len() <= URL_BYTES_MAX, "normalized URL over the limit");
                let again = validate_url(url.as_str()).expect("a normalized URL is valid");
                assert_eq!(again.as_str(), url.as_str(), "normalizing twice changed the URL");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        },
        1 => match validate_alias(text) {
            Ok(alias) => {
                let again = validate_alias(alias.as_str()).expect("an accepted alias is valid");
                assert_eq!(again, alias);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        },
        _ => match troupe_shortener::validate::parse_expiry(text, NOW_MS) {
            Ok(at) => assert!(
                at > NOW_MS + EXPIRY_MIN_AHEAD_MS && at <= NOW_MS + EXPIRY_MAX_AHEAD_MS,
                "expiry {at} out of bounds"
            ),
            Err(e) => assert!(!e.to_string().is_empty()),
        },
    }
}
