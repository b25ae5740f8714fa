//! Referer header -> the referring host, for "top referrers".
//!
//! Invariants: returns a lowercase ASCII host of at most `HOST_BYTES_MAX` bytes or `None`;
//! a leading `www.` is dropped so `www.google.com` and `google.com` count together; port
//! and `user@` are dropped; only `http`, `https` and `android-app` referrers count (the
//! last is how Android apps identify themselves).

use crate::validate::HOST_BYTES_MAX;

/// The referring host of a Referer header, if it names one.
pub fn referrer_host(header: Option<&str>) -> Option<String> {
    let raw = header?.trim();
    let (scheme, rest) = raw.split_once("://")?;
    if !["http", "https", "android-app"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if host_port.starts_with('[') {
        // IPv6 literal: keep up to the bracket.
        &host_port[..host_port.find(']')? + 1]
    } else {
        host_port.split(':').next()?
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host);
    let valid = !host.is_empty()
        && host.len() <= HOST_BYTES_MAX
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'));
    valid.then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_hosts() {
        let cases = [
            ("https://www.google.com/search?q=x", Some("google.com")),
            ("http://News.YCombinator.com:8080/item?id=1", Some("news.ycombinator.com")),
            ("https://user@t.co/abc", Some("t.co")),
            ("android-app://com.google.android.gm/", Some("com.google.android.gm")),
            ("https://[2001:db8::1]:443/x", Some("[2001:db8::1]")),
            ("https://example.com.", Some("example.com")),
            ("javascript:alert(1)", None),
            ("ftp://files.example.com/", None),
            ("not a url", None),
            ("https://", None),
            ("https://exa mple.com/", None),
        ];
        for (header, host) in cases {
            assert_eq!(referrer_host(Some(header)).as_deref(), host, "{header}");
        }
        assert_eq!(referrer_host(None), None);
        let long = format!("https://{}.com/", "a".repeat(300));
        assert_eq!(referrer_host(Some(&long)), None);
    }
}
