//! Bounded memory of which click events were already counted.
//!
//! Invariant (what makes aggregation exactly-once inside the window): the set holds every
//! accepted `(unix_ms, event_id)` with `unix_ms > floor_ms`; an event at or below
//! `floor_ms` is refused as late (and counted by the caller), never risked as a double
//! count. The floor only rises, to the timestamp of each entry dropped, and entries are
//! dropped when older than `window_ms` behind the newest event seen or when more than
//! `ids_max` are held. A re-sent event carries the same id and timestamp as the original,
//! so one ordered set of `(unix_ms, id)` answers both "seen?" and "oldest?".

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Outcome of offering one event to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First sighting: count it.
    New,
    /// Already counted.
    Duplicate,
    /// Older than what the window still remembers: not counted, so it cannot double count.
    TooLate,
}

/// The dedup memory; serialize it with the aggregate it guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupWindow {
    seen: BTreeSet<(u64, u128)>,
    floor_ms: u64,
    newest_ms: u64,
    window_ms: u64,
    ids_max: usize,
}

impl DedupWindow {
    /// Remembers events up to `window_ms` behind the newest, at most `ids_max` of them.
    pub fn new(window_ms: u64, ids_max: usize) -> Self {
        Self { seen: BTreeSet::new(), floor_ms: 0, newest_ms: 0, window_ms, ids_max: ids_max.max(1) }
    }

    /// Offers an event; records it when new.
    pub fn admit(&mut self, event_id: u128, unix_ms: u64) -> Admission {
        if unix_ms <= self.floor_ms && self.floor_ms > 0 {
            return Admission::TooLate;
        }
        if !self.seen.insert((unix_ms, event_id)) {
            return Admission::Duplicate;
        }
        self.newest_ms = self.newest_ms.max(unix_ms);
        self.expire();
        Admission::New
    }

    fn expire(&mut self) {
        let horizon_ms = self.newest_ms.saturating_sub(self.window_ms);
        while let Some(&(oldest_ms, _)) = self.seen.first() {
            if oldest_ms >= horizon_ms && self.seen.len() <= self.ids_max {
                break;
            }
            self.seen.pop_first();
            self.floor_ms = self.floor_ms.max(oldest_ms);
        }
    }

    /// Events at or below this timestamp are refused as late.
    pub fn floor_ms(&self) -> u64 {
        self.floor_ms
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_late_events() {
        let mut w = DedupWindow::new(1_000, 100);
        assert_eq!(w.admit(1, 10_000), Admission::New);
        assert_eq!(w.admit(1, 10_000), Admission::Duplicate);
        assert_eq!(w.admit(2, 9_500), Admission::New, "inside the window, out of order is fine");
        assert_eq!(w.admit(3, 11_200), Admission::New); // pushes the horizon to 10_200
        assert_eq!(w.len(), 1);
        assert_eq!(w.floor_ms(), 10_000);
        assert_eq!(w.admit(1, 10_000), Admission::TooLate, "forgotten, so refused rather than recounted");
        assert_eq!(w.admit(4, 10_100), Admission::New, "above the floor is still safe");
    }

    #[test]
    fn id_bound_raises_the_floor() {
        let mut w = DedupWindow::new(u64::MAX, 3);
        for (id, t) in [(1, 100), (2, 200), (3, 300), (4, 400)] {
            assert_eq!(w.admit(id, t), Admission::New);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.floor_ms(), 100);
        assert_eq!(w.admit(1, 100), Admission::TooLate);
        assert_eq!(w.admit(2, 200), Admission::Duplicate);
    }
}
