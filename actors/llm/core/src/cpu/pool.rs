//! A persistent compute pool: N-1 worker threads plus the caller run one job at a
//! time (`run`), each seeing its thread index.
//!
//! Decode dispatches ~150 jobs per token, tens of microseconds apart, so workers
//! spin for `SPIN_ITERS` before sleeping on a condvar (a thread spawn or a wake
//! from sleep per job would cost more than the job). Invariant: `run` returns only
//! after every thread has finished the job, so the job may borrow the caller's
//! stack; that is what makes the lifetime erasure below sound. A panicking job is
//! caught in the worker and re-raised in the caller after all threads are done.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Most threads one pool may own.
pub const POOL_THREADS_MAX: usize = 256;
/// Busy-wait iterations before a worker sleeps (≈100 µs on a 3 GHz core).
const SPIN_ITERS: u32 = 20_000;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    generation: AtomicU64,
    job: UnsafeCell<Option<*const Job>>,
    /// Workers (not the caller) still running the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` while no worker reads it (all idle) and
// read by workers only between the generation bump and their `pending` decrement.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.n).finish()
    }
}

impl Pool {
    /// A pool of `threads` (including the caller), clamped to 1..=POOL_THREADS_MAX.
    pub fn new(threads: usize) -> Pool {
        let n = threads.clamp(1, POOL_THREADS_MAX);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n)
            .map(|idx| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("troupe-llm-{idx}"))
                    .spawn(move || worker(s, idx))
                    .expect("spawning a compute thread")
            })
            .collect();
        Pool { shared, workers, n }
    }

    pub fn threads(&self) -> usize {
        self.n
    }

    /// Run `f(thread_index)` on every thread of the pool; returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the job pointer outlives its use: we wait for pending == 0 below
        // before returning, and workers touch the pointer only before decrementing.
        let erased: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        // SAFETY: all workers are idle (previous run waited for them).
        unsafe { *s.job.get() = Some(erased) };
        s.pending.store(self.n - 1, Ordering::Relaxed);
        {
            // Take the lock so that a worker between "check generation" and "wait"
            // cannot miss the notification.
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.generation.fetch_add(1, Ordering::Release);
        }
        s.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a compute pool job panicked");
        }
    }
}

fn worker(s: Arc<Shared>, idx: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let gen_now = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen || s.shutdown.load(Ordering::Relaxed) {
                break g;
            }
            if spins < SPIN_ITERS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                if s.generation.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Relaxed) {
                    drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
                }
            }
        };
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        seen = gen_now;
        // SAFETY: set by `run` before the generation bump we just observed.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            // SAFETY: `run` keeps the closure alive until pending reaches zero.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(idx))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Relaxed);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Hands out chunk indices to pool threads (dynamic scheduling: a thread slowed by
/// another process on the machine simply takes fewer chunks).
#[derive(Debug, Default)]
pub struct Chunks {
    next: AtomicUsize,
}

impl Chunks {
    pub fn new() -> Chunks {
        Chunks::default()
    }
    pub fn next(&self, n_chunks: usize) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < n_chunks).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_every_job() {
        let pool = Pool::new(3);
        for _ in 0..1000 {
            let hits = AtomicUsize::new(0);
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let pool = Pool::new(4);
        let sum = AtomicUsize::new(0);
        let chunks = Chunks::new();
        pool.run(&|_| {
            while let Some(c) = chunks.next(100) {
                sum.fetch_add(c, Ordering::Relaxed);
            }
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn a_panicking_job_surfaces_in_the_caller() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|i| assert!(i != 1, "boom"))));
        assert!(r.is_err());
        // The pool still works afterwards.
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
