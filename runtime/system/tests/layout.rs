//! Tidy checks of the one-home-per-system layout (docs/ARCHITECTURE.md, "Systems"):
//! - every folder under `actors/` is either a system home with a `core/` and a `shell/`
//!   crate, or one of the shared crates listed here;
//! - a system's core crate depends, transitively (read from Cargo.lock), on no runtime,
//!   async or storage crate, so the SDK and the simulator can use it alone;
//! - the command line (`cli/`, troupe-cli) and the binary (`src/`) name no system outside
//!   `src/systems.rs`, the one list that registers them — a new system touches its home,
//!   the conventional files and that list.
//!
//! Each checker is also run on a broken input, so the test is seen to fail when the
//! layout is broken.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "../../tests/support/lock.rs"]
mod lock;

use lock::closure;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders under `actors/` that are shared building blocks, not systems.
const SHARED: &[&str] = &["chart", "common"];
/// What a system's core crate must not pull in.
const NOT_IN_A_CORE: &[&str] = &[
    "troupe-runtime",
    "tokio",
    "ractor",
    "quinn",
    "redb",
    "axum",
    "hyper",
    "mio",
    "socket2",
    "ratatui",
    "ureq",
    "reqwest",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The system homes: every folder under `actors/` but the shared ones.
fn homes() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join("actors"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !SHARED.contains(&n.as_str()))
        .collect();
    out.sort();
    out
}

/// `[package] name` of a Cargo.toml.
fn package_name(manifest: &Path) -> String {
    let t: toml::Table = std::fs::read_to_string(manifest).unwrap().parse().unwrap();
    t["package"]["name"].as_str().unwrap().to_string()
}

/// The names a system goes by: its home folder, its crates, and the `[system] name` of
/// its topology file (`systems/<name>.toml`), as sequences of lower-case words.
fn system_names() -> BTreeSet<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for h in homes() {
        names.insert(h.clone());
        for part in ["core", "shell"] {
            names.insert(package_name(&repo().join("actors").join(&h).join(part).join("Cargo.toml")));
        }
    }
    for e in std::fs::read_dir(repo().join("systems")).unwrap() {
        let t: toml::Table = std::fs::read_to_string(e.unwrap().path()).unwrap().parse().unwrap();
        names.insert(t["system"]["name"].as_str().unwrap().to_string());
    }
    // `troupe-kv-shell` is caught by `kv` already; keep the names that are not just the
    // common prefix.
    names.into_iter().map(|n| words(&n)).filter(|w| w != &["troupe"]).collect()
}

/// Lower-case runs of letters and digits: `troupe_llm_shell::X` → troupe, llm, shell, x.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_ascii_lowercase()).collect()
}

/// Lines of `src` that mention one of `names` (a run of whole words).
fn mentions(file: &str, src: &str, names: &BTreeSet<Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let w = words(line);
        for n in names {
            if w.windows(n.len()).any(|win| win == n.as_slice()) {
                out.push(format!("{file}:{}: {} ({})", i + 1, line.trim(), n.join("-")));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(repo()).unwrap_or(&p).display().to_string();
            out.insert(rel, std::fs::read_to_string(&p).unwrap());
        }
    }
}

fn forbidden_in_core(lock: &str, core: &str) -> Vec<String> {
    closure(lock, core).into_iter().filter(|d| NOT_IN_A_CORE.contains(&d.as_str())).collect()
}

#[test]
fn every_system_home_has_a_core_and_a_shell_crate() {
    let homes = homes();
    for expected in ["diag", "kv", "limiter", "llm", "shortener"] {
        assert!(homes.iter().any(|h| h == expected), "actors/{expected} is a system home: {homes:?}");
    }
    for h in &homes {
        for part in ["core", "shell"] {
            let m = repo().join("actors").join(h).join(part).join("Cargo.toml");
            assert!(m.is_file(), "actors/{h}/ is a system home, so it needs actors/{h}/{part}/Cargo.toml");
        }
        let shell = package_name(&repo().join("actors").join(h).join("shell/Cargo.toml"));
        assert!(shell.ends_with("-shell"), "actors/{h}/shell is named troupe-<home>-shell, not {shell}");
    }
}

#[test]
fn a_system_core_pulls_in_no_runtime_async_or_storage_crate() {
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    for h in homes() {
        let core = package_name(&repo().join("actors").join(&h).join("core/Cargo.toml"));
        assert!(closure(&lock, &core).contains("serde"), "{core}: the lock reader found its dependencies");
        assert_eq!(forbidden_in_core(&lock, &core), Vec::<String>::new(), "{core} (actors/{h}/core) must stay pure");
    }
    // The check fails when a core reaches tokio through another crate.
    let broken = "[[package]]\nname = \"troupe-x\"\nversion = \"0.1.0\"\ndependencies = [\"serde\", \"troupe-runtime\"]\n\n\
                  [[package]]\nname = \"troupe-runtime\"\nversion = \"0.1.0\"\ndependencies = [\"tokio 1.0.0\"]\n\n\
                  [[package]]\nname = \"tokio\"\nversion = \"1.0.0\"\n";
    assert_eq!(forbidden_in_core(broken, "troupe-x"), ["tokio", "troupe-runtime"]);
}

#[test]
fn the_cli_names_no_system_outside_its_list() {
    let names = system_names();
    for n in [&["llm"][..], &["llm", "serving"], &["url", "shortener"], &["kv"], &["troupe", "limiter", "shell"]] {
        let n: Vec<String> = n.iter().map(|s| s.to_string()).collect();
        assert!(names.contains(&n), "{n:?} is a system's name: {names:?}");
    }
    let mut files = BTreeMap::new();
    rust_files(&repo().join("src"), &mut files);
    rust_files(&repo().join("cli"), &mut files);
    assert!(files.contains_key("cli/src/lib.rs"), "the command line is cli/ (troupe-cli)");
    assert!(files.contains_key("src/systems.rs"), "the list of systems is src/systems.rs");
    let list = &files["src/systems.rs"];
    assert!(!mentions("src/systems.rs", list, &names).is_empty(), "the list names the systems");
    let found: Vec<String> =
        files.iter().filter(|(f, _)| *f != "src/systems.rs").flat_map(|(f, src)| mentions(f, src, &names)).collect();
    assert!(
        found.is_empty(),
        "the command line names a system outside src/systems.rs; move this into the system's home (its System impl):\n{}",
        found.join("\n")
    );
    // The check catches a name in code and in a comment, and only whole words.
    let hits = mentions("x.rs", "use troupe_llm_shell::top;", &names);
    assert_eq!(hits.len(), 3, "llm, troupe-llm and troupe-llm-shell: {hits:?}");
    assert_eq!(mentions("x.rs", "// the rate-limiter lab", &names).len(), 2, "rate-limiter, and limiter (its home)");
    assert!(mentions("x.rs", "let kvs = shorten(url);", &names).is_empty());
}
