//! The gateway's parameters (`[kinds.gateway.params]` in systems/url-shortener.toml),
//! every bound with its unit, checked at config load time.

use crate::limiter::RateSpec;
use serde::Deserialize;
use troupe_shortener::ids::IdKey;

/// The development ID key. A deployment must set its own `id_key` and never change it:
/// with another key, future counters map onto codes that may already exist.
pub const DEV_ID_KEY_HEX: &str = "7472-6f75-7065-2d64-6576-2d6b-6579-2d63-6861-6e67-652d-6d65-2d6e-6f77-2121-2121";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayParams {
    /// 64 hex digits (dashes and spaces ignored): the secret of the code permutation.
    #[serde(default = "default_id_key")]
    pub id_key: String,
    /// Name of the counter in `kv.ranges` that codes are minted from.
    #[serde(default = "default_id_counter")]
    pub id_counter: String,
    /// Counter values taken from `kv.ranges` per request (one block per node at a time;
    /// a restart abandons at most one block).
    #[serde(default = "default_id_block_size")]
    pub id_block_size: u64,
    /// Resolved links cached per node, in entries.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Longest a cached link is served without asking its entity again, in ms: the bound
    /// on staleness when an invalidation broadcast is lost.
    #[serde(default = "default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// How long "no such code" is cached, in ms.
    #[serde(default = "default_negative_ttl_ms")]
    pub negative_ttl_ms: u64,
    /// Deadline of a link lookup or write, in ms.
    #[serde(default = "default_link_timeout_ms")]
    pub link_timeout_ms: u64,
    /// Largest request body, in bytes.
    #[serde(default = "default_body_bytes_max")]
    pub body_bytes_max: usize,
    /// Clicks waiting to be shipped to the click log, in events; beyond it clicks are
    /// dropped (counted), redirects never wait.
    #[serde(default = "default_click_buffer_events")]
    pub click_buffer_events: usize,
    /// Most clicks in one batch to one shard, in events (≤ the shard's ingest_events_max).
    #[serde(default = "default_ship_batch_events")]
    pub ship_batch_events: usize,
    /// Longest a click waits in the buffer before a batch is sent, in ms.
    #[serde(default = "default_ship_every_ms")]
    pub ship_every_ms: u64,
    /// Number of `clicklog` shards (never change it on a live deployment: it moves codes).
    #[serde(default = "default_click_shards")]
    pub click_shards: u32,
    /// Link creations per client IP.
    #[serde(default = "default_create_per_ip")]
    pub create_per_ip: RateSpec,
    /// Link creations per user (`X-User-Id`).
    #[serde(default = "default_create_per_user")]
    pub create_per_user: RateSpec,
    /// Keys held by the in-process creation limiter.
    #[serde(default = "default_limiter_keys_max")]
    pub limiter_keys_max: usize,
    /// The rate limiter's rule for creations per IP when system 10 runs (a parameter
    /// ending in `_rule`: the rate limiter refuses to drop a rule one names).
    #[serde(default = "default_ip_rule")]
    pub ip_rule: String,
    /// The rate limiter's rule for creations per user.
    #[serde(default = "default_user_rule")]
    pub user_rule: String,
    /// Take the client IP from the first `X-Forwarded-For` entry (only behind a proxy
    /// that sets it; otherwise clients could pick their own rate-limit key and country).
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Blocked domains: `example.com` (that host) or `.example.com` (and subdomains).
    #[serde(default)]
    pub blocked_domains: Vec<String>,
    /// A blocklist file, one rule per line (optional; relative to the working directory).
    #[serde(default)]
    pub blocklist_file: Option<String>,
    /// This service's public domains: links to them are refused as shortener chains.
    #[serde(default)]
    pub own_domains: Vec<String>,
    /// The geo range file; default `$TROUPE_GEO_DB` or actors/shortener/data/geo-country.bin.
    #[serde(default)]
    pub geo_db: Option<String>,
    /// Base of the `short_url` in answers, e.g. `https://sho.rt`; default from `Host`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// An expiry must be at least this far ahead, in ms (absorbs clock skew between
    /// nodes; tests lower it to see a link expire).
    #[serde(default = "default_expiry_min_ahead_ms")]
    pub expiry_min_ahead_ms: u64,
}

