//! One function per malicious-URL heuristic; each returns the findings it makes.
//!
//! Invariant: every check reads only the already-validated URL and the config (no network,
//! no DNS, no clock), costs O(URL length), and explains itself through its [`Finding`].

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::validate::{Host, ValidUrl, percent_decode_lossy};

use super::blocklist::suffixes;
use super::punycode::{Script, decode, is_latin_lookalike, script_of};
use super::{AbuseConfig, Finding};

pub(super) fn ip_literal(url: &ValidUrl, out: &mut Vec<Finding>) {
    let (text, internal) = match url.host() {
        Host::Domain(_) => return,
        Host::Ipv4(addr) => (addr.to_string(), is_internal_v4(*addr)),
        Host::Ipv6(addr) => (addr.to_string(), is_internal_v6(addr)),
    };
    out.push(if internal { Finding::InternalAddress { host: text } } else { Finding::IpLiteral { host: text } });
}

fn is_internal_v4(addr: Ipv4Addr) -> bool {
    addr.is_private()
        || addr.is_loopback()
        || addr.is_link_local()
        || addr.is_unspecified()
        || addr.is_broadcast()
        || addr.is_documentation()
        || addr.octets()[0] == 100 && (64..128).contains(&addr.octets()[1]) // carrier-grade NAT
}

fn is_internal_v6(addr: &Ipv6Addr) -> bool {
    if let Some(v4) = addr.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let first = addr.segments()[0];
    addr.is_loopback() || addr.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
}

pub(super) fn subdomain_depth(url: &ValidUrl, config: &AbuseConfig, out: &mut Vec<Finding>) {
    if let Host::Domain(name) = url.host() {
        let labels = name.split('.').count();
        if labels > config.host_labels_max {
            out.push(Finding::DeepSubdomains { labels, max_labels: config.host_labels_max });
        }
    }
}

fn domain_listed<'a>(host: &'a str, list: &[String]) -> Option<&'a str> {
    suffixes(host).find(|s| list.iter().any(|d| d == s))
}

pub(super) fn shortener_chain(url: &ValidUrl, config: &AbuseConfig, out: &mut Vec<Finding>) {
    if let Host::Domain(name) = url.host() {
        if let Some(own) = domain_listed(name, &config.own_domains) {
            out.push(Finding::ShortenerChain { domain: own.to_string() });
        } else if let Some(other) = domain_listed(name, &config.shortener_domains) {
            out.push(Finding::ShortenerChain { domain: other.to_string() });
        }
    }
}

pub(super) fn suspicious_tld(url: &ValidUrl, config: &AbuseConfig, out: &mut Vec<Finding>) {
    if let Host::Domain(name) = url.host() {
        let tld = name.rsplit('.').next().unwrap_or("");
        if config.suspicious_tlds.iter().any(|t| t == tld) {
            out.push(Finding::SuspiciousTld { tld: tld.to_string() });
        }
    }
}

pub(super) fn homograph(url: &ValidUrl, out: &mut Vec<Finding>) {
    let Host::Domain(name) = url.host() else { return };
    for label in name.split('.') {
        let Some(encoded) = label.strip_prefix("xn--") else { continue };
        let Some(decoded) = decode(encoded) else {
            out.push(Finding::BadPunycode { label: label.to_string() });
            continue;
        };
        let mut scripts: Vec<Script> = decoded.chars().filter_map(script_of).collect();
        scripts.sort_unstable();
        scripts.dedup();
        let latin_confusable = scripts.contains(&Script::Latin)
            && (scripts.contains(&Script::Cyrillic) || scripts.contains(&Script::Greek));
        if latin_confusable || (scripts.contains(&Script::Cyrillic) && scripts.contains(&Script::Greek)) {
            let names = scripts.iter().map(|s| s.name()).collect::<Vec<_>>().join("+");
            out.push(Finding::MixedScripts { label: label.to_string(), shown_as: decoded, scripts: names });
        } else if decoded.chars().count() >= 2
            && decoded.chars().all(|c| is_latin_lookalike(c) || script_of(c).is_none())
            && decoded.chars().any(is_latin_lookalike)
        {
            out.push(Finding::LatinLookalike { label: label.to_string(), shown_as: decoded });
        }
    }
}

pub(super) fn encoded_payload(url: &ValidUrl, config: &AbuseConfig, out: &mut Vec<Finding>) {
    let Some(query) = url.query() else { return };
    if query.is_empty() || query.len() < config.query_bytes_suspicious {
        return;
    }
    let escapes = query.as_bytes().windows(3).filter(|w| w[0] == b'%' && w[1].is_ascii_hexdigit()).count();
    let encoded_pct = escapes * 3 * 100 / query.len();
    let longest_base64_run = query
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_')))
        .map(str::len)
        .max()
        .unwrap_or(0);
    if encoded_pct >= config.query_encoded_pct_suspicious || longest_base64_run >= config.base64_run_chars_suspicious {
        out.push(Finding::EncodedPayload { query_bytes: query.len(), encoded_pct, longest_base64_run });
    }
}

/// `@` in the path or query right after something shaped like a domain
/// (`https://evil.example/www.paypal.com@login`): the reader sees the domain before the `@`.
/// A plain `@user` path (`/@alice`) is common and left alone.
pub(super) fn at_sign_trick(url: &ValidUrl, out: &mut Vec<Finding>) {
    let rest = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let decoded = percent_decode_lossy(&rest);
    for (at, _) in decoded.match_indices('@') {
        let before = &decoded[..at];
        // Start of the domain-shaped token: just past the last other character (which may be
        // multi-byte after percent-decoding, hence len_utf8).
        let token_start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let token = &before[token_start..];
        let dotted = token.split('.').filter(|l| !l.is_empty()).count() >= 2;
        let tld_alpha =
            token.rsplit('.').next().is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
        if dotted && tld_alpha {
            out.push(Finding::AtSignTrick { shown_host: token.to_string() });
            return;
        }
    }
}

/// `%25` followed by two hex digits: a percent-escape that was escaped again, a classic way
/// to slip `/`, `.` or `@` past a filter that decodes once.
pub(super) fn double_encoding(url: &ValidUrl, out: &mut Vec<Finding>) {
    let text = url.as_str().as_bytes();
    let double = text
        .windows(5)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit());
    if double {
        out.push(Finding::DoubleEncoding);
    }
}
