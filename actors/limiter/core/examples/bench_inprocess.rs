//! In-process rate limiter bench: troupe-limiter vs governor 0.10, same run, same machine.
//!
//! Run: `CARGO_TARGET_DIR=/work/main/target-cores cargo run -p troupe-limiter --release --example bench_inprocess`
//! (`-- --quick` for a short smoke run). Prints a table and writes
//! `bench/results/limiter-inprocess.json` at the repository root.
//!
//! Method:
//! - Every check reads a monotonic clock, as a real check must. Both sides read the same one,
//!   governor's default quanta clock (TSC-based). Extra rows: troupe with `std::time::Instant`,
//!   and troupe reading the clock once per 64 checks (the algorithm's own cost).
//! - Quotas are large enough that every check is admitted: both sides take the allow path.
//!   troupe's check returns a full `Decision` (remaining, reset, retry: what the headers need);
//!   governor's returns only allow/deny.
//! - Keyed runs: 100K `u64` keys, a pre-generated pseudo-random key order, all keys warmed
//!   before timing; both sides hash with std's SipHash (`RandomState`).
//! - The machine is shared (2 cores, other builds running): troupe and governor runs alternate,
//!   `REPS` rounds each, and the minimum is kept (the least-disturbed run). Per-thread CPU time
//!   is reported next to wall time; CPU ns/check is immune to being descheduled.
//!
//! Two threads, troupe side, two designs:
//! - "sharded by thread": each thread owns the table of its half of the keys, which is how the
//!   limiter shard actors work (one owner per key range, no lock on the path). The key stream is
//!   split the same way, as a router in front of two shard actors would.
//! - "shared, lock per shard": one table split into 64 shards, each behind a `parking_lot` mutex, shared
//!   by both threads (what a library embedded in a multi-threaded server would do).
//!
//! Governor's keyed limiter is shared by both threads (DashMap). For one key, troupe uses a
//! `parking_lot::Mutex<Gcra>` shared by both threads and governor its lock-free CAS on one
//! atomic. (Single-thread rows wrap troupe's state in an uncontended `Mutex` taken once per run,
//! only to share the setup code; it is not on the per-check path.)

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Instant;

use governor::clock::{Clock, QuantaClock, Reference};
use governor::{Quota, RateLimiter};
use troupe_limiter::algorithm::Gcra;
use troupe_limiter::{Algorithm, AlgorithmKind, KeyedTable, LimitParams, TableConfig};

const KEYS: u64 = 100_000;
const SHARDS: usize = 64;
const REPS: usize = 5;

fn params() -> LimitParams {
    // 2^31 per second with a full second of burst: every check in the bench is admitted.
    LimitParams::simple(AlgorithmKind::Gcra, 1 << 31, 1_000_000_000).expect("valid params")
}

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1 << 31).expect("non-zero"))
}

fn key_order(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = troupe_limiter::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.below(KEYS)).collect()
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One timed run: wall ns per check (all threads' checks over the wall time, i.e. the inverse
/// of aggregate throughput) and CPU ns per check (summed thread CPU time over all checks).
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

fn time_threads<F>(threads: usize, per_thread: usize, f: F) -> Sample
where
    F: Fn(usize, usize) -> u64 + Sync,
{
    let start = Instant::now();
    let cpu: u64 = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let c0 = thread_cpu_ns();
                    black_box(f(t, per_thread));
                    thread_cpu_ns() - c0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).sum()
    });
    let n = (threads * per_thread) as f64;
    Sample { wall: start.elapsed().as_nanos() as f64 / n, cpu: cpu as f64 / n }
}

struct Row {
    name: &'static str,
    threads: usize,
    troupe: Sample,
    governor: Sample,
}

