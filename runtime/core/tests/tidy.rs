//! Tidy checks of the core's architecture invariants (docs/ARCHITECTURE.md):
//! - the dependency closure of troupe-core (read from Cargo.lock) has no tokio, quinn,
//!   redb or socket crate;
//! - no non-test code of the core reads a clock, the OS's randomness, a socket or a file;
//! - no cycle among the core's files (from their `crate::` and `super::` paths; the
//!   graph reader is the runtime's, `runtime/tests/support/imports.rs`).
//!
//! Each checker is also run on a broken input, so the test is seen to fail when an
//! invariant is broken.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "../../tests/support/imports.rs"]
mod imports;
#[path = "../../tests/support/lock.rs"]
mod lock;

use imports::{graph, in_cycles, read_tree};
use lock::closure;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const BANNED_CRATES: &[&str] = &["tokio", "quinn", "quinn-proto", "quinn-udp", "redb", "mio", "socket2", "ractor"];
const BANNED_CALLS: &[&str] =
    &["Instant::now", "SystemTime::now", "rand::random", "rand::rng", "tokio::", "UdpSocket", "TcpStream", "std::fs::"];

fn banned_deps(lock: &str) -> Vec<String> {
    closure(lock, "troupe-core").into_iter().filter(|d| BANNED_CRATES.contains(&d.as_str())).collect()
}

/// Banned calls in the non-test part of a source file (before its `#[cfg(test)]`).
fn banned_calls(file: &str, src: &str) -> Vec<String> {
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .flat_map(|(i, l)| {
            BANNED_CALLS.iter().filter(move |b| l.contains(*b)).map(move |b| format!("{file}:{}: {b}", i + 1))
        })
        .collect()
}

fn core_sources() -> BTreeMap<String, String> {
    read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_core_depends_on_no_runtime_io_crate() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock")).unwrap();
    let all = closure(&lock, "troupe-core");
    assert!(all.contains("foca"), "the closure reader found nothing: {all:?}");
    assert_eq!(banned_deps(&lock), Vec::<String>::new(), "troupe-core must not depend on these");
    // And the check fails when the invariant is broken (tokio, and mio through it).
    let broken = "[[package]]\nname = \"troupe-core\"\nversion = \"0.1.0\"\ndependencies = [\"foca\", \"tokio 1.0.0\"]\n\n\
                  [[package]]\nname = \"tokio\"\nversion = \"1.0.0\"\ndependencies = [\"mio\"]\n\n\
                  [[package]]\nname = \"mio\"\nversion = \"1.0.0\"\n";
    assert_eq!(banned_deps(broken), vec!["mio".to_string(), "tokio".to_string()], "the check must catch tokio");
}

#[test]
fn no_clock_socket_or_file_in_the_core() {
    let found: Vec<String> = core_sources().iter().flat_map(|(m, src)| banned_calls(m, src)).collect();
    assert!(found.is_empty(), "the core must take time, randomness and I/O from its shell: {found:#?}");
    let broken =
        "fn f() -> u64 {\n    std::time::Instant::now();\n    0\n}\n#[cfg(test)]\nfn t() { Instant::now(); }\n";
    assert_eq!(banned_calls("x", broken), vec!["x:2: Instant::now".to_string()], "the scan must catch a clock read");
}

#[test]
fn no_cycle_among_core_modules() {
    let files = core_sources();
    let g = graph(&files);
    assert!(g["sim/kv.rs"].contains("sim/mod.rs") && g["sim/mod.rs"].contains("membership.rs"), "{g:#?}");
    assert_eq!(in_cycles(&g), BTreeSet::new());
    let mut broken = files.clone();
    broken.insert("health.rs".into(), format!("use crate::membership::View;\n{}", files["health.rs"]));
    let cycle: Vec<String> = in_cycles(&graph(&broken)).into_iter().collect();
    assert_eq!(cycle, ["health.rs", "membership.rs"], "the cycle check must catch health -> membership -> health");
}
