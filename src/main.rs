//! `troupe`: run nodes, talk to actors, watch and break the cluster — the command line
//! of troupe-cli with the systems of `systems.rs`.
//!
//! Exit codes scripts can rely on: 0 success, 1 a request or runtime failure, 2 a
//! bad configuration or usage, 3 the target was unreachable, 4 a timeout.

mod systems;

/// mimalloc instead of glibc's malloc: allocation was 13% of a node's CPU under
/// replicated writes, and the nodes were CPU-bound (docs/replication.md, "Measured").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    troupe_cli::main(systems::SYSTEMS)
}
