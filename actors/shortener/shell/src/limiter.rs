//! Rate limits on link creation, per client IP and per user.
//!
//! [`CreateLimiter`] is the hook the gateway calls before minting a link. Two
//! implementations:
//! - [`ClusterCreateLimiter`] (used whenever the cluster runs the rate limiter, system
//!   10): one all-or-nothing check of the rules `shortener-create-ip` and
//!   `shortener-create-user` on the limiter shards, so the limits hold cluster-wide
//!   whichever gateway a client uses; an unreachable shard gets the rule's fail mode.
//! - [`LocalCreateLimiter`] (fallback when system 10 is not enabled): token buckets in
//!   one `troupe_limiter::KeyedTable` per gateway node, so the limits are per node — a
//!   client spreading its requests over `n` gateways gets up to `n` times the limit.
//!
//! Invariants: memory is bounded by `keys_max` keys (a full local table of busy keys
//! refuses new keys, which fails open: availability of link creation wins over a
//! flood of new IPs, and the flood is counted); a denied request consumes nothing.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Instant;
use troupe_limiter::{AlgorithmKind, Decision, KeyedTable, LimitCheck, LimitParams, TableConfig};

/// Why a creation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `ip` or `user`.
    pub scope: &'static str,
    pub decision: Decision,
}

/// Admission control for `POST /api/links`.
pub trait CreateLimiter: Send + Sync {
    /// Admits one creation by `ip` (and `user`, when known) or says which limit refused it.
    fn admit<'a>(&'a self, ip: IpAddr, user: Option<&'a str>) -> BoxFuture<'a, Result<(), Limited>>;
}

/// Rule names of system 10 that bound link creation.
pub const RULE_PER_IP: &str = "shortener-create-ip";
pub const RULE_PER_USER: &str = "shortener-create-user";

/// The cluster-wide limits of system 10.
pub struct ClusterCreateLimiter {
    limiter: troupe_limiter_shell::Limiter,
    ip_rule: String,
    user_rule: String,
}

impl ClusterCreateLimiter {
    /// `None` when the cluster does not run the rate limiter.
    pub fn new(node: &troupe_runtime::Node, ip_rule: &str, user_rule: &str) -> Option<Self> {
        troupe_limiter_shell::Limiter::new(node).ok().map(|limiter| Self {
            limiter,
            ip_rule: ip_rule.to_string(),
            user_rule: user_rule.to_string(),
        })
    }
}

impl CreateLimiter for ClusterCreateLimiter {
    fn admit<'a>(&'a self, ip: IpAddr, user: Option<&'a str>) -> BoxFuture<'a, Result<(), Limited>> {
        Box::pin(async move {
            let mut checks = vec![troupe_limiter_shell::Check::new(&self.ip_rule, ip.to_string())];
            if let Some(u) = user {
                checks.push(troupe_limiter_shell::Check::new(&self.user_rule, u));
            }
            match self.limiter.check(&checks).await {
                Ok(v) if v.allowed => Ok(()),
                Ok(v) => {
                    let (scope, decision) = match v.binding() {
                        Some(r) => (if r.rule == self.user_rule { "user" } else { "ip" }, r.decision),
                        None => ("ip", Decision::fail_closed(0, 1_000_000_000)),
                    };
                    Err(Limited { scope, decision })
                }
                // Bad input (e.g. the rules were removed from system 10): creation
                // stays available; the operator sees the warning.
                Err(e) => {
                    tracing::warn!(error = %e, "cluster creation limiter refused the check; admitting");
                    Ok(())
                }
            }
        })
    }
}

/// One token-bucket limit from the topology file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Creations per window.
    pub limit: u64,
    /// Window, in milliseconds.
    pub window_ms: u64,
    /// Bucket capacity (burst); defaults to `limit`.
    #[serde(default)]
    pub burst: Option<u64>,
}

impl RateSpec {
    pub fn params(&self) -> Result<LimitParams, String> {
        LimitParams::new(
            AlgorithmKind::TokenBucket,
            self.limit,
            self.window_ms.saturating_mul(1_000_000),
            self.burst.unwrap_or(self.limit),
        )
        .map_err(|e| e.to_string())
    }
}

/// Token buckets in this process (per gateway node).
pub struct LocalCreateLimiter {
    per_ip: LimitParams,
    per_user: LimitParams,
    table: Mutex<KeyedTable<String>>,
    started: Instant,
}

impl LocalCreateLimiter {
    pub fn new(per_ip: &RateSpec, per_user: &RateSpec, keys_max: usize) -> Result<Self, String> {
        let table = KeyedTable::new(TableConfig { keys_max }).map_err(|e| e.to_string())?;
        Ok(Self {
            per_ip: per_ip.params()?,
            per_user: per_user.params()?,
            table: Mutex::new(table),
            started: Instant::now(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// The check at an explicit time (tests).
    pub fn admit_at(&self, ip: IpAddr, user: Option<&str>, now_ns: u64) -> Result<(), Limited> {
        let ip_key = format!("create|ip|{ip}");
        let user_key = user.map(|u| format!("create|user|{u}"));
        let mut checks = vec![LimitCheck { key: &ip_key, params: self.per_ip, cost: 1, shadow: false }];
        if let Some(k) = &user_key {
            checks.push(LimitCheck { key: k, params: self.per_user, cost: 1, shadow: false });
        }
        let mut table = self.table.lock();
        if table.len() >= table.keys_max() {
            // Room is made lazily; sweep idle keys first so a full table is really full.
            table.evict_idle(now_ns, 256);
        }
        match table.check_many(&checks, now_ns) {
            Ok(o) if o.admitted => Ok(()),
            Ok(o) => {
                let i = o.binding.unwrap_or(0);
                let scope = if i == 0 { "ip" } else { "user" };
                Err(Limited { scope, decision: o.results[i].decision })
            }
            Err(e) => {
                tracing::warn!(error = %e, "create limiter table full; admitting");
                Ok(())
            }
        }
    }
}

impl CreateLimiter for LocalCreateLimiter {
    fn admit<'a>(&'a self, ip: IpAddr, user: Option<&'a str>) -> BoxFuture<'a, Result<(), Limited>> {
        let r = self.admit_at(ip, user, self.now_ns());
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_per_user_limits_refuse_with_the_right_scope() {
        let ip_spec = RateSpec { limit: 3, window_ms: 60_000, burst: None };
        let user_spec = RateSpec { limit: 2, window_ms: 60_000, burst: None };
        let l = LocalCreateLimiter::new(&ip_spec, &user_spec, 100).unwrap_or_else(|e| panic!("{e}"));
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        assert!(l.admit_at(a, Some("ann"), 0).is_ok());
        assert!(l.admit_at(a, Some("ann"), 0).is_ok());
        // ann is out of her user budget, from any address.
        assert_eq!(l.admit_at(b, Some("ann"), 0).map_err(|e| e.scope), Err("user"));
        // The denied request consumed nothing from b's budget.
        assert!(l.admit_at(b, None, 0).is_ok());
        assert!(l.admit_at(a, None, 0).is_ok());
        let denied = l.admit_at(a, None, 0).err();
        assert_eq!(denied.as_ref().map(|d| d.scope), Some("ip"));
        assert!(denied.is_some_and(|d| d.decision.retry_after_ns > 0));
        // A window later the bucket has refilled.
        assert!(l.admit_at(a, None, 60_000_000_000).is_ok());
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(RateSpec { limit: 0, window_ms: 1000, burst: None }.params().is_err());
        assert!(RateSpec { limit: 1, window_ms: 0, burst: None }.params().is_err());
    }
}
