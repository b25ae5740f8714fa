//! What benchmarks read of processes: resident memory, and the open files limit.

use std::time::Duration;

/// Resident set of process `pid`, bytes (VmRSS).
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// RSS once it has stopped moving (allocations of the last burst settle, background
/// tasks finish): the median of five reads 200 ms apart, after a pause.
pub fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    std::thread::sleep(Duration::from_secs(2));
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(rss(pid)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    v.sort_unstable();
    Ok(v[2])
}

/// Raises this process's open files limit to its hard limit; returns the limit.
pub fn raise_nofile() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}
