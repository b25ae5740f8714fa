//! Per-link click statistics: counting one event, merging two shards' statistics, and the
//! report the stats endpoint returns.
//!
//! Invariants:
//! - `total == direct + Σ referrers + referrers_other`, `total == Σ user_agents`,
//!   `total == Σ countries + country_unknown`, `total == Σ per_day + per_day_pruned`,
//!   after any sequence of `count` and `merge` (checked by `check_sums`);
//! - bounded: at most `referrer_hosts_max` named referrers (later new hosts go to
//!   `referrers_other`) and at most `days_kept` days in the series (older days move to
//!   `per_day_pruned`); user agents and countries are small closed sets;
//! - `merge` is exact for totals, user agents, countries and days. Referrer names are exact
//!   while a link has at most `referrer_hosts_max` distinct referrers; past that, which hosts
//!   keep a name depends on arrival order (the counts still add up).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClickEvent, UaFamily};
use crate::geo::CountryCode;
use crate::time::{DAY_MS, civil_from_days};

/// Limits on one link's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsLimits {
    /// Named referrer hosts kept per link.
    pub referrer_hosts_max: usize,
    /// Days of the per-day series kept per link, counting back from the newest click.
    pub days_kept: u32,
}

impl Default for StatsLimits {
    fn default() -> Self {
        Self { referrer_hosts_max: 200, days_kept: 400 }
    }
}

/// Click statistics of one link (or of one link on one shard, before merging).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub total: u64,
    /// Clicks with no usable Referer.
    pub direct: u64,
    pub referrers: BTreeMap<String, u64>,
    pub referrers_other: u64,
    pub user_agents: BTreeMap<UaFamily, u64>,
    pub countries: BTreeMap<CountryCode, u64>,
    pub country_unknown: u64,
    /// Day number (days since 1970-01-01 UTC) -> clicks.
    pub per_day: BTreeMap<u32, u64>,
    pub per_day_pruned: u64,
    pub last_click_unix_ms: u64,
}

/// Days since 1970-01-01 (UTC) of a Unix-milliseconds instant.
pub fn utc_day(unix_ms: u64) -> u32 {
    u32::try_from(unix_ms / DAY_MS).unwrap_or(u32::MAX)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_label(day: u32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

impl LinkStats {
    /// Adds one (already de-duplicated) click.
    pub fn count(&mut self, event: &ClickEvent, limits: StatsLimits) {
        self.total += 1;
        match &event.referrer_host {
            None => self.direct += 1,
            Some(host) => {
                if let Some(n) = self.referrers.get_mut(host) {
                    *n += 1;
                } else if self.referrers.len() < limits.referrer_hosts_max {
                    self.referrers.insert(host.clone(), 1);
                } else {
                    self.referrers_other += 1;
                }
            }
        }
        *self.user_agents.entry(event.ua_family).or_default() += 1;
        match event.country {
            Some(cc) => *self.countries.entry(cc).or_default() += 1,
            None => self.country_unknown += 1,
        }
        *self.per_day.entry(utc_day(event.unix_ms)).or_default() += 1;
        self.last_click_unix_ms = self.last_click_unix_ms.max(event.unix_ms);
        self.prune_days(limits.days_kept);
    }

    /// Adds another shard's statistics of the same link (disjoint events).
    pub fn merge(&mut self, other: &LinkStats, limits: StatsLimits) {
        self.total += other.total;
        self.direct += other.direct;
        for (host, n) in &other.referrers {
            *self.referrers.entry(host.clone()).or_default() += n;
        }
        self.referrers_other += other.referrers_other;
        if self.referrers.len() > limits.referrer_hosts_max {
            // Keep the busiest hosts by name; ties go to the alphabetically first so the
            // outcome does not depend on which side was merged into which.
            let mut ranked: Vec<(String, u64)> = std::mem::take(&mut self.referrers).into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (i, (host, n)) in ranked.into_iter().enumerate() {
                if i < limits.referrer_hosts_max {
                    self.referrers.insert(host, n);
                } else {
                    self.referrers_other += n;
                }
            }
        }
        for (family, n) in &other.user_agents {
            *self.user_agents.entry(*family).or_default() += n;
        }
        for (cc, n) in &other.countries {
            *self.countries.entry(*cc).or_default() += n;
        }
        self.country_unknown += other.country_unknown;
        for (day, n) in &other.per_day {
            *self.per_day.entry(*day).or_default() += n;
        }
        self.per_day_pruned += other.per_day_pruned;
        self.last_click_unix_ms = self.last_click_unix_ms.max(other.last_click_unix_ms);
        self.prune_days(limits.days_kept);
    }

    fn prune_days(&mut self, days_kept: u32) {
        let Some(&newest) = self.per_day.keys().next_back() else { return };
        let oldest_kept = newest.saturating_sub(days_kept.saturating_sub(1));
        while let Some(entry) = self.per_day.first_entry() {
            if *entry.key() >= oldest_kept {
                break;
            }
            self.per_day_pruned += entry.remove();
        }
    }

    /// Checks the sum invariants; `Err` names the first one broken.
    pub fn check_sums(&self) -> Result<(), &'static str> {
        let sum = |m: &mut dyn Iterator<Item = u64>| m.sum::<u64>();
        if self.total != self.direct + sum(&mut self.referrers.values().copied()) + self.referrers_other {
            return Err("referrers");
        }
        if self.total != sum(&mut self.user_agents.values().copied()) {
            return Err("user agents");
        }
        if self.total != sum(&mut self.countries.values().copied()) + self.country_unknown {
            return Err("countries");
        }
        if self.total != sum(&mut self.per_day.values().copied()) + self.per_day_pruned {
            return Err("per day");
        }
        Ok(())
    }

    /// The stats endpoint's view: top lists sorted by count (ties by name), days in order.
    pub fn report(&self, top_n: usize) -> LinkReport {
        LinkReport {
            total: self.total,
            direct: self.direct,
            top_referrers: top(self.referrers.iter().map(|(k, v)| (k.clone(), *v)), top_n),
            referrers_other: self.referrers_other,
            user_agents: top(self.user_agents.iter().map(|(k, v)| (k.as_str().to_string(), *v)), usize::MAX),
            countries: top(self.countries.iter().map(|(k, v)| (k.to_string(), *v)), top_n),
            country_unknown: self.country_unknown,
            per_day: self.per_day.iter().map(|(d, n)| (day_label(*d), *n)).collect(),
            last_click_unix_ms: (self.total > 0).then_some(self.last_click_unix_ms),
        }
    }
}

fn top(items: impl Iterator<Item = (String, u64)>, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = items.collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// What `GET /api/links/{code}/stats` returns (serialize it as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReport {
    pub total: u64,
    pub direct: u64,
    pub top_referrers: Vec<(String, u64)>,
    pub referrers_other: u64,
    pub user_agents: Vec<(String, u64)>,
    pub countries: Vec<(String, u64)>,
    pub country_unknown: u64,
    /// `("YYYY-MM-DD", clicks)` in date order, UTC days.
    pub per_day: Vec<(String, u64)>,
    pub last_click_unix_ms: Option<u64>,
}
