//! The import graph of a source tree, for the tidy tests of troupe-runtime
//! (`runtime/tests/tidy.rs`) and troupe-core (`runtime/core/tests/tidy.rs`, which
//! includes this file): files, the files each names through `crate::` and `super::`
//! paths, what a file reaches, and which files sit in a cycle.

#![allow(dead_code)] // each including test uses its part

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// Every `.rs` file under `src`, by path relative to it (`cluster/transport.rs`).
pub fn read_tree(src: &Path) -> BTreeMap<String, String> {
    let mut paths = Vec::new();
    rs_files(src, &mut paths);
    paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .collect()
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

/// The import graph of a tree: file → files it names (test modules excluded: they may
/// reach anywhere).
pub fn graph(tree: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let files: BTreeSet<String> = tree.keys().cloned().collect();
    tree.iter()
        .map(|(f, text)| {
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let m = module_of(f);
            let to = referenced(&m, text).iter().filter_map(|r| file_of(r, &files)).filter(|t| t != f).collect();
            (f.clone(), to)
        })
        .collect()
}

/// Everything `from` reaches in `g` (not `from` itself unless through a cycle).
pub fn reach(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
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
}

/// Files that are in some cycle (strongly connected components of more than one file).
pub fn in_cycles(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reaches: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|k| (k, reach(g, k))).collect();
    g.keys()
        .filter(|a| reaches[a].iter().any(|b| b != *a && reaches.get(b).is_some_and(|r| r.contains(*a))))
        .cloned()
        .collect()
}
