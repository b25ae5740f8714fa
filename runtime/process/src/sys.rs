//! What the child does between fork and exec, and the few system calls the parent
//! makes on its behalf. Everything in [`ChildSetup::apply`] runs in the forked child
//! before `exec`: only async-signal-safe system calls, no allocation.

use std::io;
use std::os::fd::RawFd;

/// One resource limit, soft and hard.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource {
    Cpu,
    AddressSpace,
    OpenFiles,
    Processes,
    FileSize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ChildSetup {
    pub(crate) rlimits: Vec<(Resource, u64, u64)>,
    /// Switch to this uid and gid (with no supplementary groups); `None` keeps the
    /// node's.
    pub(crate) ids: Option<(u32, u32)>,
    /// Descriptors the child keeps across exec (bubblewrap's seccomp and status fds).
    pub(crate) keep_fds: Vec<RawFd>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl ChildSetup {
    /// Runs in the child between fork and exec.
    ///
    /// # Safety
    /// Only call from `CommandExt::pre_exec`: it makes the calling process a session
    /// leader and may drop its privileges.
    pub(crate) unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY (whole block): plain system calls on this process, with pointers to
        // locals that live across each call.
        unsafe {
            // Its own session and process group: the runner kills the group, and a
            // job cannot signal the node's group.
            check(libc::setsid())?;
            for &(resource, soft, hard) in &self.rlimits {
                let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
                let rc = match resource {
                    Resource::Cpu => libc::setrlimit(libc::RLIMIT_CPU, &limit),
                    Resource::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, &limit),
                    Resource::OpenFiles => libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                    Resource::Processes => libc::setrlimit(libc::RLIMIT_NPROC, &limit),
                    Resource::FileSize => libc::setrlimit(libc::RLIMIT_FSIZE, &limit),
                };
                check(rc)?;
            }
            for &fd in &self.keep_fds {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            if let Some((uid, gid)) = self.ids {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            // No setuid binary gives the job back what it was just denied.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // Set after the uid change, which clears it: the job dies with the node.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// SIGKILL to every process in the group; a group already gone is not an error.
pub(crate) fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// An anonymous in-memory file holding `bytes`, positioned at its start, closed on
/// exec unless the child's setup keeps it.
pub(crate) fn memfd(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string; the returned descriptor is owned
    // by the File from here on.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Hands `path` to the job's uid (the bound work directory of a job that runs under
/// its own uid).
pub(crate) fn chown(path: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}
