//! The labs' seeded SplitMix64, from troupe-common (one copy for every system).

pub use troupe_common::rng::SplitMix64;
