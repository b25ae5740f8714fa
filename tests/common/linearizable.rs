//! A linearizability checker for per-key register histories (Wing & Gong's search with
//! Lowe's memoization, as Porcupine does it): is there one order of the operations,
//! each placed between its invocation and its response, in which every read returns
//! the value of the last write before it?
//!
//! A write whose outcome the client does not know (an error, a timeout) may have taken
//! effect at any time after its invocation, or never: its response is "never", so it
//! constrains nothing and need not be placed. Reads that failed returned nothing and
//! are left out by the caller.

use std::collections::HashSet;

/// One operation on one register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Invocation and response, in any monotonic unit; `ret: None` = outcome unknown.
    pub call: u64,
    pub ret: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(String),
    /// What the read returned (`None`: the key did not exist).
    Read(Option<String>),
}

struct Search<'a> {
    ops: &'a [Op],
    required: usize,
    memo: HashSet<(Vec<u64>, Option<String>)>,
    steps: u64,
}

/// The most search steps before giving up (a history too concurrent to decide).
const STEPS_MAX: u64 = 5_000_000;

/// `Ok` if `ops` (one key, starting from "absent") is linearizable; `Err` says why not,
/// or that the search gave up.
pub fn check(ops: &[Op]) -> Result<(), String> {
    assert!(ops.len() <= 64 * 64, "one key's history is too long to check ({} operations)", ops.len());
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let required = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut s = Search { ops: &ops, required, memo: HashSet::new(), steps: 0 };
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    match s.dfs(&mut done, 0, &None) {
        Some(true) => Ok(()),
        Some(false) => Err(explain(&ops)),
        None => Err(format!("gave up after {STEPS_MAX} steps on {} operations", ops.len())),
    }
}

impl Search<'_> {
    /// `Some(found)`, or `None` when over the step budget.
    fn dfs(&mut self, done: &mut Vec<u64>, placed: usize, state: &Option<String>) -> Option<bool> {
        if placed == self.required {
            return Some(true);
        }
        self.steps += 1;
        if self.steps > STEPS_MAX {
            return None;
        }
        if !self.memo.insert((done.clone(), state.clone())) {
            return Some(false);
        }
        let is_done = |d: &Vec<u64>, i: usize| d[i / 64] >> (i % 64) & 1 == 1;
        // The next operation must be invoked before every pending one has returned.
        let min_ret = (0..self.ops.len())
            .filter(|i| !is_done(done, *i))
            .filter_map(|i| self.ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if is_done(done, i) || self.ops[i].call > min_ret {
                continue;
            }
            let (next, counts) = match &self.ops[i].kind {
                Kind::Read(v) if v == state => (state.clone(), 1),
                Kind::Read(_) => continue,
                Kind::Write(v) => (Some(v.clone()), usize::from(self.ops[i].ret.is_some())),
            };
            done[i / 64] |= 1 << (i % 64);
            let found = self.dfs(done, placed + counts, &next)?;
            done[i / 64] &= !(1 << (i % 64));
            if found {
                return Some(true);
            }
        }
        Some(false)
    }
}

/// The history, for a failure message.
fn explain(ops: &[Op]) -> String {
    let lines: Vec<String> = ops
        .iter()
        .map(|o| {
            let ret = o.ret.map_or("?".to_string(), |r| r.to_string());
            match &o.kind {
                Kind::Write(v) => format!("  [{}, {ret}] write {v}", o.call),
                Kind::Read(v) => format!("  [{}, {ret}] read -> {}", o.call, v.as_deref().unwrap_or("absent")),
            }
        })
        .collect();
    format!("no order of these {} operations explains every read:\n{}", ops.len(), lines.join("\n"))
}
