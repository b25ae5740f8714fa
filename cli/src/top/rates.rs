//! Live rates from successive counter readings: messages per second from the
//! `handled` counter, restarts per minute from the `restarts` counter. (A Prometheus
//! counter's growth between two snapshots is `troupe_system::counter_increase`.)
//!
//! Invariants: every history is bounded in length (`SAMPLES_MAX`) and age
//! (`RESTART_WINDOW`), and the number of tracked series is bounded (`SERIES_MAX`);
//! a counter that goes backwards (the actor or its node restarted) starts a fresh
//! history instead of producing a negative rate. Time is passed in: no clock here.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Messages/s is measured over about this long, so one slow poll does not spike it.
pub const MSG_WINDOW: Duration = Duration::from_secs(5);
/// Restarts/min is measured over at most this long.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Readings kept per series (60 s at the default 1 s refresh, with slack).
const SAMPLES_MAX: usize = 72;
/// Series tracked at once (node × actor path); past this, new actors get no rate.
pub const SERIES_MAX: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    handled: u64,
    restarts: u64,
}

/// A series is one actor on one node: (node, path).
pub type SeriesKey = (String, String);

#[derive(Debug, Default)]
pub struct Rates {
    series: HashMap<SeriesKey, VecDeque<Sample>>,
}

impl Rates {
    /// Records one reading of an actor's counters.
    pub fn record(&mut self, key: SeriesKey, at: Instant, handled: u64, restarts: u64) {
        if !self.series.contains_key(&key) && self.series.len() >= SERIES_MAX {
            return;
        }
        let h = self.series.entry(key).or_default();
        if h.back().is_some_and(|last| handled < last.handled || restarts < last.restarts || at < last.at) {
            h.clear();
        }
        h.push_back(Sample { at, handled, restarts });
        while h.len() > SAMPLES_MAX || h.front().is_some_and(|s| at.duration_since(s.at) > RESTART_WINDOW) {
            h.pop_front();
        }
    }

    /// Drops every series of `node` whose path `keep` rejects (actors that are gone).
    pub fn retain(&mut self, node: &str, mut keep: impl FnMut(&str) -> bool) {
        self.series.retain(|(n, p), _| n != node || keep(p));
    }

    /// Messages handled per second over the last `MSG_WINDOW` (or what history there is).
    pub fn msgs_per_sec(&self, node: &str, path: &str) -> Option<f64> {
        let h = self.get(node, path)?;
        let last = h.back()?;
        // The oldest earlier reading inside the window; after a gap longer than the
        // window (a pause, a node that was down), the one just before the last.
        let mut earlier = h.iter().filter(|s| s.at < last.at);
        let first =
            earlier.clone().find(|s| last.at.duration_since(s.at) <= MSG_WINDOW).or_else(|| earlier.next_back())?;
        let dt = last.at.duration_since(first.at).as_secs_f64();
        Some((last.handled - first.handled) as f64 / dt)
    }

    /// Restarts per minute over the last `RESTART_WINDOW` (or what history there is).
    pub fn restarts_per_min(&self, node: &str, path: &str) -> Option<f64> {
        let h = self.get(node, path)?;
        let (first, last) = (h.front()?, h.back()?);
        let dt = last.at.duration_since(first.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        Some((last.restarts - first.restarts) as f64 * 60.0 / dt)
    }

    fn get(&self, node: &str, path: &str) -> Option<&VecDeque<Sample>> {
        // The map is keyed by owned strings; a borrowed lookup would need a custom key type,
        // and this runs once per visible row per frame.
        self.series.get(&(node.to_string(), path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> SeriesKey {
        ("n1".into(), p.into())
    }

    #[test]
    fn messages_per_second_from_handled_deltas() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(key("/a"), t0, 100, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), None, "one reading gives no rate");
        r.record(key("/a"), t0 + Duration::from_secs(1), 110, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), Some(10.0));
        r.record(key("/a"), t0 + Duration::from_secs(2), 130, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), Some(15.0), "averaged over the window: 30 in 2 s");
    }

    #[test]
    fn window_forgets_old_readings() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(key("/a"), t0, 0, 0);
        for s in 1..=10u64 {
            // A burst of 1000 in the first second, then idle.
            r.record(key("/a"), t0 + Duration::from_secs(s), 1000, 0);
        }
        assert_eq!(r.msgs_per_sec("n1", "/a"), Some(0.0), "the burst is older than the window");
    }

    #[test]
    fn a_gap_longer_than_the_window_still_gives_a_rate() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(key("/a"), t0, 0, 0);
        r.record(key("/a"), t0 + Duration::from_secs(10), 50, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), Some(5.0));
    }

    #[test]
    fn restarts_per_minute() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(key("/a"), t0, 0, 1);
        r.record(key("/a"), t0 + Duration::from_secs(30), 0, 4);
        assert_eq!(r.restarts_per_min("n1", "/a"), Some(6.0));
    }

    #[test]
    fn counter_reset_starts_over() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(key("/a"), t0, 500, 3);
        r.record(key("/a"), t0 + Duration::from_secs(1), 2, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), None, "no negative rate after a reset");
        r.record(key("/a"), t0 + Duration::from_secs(2), 7, 0);
        assert_eq!(r.msgs_per_sec("n1", "/a"), Some(5.0));
    }

    #[test]
    fn history_and_series_are_bounded() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        for s in 0..500u64 {
            r.record(key("/a"), t0 + Duration::from_millis(s * 100), s, 0);
        }
        assert!(r.series[&key("/a")].len() <= SAMPLES_MAX);
        r.retain("n1", |p| p != "/a");
        assert!(r.series.is_empty());
    }
}