fn default_id_key() -> String {
    DEV_ID_KEY_HEX.into()
}
fn default_id_counter() -> String {
    "url-shortener.codes".into()
}
fn default_id_block_size() -> u64 {
    10_000
}
fn default_cache_entries() -> usize {
    100_000
}
fn default_cache_ttl_ms() -> u64 {
    5_000
}
fn default_negative_ttl_ms() -> u64 {
    1_000
}
fn default_link_timeout_ms() -> u64 {
    3_000
}
fn default_body_bytes_max() -> usize {
    8 << 10
}
fn default_click_buffer_events() -> usize {
    100_000
}
fn default_ship_batch_events() -> usize {
    1024
}
fn default_ship_every_ms() -> u64 {
    50
}
fn default_click_shards() -> u32 {
    16
}
fn default_ip_rule() -> String {
    crate::limiter::RULE_PER_IP.into()
}
fn default_user_rule() -> String {
    crate::limiter::RULE_PER_USER.into()
}
fn default_create_per_ip() -> RateSpec {
    RateSpec { limit: 60, window_ms: 60_000, burst: Some(20) }
}
fn default_create_per_user() -> RateSpec {
    RateSpec { limit: 600, window_ms: 3_600_000, burst: Some(60) }
}
fn default_limiter_keys_max() -> usize {
    100_000
}
fn default_expiry_min_ahead_ms() -> u64 {
    troupe_shortener::validate::EXPIRY_MIN_AHEAD_MS
}

/// Parses the key: 64 hex digits, dashes and spaces ignored.
pub fn parse_key(text: &str) -> Result<IdKey, String> {
    let hex: Vec<u8> = text.bytes().filter(|b| !matches!(b, b'-' | b' ' | b'_')).collect();
    if hex.len() != 64 {
        return Err(format!("id_key must be 64 hex digits (32 bytes), got {}", hex.len()));
    }
    let mut key = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "id_key must be hex digits".to_string())?;
        key[i] = u8::from_str_radix(s, 16).map_err(|_| format!("id_key has a non-hex digit pair `{s}`"))?;
    }
    Ok(IdKey::from_bytes(key))
}

impl GatewayParams {
    pub fn check(&self) -> Result<(), String> {
        parse_key(&self.id_key)?;
        let between = |name: &str, v: u64, lo: u64, hi: u64, unit: &str| {
            if (lo..=hi).contains(&v) { Ok(()) } else { Err(format!("{name} must be {lo}..={hi} {unit}, got {v}")) }
        };
        between("id_block_size", self.id_block_size, 1, 1 << 20, "values")?;
        between("cache_entries", self.cache_entries as u64, 16, 10_000_000, "entries")?;
        between("cache_ttl_ms", self.cache_ttl_ms, 1, 3_600_000, "ms")?;
        between("negative_ttl_ms", self.negative_ttl_ms, 0, 60_000, "ms")?;
        between("link_timeout_ms", self.link_timeout_ms, 100, 60_000, "ms")?;
        between("body_bytes_max", self.body_bytes_max as u64, 256, 1 << 20, "bytes")?;
        between("click_buffer_events", self.click_buffer_events as u64, 16, 10_000_000, "events")?;
        between("ship_batch_events", self.ship_batch_events as u64, 1, 8192, "events")?;
        between("ship_every_ms", self.ship_every_ms, 1, 60_000, "ms")?;
        between("click_shards", u64::from(self.click_shards), 1, 1024, "shards")?;
        between("limiter_keys_max", self.limiter_keys_max as u64, 1, 10_000_000, "keys")?;
        between("expiry_min_ahead_ms", self.expiry_min_ahead_ms, 1_000, 86_400_000, "ms")?;
        self.create_per_ip.params().map_err(|e| format!("create_per_ip: {e}"))?;
        self.create_per_user.params().map_err(|e| format!("create_per_user: {e}"))?;
        if self.id_counter.is_empty() || self.id_counter.len() > 200 {
            return Err("id_counter must be 1..=200 bytes".into());
        }
        if let Some(b) = &self.public_base_url
            && !(b.starts_with("http://") || b.starts_with("https://"))
        {
            return Err(format!("public_base_url `{b}` must start with http:// or https://"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_key_parses_and_bad_keys_are_refused() {
        assert!(parse_key(DEV_ID_KEY_HEX).is_ok());
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn defaults_pass_their_own_checks() {
        let p: GatewayParams = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.check(), Ok(()));
        let bad: GatewayParams = serde_json::from_str(r#"{"cache_ttl_ms": 0}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(bad.check().is_err_and(|e| e.contains("cache_ttl_ms")));
    }
}
