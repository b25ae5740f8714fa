//! troupe-core: the parts of the runtime that decide, with no I/O. No socket, no disk,
//! no clock, no tokio: time comes in as an argument (`now`), randomness as an argument
//! or a seeded generator, and decisions go out as values (packets to send, children to
//! restart, the node that owns a key). The node shell (crate `troupe-runtime`) owns
//! sockets, timers and redb and feeds these cores; a seeded simulator ([`sim`]) feeds
//! them instead, many nodes in one thread.
//!
//! - [`membership`]: SWIM (foca) with troupe's glue — timer queue, join retries, local
//!   health, the stale-suspicion watchdog, the membership view and its events.
//! - [`placement`]: weighted rendezvous hashing over the live members.
//! - [`directory`]: the owner and the replica set of a path in a view.
//! - [`replication`]: majority quorums fenced by terms (promises, adoption, appends,
//!   read barriers, elections).
//! - [`rebuild`]: a replica that lost its disk relearns before it votes again.
//! - [`retry`]: the one retry policy of every send.
//! - [`restart`]: supervision's restart policy (strategies, intensity, backoff).
//! - [`chaos`]: fault rules (drop, delay, partition) with expiry.
//! - [`health`]: Lifeguard-style local health.
//! - [`sim`]: the seeded simulation of membership under kills, partitions and loss.
//!
//! Architecture invariant: nothing here depends on tokio, quinn or redb, and no code
//! here reads a clock or the OS's randomness (tests/tidy.rs, clippy.toml).

pub mod chaos;
pub mod directory;
pub mod downing;
pub mod health;
pub mod membership;
pub mod placement;
pub mod rebuild;
pub mod replication;
pub mod restart;
pub mod retry;
pub mod sim;
