//! Input rules for link creation: the target URL, a custom alias, an expiry.
//!
//! Invariant: every error's `Display` is a sentence a person can act on (it names the rule
//! and what to change); the HTTP layer returns it verbatim in its JSON error body. Nothing
//! here touches storage: "alias already taken" is the link store's answer.

mod alias;
mod expiry;
mod url;

pub use alias::{ALIAS_CHARS_MAX, ALIAS_CHARS_MIN, Alias, RESERVED_ALIASES, validate_alias};
pub use expiry::{EXPIRY_MAX_AHEAD_MS, EXPIRY_MIN_AHEAD_MS, check_expiry, parse_expiry};
pub use url::{
    FORBIDDEN_SCHEMES, HOST_BYTES_MAX, Host, LABEL_BYTES_MAX, Scheme, URL_BYTES_MAX, ValidUrl, validate_url,
};

pub(crate) use url::percent_decode_lossy;

/// Why a target URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is empty; send the full address, starting with https://")]
    Empty,
    #[error(
        "the URL is {len_bytes} bytes long and the limit is {max_bytes}; shorten it (tracking parameters can usually go)"
    )]
    TooLong { len_bytes: usize, max_bytes: usize },
    #[error(
        "the URL contains a control character or a space (U+{codepoint:04X}) at byte {position}; remove line breaks and tabs and write spaces as %20"
    )]
    ControlCharacter { position: usize, codepoint: u32 },
    #[error(
        "the URL contains an invisible or text-direction character (U+{codepoint:04X}) at byte {position}; these disguise where a link goes, so remove it"
    )]
    InvisibleCharacter { position: usize, codepoint: u32 },
    #[error("the URL has no scheme; write it in full, e.g. https://example.com/page")]
    MissingScheme,
    #[error(
        "`{scheme}:` links are never accepted because they can run code or reach local files; only http:// and https:// links can be shortened"
    )]
    ForbiddenScheme { scheme: String },
    #[error("only http:// and https:// links can be shortened, not `{scheme}:`")]
    UnsupportedScheme { scheme: String },
    #[error("the scheme must be followed by `//` and a host, e.g. https://example.com/page")]
    MissingAuthority,
    #[error("the URL has no host; write it as https://example.com/page")]
    MissingHost,
    #[error(
        "the URL carries a user name or password before `@`; remove that part (credentials in links leak, and `name@host` is a common way to disguise the real host)"
    )]
    Credentials,
    #[error(
        "the host part contains a backslash, which browsers read as `/` and which is used to disguise the real host; use `/` instead"
    )]
    Backslash,
    #[error("the port `{port}` is not a number from 1 to 65535; fix or remove it")]
    BadPort { port: String },
    #[error(
        "the host `{host}` contains non-ASCII characters; submit its punycode form (the `xn--...` name your browser shows when you copy the address)"
    )]
    NonAsciiHost { host: String },
    #[error("`{host}` is not a valid host: {reason}")]
    BadHost { host: String, reason: &'static str },
}

/// Why a custom alias was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    #[error("the alias has {len_chars} characters; use at least {min_chars}")]
    TooShort { len_chars: usize, min_chars: usize },
    #[error("the alias has {len_chars} characters; use at most {max_chars}")]
    TooLong { len_chars: usize, max_chars: usize },
    #[error("the alias may only use letters A-Z and a-z, digits, `-` and `_`; found {found:?} at position {position}")]
    BadChar { found: char, position: usize },
    #[error("`{alias}` is reserved for the service's own pages; choose another alias")]
    Reserved { alias: String },
    #[error(
        "`{alias}` has the shape of a generated code (7 letters or digits); choose another length or add `-` or `_`"
    )]
    GeneratedShape { alias: String },
}

/// Why an expiry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error(
        "cannot read the expiry `{text}`; use an RFC 3339 time (2027-01-31T12:00:00Z), a UTC date (2027-01-31) or a duration (90m, 12h, 30d, 2w)"
    )]
    Malformed { text: String },
    #[error(
        "the expiry ({at_unix_ms} ms) is not at least a minute in the future (now is {now_unix_ms} ms); pick a later time"
    )]
    NotInFuture { at_unix_ms: u64, now_unix_ms: u64 },
    #[error("the expiry is too far away; links can live at most {max_days} days, pick an earlier time or none")]
    TooFar { max_days: u64 },
}
