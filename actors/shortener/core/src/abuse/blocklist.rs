//! Domain blocklist: exact hosts and whole domains, case-insensitive, from text lines.
//!
//! Format, one rule a line (`#` starts a comment, blank lines are ignored):
//! - `example.com`   blocks exactly that host;
//! - `.example.com` or `*.example.com` blocks `example.com` and every subdomain.
//!
//! Invariants: a lookup costs one hash probe per label of the host (O(labels)); the list
//! holds at most `BLOCKLIST_ENTRIES_MAX` rules of at most `BLOCKLIST_LINE_BYTES_MAX` bytes;
//! a bad file is rejected whole, with every bad line reported at once.

use std::collections::HashSet;

/// Most rules one list may hold.
pub const BLOCKLIST_ENTRIES_MAX: usize = 1_000_000;
/// Longest accepted line, in bytes.
pub const BLOCKLIST_LINE_BYTES_MAX: usize = 300;
// Stop collecting after this many bad lines: the rest of the report would be noise.
const ERRORS_REPORTED_MAX: usize = 50;

/// One bad line of a blocklist file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocklistLineError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// A blocklist that could not be loaded; lists every bad line (up to 50).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.errors, *.too_many_entries))]
pub struct BlocklistError {
    pub errors: Vec<BlocklistLineError>,
    pub too_many_entries: bool,
}

fn render(errors: &[BlocklistLineError], too_many: bool) -> String {
    let mut out = String::from("the domain blocklist was not loaded:");
    for e in errors {
        out.push_str(&format!("\n  line {}: {}", e.line, e.reason));
    }
    if too_many {
        out.push_str(&format!("\n  more than {BLOCKLIST_ENTRIES_MAX} rules; split the list or raise the bound"));
    }
    out
}

/// Which rule blocked a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockMatch {
    Exact(String),
    Domain(String),
}

impl std::fmt::Display for BlockMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockMatch::Exact(host) => write!(f, "the host {host} is on the blocklist"),
            BlockMatch::Domain(domain) => write!(f, "the domain {domain} and its subdomains are on the blocklist"),
        }
    }
}

/// An immutable set of block rules.
#[derive(Debug, Clone, Default)]
pub struct DomainBlocklist {
    exact: HashSet<String>,
    domains: HashSet<String>,
}

impl DomainBlocklist {
    /// Parses a whole list; any bad line rejects the whole list.
    pub fn from_lines(text: &str) -> Result<Self, BlocklistError> {
        let mut list = Self::default();
        let mut errors = Vec::new();
        let mut too_many_entries = false;
        for (index, raw_line) in text.lines().enumerate() {
            let line = raw_line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match parse_rule(line, raw_line.len()) {
                Ok(Rule::Exact(host)) => {
                    list.exact.insert(host);
                }
                Ok(Rule::Domain(domain)) => {
                    list.domains.insert(domain);
                }
                Err(reason) if errors.len() < ERRORS_REPORTED_MAX => {
                    errors.push(BlocklistLineError { line: index + 1, reason });
                }
                Err(_) => {}
            }
            if list.len() > BLOCKLIST_ENTRIES_MAX {
                too_many_entries = true;
                break;
            }
        }
        if errors.is_empty() && !too_many_entries { Ok(list) } else { Err(BlocklistError { errors, too_many_entries }) }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.exact.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rule that blocks `host` (any case, optional trailing dot), if one does.
    pub fn matches(&self, host: &str) -> Option<BlockMatch> {
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if self.exact.contains(&lower) {
            return Some(BlockMatch::Exact(lower));
        }
        suffixes(&lower).find(|s| self.domains.contains(*s)).map(|s| BlockMatch::Domain(s.to_string()))
    }
}

/// `a.b.c` -> `a.b.c`, `b.c`, `c`.
pub(crate) fn suffixes(host: &str) -> impl Iterator<Item = &str> {
    std::iter::once(host).chain(host.match_indices('.').map(move |(i, _)| &host[i + 1..]))
}

enum Rule {
    Exact(String),
    Domain(String),
}

fn parse_rule(line: &str, raw_len_bytes: usize) -> Result<Rule, String> {
    if raw_len_bytes > BLOCKLIST_LINE_BYTES_MAX {
        return Err(format!("longer than {BLOCKLIST_LINE_BYTES_MAX} bytes"));
    }
    let (name, whole_domain) = match line.strip_prefix("*.").or_else(|| line.strip_prefix('.')) {
        Some(rest) => (rest, true),
        None => (line, false),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "`{line}` is not a host name; write `example.com` for one host or `.example.com` for a domain and its subdomains"
        ));
    }
    Ok(if whole_domain { Rule::Domain(name) } else { Rule::Exact(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "# phishing\nEvil.com\n.bad.net  # whole domain\n*.worse.org\n\n1.2.3.4\n";

    #[test]
    fn exact_and_suffix_rules() {
        let list = DomainBlocklist::from_lines(LIST).expect("valid list");
        assert_eq!(list.len(), 4);
        assert_eq!(list.matches("evil.com"), Some(BlockMatch::Exact("evil.com".into())));
        assert_eq!(list.matches("EVIL.COM."), Some(BlockMatch::Exact("evil.com".into())));
        assert_eq!(list.matches("www.evil.com"), None, "exact rules do not cover subdomains");
        assert_eq!(list.matches("bad.net"), Some(BlockMatch::Domain("bad.net".into())));
        assert_eq!(list.matches("a.b.Bad.Net"), Some(BlockMatch::Domain("bad.net".into())));
        assert_eq!(list.matches("notbad.net"), None, "suffix match is per label, not per character");
        assert_eq!(list.matches("x.worse.org"), Some(BlockMatch::Domain("worse.org".into())));
        assert_eq!(list.matches("1.2.3.4"), Some(BlockMatch::Exact("1.2.3.4".into())));
        assert_eq!(list.matches("example.com"), None);
    }

    #[test]
    fn reports_every_bad_line() {
        let err =
            DomainBlocklist::from_lines("ok.com\nnot a host\n..\nfine.org\nbad/char.com\n").expect_err("bad lines");
        let lines: Vec<usize> = err.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 5]);
        let text = err.to_string();
        assert!(text.contains("line 2") && text.contains("line 5") && text.contains(".example.com"), "{text}");
    }

    #[test]
    fn rejects_overlong_lines() {
        let long = format!("{}.com", "a".repeat(BLOCKLIST_LINE_BYTES_MAX));
        assert!(DomainBlocklist::from_lines(&long).is_err());
    }

    #[test]
    fn suffixes_walk_labels() {
        assert_eq!(suffixes("a.b.c").collect::<Vec<_>>(), vec!["a.b.c", "b.c", "c"]);
    }
}
