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

/// The file a module path names, given the known files (longest prefix that is a
/// file), and how many segments of the path that file took.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<(String, usize)> {
    for n in (0..=path.len()).rev() {
        let p = path[..n].join("/");
        let candidates =
            if p.is_empty() { vec!["lib.rs".to_string()] } else { vec![format!("{p}.rs"), format!("{p}/mod.rs")] };
        if let Some(f) = candidates.into_iter().find(|c| files.contains(c)) {
            return Some((f, n));
        }
    }
    None
}

/// The code of a file without comments and without its test module.
fn code_of(src: &str) -> String {
    let src = src.split("#[cfg(test)]").next().unwrap_or_default();
    src.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The child modules a file declares (`mod x;`, `pub(crate) mod x;`).
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub(crate) ").or_else(|| l.strip_prefix("pub ")).unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(|n| n.trim().to_string())
        })
        .collect()
}

/// The leaves of a use tree (`a::{b, c::{d as e}}` → `a::b`, `a::c::d`), each with the
/// name it is known by here.
fn use_leaves(tree: &str) -> Vec<(String, String)> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace() || *c == ' ').collect();
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let (path, alias) = match tree.split_once(" as ") {
                Some((p, a)) => (p.trim(), a.trim()),
                None => (tree, tree.rsplit("::").next().unwrap_or(tree)),
            };
            if path.is_empty() { Vec::new() } else { vec![(path.to_string(), alias.to_string())] }
        }
        Some(open) => {
            let prefix = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut parts = Vec::new();
            let (mut depth, mut from) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&inner[from..i]);
                        from = i + 1;
                    }
                    _ => {}
                }
            }
            parts.push(&inner[from..]);
            parts
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .flat_map(|p| {
                    use_leaves(p.trim())
                        .into_iter()
                        .map(|(path, alias)| {
                            let full = format!("{prefix}{path}");
                            match full.strip_suffix("::self") {
                                Some(m) => (m.to_string(), m.rsplit("::").next().unwrap_or(m).to_string()),
                                None => (full, alias),
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }
    }
}

/// A path as written in `module` (`crate::a::b`, `super::a`, `self::a`, `child::a`), as
/// an absolute module path; `None` for another crate's.
fn absolute(module: &[String], kids: &[String], path: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = path.split("::").map(str::to_string).collect();
    let (mut base, rest) = match segs.first()?.as_str() {
        "crate" => (Vec::new(), &segs[1..]),
        "super" => (module[..module.len().saturating_sub(1)].to_vec(), &segs[1..]),
        "self" => (module.to_vec(), &segs[1..]),
        k if kids.iter().any(|c| c == k) => (module.to_vec(), &segs[..]),
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// A file's `use` declarations: (name here, absolute path) for each leaf, the path
/// `None` for another crate's item.
type Uses = Vec<(String, Option<Vec<String>>)>;

fn uses(module: &[String], code: &str) -> Uses {
    let kids = children(code);
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let tail = &rest[i + 4..];
        let Some(end) = tail.find(';') else { break };
        if before.is_none_or(|c| c.is_whitespace() || c == ')') {
            for (path, alias) in use_leaves(&tail[..end]) {
                out.push((alias, absolute(module, &kids, &path)));
            }
        }
        rest = &tail[end..];
    }
    out
}

/// Every path of this crate a file names: its `use` declarations and the `crate::`,
/// `super::` and `self::` paths written inline, as absolute module paths.
fn referenced(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = uses(module, code).into_iter().filter_map(|(_, p)| p).collect();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ("self::", module.to_vec()),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let inline = rest[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let tail = &rest[i + prefix.len()..];
            let idents: Vec<String> = tail
                .split("::")
                .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
                .take_while(|s| !s.is_empty())
                .collect();
            if inline && !idents.is_empty() {
                let mut p = base.clone();
                p.extend(idents);
                out.push(p);
            }
            rest = tail;
        }
    }
    out
}

/// The file that defines what `path` names: the file the path leads to, followed
/// through that file's re-exports (`pub use child::Item` in a `mod.rs` or `lib.rs`
/// is a door, not a definition: naming `crate::Item` depends on the child).
fn definer(path: &[String], files: &BTreeSet<String>, exports: &BTreeMap<String, Uses>, hops: usize) -> Option<String> {
    let (f, n) = file_of(path, files)?;
    if hops < 8
        && let Some(item) = path.get(n)
        && let Some((_, to)) = exports.get(&f).and_then(|e| e.iter().find(|(name, _)| name == item))
    {
        // Another crate's item, re-exported here: no file of this crate.
        let to = to.as_ref()?;
        let mut next = to.clone();
        next.extend(path[n + 1..].iter().cloned());
        if next != path {
            return definer(&next, files, exports, hops + 1).or(Some(f));
        }
    }
    Some(f)
}

/// The import graph of a tree: file → files it names, through re-exports to the file
/// that defines the item (test modules excluded: they may reach anywhere).
pub fn graph(tree: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let files: BTreeSet<String> = tree.keys().cloned().collect();
    let code: BTreeMap<&String, String> = tree.iter().map(|(f, t)| (f, code_of(t))).collect();
    let exports: BTreeMap<String, Uses> = code.iter().map(|(f, c)| ((*f).clone(), uses(&module_of(f), c))).collect();
    code.iter()
        .map(|(f, c)| {
            let m = module_of(f);
            let to =
                referenced(&m, c).iter().filter_map(|r| definer(r, &files, &exports, 0)).filter(|t| t != *f).collect();
            ((*f).clone(), to)
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
