//! The gateway's cache of resolved links: the core's LRU, split into shards behind
//! short mutexes so concurrent redirects rarely contend, with a TTL per entry.
//!
//! Invariants:
//! - at most `capacity` entries (each shard holds `capacity / SHARDS`, at least one);
//! - an entry is served for at most `ttl` after it was read from its link entity
//!   (`negative_ttl` for "no such code"): the staleness bound when an invalidation is lost;
//! - a fill that raced with an invalidation is dropped: `fill` takes the invalidation
//!   generation read *before* the lookup started, and stores nothing if any invalidation
//!   arrived since (invalidations are rare, so the cost is an occasional extra lookup);
//! - refresh ahead: past three quarters of its TTL (minus a per-code jitter, so entries
//!   filled together do not come due together) an entry is still served, and exactly one
//!   caller is told to refresh it in the background. Hot links therefore never miss on
//!   expiry, and the staleness bound is unchanged (a refresh is a new read).

use axum::http::HeaderValue;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_shortener::cache::{CacheStats, LruCache};

const SHARDS: usize = 16;

/// What a gateway knows about a code.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Redirect to `location` (the target, ready as a header value).
    Link { location: HeaderValue, permanent: bool, expires_ms: Option<u64> },
    /// No such code.
    Missing,
    /// Deleted.
    Gone,
}

struct Cached {
    entry: Entry,
    until: Instant,
    /// When one caller should refresh it.
    refresh_at: Instant,
    /// That caller was told (the shard's mutex guards the cell).
    refresh_claimed: std::cell::Cell<bool>,
}

/// A cache answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub entry: Entry,
    /// This caller should refresh the entry in the background.
    pub refresh: bool,
}

pub struct LinkCache {
    shards: Vec<Mutex<LruCache<String, Cached>>>,
    generation: AtomicU64,
    ttl: Duration,
    negative_ttl: Duration,
}

impl LinkCache {
    pub fn new(capacity: usize, ttl: Duration, negative_ttl: Duration) -> Self {
        let per = NonZeroUsize::new((capacity / SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(LruCache::new(per))).collect(),
            generation: AtomicU64::new(0),
            ttl,
            negative_ttl,
        }
    }

    fn shard(&self, code: &str) -> &Mutex<LruCache<String, Cached>> {
        &self.shards[(crate::stable_hash(code.as_bytes()) as usize) % SHARDS]
    }

    /// The cached entry, if still fresh at `now`.
    pub fn get(&self, code: &str, now: Instant) -> Option<Entry> {
        self.lookup(code, now).map(|h| h.entry)
    }

    /// The cached entry, if still fresh at `now`, and whether this caller should refresh it.
    pub fn lookup(&self, code: &str, now: Instant) -> Option<Hit> {
        let mut shard = self.shard(code).lock();
        let expired = match shard.get(code) {
            Some(c) if c.until > now => {
                let refresh = now >= c.refresh_at && !c.refresh_claimed.replace(true);
                return Some(Hit { entry: c.entry.clone(), refresh });
            }
            Some(_) => true,
            None => false,
        };
        if expired {
            shard.invalidate(code);
        }
        None
    }

    /// Read before a lookup; pass to [`LinkCache::fill`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stores what a lookup that started at `generation` found, unless an invalidation
    /// arrived meanwhile (the answer may predate it).
    pub fn fill(&self, code: &str, entry: Entry, generation: u64, now: Instant) {
        let ttl = if matches!(entry, Entry::Missing) { self.negative_ttl } else { self.ttl };
        if ttl.is_zero() {
            return;
        }
        let mut shard = self.shard(code).lock();
        // Checked under the shard lock: an invalidation bumps the generation before it
        // takes the lock, so either it sees our entry and removes it, or we see its bump.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        // Refresh at 3/4 of the TTL minus up to another 1/4 of jitter, fixed per code.
        let jitter = ttl.mul_f64((crate::stable_hash(code.as_bytes()) % 1000) as f64 / 4000.0);
        let refresh_at = now + ttl.mul_f64(0.75).saturating_sub(jitter);
        shard.insert(code.to_string(), Cached { entry, until: now + ttl, refresh_at, refresh_claimed: false.into() });
    }

    pub fn invalidate(&self, code: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.shard(code).lock().invalidate(code);
    }

    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for s in &self.shards {
            let st = s.lock().stats();
            total.hits += st.hits;
            total.misses += st.misses;
            total.evictions += st.evictions;
            total.invalidations += st.invalidations;
        }
        total
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(t: &str) -> Entry {
        Entry::Link {
            location: HeaderValue::from_str(t).unwrap_or(HeaderValue::from_static("x")),
            permanent: false,
            expires_ms: None,
        }
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let c = LinkCache::new(64, Duration::from_millis(100), Duration::from_millis(10));
        let t0 = Instant::now();
        c.fill("abc", link("https://a.example/"), c.generation(), t0);
        c.fill("nope", Entry::Missing, c.generation(), t0);
        assert_eq!(c.get("abc", t0 + Duration::from_millis(99)), Some(link("https://a.example/")));
        assert_eq!(c.get("nope", t0 + Duration::from_millis(5)), Some(Entry::Missing));
        assert_eq!(c.get("nope", t0 + Duration::from_millis(10)), None);
        assert_eq!(c.get("abc", t0 + Duration::from_millis(100)), None);
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_dropped() {
        let c = LinkCache::new(64, Duration::from_secs(5), Duration::from_secs(1));
        let now = Instant::now();
        let g = c.generation();
        // The link is edited while our lookup is in flight.
        c.invalidate("abc");
        c.fill("abc", link("https://old.example/"), g, now);
        assert_eq!(c.get("abc", now), None);
        c.fill("abc", link("https://new.example/"), c.generation(), now);
        assert_eq!(c.get("abc", now), Some(link("https://new.example/")));
        c.invalidate("abc");
        assert_eq!(c.get("abc", now), None);
    }

    #[test]
    fn one_caller_refreshes_ahead_of_expiry() {
        let c = LinkCache::new(64, Duration::from_millis(1000), Duration::from_millis(10));
        let t0 = Instant::now();
        c.fill("abc", link("https://a.example/"), c.generation(), t0);
        assert_eq!(c.lookup("abc", t0).map(|h| h.refresh), Some(false));
        let late = t0 + Duration::from_millis(760);
        assert_eq!(c.lookup("abc", late).map(|h| h.refresh), Some(true));
        // Others keep being served from the cache while that refresh is in flight.
        assert_eq!(c.lookup("abc", late).map(|h| h.refresh), Some(false));
        assert_eq!(c.lookup("abc", t0 + Duration::from_millis(999)).map(|h| h.refresh), Some(false));
        assert_eq!(c.lookup("abc", t0 + Duration::from_millis(1000)), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let c = LinkCache::new(32, Duration::from_secs(5), Duration::from_secs(1));
        let now = Instant::now();
        for i in 0..1000 {
            c.fill(&format!("k{i}"), Entry::Gone, c.generation(), now);
        }
        assert!(c.len() <= 32, "{}", c.len());
        assert!(c.stats().evictions >= 968);
    }
}
