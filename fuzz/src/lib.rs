//! Fuzz targets for every parser that faces a network, as plain functions.
//!
//! Each target takes arbitrary bytes and must return normally: no panic, no hang, no
//! allocation out of proportion to its input. Most also check a property of what the
//! parser accepted (it re-encodes to the same thing, it stays within its documented
//! bounds), so a fuzzer finds wrong answers, not only crashes.
//!
//! Two harnesses drive them (docs/fuzzing.md):
//! - `tests/smoke.rs` (stable, in the test suite): each committed corpus file under
//!   `fuzz/corpus/<target>/`, then seeded mutations of them for a bounded time;
//! - `fuzz/run` (stable Rust, libFuzzer with coverage instrumentation): the long,
//!   coverage-guided runs, one binary per target in `fuzz_targets/`.

pub mod mutate;
pub mod targets;

/// One fuzz target: its name (the corpus folder and the libFuzzer binary) and body.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target; `fuzz/run` and the smoke test take their names from here.
pub const TARGETS: &[Target] = &[
    Target { name: "wire_frame", run: targets::wire_frame::run },
    Target { name: "frame_stream", run: targets::frame_stream::run },
    Target { name: "kind_messages", run: targets::kind_messages::run },
    Target { name: "gossip_packet", run: targets::gossip_packet::run },
    Target { name: "openai_request", run: targets::openai_request::run },
    Target { name: "tokenizer", run: targets::tokenizer::run },
    Target { name: "limiter_check", run: targets::limiter_check::run },
    Target { name: "limiter_rules", run: targets::limiter_rules::run },
    Target { name: "shortener_input", run: targets::shortener_input::run },
    Target { name: "actor_path", run: targets::actor_path::run },
    Target { name: "gguf_parse", run: targets::gguf_parse::run },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}
