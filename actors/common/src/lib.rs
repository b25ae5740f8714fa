//! troupe-common: building blocks more than one system uses, so no system writes its
//! own.
//!
//! - [`cache`]: a bounded LRU cache with hit/miss counters and invalidation (no I/O; a
//!   system's pure core may use it).
//! - [`http`]: a blocking HTTP/1.1 client for one request on a fresh connection, every
//!   wait bounded, the response exactly as the server sent it — for command-line tools,
//!   labs that drive a live cluster, benchmarks and tests (not for a core: it does I/O).
//! - [`rng`]: the seeded SplitMix64 of the labs' simulations (the same seed gives the
//!   same numbers on every platform and release).
//!
//! The one chart module is `troupe-chart` (behind the cores' `plot` features).

pub mod cache;
pub mod http;
pub mod rng;
