//! The stable smoke run of every fuzz target, in the test suite: each committed corpus
//! file, then seeded mutations of them for a bounded number of runs (and at most a few
//! seconds) per target. A panic fails the test with the target, the seed and the input
//! in hex; add that input to `fuzz/corpus/<target>/` once fixed.
//!
//! The long coverage-guided runs are libFuzzer's (`fuzz/run`, docs/fuzzing.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use troupe_fuzz::mutate::{Rng, mutate};
use troupe_fuzz::{TARGETS, Target};

/// Mutated inputs per target (a few seconds on a 2-core machine for the slowest).
const RUNS: usize = 20_000;
/// A target stops early after this long (the bound is the test's, not the fuzzer's).
const TIME_MAX: Duration = Duration::from_secs(6);
const LEN_MAX: usize = 64 << 10;

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target has a committed corpus)", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("a corpus file reads"))).collect()
}

/// Runs `t` on `input`; a panic becomes an error naming what failed.
fn one(t: Target, input: &[u8], what: &str) -> Result<(), String> {
    std::panic::catch_unwind(|| (t.run)(input)).map_err(|p| {
        let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} panicked on {what}: {}\ninput ({} bytes): {hex}", t.name, why.unwrap_or_default(), input.len())
    })
}

/// The smoke run of one target: its corpus, then `runs` mutations from seed `seed`.
fn smoke(t: Target, seeds: &[(PathBuf, Vec<u8>)], seed: u64, runs: usize) -> Result<usize, String> {
    for (path, bytes) in seeds {
        one(t, bytes, &format!("corpus file {}", path.display()))?;
    }
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut done = 0;
    while done < runs && start.elapsed() < TIME_MAX {
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, a, b, LEN_MAX);
        one(t, &input, &format!("mutation {done} of seed {seed}"))?;
        done += 1;
    }
    Ok(done)
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mut failures = Vec::new();
    for t in TARGETS {
        let seeds = corpus(t.name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{} is empty", t.name);
        match smoke(*t, &seeds, 0x7209_2026, RUNS) {
            Ok(n) => println!("{}: {} corpus files, {n} mutations", t.name, seeds.len()),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_target_has_a_corpus_folder_and_a_libfuzzer_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for t in TARGETS {
        assert!(root.join("corpus").join(t.name).is_dir(), "no fuzz/corpus/{}", t.name);
        assert!(manifest.contains(&format!("name = \"{}\"", t.name)), "no [[bin]] {} in fuzz/Cargo.toml", t.name);
    }
}

#[test]
fn the_smoke_run_finds_a_planted_bug_and_shows_the_input() {
    fn planted(data: &[u8]) {
        // A parser that trusts a length byte: fine on the seed, wrong on most mutations.
        if let Some((&n, rest)) = data.split_first() {
            assert!(rest.len() >= n as usize, "length {n} over {} bytes", rest.len());
        }
    }
    let t = Target { name: "planted", run: planted };
    let seeds = vec![(PathBuf::from("seed"), vec![3, b'a', b'b', b'c'])];
    let err = smoke(t, &seeds, 1, RUNS).expect_err("the mutator must find it");
    assert!(err.contains("planted panicked on mutation") && err.contains("length"), "{err}");
    assert!(err.contains("input ("), "{err}");
}
