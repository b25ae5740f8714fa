//! Abuse screening of target URLs: a domain blocklist plus heuristics for malicious links.
//!
//! Invariants:
//! - Screening is pure and deterministic: same URL + same policy -> same [`Assessment`].
//! - Every [`Finding`] carries a reason a person can read (its `Display`), which the HTTP
//!   layer returns with the 403.
//! - A URL is blocked when any finding has [`Severity::Block`], or when at least
//!   `warnings_to_block` findings have [`Severity::Warn`] (one odd trait is common in honest
//!   links; several together rarely are).
//!
//! Rate limiting of creation is not here: the gateway asks the rate-limiter system.

mod blocklist;
mod heuristics;
mod punycode;

pub use blocklist::{
    BLOCKLIST_ENTRIES_MAX, BLOCKLIST_LINE_BYTES_MAX, BlockMatch, BlocklistError, BlocklistLineError, DomainBlocklist,
};

use crate::validate::{Host, ValidUrl};

/// Known public link shorteners: a link to one of them hides its real target (a chain).
pub const DEFAULT_SHORTENER_DOMAINS: &[&str] = &[
    "bit.ly",
    "bitly.com",
    "tinyurl.com",
    "t.co",
    "goo.gl",
    "ow.ly",
    "is.gd",
    "v.gd",
    "buff.ly",
    "rebrand.ly",
    "cutt.ly",
    "shorturl.at",
    "tiny.cc",
    "bl.ink",
    "rb.gy",
    "s.id",
    "t.ly",
    "lnkd.in",
    "soo.gd",
    "clck.ru",
    "shorte.st",
    "adf.ly",
    "bc.vc",
    "x.co",
    "su.pr",
    "qr.ae",
    "tr.im",
    "cli.gs",
    "u.to",
    "t2m.io",
    "trib.al",
    "dlvr.it",
    "ift.tt",
    "amzn.to",
    "youtu.be",
    "fb.me",
    "wp.me",
    "linktr.ee",
    "short.io",
    "snip.ly",
];

/// TLDs that abuse reports rank far above their share of honest registrations.
pub const DEFAULT_SUSPICIOUS_TLDS: &[&str] = &[
    "tk", "ml", "ga", "cf", "gq", "top", "xyz", "icu", "cyou", "buzz", "rest", "zip", "mov", "country", "kim", "work",
    "click", "link", "loan", "gdn", "men", "party", "review", "stream", "download", "racing", "win", "bid", "support",
    "sbs", "cfd", "lol", "quest",
];

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Suspicious alone, blocking in company.
    Warn,
    /// Enough on its own to refuse the link.
    Block,
}