/// Alternates the two sides `REPS` times and keeps each side's fastest run.
fn compare(
    name: &'static str,
    threads: usize,
    mut ours: impl FnMut() -> Sample,
    mut theirs: impl FnMut() -> Sample,
) -> Row {
    let (mut a, mut b) = (Sample { wall: f64::MAX, cpu: f64::MAX }, Sample { wall: f64::MAX, cpu: f64::MAX });
    for _ in 0..REPS {
        let x = ours();
        let y = theirs();
        a = Sample { wall: a.wall.min(x.wall), cpu: a.cpu.min(x.cpu) };
        b = Sample { wall: b.wall.min(y.wall), cpu: b.cpu.min(y.cpu) };
    }
    Row { name, threads, troupe: a, governor: b }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n_single = if quick { 200_000 } else { 3_000_000 };
    let n_keyed = if quick { 200_000 } else { 2_000_000 };
    let order = key_order(n_keyed, 42);
    // The same clock governor reads (quanta, TSC-based), so both sides pay the same for time.
    let clock = QuantaClock::default();
    let epoch = clock.now();
    let now_ns = || clock.now().duration_since(epoch).as_u64();
    let std_epoch = Instant::now();
    let std_now_ns = move || std_epoch.elapsed().as_nanos() as u64;
    let p = params();
    let gov_direct = |threads: usize| {
        let l = RateLimiter::direct(quota());
        time_threads(threads, n_single / threads, |_, n| (0..n).map(|_| u64::from(l.check().is_ok())).sum())
    };
    let gov_keyed = |threads: usize| {
        let l = RateLimiter::keyed(quota());
        for k in 0..KEYS {
            black_box(l.check_key(&k).is_ok());
        }
        time_threads(threads, n_keyed / threads, |t, n| {
            order[t * n..(t + 1) * n].iter().map(|k| u64::from(l.check_key(k).is_ok())).sum()
        })
    };
    let mut rows = Vec::new();

    rows.push(compare(
        "1 key, GCRA, algorithm only (clock per 64)",
        1,
        || {
            let g = Mutex::new(Gcra::new(p));
            time_threads(1, n_single, |_, n| {
                let mut g = g.lock().expect("uncontended");
                let mut now = now_ns();
                (0..n)
                    .map(|i| {
                        if i % 64 == 0 {
                            now = now_ns();
                        }
                        u64::from(g.check(now, 1).allowed)
                    })
                    .sum()
            })
        },
        || gov_direct(1),
    ));
    rows.push(compare(
        "1 key, GCRA",
        1,
        || {
            let g = Mutex::new(Gcra::new(p));
            time_threads(1, n_single, |_, n| {
                let mut g = g.lock().expect("uncontended");
                (0..n).map(|_| u64::from(g.check(now_ns(), 1).allowed)).sum()
            })
        },
        || gov_direct(1),
    ));
    rows.push(compare(
        "1 key, GCRA, std Instant clock",
        1,
        || {
            let g = Mutex::new(Gcra::new(p));
            time_threads(1, n_single, |_, n| {
                let mut g = g.lock().expect("uncontended");
                (0..n).map(|_| u64::from(g.check(std_now_ns(), 1).allowed)).sum()
            })
        },
        || gov_direct(1),
    ));
    rows.push(compare(
        "1 key, GCRA, shared by 2 threads (Mutex vs CAS)",
        2,
        || {
            let g = parking_lot::Mutex::new(Gcra::new(p));
            time_threads(2, n_single / 2, |_, n| (0..n).map(|_| u64::from(g.lock().check(now_ns(), 1).allowed)).sum())
        },
        || gov_direct(2),
    ));
    rows.push(compare(
        "100K keys, GCRA",
        1,
        || {
            let t = Mutex::new(warm_table(&p, KEYS as usize, |_| true, &now_ns));
            time_threads(1, n_keyed, |_, n| {
                let mut t = t.lock().expect("uncontended");
                order[..n].iter().map(|k| u64::from(t_check(&mut t, k, &p, now_ns()))).sum()
            })
        },
        || gov_keyed(1),
    ));
    // Each thread owns the keys k with k % 2 == thread, and gets that part of the key stream.
    let streams: Vec<Vec<u64>> = (0..2).map(|t| order.iter().copied().filter(|k| k % 2 == t).collect()).collect();
    let per = streams.iter().map(Vec::len).min().unwrap_or(0);
    rows.push(compare(
        "100K keys, 2 threads, sharded by thread",
        2,
        || {
            let tables: Vec<Mutex<KeyedTable<u64>>> =
                (0..2u64).map(|t| Mutex::new(warm_table(&p, KEYS as usize / 2 + 1, |k| k % 2 == t, &now_ns))).collect();
            time_threads(2, per, |t, n| {
                let mut tab = tables[t].lock().expect("owned by this thread");
                streams[t][..n].iter().map(|k| u64::from(t_check(&mut tab, k, &p, now_ns()))).sum()
            })
        },
        || gov_keyed(2),
    ));
    rows.push(compare(
        "100K keys, 2 threads, shared, lock per shard",
        2,
        || {
            // parking_lot's mutex: one CAS to lock, one to unlock, no poisoning bookkeeping.
            let shards: Vec<parking_lot::Mutex<KeyedTable<u64>>> = (0..SHARDS)
                .map(|s| parking_lot::Mutex::new(warm_table(&p, KEYS as usize, |k| shard_index(k) == s, &now_ns)))
                .collect();
            time_threads(2, n_keyed / 2, |t, n| {
                order[t * n..(t + 1) * n]
                    .iter()
                    .map(|k| {
                        let mut tab = shards[shard_index(*k)].lock();
                        u64::from(t_check(&mut tab, k, &p, now_ns()))
                    })
                    .sum()
            })
        },
        || gov_keyed(2),
    ));

    print_and_save(&rows, quick);
}

