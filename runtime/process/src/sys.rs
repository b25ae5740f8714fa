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
    /// Descriptors the child keeps across exec (bubblewrap's seccomp filters, the
    /// bound work directory, the start marker); every other descriptor of the node
    /// is closed at exec.
    pub(crate) keep_fds: Vec<RawFd>,
    /// Change into this (open) directory before dropping privileges.
    pub(crate) chdir_fd: Option<RawFd>,
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
            // Nothing the node holds open reaches the job: every descriptor above the
            // standard three is closed at exec, except the ones it is meant to have.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                // Kernels before 5.11: mark them one by one.
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
                let top = limit.rlim_cur.min(1 << 20) as libc::c_int;
                for fd in 3..top {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            for &fd in &self.keep_fds {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            if let Some(fd) = self.chdir_fd {
                check(libc::fchdir(fd))?;
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

/// A pipe whose ends are both closed on exec; the read end does not block.
pub(crate) fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both descriptors are fresh and owned by the Files from here on.
    Ok(unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) })
}

/// Opens `path` as a directory without following a symlink at its end (`O_PATH`: a
/// handle to bind or change into, not to read).
pub(crate) fn open_dir(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: open(2) with a valid C string; the descriptor is owned from here on.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory (a symbolic link is refused: it could point anywhere)",
            ),
            _ => e,
        });
    }
    // SAFETY: `fd` is fresh and owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Owner (uid, gid) of an open file.
pub(crate) fn owner(fd: &std::os::fd::OwnedFd) -> io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok((st.st_uid, st.st_gid))
}

/// Changes the owner of an open file (an `O_PATH` descriptor, so the path cannot be
/// swapped for a link in between).
pub(crate) fn chown_fd(fd: &std::os::fd::OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fchownat on a descriptor we own, with an empty C string path.
    check(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })
}

/// SIGKILL to every process running as `uid` (a job's own uid on a root node: what its
/// process group kill may have missed, such as a process that called setsid, and
/// whatever a crashed node left). A forked helper takes the uid and calls
/// `kill(-1, SIGKILL)`, which signals every process it may signal but itself.
pub(crate) fn kill_uid(uid: u32) {
    // SAFETY: between fork and _exit the child makes only async-signal-safe system
    // calls; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                libc::_exit(1);
            }
            // Three passes: a process caught mid-fork may leave a child the first
            // pass did not see.
            for _ in 0..3 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) == -1
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}
