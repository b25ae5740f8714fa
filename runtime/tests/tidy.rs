//! Tidy check of the runtime's module graph: files that import each other in a
//! cycle (from their `crate::` and `super::` paths). Today's cycle — centred on
//! node/mod.rs, which actors, handles and kinds call back into — is listed
//! below and may only shrink: a file that joins a cycle fails this test, and so does a
//! listed file that has left one (then take it off the list). Config left it through a
//! kind catalog trait, the slot and registry when the mailbox's `Delivery` moved into
//! the slot, the agent and replica agent when node.rs split by job (only
//! node/boot.rs names them), and the transport and client forwarding when the
//! transport began handing arrivals to an `Inbound` trait (cluster/inbound.rs, named
//! only by node/boot.rs) and the task-local trace moved to current.rs, and
//! cluster/mod.rs when joining stopped taking the node and re-homing became the
//! node's; docs/ARCHITECTURE.md says where it stands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "support/imports.rs"]
mod imports;

use imports::{graph, in_cycles, read_tree};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Files in an import cycle today (paths under runtime/src).
const KNOWN_CYCLE: &[&str] = &["actor.rs", "handle.rs", "kinds.rs", "node/mod.rs"];

#[test]
fn no_file_joins_the_runtime_import_cycle() {
    let g = graph(&read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")));
    assert!(
        g.contains_key("node/mod.rs") && g["handle.rs"].contains("node/mod.rs"),
        "the graph reader found nothing: {g:#?}"
    );
    let now = in_cycles(&g);
    let known: BTreeSet<String> = KNOWN_CYCLE.iter().map(|s| s.to_string()).collect();
    let joined: Vec<&String> = now.difference(&known).collect();
    let left: Vec<&String> = known.difference(&now).collect();
    assert!(joined.is_empty(), "these files joined an import cycle of runtime/src: {joined:?}");
    assert!(left.is_empty(), "these files left the import cycle: take them off KNOWN_CYCLE: {left:?}");
    eprintln!("{} of {} runtime files are in an import cycle", now.len(), g.len());
}

#[test]
fn the_cycle_check_can_fail() {
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a.rs", vec!["b.rs"]), ("b.rs", vec!["c.rs"]), ("c.rs", vec!["a.rs"]), ("d.rs", vec!["a.rs"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
            .collect();
    let c = in_cycles(&g);
    assert_eq!(c, ["a.rs", "b.rs", "c.rs"].into_iter().map(str::to_string).collect::<BTreeSet<_>>());
}
