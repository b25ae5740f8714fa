//! HTTP response header values for a decision, as pure functions.
//!
//! Two families:
//! - The de-facto `X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset` (delta
//!   seconds until the limiter is full again, rounded up) and `Retry-After` (delta seconds,
//!   RFC 9110 §10.2.3) on a denial.
//! - The IETF httpapi fields `RateLimit-Policy` and `RateLimit`, Structured Field lists of
//!   items with parameters, as in draft-ietf-httpapi-ratelimit-headers-11 (May 2026, the
//!   current revision; the syntax is unchanged since -09):
//!   `RateLimit-Policy: "default";q=100;w=60` (quota `q`, window `w` seconds, optional quota
//!   unit `qu`) and `RateLimit: "default";r=42;t=30` (remaining `r`, seconds to reset `t`).
//!   The item is an sf-string naming the policy; the partition key `pk` is not emitted (it would
//!   echo the caller's identity back).
//!
//! Invariants: every value is printable ASCII; integers are clamped to the Structured Field
//! integer range (15 digits).

use crate::decision::Decision;
use crate::time::ns_to_secs_ceil;

/// Largest Structured Field integer (RFC 9651 §3.3.1).
pub const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// A header value that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A policy name with a character an sf-string cannot hold (only printable ASCII).
    #[error("policy name {0:?} must be printable ASCII")]
    BadPolicyName(String),
    /// An empty list: both IETF fields must be non-empty lists.
    #[error("RateLimit-Policy and RateLimit must list at least one item")]
    Empty,
}

/// `X-RateLimit-*` and `Retry-After` headers for one decision, in that order. `Retry-After` is
/// present only on a denial that waiting can cure (not when the cost exceeds capacity).
pub fn x_ratelimit_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-RateLimit-Limit", d.limit.to_string()),
        ("X-RateLimit-Remaining", d.remaining.to_string()),
        ("X-RateLimit-Reset", ns_to_secs_ceil(d.reset_after_ns).to_string()),
    ];
    if let Some(s) = retry_after_secs(d) {
        h.push(("Retry-After", s.to_string()));
    }
    h
}

/// Seconds for `Retry-After` (at least 1), or `None` when allowed or when retrying cannot help.
pub fn retry_after_secs(d: &Decision) -> Option<u64> {
    (!d.allowed && d.can_ever_succeed()).then(|| ns_to_secs_ceil(d.retry_after_ns).max(1))
}

/// Quota units registered by the draft (§ "RateLimit Quota Units" registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaUnit {
    /// `request`: each request counts (the default when `qu` is absent).
    Request,
    /// `content-bytes`: bytes of content.
    ContentBytes,
    /// `concurrency`: requests in flight.
    Concurrency,
}

impl QuotaUnit {
    fn as_str(self) -> &'static str {
        match self {
            QuotaUnit::Request => "request",
            QuotaUnit::ContentBytes => "content-bytes",
            QuotaUnit::Concurrency => "concurrency",
        }
    }
}

/// One item of `RateLimit-Policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyItem<'a> {
    /// Policy name (e.g. the rule name).
    pub name: &'a str,
    /// Quota units per window (`q`).
    pub quota: u64,
    /// Window in seconds (`w`), if the policy has one.
    pub window_s: Option<u64>,
    /// Quota unit (`qu`); omitted for requests, the default.
    pub unit: Option<QuotaUnit>,
}

/// One item of `RateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitItem<'a> {
    /// Policy name, matching a `RateLimit-Policy` item.
    pub name: &'a str,
    /// Remaining quota units (`r`).
    pub remaining: u64,
    /// Seconds until the quota resets (`t`), if known.
    pub reset_s: Option<u64>,
}

impl<'a> RateLimitItem<'a> {
    /// The item for `name` from a decision.
    pub fn from_decision(name: &'a str, d: &Decision) -> Self {
        RateLimitItem { name, remaining: d.remaining, reset_s: Some(ns_to_secs_ceil(d.reset_after_ns)) }
    }
}

fn sf_string(out: &mut String, s: &str) -> Result<(), HeaderError> {
    if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(HeaderError::BadPolicyName(s.to_string()));
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(())
}

fn sf_int_param(out: &mut String, key: &str, v: u64) {
    out.push(';');
    out.push_str(key);
    out.push('=');
    out.push_str(&v.min(SF_INTEGER_MAX).to_string());
}

/// The `RateLimit-Policy` field value, e.g. `"default";q=100;w=60`.
pub fn ratelimit_policy(items: &[PolicyItem<'_>]) -> Result<String, HeaderError> {
    if items.is_empty() {
        return Err(HeaderError::Empty);
    }
    let mut out = String::new();
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        sf_string(&mut out, it.name)?;
        sf_int_param(&mut out, "q", it.quota);
        if let Some(unit) = it.unit.filter(|u| *u != QuotaUnit::Request) {
            out.push_str(";qu=");
            sf_string(&mut out, unit.as_str())?;
        }
        if let Some(w) = it.window_s {
            sf_int_param(&mut out, "w", w);
        }
    }
    Ok(out)
}

/// The `RateLimit` field value, e.g. `"default";r=42;t=30`.
pub fn ratelimit(items: &[RateLimitItem<'_>]) -> Result<String, HeaderError> {
    if items.is_empty() {
        return Err(HeaderError::Empty);
    }
    let mut out = String::new();
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        sf_string(&mut out, it.name)?;
        sf_int_param(&mut out, "r", it.remaining);
        if let Some(t) = it.reset_s {
            sf_int_param(&mut out, "t", t);
        }
    }
    Ok(out)
}

/// The `RateLimit-Policy` item describing a rule: quota = limit per window (seconds, rounded
/// up), named after the rule.
pub fn policy_item(rule: &crate::rules::Rule) -> PolicyItem<'_> {
    let p = rule.params();
    PolicyItem { name: rule.name(), quota: p.limit(), window_s: Some(ns_to_secs_ceil(p.window_ns())), unit: None }
}
