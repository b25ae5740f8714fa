//! The one retry policy of a send (tell, ask, stream; typed or raw): which refusals
//! are worth another attempt inside the same call, how long to wait before it, and
//! how many attempts a call may make. Pure: the caller passes the time in.
//!
//! Invariants:
//! - Only transient refusals are retried: the target restarting or passivating, the
//!   owner changing, a link that broke. Back-pressure (a full mailbox or send queue)
//!   is reported at once — the caller must see it.
//! - A node the membership view holds down is never retried within a call
//!   ([`RemoteError::NodeDown`]): placement no longer picks it, so a retry of a path
//!   that can live elsewhere resolves afresh, and a path pinned to that node (a
//!   per-node actor such as `/troupe/replica/<node>`) fails at once instead of
//!   waiting out its deadline against a dead peer.
//! - A call makes at most [`ATTEMPTS_MAX`] attempts (about 850 ms of pauses in all) and
//!   never sleeps past its deadline.
//! - `NodeDown` from a node that the view dropped *while* the call was being routed is
//!   a stale route, not a pinned path: the caller turns it into a retry ([`rerouted`]).

use std::time::{Duration, Instant};
use troupe_wire::RemoteError;

/// Attempts of one send while the target restarts or moves.
pub const ATTEMPTS_MAX: u32 = 10;
/// The longest pause between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Whether a refusal is worth another attempt inside the same call.
pub fn worth_retrying(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Restarting { .. } | RemoteError::WrongOwner { .. } | RemoteError::Unreachable { .. })
}

/// The pause before attempt `attempt + 1` (`attempt` ≥ 1 attempts failed so far):
/// 4, 8, 16 … ms, capped at [`BACKOFF_MAX`].
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(2u64 << attempt.min(16)).min(BACKOFF_MAX)
}

/// `err` as the retry policy should see it, given whether the membership view changed
/// since the attempt was routed: a node held down that the route was computed before
/// is a stale route (retry, re-resolving), not a path pinned to a dead node.
pub fn rerouted(err: RemoteError, view_changed: bool) -> RemoteError {
    match err {
        RemoteError::NodeDown { node } if view_changed => {
            RemoteError::Unreachable { node, reason: "held down while this request was routed to it".into() }
        }
        e => e,
    }
}

/// The retry state of one call.
#[derive(Debug, Default)]
pub struct Retry {
    attempts: u32,
    deadline: Option<Instant>,
}

impl Retry {
    /// A call with no deadline of its own (tell, stream start): bounded by attempts.
    pub fn new() -> Self {
        Retry::default()
    }

    /// A call that must end by `deadline` (ask).
    pub fn until(deadline: Instant) -> Self {
        Retry { attempts: 0, deadline: Some(deadline) }
    }

    /// After a failed attempt: the pause before the next one, or `None` when the call
    /// should end with `err` (not retryable, attempts spent, or the deadline passed).
    pub fn after(&mut self, err: &RemoteError, now: Instant) -> Option<Duration> {
        self.attempts += 1;
        if !worth_retrying(err) || self.attempts >= ATTEMPTS_MAX {
            return None;
        }
        let pause = backoff(self.attempts);
        match self.deadline {
            Some(d) if now >= d => None,
            Some(d) => Some(pause.min(d - now)),
            None => Some(pause),
        }
    }
}

#[cfg(test)]
// Tests anchor time somewhere; the code under test never reads a clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn unreachable() -> RemoteError {
        RemoteError::Unreachable { node: "n2".into(), reason: "link closed".into() }
    }

    #[test]
    fn transient_refusals_are_retried_a_bounded_number_of_times() {
        let now = Instant::now();
        let mut r = Retry::new();
        let pauses: Vec<Duration> = std::iter::from_fn(|| r.after(&unreachable(), now)).collect();
        assert_eq!(pauses.len() as u32, ATTEMPTS_MAX - 1);
        assert_eq!(pauses[0], Duration::from_millis(4));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "backoff never shrinks: {pauses:?}");
        assert_eq!(*pauses.last().unwrap_or(&Duration::ZERO), BACKOFF_MAX);
    }

    #[test]
    fn a_node_held_down_and_back_pressure_end_the_call_at_once() {
        let now = Instant::now();
        for e in [
            RemoteError::NodeDown { node: "n3".into() },
            RemoteError::MailboxFull { path: "/a/b/c".into(), cap: 1 },
            RemoteError::QueueFull { node: "n2".into(), cap: 1 },
            RemoteError::Timeout { path: "/a/b/c".into(), ms: 1 },
        ] {
            assert_eq!(Retry::new().after(&e, now), None, "{e}");
        }
    }

    #[test]
    fn a_node_held_down_after_routing_is_a_stale_route() {
        let now = Instant::now();
        let down = || RemoteError::NodeDown { node: "n3".into() };
        assert!(Retry::new().after(&rerouted(down(), true), now).is_some(), "the view changed: re-resolve");
        assert!(Retry::new().after(&rerouted(down(), false), now).is_none(), "same view: a pinned path");
    }

    #[test]
    fn never_sleeps_past_the_deadline() {
        let now = Instant::now();
        let mut r = Retry::until(now + Duration::from_millis(3));
        assert_eq!(r.after(&unreachable(), now), Some(Duration::from_millis(3)));
        assert_eq!(r.after(&unreachable(), now + Duration::from_millis(3)), None);
    }
}
