//! Reads Cargo.lock for the tidy tests: which packages a package depends on,
//! transitively. Included by path (`runtime/core/tests/tidy.rs`,
//! `runtime/system/tests/layout.rs`).

use std::collections::{BTreeMap, BTreeSet};

/// Every package `root` depends on, transitively, per a Cargo.lock text.
pub fn closure(lock: &str, root: &str) -> BTreeSet<String> {
    let lock: toml::Table = lock.parse().expect("Cargo.lock is TOML");
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in lock.get("package").and_then(|p| p.as_array()).into_iter().flatten() {
        let name = p.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
        let ds = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            // "name" or "name version" or "name version (source)"
            .map(|d| d.split(' ').next().unwrap_or_default().to_string());
        deps.entry(name).or_default().extend(ds);
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(n) = todo.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}
