//! Tidy check of the runtime's module graph: no two files of runtime/src import each
//! other, directly or through others (from their `use` trees and inline `crate::`,
//! `super::` and `self::` paths, followed through re-exports to the file that
//! defines the item). The node sits below the actor layer: it names kinds through
//! the `KindFactory`/`KindInstance` traits defined beside it, its supervisors through
//! their mailbox type (supervision/msg.rs), and hands out handles through
//! `Node::handle`, which lives in handle.rs; docs/ARCHITECTURE.md draws the layers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "support/imports.rs"]
mod imports;

use imports::{graph, in_cycles, read_tree};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[test]
fn no_runtime_file_is_in_an_import_cycle() {
    let g = graph(&read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")));
    assert!(
        g.contains_key("node/mod.rs") && g["handle.rs"].contains("node/mod.rs") && g["kinds.rs"].contains("actor.rs"),
        "the graph reader found nothing: {g:#?}"
    );
    let now = in_cycles(&g);
    let edges: BTreeMap<&String, Vec<&String>> =
        now.iter().map(|f| (f, g[f].iter().filter(|t| now.contains(*t)).collect())).collect();
    assert!(now.is_empty(), "these files of runtime/src import each other in a cycle: {edges:#?}");
    eprintln!("{} runtime files, no import cycle", g.len());
}

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect()
}

/// The reader follows a re-export to the file that defines the item, and a `mod.rs`
/// that uses its own child reaches it: the cycles a facade would hide are found.
#[test]
fn the_reader_sees_through_re_exports_and_child_modules() {
    let t = tree(&[
        ("lib.rs", "pub mod sup;\npub mod node;\npub use node::Node;\n"),
        ("sup/mod.rs", "mod worker;\npub(crate) use worker::{Msg, Worker};\n"),
        ("sup/worker.rs", "use crate::Node;\npub struct Msg;\npub struct Worker(Node);\n"),
        ("node.rs", "use crate::sup::Msg;\npub struct Node(Vec<Msg>);\n"),
    ]);
    let g = graph(&t);
    assert!(g["node.rs"].contains("sup/worker.rs"), "{g:#?}");
    assert!(g["sup/worker.rs"].contains("node.rs"), "{g:#?}");
    let c = in_cycles(&g);
    assert_eq!(c, ["node.rs", "sup/worker.rs"].into_iter().map(str::to_string).collect::<BTreeSet<_>>());
    // Grouped, aliased, `self` and multi-line use trees; another crate's item and a
    // comment name no file.
    let t = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\npub use std::fmt;\n"),
        ("a.rs", "use crate::{\n    b::{self, X as Y},\n    fmt,\n};\n// use crate::c::Z;\n"),
        ("b.rs", "pub struct X;\n"),
        ("c.rs", "pub struct Z;\n"),
    ]);
    let g = graph(&t);
    assert_eq!(g["a.rs"], ["b.rs"].into_iter().map(str::to_string).collect::<BTreeSet<_>>(), "{g:#?}");
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

/// Non-test lines that serve HTTP some other way than `troupe_runtime::http::serve`.
fn unbounded_listeners(files: &BTreeMap<String, String>) -> Vec<String> {
    files
        .iter()
        .flat_map(|(f, src)| {
            let code = src.split("#[cfg(test)]").next().unwrap_or_default();
            code.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim_start().starts_with("//") && l.contains("axum::serve("))
                .map(move |(i, _)| format!("{f}:{}", i + 1))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_http_listener_is_served_with_limits() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = read_tree(&repo.join("runtime/src"));
    files.extend(read_tree(&repo.join("cli/src")));
    for e in std::fs::read_dir(repo.join("actors")).expect("actors/") {
        let shell = e.expect("entry").path().join("shell/src");
        if shell.is_dir() {
            files.extend(read_tree(&shell).into_iter().map(|(k, v)| (format!("{}/{k}", shell.display()), v)));
        }
    }
    assert!(files.len() > 50, "the reader found the sources: {}", files.len());
    assert_eq!(
        unbounded_listeners(&files),
        Vec::<String>::new(),
        "serve HTTP with troupe_runtime::http::serve (header/body timeouts, per-IP caps), not axum::serve"
    );
    let broken = tree(&[("x.rs", "async fn f() { axum::serve(l, app).await; }")]);
    assert_eq!(unbounded_listeners(&broken), ["x.rs:1"], "the check can fail");
}
