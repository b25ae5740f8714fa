//! Click analytics: the click event, header parsing, and an exactly-once aggregator.
//!
//! The redirect path builds a [`ClickEvent`] (header parsing is cheap and bounded) and
//! appends it to the click log without waiting; aggregator actors read the log and feed
//! [`Aggregator::apply`].
//!
//! Invariants:
//! - applying the same event twice counts it once, as long as the copy arrives while the
//!   dedup window still remembers it (see [`DedupWindow`]); older copies are refused and
//!   counted in `late_events`, never double counted;
//! - a crash loses nothing if the caller persists [`Aggregator::snapshot`] together with the
//!   log position it covers, restores it on restart and replays the log from that position
//!   (replaying from earlier is also fine: the replayed events are duplicates);
//! - state is bounded: the dedup window by `dedup_ids_max` ids (~48 bytes each in a B-tree),
//!   each link's statistics by [`StatsLimits`]; the number of links is the shard's.

mod dedup;
mod referrer;
mod stats;
mod ua;

pub use dedup::{Admission, DedupWindow};
pub use referrer::referrer_host;
pub use stats::{LinkReport, LinkStats, StatsLimits, day_label, utc_day};
pub use ua::{UA_BYTES_SCANNED, UaFamily, parse_user_agent};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::geo::CountryCode;

/// Longest link key (code or alias) an event may carry, in bytes.
pub const EVENT_CODE_BYTES_MAX: usize = 64;

/// A click event's identity: unique per click, the same in every copy of that click.
///
/// Mint it without coordination as `EventId::from_parts(node_incarnation, sequence)`, or
/// from 16 random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub u128);

impl EventId {
    /// High 64 bits: who minted it (e.g. node id + boot epoch); low 64 bits: a counter.
    pub fn from_parts(minter: u64, sequence: u64) -> Self {
        Self((u128::from(minter) << 64) | u128::from(sequence))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

/// One redirect served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub event_id: EventId,
    /// The code or alias that was followed.
    pub code: String,
    pub unix_ms: u64,
    /// Referring host (see [`referrer_host`]), `None` for direct visits.
    pub referrer_host: Option<String>,
    pub ua_family: UaFamily,
    /// `None` when the client address has no country (private, unknown, no geo database).
    pub country: Option<CountryCode>,
}

impl ClickEvent {
    /// Builds an event from what the redirect handler has at hand. The code is cut to
    /// `EVENT_CODE_BYTES_MAX` bytes (valid codes and aliases are shorter).
    pub fn from_request(
        event_id: EventId,
        code: &str,
        unix_ms: u64,
        referer_header: Option<&str>,
        user_agent_header: Option<&str>,
        country: Option<CountryCode>,
    ) -> Self {
        let mut end = code.len().min(EVENT_CODE_BYTES_MAX);
        while !code.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            event_id,
            code: code[..end].to_string(),
            unix_ms,
            referrer_host: referrer_host(referer_header),
            ua_family: parse_user_agent(user_agent_header),
            country,
        }
    }
}

/// Bounds of an aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    /// How far behind the newest event a duplicate is still recognized.
    pub dedup_window_ms: u64,
    /// Most event ids remembered (the memory bound of the window).
    pub dedup_ids_max: usize,
    pub limits: StatsLimits,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        // One hour, or 500K ids (~24 MB) if clicks come faster than ~140/s on this shard.
        Self { dedup_window_ms: 3_600_000, dedup_ids_max: 500_000, limits: StatsLimits::default() }
    }
}

/// What [`Aggregator::apply`] did with an event.
pub type Applied = Admission;

/// Exactly-once click counting for the links of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregator {
    config: AggregatorConfig,
    dedup: DedupWindow,
    links: BTreeMap<String, LinkStats>,
    duplicate_events: u64,
    late_events: u64,
}

/// Everything an aggregator knows, to persist with the click-log position it covers.
pub type AggregatorSnapshot = Aggregator;

impl Aggregator {
    pub fn new(config: AggregatorConfig) -> Self {
        Self {
            config,
            dedup: DedupWindow::new(config.dedup_window_ms, config.dedup_ids_max),
            links: BTreeMap::new(),
            duplicate_events: 0,
            late_events: 0,
        }
    }

    /// Counts an event unless it was already counted (or is too old to tell).
    pub fn apply(&mut self, event: &ClickEvent) -> Applied {
        let admission = self.dedup.admit(event.event_id.0, event.unix_ms);
        match admission {
            Admission::New => self.links.entry(event.code.clone()).or_default().count(event, self.config.limits),
            Admission::Duplicate => self.duplicate_events += 1,
            Admission::TooLate => self.late_events += 1,
        }
        admission
    }

    /// Statistics of one link on this shard.
    pub fn link(&self, code: &str) -> Option<&LinkStats> {
        self.links.get(code)
    }

    /// Every link with statistics here, in code order.
    pub fn links(&self) -> impl Iterator<Item = (&str, &LinkStats)> {
        self.links.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Removes a link's statistics (the link was deleted, or the shell spills it to disk).
    pub fn remove_link(&mut self, code: &str) -> Option<LinkStats> {
        self.links.remove(code)
    }

    /// Copies that were recognized and skipped.
    pub fn duplicate_events(&self) -> u64 {
        self.duplicate_events
    }

    /// Events refused because they were older than the dedup window (visible loss).
    pub fn late_events(&self) -> u64 {
        self.late_events
    }

    pub fn dedup(&self) -> &DedupWindow {
        &self.dedup
    }

    pub fn config(&self) -> AggregatorConfig {
        self.config
    }

    /// A copy of the whole state (it is `Serialize`; persist it with the log position).
    pub fn snapshot(&self) -> AggregatorSnapshot {
        self.clone()
    }

    /// Resumes from a snapshot.
    pub fn restore(snapshot: AggregatorSnapshot) -> Self {
        snapshot
    }
}

/// Merges per-shard statistics of the same links (each event counted on one shard only).
pub fn merge_links<'a>(
    shards: impl IntoIterator<Item = &'a Aggregator>,
    limits: StatsLimits,
) -> BTreeMap<String, LinkStats> {
    let mut merged: BTreeMap<String, LinkStats> = BTreeMap::new();
    for shard in shards {
        for (code, stats) in shard.links() {
            merged.entry(code.to_string()).or_default().merge(stats, limits);
        }
    }
    merged
}

#[cfg(test)]
mod tests;
