//! Tidy check of the runtime's module graph: files that import each other in a
//! cycle (from their `crate::` and `super::` paths). Today's cycle — centred on
//! node/mod.rs, which actors, handles, kinds and the transport call back into — is listed
//! below and may only shrink: a file that joins a cycle fails this test, and so does a
//! listed file that has left one (then take it off the list). Config left it through a
//! kind catalog trait, the slot and registry when the mailbox's `Delivery` moved into
//! the slot, and the agent and replica agent when node.rs split by job (only
//! node/boot.rs names them); docs/ARCHITECTURE.md says where it stands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files in an import cycle today (paths under runtime/src).
const KNOWN_CYCLE: &[&str] = &[
    "actor.rs",
    "cluster/client.rs",
    "cluster/mod.rs",
    "cluster/transport.rs",
    "handle.rs",
    "kinds.rs",
    "node/mod.rs",
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file relative to src: `cluster/transport.rs` → [cluster, transport].
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The file a module path names, given the known files (longest prefix that is a file).
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    for n in (0..=path.len()).rev() {
        let p = path[..n].join("/");
        let candidates =
            if p.is_empty() { vec!["lib.rs".to_string()] } else { vec![format!("{p}.rs"), format!("{p}/mod.rs")] };
        if let Some(f) = candidates.into_iter().find(|c| files.contains(c)) {
            return Some(f);
        }
    }
    None
}

/// Every `crate::a::b` and `super::a` path in the code (not in comments), as module paths.
fn referenced(module: &[String], src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())]
        {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let tail = &rest[i + prefix.len()..];
                let idents: Vec<String> = tail
                    .split("::")
                    .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
                    .take_while(|s| !s.is_empty())
                    .collect();
                let mut p = base.clone();
                p.extend(idents);
                out.push(p);
                rest = &rest[i + prefix.len()..];
            }
        }
        // `use crate::{a, b::c}`: each item of the group.
        if let Some(g) = code.split("crate::{").nth(1) {
            for item in g.split([',', '}']) {
                let p: Vec<String> =
                    item.trim().split("::").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if !p.is_empty() {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The import graph of runtime/src: file → files it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rs_files(&src, &mut paths);
    let rel = |p: &Path| p.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
    let files: BTreeSet<String> = paths.iter().map(|p| rel(p)).collect();
    paths
        .iter()
        .map(|p| {
            let f = rel(p);
            let text = std::fs::read_to_string(p).unwrap();
            // Test modules may reach anywhere.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let m = module_of(&f);
            let to = referenced(&m, text).iter().filter_map(|r| file_of(r, &files)).filter(|t| *t != f).collect();
            (f, to)
        })
        .collect()
}

/// Files that are in some cycle (strongly connected components of more than one file).
fn in_cycles(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for t in g.get(&n).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    todo.push(t.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|k| (k, reach(k))).collect();
    g.keys()
        .filter(|a| reaches[a].iter().any(|b| b != *a && reaches.get(b).is_some_and(|r| r.contains(*a))))
        .cloned()
        .collect()
}

#[test]
fn no_file_joins_the_runtime_import_cycle() {
    let g = graph();
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