fn warm_table(p: &LimitParams, cap: usize, mine: impl Fn(u64) -> bool, now_ns: &dyn Fn() -> u64) -> KeyedTable<u64> {
    let mut t = KeyedTable::new(TableConfig { keys_max: cap }).expect("cap");
    for k in (0..KEYS).filter(|k| mine(*k)) {
        t.check(&k, p, 1, now_ns()).expect("room");
    }
    t
}

/// `check` only fails when the table is full, which the bench sizes away.
fn t_check(t: &mut KeyedTable<u64>, k: &u64, p: &LimitParams, now: u64) -> bool {
    t.check(k, p, 1, now).is_ok_and(|d| d.allowed)
}

fn shard_index(k: u64) -> usize {
    // Keys are already uniform; a multiplicative hash spreads sequential ids too.
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn print_and_save(rows: &[Row], quick: bool) {
    println!(
        "{:<48} {:>3} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11} {:>7} {:>7}",
        "scenario", "thr", "troupe ns", "cpu ns", "checks/s", "gov ns", "cpu ns", "checks/s", "ratio", "cpu"
    );
    let mut json = Vec::new();
    for r in rows {
        let ratio = r.troupe.wall / r.governor.wall;
        let cpu_ratio = r.troupe.cpu / r.governor.cpu;
        println!(
            "{:<48} {:>3} {:>10.1} {:>10.1} {:>11.0} {:>10.1} {:>10.1} {:>11.0} {:>6.2}x {:>6.2}x",
            r.name,
            r.threads,
            r.troupe.wall,
            r.troupe.cpu,
            1e9 / r.troupe.wall,
            r.governor.wall,
            r.governor.cpu,
            1e9 / r.governor.wall,
            ratio,
            cpu_ratio
        );
        let round = |x: f64| (x * 10.0).round() / 10.0;
        json.push(serde_json::json!({
            "scenario": r.name,
            "threads": r.threads,
            "troupe_ns_per_check": round(r.troupe.wall),
            "troupe_cpu_ns_per_check": round(r.troupe.cpu),
            "troupe_checks_per_s": (1e9 / r.troupe.wall).round(),
            "governor_ns_per_check": round(r.governor.wall),
            "governor_cpu_ns_per_check": round(r.governor.cpu),
            "governor_checks_per_s": (1e9 / r.governor.wall).round(),
            "ratio_troupe_over_governor": (ratio * 100.0).round() / 100.0,
            "cpu_ratio_troupe_over_governor": (cpu_ratio * 100.0).round() / 100.0,
        }));
    }
    println!("ratio = troupe ns / governor ns, wall and CPU (below 1.00: troupe faster; goal: at most 1.50)");
    println!("load average during the run: {}", load_average());
    if quick {
        println!("--quick: results not saved");
        return;
    }
    let doc = serde_json::json!({
        "bench": "limiter-inprocess",
        "peer": "governor 0.10 (GCRA, default quanta clock; keyed = DashMap)",
        "method": "troupe and governor alternate, min of 5 rounds each; every check reads the quanta clock; all checks admitted; 100K u64 keys in random order, warmed; wall ns = 1/aggregate throughput, cpu ns = thread CPU time per check",
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average": load_average(),
        "results": json,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../bench/results/limiter-inprocess.json");
    match std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json") + "\n") {
        Ok(()) => println!("wrote bench/results/limiter-inprocess.json"),
        Err(e) => eprintln!("could not write {path}: {e}"),
    }
}
