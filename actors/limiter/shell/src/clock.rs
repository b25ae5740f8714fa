//! The owner's clock: what every limit's time is read from.
//!
//! Monotonic (an `Instant`), in nanoseconds, offset so that it reads the wall clock at the
//! moment it was created. Monotonic because a check must never see time step back (the cores
//! clamp it, but a step back freezes refill); offset to the wall clock because a shard's state
//! moves between owners (snapshots, failover) and its timestamps must mean the same thing on the
//! next owner's clock. Two owners' clocks then differ by their hosts' wall-clock offset at their
//! creation (zero on one host, milliseconds under NTP); docs/rate-limiter.md bounds what that
//! offset can cost. Windows of the window algorithms are aligned on it, so a fixed window of a
//! minute ends on a wall-clock minute, on every owner.
//!
//! Invariant: `now_ns` never decreases for one clock; it is read once per message (the bench of
//! the core measured ~27 ns per read on this kind of VM).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct OwnerClock {
    base: Instant,
    base_ns: u64,
}

impl OwnerClock {
    /// A clock reading the wall clock now, monotonic from here on.
    pub fn new() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        OwnerClock { base: Instant::now(), base_ns: wall }
    }

    /// Nanoseconds since the Unix epoch, as of this clock's creation plus monotonic time since.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base_ns.saturating_add(self.base.elapsed().as_nanos() as u64)
    }
}

impl Default for OwnerClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wall_time_and_never_steps_back() {
        let c = OwnerClock::new();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let a = c.now_ns();
        assert!(a.abs_diff(wall) < 1_000_000_000, "within a second of the wall clock");
        let b = c.now_ns();
        assert!(b >= a);
    }
}
