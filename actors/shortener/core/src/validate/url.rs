//! Target-URL validation and normalization for links people create.
//!
//! Invariants of every [`ValidUrl`]:
//! - scheme is `http` or `https`; the text is at most `URL_BYTES_MAX` bytes, ASCII only,
//!   with no control, space or invisible/bidi characters;
//! - it has a host, and no `user:pass@` part; scheme and host are lowercase; a default
//!   port is dropped; a host that a browser would read as an IPv4 address (`2130706433`,
//!   `0x7f.1`) is rewritten to dotted form so abuse checks see the address;
//! - non-ASCII host names are refused with a message asking for the punycode (`xn--`)
//!   form: converting them needs IDNA tables (UTS 46) that we chose not to depend on, and
//!   the punycode form is what `abuse` inspects for homographs anyway;
//! - non-ASCII bytes in path, query and fragment are percent-encoded, and `\` in the path
//!   becomes `/`, which is what a browser sends for an http(s) URL.
//!
//! Dangerous schemes (`javascript:`, `data:`, ...) are detected also when hidden by case,
//! whitespace, control characters, percent-encoding or HTML character references.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::UrlError;

/// Longest URL accepted, in bytes, before and after normalization.
pub const URL_BYTES_MAX: usize = 2048;
/// Longest host name, in bytes (DNS limit).
pub const HOST_BYTES_MAX: usize = 253;
/// Longest DNS label, in bytes.
pub const LABEL_BYTES_MAX: usize = 63;
// Nested percent-encoding deeper than this is not unwrapped when looking for a hidden scheme.
const DECODE_PASSES_MAX: usize = 3;

/// Schemes that never get a link, with a message of their own because they run code,
/// read local files or open OS handlers.
pub const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "vbscript",
    "livescript",
    "data",
    "file",
    "about",
    "blob",
    "filesystem",
    "view-source",
    "jar",
    "chrome",
    "chrome-extension",
    "intent",
    "ms-msdt",
    "ms-settings",
    "search-ms",
];

/// The two schemes a link may point to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host of a valid URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A lowercase ASCII DNS name with at least two labels, no trailing dot.
    Domain(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Domain(name) => f.write_str(name),
            Host::Ipv4(addr) => write!(f, "{addr}"),
            Host::Ipv6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// A normalized http(s) URL that passed every rule of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidUrl {
    normalized: String,
    scheme: Scheme,
    host: Host,
    port: Option<u16>,
    path: String,
    query: Option<String>,
    fragment: Option<String>,
}

impl ValidUrl {
    /// The normalized URL: what to store and put in `Location`.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    pub fn host(&self) -> &Host {
        &self.host
    }
    /// A non-default port, if one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The query without the leading `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    /// The fragment without the leading `#`.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment.as_deref()
    }
}

impl std::fmt::Display for ValidUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized)
    }
}

/// Validates and normalizes a URL submitted for shortening.
pub fn validate_url(raw: &str) -> Result<ValidUrl, UrlError> {
    // Surrounding whitespace is a copy-paste accident, not an attack: forgive it.
    let input = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    if input.is_empty() {
        return Err(UrlError::Empty);
    }
    if input.len() > URL_BYTES_MAX {
        return Err(UrlError::TooLong { len_bytes: input.len(), max_bytes: URL_BYTES_MAX });
    }
    // Before any other rule, so an obfuscated `java\tscript:` gets the message it deserves.
    if let Some(scheme) = hidden_forbidden_scheme(input) {
        return Err(UrlError::ForbiddenScheme { scheme: scheme.to_string() });
    }
    if let Some((position, c)) = input.char_indices().find(|&(_, c)| c.is_control() || c == ' ') {
        return Err(UrlError::ControlCharacter { position, codepoint: u32::from(c) });
    }
    if let Some((position, c)) = input.char_indices().find(|&(_, c)| is_invisible(c)) {
        return Err(UrlError::InvisibleCharacter { position, codepoint: u32::from(c) });
    }
    let (scheme, rest) = split_scheme(input)?;
    let rest = rest.strip_prefix("//").ok_or(UrlError::MissingAuthority)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('\\') {
        return Err(UrlError::Backslash);
    }
    if authority.contains('@') {
        return Err(UrlError::Credentials);
    }
    let (host_text, port_text) = split_host_port(authority)?;
    let host = parse_host(host_text)?;
    let port = parse_port(port_text, scheme)?;
    let (path, query, fragment) = split_tail(tail);

    let mut normalized = format!("{}://{host}", scheme.as_str());
    if let Some(port) = port {
        let _ = write!(normalized, ":{port}");
    }
    normalized.push_str(&path);
    if let Some(q) = &query {
        normalized.push('?');
        normalized.push_str(q);
    }
    if let Some(f) = &fragment {
        normalized.push('#');
        normalized.push_str(f);
    }
    if normalized.len() > URL_BYTES_MAX {
        return Err(UrlError::TooLong { len_bytes: normalized.len(), max_bytes: URL_BYTES_MAX });
    }
    Ok(ValidUrl { normalized, scheme, host, port, path, query, fragment })
}

/// Zero-width, soft-hyphen and bidi-control characters: invisible in an address bar, used
/// to make one URL look like another.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// What a lenient browser might read as the scheme: decode percent-escapes and HTML
/// character references, drop whitespace, controls and invisibles, lowercase.
fn hidden_forbidden_scheme(input: &str) -> Option<&'static str> {
    let mut text = input.to_string();
    for _ in 0..DECODE_PASSES_MAX {
        let decoded = decode_char_refs(&percent_decode_lossy(&text));
        if decoded == text {
            break;
        }
        text = decoded;
    }
    let squeezed: String = text
        .chars()
        .filter(|&c| !(c.is_whitespace() || c.is_control() || is_invisible(c)))
        .take(32)
        .flat_map(char::to_lowercase)
        .collect();
    FORBIDDEN_SCHEMES.iter().copied().find(|s| squeezed.strip_prefix(s).is_some_and(|after| after.starts_with(':')))
}

