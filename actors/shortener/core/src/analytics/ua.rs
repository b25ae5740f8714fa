//! User-Agent header -> coarse client family.
//!
//! Invariant: total (every input maps to exactly one family) and cheap (substring scans of
//! at most `UA_BYTES_SCANNED` bytes). Order matters and encodes the web's lies: bots are
//! checked first (they often claim to be browsers), then Edge and Opera (which claim to be
//! Chrome), then Chrome (which claims to be Safari), then Safari.

/// Only this prefix of a User-Agent header is examined; longer headers are mostly noise.
pub const UA_BYTES_SCANNED: usize = 512;

/// The client families reported in link statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UaFamily {
    Chrome,
    Edge,
    Firefox,
    Safari,
    Opera,
    Curl,
    Wget,
    /// Programmatic HTTP clients: python-requests, Go, Java, okhttp, node, axios...
    HttpLibrary,
    /// Crawlers and link-preview fetchers (Googlebot, Slackbot, facebookexternalhit...).
    Bot,
    Other,
    /// No User-Agent header at all.
    Unknown,
}

impl UaFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            UaFamily::Chrome => "chrome",
            UaFamily::Edge => "edge",
            UaFamily::Firefox => "firefox",
            UaFamily::Safari => "safari",
            UaFamily::Opera => "opera",
            UaFamily::Curl => "curl",
            UaFamily::Wget => "wget",
            UaFamily::HttpLibrary => "http_library",
            UaFamily::Bot => "bot",
            UaFamily::Other => "other",
            UaFamily::Unknown => "unknown",
        }
    }
}

const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "slurp",
    "facebookexternalhit",
    "embedly",
    "preview",
    "headlesschrome",
    "lighthouse",
    "pingdom",
    "uptime",
    "monitor",
];

const LIBRARY_MARKERS: &[&str] = &[
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "axios",
    "node-fetch",
    "undici",
    "libwww-perl",
    "ruby",
    "reqwest",
    "hyper/",
    "postmanruntime",
    "insomnia",
    "httpie",
];

/// Classifies a User-Agent header value.
pub fn parse_user_agent(header: Option<&str>) -> UaFamily {
    let Some(raw) = header.map(str::trim).filter(|h| !h.is_empty()) else { return UaFamily::Unknown };
    let mut end = raw.len().min(UA_BYTES_SCANNED);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    let ua = raw[..end].to_ascii_lowercase();
    let has = |needle: &str| ua.contains(needle);
    if BOT_MARKERS.iter().any(|m| has(m)) {
        return UaFamily::Bot;
    }
    if ua.starts_with("curl/") {
        return UaFamily::Curl;
    }
    if ua.starts_with("wget/") {
        return UaFamily::Wget;
    }
    if LIBRARY_MARKERS.iter().any(|m| has(m)) {
        return UaFamily::HttpLibrary;
    }
    if has("edg/") || has("edge/") || has("edga/") || has("edgios/") {
        UaFamily::Edge
    } else if has("opr/") || has("opera") {
        UaFamily::Opera
    } else if has("firefox/") || has("fxios/") {
        UaFamily::Firefox
    } else if has("chrome/") || has("crios/") || has("chromium/") {
        UaFamily::Chrome
    } else if has("safari/") && (has("version/") || has("mobile/")) {
        UaFamily::Safari
    } else {
        UaFamily::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_user_agents() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                UaFamily::Chrome,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
                UaFamily::Edge,
            ),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", UaFamily::Firefox),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
                UaFamily::Safari,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
                UaFamily::Chrome,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/121.0 Mobile/15E148 Safari/605.1.15",
                UaFamily::Firefox,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0",
                UaFamily::Opera,
            ),
            ("curl/8.5.0", UaFamily::Curl),
            ("Wget/1.21.4", UaFamily::Wget),
            ("python-requests/2.31.0", UaFamily::HttpLibrary),
            ("Go-http-client/1.1", UaFamily::HttpLibrary),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", UaFamily::Bot),
            ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", UaFamily::Bot),
            ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", UaFamily::Bot),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
                UaFamily::Bot,
            ),
            ("SomethingElse/1.0", UaFamily::Other),
        ];
        for (ua, family) in cases {
            assert_eq!(parse_user_agent(Some(ua)), family, "{ua}");
        }
    }

    #[test]
    fn missing_and_hostile_headers() {
        assert_eq!(parse_user_agent(None), UaFamily::Unknown);
        assert_eq!(parse_user_agent(Some("   ")), UaFamily::Unknown);
        let huge = format!("{}Firefox/1", "\u{e9}".repeat(10_000));
        assert_eq!(parse_user_agent(Some(&huge)), UaFamily::Other, "only the first 512 bytes are read");
    }
}