/// One thing screening noticed about a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("{0}")]
    Blocklisted(BlockMatch),
    #[error("the link points at a raw IP address ({host}) instead of a domain name")]
    IpLiteral { host: String },
    #[error("the link points at a private, loopback or reserved address ({host})")]
    InternalAddress { host: String },
    #[error("the host has {labels} labels (more than {max_labels}); deep subdomains are used to bury the real domain")]
    DeepSubdomains { labels: usize, max_labels: usize },
    #[error("the link points at another link shortener ({domain}); shorten the final address instead")]
    ShortenerChain { domain: String },
    #[error("the domain {label} mixes {scripts} letters (it displays as {shown_as:?}), a homograph trick")]
    MixedScripts { label: String, shown_as: String, scripts: String },
    #[error("the domain {label} is spelled in Cyrillic letters that look Latin (it displays as {shown_as:?})")]
    LatinLookalike { label: String, shown_as: String },
    #[error("the domain label {label} is not valid punycode")]
    BadPunycode { label: String },
    #[error("the top-level domain .{tld} is heavily used for abuse")]
    SuspiciousTld { tld: String },
    #[error(
        "the query string is {query_bytes} bytes with {encoded_pct}% percent-escapes and a {longest_base64_run}-character encoded run; it looks like a smuggled payload"
    )]
    EncodedPayload { query_bytes: usize, encoded_pct: usize, longest_base64_run: usize },
    #[error("the path shows {shown_host} before an `@`, which makes the link look like it goes there")]
    AtSignTrick { shown_host: String },
    #[error("the URL contains double percent-encoding (%25xx), which is used to slip characters past filters")]
    DoubleEncoding,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        match self {
            Finding::Blocklisted(_)
            | Finding::InternalAddress { .. }
            | Finding::ShortenerChain { .. }
            | Finding::MixedScripts { .. }
            | Finding::LatinLookalike { .. }
            | Finding::BadPunycode { .. }
            | Finding::AtSignTrick { .. } => Severity::Block,
            Finding::IpLiteral { .. }
            | Finding::DeepSubdomains { .. }
            | Finding::SuspiciousTld { .. }
            | Finding::EncodedPayload { .. }
            | Finding::DoubleEncoding => Severity::Warn,
        }
    }

    /// The reason as text (the same as `Display`).
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Tunables of screening; `Default` is the production policy.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// Hosts with more labels than this get `DeepSubdomains` (`a.b.example.com` has 4).
    pub host_labels_max: usize,
    /// Domains (and their subdomains) that are link shorteners.
    pub shortener_domains: Vec<String>,
    /// This service's own public domains: a link to ourselves is a chain too.
    pub own_domains: Vec<String>,
    /// Lowercase TLDs without the dot.
    pub suspicious_tlds: Vec<String>,
    /// Queries shorter than this are never checked for payloads.
    pub query_bytes_suspicious: usize,
    /// Share of the query taken by `%xx` escapes, in percent, that counts as a payload.
    pub query_encoded_pct_suspicious: usize,
    /// Length of an unbroken base64-alphabet run that counts as a payload.
    pub base64_run_chars_suspicious: usize,
    /// Number of `Warn` findings that together block.
    pub warnings_to_block: usize,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            host_labels_max: 6,
            shortener_domains: DEFAULT_SHORTENER_DOMAINS.iter().map(|s| s.to_string()).collect(),
            own_domains: Vec::new(),
            suspicious_tlds: DEFAULT_SUSPICIOUS_TLDS.iter().map(|s| s.to_string()).collect(),
            query_bytes_suspicious: 512,
            query_encoded_pct_suspicious: 30,
            base64_run_chars_suspicious: 200,
            warnings_to_block: 2,
        }
    }
}

/// Everything screening found about one URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    pub findings: Vec<Finding>,
    warnings_to_block: usize,
}

impl Assessment {
    /// `Some(reason)` if the link must be refused; the reason joins the findings.
    pub fn blocked_reason(&self) -> Option<String> {
        let blocking: Vec<&Finding> = self.findings.iter().filter(|f| f.severity() == Severity::Block).collect();
        let warns = self.findings.len() - blocking.len();
        if !blocking.is_empty() {
            Some(join(blocking))
        } else if warns > 0 && warns >= self.warnings_to_block {
            Some(join(self.findings.iter().collect()))
        } else {
            None
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked_reason().is_some()
    }
}

fn join(findings: Vec<&Finding>) -> String {
    findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ")
}

/// Blocklist + heuristics, configured once and shared by every gateway request.
#[derive(Debug, Clone, Default)]
pub struct AbusePolicy {
    pub blocklist: DomainBlocklist,
    pub config: AbuseConfig,
}

impl AbusePolicy {
    pub fn new(blocklist: DomainBlocklist, config: AbuseConfig) -> Self {
        Self { blocklist, config }
    }

    /// Runs every check on a validated URL.
    pub fn assess(&self, url: &ValidUrl) -> Assessment {
        let mut findings = Vec::new();
        let host_text = match url.host() {
            Host::Domain(name) => name.clone(),
            Host::Ipv4(addr) => addr.to_string(),
            Host::Ipv6(addr) => addr.to_string(),
        };
        if let Some(rule) = self.blocklist.matches(&host_text) {
            findings.push(Finding::Blocklisted(rule));
        }
        heuristics::ip_literal(url, &mut findings);
        heuristics::subdomain_depth(url, &self.config, &mut findings);
        heuristics::shortener_chain(url, &self.config, &mut findings);
        heuristics::homograph(url, &mut findings);
        heuristics::suspicious_tld(url, &self.config, &mut findings);
        heuristics::encoded_payload(url, &self.config, &mut findings);
        heuristics::at_sign_trick(url, &mut findings);
        heuristics::double_encoding(url, &mut findings);
        Assessment { findings, warnings_to_block: self.config.warnings_to_block }
    }
}

#[cfg(test)]
mod tests;