pub(crate) fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(hex_val), bytes.get(i + 2).and_then(hex_val))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `&#106;` / `&#x6A;` (with or without `;`) and the few named references that
/// spell scheme characters; anything else is left as it is.
fn decode_char_refs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let (decoded, used) = char_ref_at(rest);
        match decoded {
            Some(c) => out.push(c),
            None => out.push('&'),
        }
        rest = &rest[used.max(1)..];
    }
    out.push_str(rest);
    out
}

fn char_ref_at(text: &str) -> (Option<char>, usize) {
    for (name, c) in [("&colon;", ':'), ("&tab;", '\t'), ("&newline;", '\n')] {
        if text.get(..name.len()).is_some_and(|head| head.eq_ignore_ascii_case(name)) {
            return (Some(c), name.len());
        }
    }
    let Some(body) = text.strip_prefix("&#") else { return (None, 1) };
    let (radix, digits_start) = if body.starts_with(['x', 'X']) { (16, 3) } else { (10, 2) };
    let digits: String = text[digits_start..].chars().take_while(|c| c.is_digit(radix)).take(8).collect();
    if digits.is_empty() {
        return (None, 1);
    }
    let mut used = digits_start + digits.len();
    if text[used..].starts_with(';') {
        used += 1;
    }
    (u32::from_str_radix(&digits, radix).ok().and_then(char::from_u32), used)
}

fn split_scheme(input: &str) -> Result<(Scheme, &str), UrlError> {
    let colon = input.find(':').ok_or(UrlError::MissingScheme)?;
    let name = &input[..colon];
    let well_formed = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !well_formed {
        return Err(UrlError::MissingScheme);
    }
    let lower = name.to_ascii_lowercase();
    let scheme = match lower.as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other if FORBIDDEN_SCHEMES.contains(&other) => return Err(UrlError::ForbiddenScheme { scheme: lower }),
        _ => return Err(UrlError::UnsupportedScheme { scheme: lower }),
    };
    Ok((scheme, &input[colon + 1..]))
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), UrlError> {
    if let Some(inner) = authority.strip_prefix('[') {
        let close = inner.find(']').ok_or_else(|| bad_host(authority, "an IPv6 address needs a closing ']'"))?;
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad_host(authority, "only ':port' may follow ']'")),
        };
        // Keep the brackets so parse_host knows this is an IPv6 literal.
        return Ok((&authority[..close + 2], port));
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn parse_port(text: Option<&str>, scheme: Scheme) -> Result<Option<u16>, UrlError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    let port = (text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)
        .ok_or_else(|| UrlError::BadPort { port: text.chars().take(16).collect() })?;
    Ok((port != scheme.default_port()).then_some(port))
}

fn bad_host(host: &str, reason: &'static str) -> UrlError {
    UrlError::BadHost { host: host.chars().take(HOST_BYTES_MAX + 2).collect(), reason }
}

fn parse_host(text: &str) -> Result<Host, UrlError> {
    if text.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if !text.is_ascii() {
        return Err(UrlError::NonAsciiHost { host: text.chars().take(HOST_BYTES_MAX).collect() });
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().map(Host::Ipv6).map_err(|_| bad_host(text, "not a valid IPv6 address"));
    }
    if text.contains('%') {
        return Err(bad_host(text, "percent-encoded characters are not allowed in a host name"));
    }
    let lower = text.to_ascii_lowercase();
    // One trailing dot is the fully-qualified spelling of the same name.
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if ends_in_number(name) {
        return parse_ipv4_whatwg(name)
            .map(Host::Ipv4)
            .ok_or_else(|| bad_host(text, "it looks like an IPv4 address but is not a valid one"));
    }
    if name.len() > HOST_BYTES_MAX {
        return Err(bad_host(text, "longer than 253 bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad_host(text, "it has an empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > LABEL_BYTES_MAX {
            return Err(bad_host(text, "a label is longer than 63 bytes"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad_host(text, "a host name uses only letters, digits, '-', '_' and '.'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad_host(text, "a label cannot start or end with '-'"));
        }
    }
    if !name.contains('.') {
        return Err(bad_host(text, "a public host name has at least one dot, like example.com"));
    }
    Ok(Host::Domain(name.to_string()))
}

/// WHATWG URL "ends in a number": the last label is decimal digits or `0x`-hex, so a
/// browser will treat the whole host as an IPv4 address.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or("");
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// WHATWG IPv4 parsing: 1 to 4 parts, each decimal, `0x` hex or `0`-prefixed octal; the
/// last part fills the remaining bytes (`127.1` is `127.0.0.1`).
fn parse_ipv4_whatwg(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        if part.is_empty() {
            return None;
        }
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        let value = if digits.is_empty() { 0 } else { u64::from_str_radix(digits, radix).ok()? };
        numbers.push(value);
    }
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return None;
    }
    let mut addr = *last;
    for (i, &n) in leading.iter().enumerate() {
        addr += n << (8 * (3 - i));
    }
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

fn split_tail(tail: &str) -> (String, Option<String>, Option<String>) {
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(encode_non_ascii(f))),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(encode_non_ascii(q))),
        None => (before_fragment, None),
    };
    let path = if path.is_empty() { "/".to_string() } else { encode_non_ascii(&path.replace('\\', "/")) };
    (path, query, fragment)
}

fn encode_non_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
