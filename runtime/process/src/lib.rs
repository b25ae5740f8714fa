//! troupe's process runner: what an actor uses to run a program (an agent's tool, a
//! video system's ffmpeg) without letting it take the node down.
//!
//! Every [`Job`] runs in its own session and process group, so a timeout or a
//! cancellation kills the whole group, grandchildren included; it runs under resource
//! limits ([`Limits`]: CPU seconds, address space, open files, processes, file size),
//! with its standard output and error capped ([`Job::output_cap`]) and an environment
//! it was given, not the node's; no descriptor the node holds reaches it. Its first
//! process dies with the node (`PR_SET_PDEATHSIG`; a sandboxed job's whole PID
//! namespace does).
//!
//! A [`Sandbox`] adds bubblewrap: new user, mount, PID, IPC, UTS and network
//! namespaces (no network unless granted), the system directories bound read-only,
//! sized tmpfs mounts for `/tmp` and `/dev/shm`, a tmpfs (or one bound host directory)
//! as the work directory, and a seccomp filter (mounts, namespaces, ptrace, BPF,
//! keyrings, io_uring and, without the network grant, every socket but `AF_UNIX`
//! refused).
//!
//! **Who the job runs as.** A node often runs as root, and neither the process limit
//! (`RLIMIT_NPROC`) nor file permissions bind root. So when the node is root, every
//! job runs under a uid of its own, leased from [`UID_BASE`]… for its lifetime (a lock
//! file per uid under `/run/troupe/job-uids`, so node processes on one host never
//! share one): it cannot read root's files (`/etc/shadow`), cannot signal other jobs,
//! and its process limit counts only its own processes; when it ends, every process of
//! its uid is killed, including one that left its process group. A node that is not
//! root cannot change uid: its jobs run as the node's user, the process limit then
//! counts every process and thread of that user (set it above what the node itself
//! runs), and only the job's process group is killed at its end.
//!
//! Spawn from a tokio runtime's worker thread (an actor's handler is one), not from
//! `spawn_blocking`: the job is killed when the thread that spawned it exits.

mod seccomp;
mod sys;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// First uid a root node hands to its jobs (see the crate docs); jobs take
/// [`UID_COUNT`] uids from here, one each while they run.
pub const UID_BASE: u32 = 1_900_000_000;
/// How many uids the pool holds: the most jobs that can run at once on a root node.
pub const UID_COUNT: u32 = 65_536;

/// Where the work directory is mounted inside a sandbox, and the job's `HOME` there.
pub const SANDBOX_WORKDIR: &str = "/work";

/// Resource limits of one job (`setrlimit`, applied to every process of the job).
/// `None` leaves the node's own limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU seconds; the job gets `SIGXCPU` at the limit and `SIGKILL` a second later.
    pub cpu_secs: Option<u64>,
    /// Address space per process, in bytes: an allocation past it fails.
    pub memory_bytes: Option<u64>,
    /// Open descriptors per process.
    pub open_files: Option<u64>,
    /// Processes and threads of the job's uid: a fork past it fails with `EAGAIN`.
    pub processes: Option<u64>,
    /// Largest file a process may write, in bytes (`SIGXFSZ` past it).
    pub file_bytes: Option<u64>,
}

impl Limits {
    /// The limits a job gets unless it asks otherwise: 60 CPU seconds, 1 GiB of address
    /// space, 256 descriptors, 64 processes, 256 MiB files.
    pub fn standard() -> Limits {
        Limits {
            cpu_secs: Some(60),
            memory_bytes: Some(1 << 30),
            open_files: Some(256),
            processes: Some(64),
            file_bytes: Some(256 << 20),
        }
    }

    fn setup(&self) -> Vec<(sys::Resource, u64, u64)> {
        let mut out = Vec::new();
        if let Some(secs) = self.cpu_secs {
            // Soft at the limit (SIGXCPU, which a job may catch), hard a second later.
            out.push((sys::Resource::Cpu, secs, secs.saturating_add(1)));
        }
        for (resource, value) in [
            (sys::Resource::AddressSpace, self.memory_bytes),
            (sys::Resource::OpenFiles, self.open_files),
            (sys::Resource::Processes, self.processes),
            (sys::Resource::FileSize, self.file_bytes),
        ] {
            if let Some(v) = value {
                out.push((resource, v, v));
            }
        }
        out
    }
}

/// The job's only writable directory inside a sandbox, at [`SANDBOX_WORKDIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workdir {
    /// A fresh tmpfs of this many bytes, gone when the job ends.
    Tmpfs(u64),
    /// A host directory, bound read-write; on a root node it is handed to the job's
    /// uid first, so what the job writes there is owned by that uid.
    Bind(PathBuf),
}

/// Confinement with bubblewrap (`bwrap`, Debian package `bubblewrap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Share the node's network namespace and allow every socket; without it the job
    /// has only a loopback of its own and may open only `AF_UNIX` sockets.
    pub network: bool,
    /// Extra host paths bound read-only: (host path, path inside).
    pub ro_binds: Vec<(PathBuf, PathBuf)>,
    pub workdir: Workdir,
    /// Size of each of the sandbox's other writable tmpfs mounts, `/tmp` and
    /// `/dev/shm`.
    pub scratch_bytes: u64,
    /// The bubblewrap binary (looked up on `PATH` when bare).
    pub bwrap: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            network: false,
            ro_binds: Vec::new(),
            workdir: Workdir::Tmpfs(64 << 20),
            scratch_bytes: 16 << 20,
            bwrap: PathBuf::from("bwrap"),
        }
    }
}

/// The shell that runs the sandbox's start shim (Debian's bash is essential; dash
/// cannot name a descriptor above 9).
const SHIM_SHELL: &str = "/bin/bash";

/// Read-only system directories every sandbox sees (those that exist).
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"];

/// One program to run.
#[derive(Debug, Clone)]
pub struct Job {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Vec<u8>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    limits: Limits,
    output_cap: usize,
    sandbox: Option<Sandbox>,
}

impl Job {
    /// A job with the standard limits, a 60 s timeout, 1 MiB of each output kept, no
    /// sandbox, and an environment of `PATH`, `LANG` and `HOME` only.
    pub fn new(program: impl Into<OsString>) -> Job {
        Job {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(60),
            limits: Limits::standard(),
            output_cap: 1 << 20,
            sandbox: None,
        }
    }
    pub fn arg(mut self, arg: impl Into<OsString>) -> Job {
        self.args.push(arg.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Adds one variable to the job's environment (the node's is never passed on).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Job {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Bytes written to the job's standard input, which is then closed.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Job {
        self.stdin = bytes.into();
        self
    }
    /// Working directory of an unsandboxed job (a sandboxed one works in
    /// [`SANDBOX_WORKDIR`]). On a root node it is handed to the job's uid first.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Job {
        self.cwd = Some(dir.into());
        self
    }
    /// Wall-clock limit from spawn; past it the process group is killed.
    pub fn timeout(mut self, timeout: Duration) -> Job {
        self.timeout = timeout;
        self
    }
    pub fn limits(mut self, limits: Limits) -> Job {
        self.limits = limits;
        self
    }
    /// Bytes of standard output, and of standard error, kept; the rest is read and
    /// dropped (so the job never blocks on a full pipe) and the outcome says so.
    pub fn output_cap(mut self, bytes: usize) -> Job {
        self.output_cap = bytes;
        self
    }
    pub fn sandbox(mut self, sandbox: Sandbox) -> Job {
        self.sandbox = Some(sandbox);
        self
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (`SIGXCPU`: its CPU limit; `SIGXFSZ`: its file size limit).
    Signal(i32),
    /// It ran past its timeout and its process group was killed.
    TimedOut,
    /// It was cancelled and its process group was killed.
    Cancelled,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
    fn from_status(status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(libc::SIGXCPU) => write!(f, "stopped at its CPU time limit (SIGXCPU)"),
            Exit::Signal(libc::SIGXFSZ) => write!(f, "stopped at its file size limit (SIGXFSZ)"),
            Exit::Signal(libc::SIGKILL) => write!(f, "killed (SIGKILL)"),
            Exit::Signal(sig) => write!(f, "killed by signal {sig}"),
            Exit::TimedOut => write!(f, "timed out; its process group was killed"),
            Exit::Cancelled => write!(f, "cancelled; its process group was killed"),
        }
    }
}

/// What a finished job left.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The job wrote more than [`Job::output_cap`] bytes to standard output.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub elapsed: Duration,
    /// The uid it ran as.
    pub uid: u32,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a job could not run (a job that ran and failed is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("the sandbox needs bubblewrap, and `{0}` was not found: install it (Debian: `apt install bubblewrap`)")]
    NoBubblewrap(String),
    #[error("the sandbox could not be set up: {0}")]
    Sandbox(String),
    #[error("all {UID_COUNT} job uids from {UID_BASE} are in use: too many jobs at once on this node")]
    NoUid,
    #[error("the job's work directory {path}: {source}")]
    Workdir { path: PathBuf, source: std::io::Error },
}

/// Cancels a running job from anywhere ([`Running::canceller`]).
#[derive(Debug, Clone)]
pub struct Canceller(Arc<Notify>);

impl Canceller {
    /// Kills the job's process group; its [`Running::wait`] returns
    /// [`Exit::Cancelled`]. Cancelling a finished job does nothing.
    pub fn cancel(&self) {
        self.0.notify_one();
    }
}

/// Where a root node's job uids are leased: one lock file per uid, `flock`ed for
/// the job's life, so node processes on one host never hand out the same uid.
const UID_LOCKS: &str = "/run/troupe/job-uids";

/// A uid held for one job (its lock file locked). On drop every process left under
/// the uid is killed, then the lock is released.
#[derive(Debug)]
struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

impl UidLease {
    /// The next uid no node process on this host holds, round robin from a place that
    /// differs per process. Whatever still runs under it (left by a node that
    /// crashed) is killed first.
    fn take() -> Result<UidLease, RunError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        use std::sync::atomic::AtomicU32;
        static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
        let dir = Path::new(UID_LOCKS);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RunError::Workdir { path: dir.to_path_buf(), source })?;
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(7919) % UID_COUNT,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        for _ in 0..UID_COUNT {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % UID_COUNT;
            let uid = UID_BASE + n;
            let path = dir.join(uid.to_string());
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| RunError::Workdir { path: path.clone(), source })?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                sys::kill_uid(uid);
                return Ok(UidLease { uid, _lock: lock });
            }
        }
        Err(RunError::NoUid)
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        sys::kill_uid(self.uid);
    }
}

/// A host directory lent to a job: handed to the job's uid (on a root node) for its
/// life and handed back to its owner after. Held open, so the path cannot be swapped
/// for a link meanwhile.
#[derive(Debug)]
struct LentDir {
    fd: std::os::fd::OwnedFd,
    owner: Option<(u32, u32)>,
    path: PathBuf,
}

impl LentDir {
    fn lend(path: &Path, ids: Option<(u32, u32)>) -> Result<LentDir, RunError> {
        let wrap = |source| RunError::Workdir { path: path.to_path_buf(), source };
        let fd = sys::open_dir(path).map_err(wrap)?;
        let owner = match ids {
            Some((uid, gid)) => {
                let before = sys::owner(&fd).map_err(wrap)?;
                sys::chown_fd(&fd, uid, gid).map_err(wrap)?;
                Some(before)
            }
            None => None,
        };
        Ok(LentDir { fd, owner, path: path.to_path_buf() })
    }
}

impl Drop for LentDir {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.owner
            && let Err(e) = sys::chown_fd(&self.fd, uid, gid)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not hand a job's directory back");
        }
    }
}

/// A spawned job.
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    pgid: u32,
    started: Instant,
    timeout: Duration,
    cancel: Arc<Notify>,
    stdout: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    stderr: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    /// The read end of the start marker (a sandboxed job only): the sandbox's shim
    /// writes one byte to it right before it executes the job, so a sandbox that
    /// failed to start is told apart from a job that failed.
    marker: Option<std::fs::File>,
    uid: u32,
    done: bool,
    // Dropped in this order: every process of the uid killed, then the directory
    // handed back.
    _lease: Option<UidLease>,
    _lent: Option<LentDir>,
}

/// Runs `job` to the end.
pub async fn run(job: Job) -> Result<Outcome, RunError> {
    spawn(job)?.wait().await
}

/// Starts `job`. Call from a tokio runtime.
pub fn spawn(job: Job) -> Result<Running, RunError> {
    let lease = if sys::is_root() { Some(UidLease::take()?) } else { None };
    let ids = lease.as_ref().map(|l| (l.uid, l.uid));
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = ids.map_or_else(|| unsafe { libc::getuid() }, |(u, _)| u);
    let mut setup = sys::ChildSetup { rlimits: job.limits.setup(), ids, keep_fds: Vec::new(), chdir_fd: None };
    let mut lent: Option<LentDir> = None;
    let mut marker = None;
    // Kept alive until the child has been spawned (it holds its own copies).
    let mut child_fds: Vec<std::fs::File> = Vec::new();
    let (mut command, shown) = match &job.sandbox {
        None => {
            let mut command = tokio::process::Command::new(&job.program);
            command.args(&job.args);
            if let Some(dir) = &job.cwd {
                let dir = LentDir::lend(dir, ids)?;
                setup.chdir_fd = Some(dir.fd.as_raw_fd());
                lent = Some(dir);
            }
            let home = job.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
            base_env(&mut command, home.as_os_str(), &job.env);
            (command, job.program.to_string_lossy().into_owned())
        }
        Some(sandbox) => {
            let bwrap = find_program(&sandbox.bwrap)
                .ok_or_else(|| RunError::NoBubblewrap(sandbox.bwrap.display().to_string()))?;
            let mut command = tokio::process::Command::new(bwrap);
            let mut add = |args: &[&OsStr]| {
                command.args(args);
            };
            add(&[
                "--die-with-parent".as_ref(),
                "--new-session".as_ref(),
                "--unshare-all".as_ref(),
                // No nested user namespace (the kernel enforces it, beside seccomp).
                "--unshare-user".as_ref(),
                "--disable-userns".as_ref(),
            ]);
            if sandbox.network {
                add(&["--share-net".as_ref()]);
            }
            for dir in SYSTEM_DIRS {
                add(&["--ro-bind-try".as_ref(), dir.as_ref(), dir.as_ref()]);
            }
            // Every writable place is a sized tmpfs (or the bound work directory).
            let scratch = sandbox.scratch_bytes.to_string();
            add(&[
                "--proc".as_ref(),
                "/proc".as_ref(),
                "--dev".as_ref(),
                "/dev".as_ref(),
                "--size".as_ref(),
                scratch.as_ref(),
                "--tmpfs".as_ref(),
                "/dev/shm".as_ref(),
                "--size".as_ref(),
                scratch.as_ref(),
                "--tmpfs".as_ref(),
                "/tmp".as_ref(),
            ]);
            for (host, inside) in &sandbox.ro_binds {
                add(&["--ro-bind".as_ref(), host.as_os_str(), inside.as_os_str()]);
            }
            match &sandbox.workdir {
                Workdir::Tmpfs(bytes) => {
                    let size = bytes.to_string();
                    add(&["--size".as_ref(), size.as_ref(), "--tmpfs".as_ref(), SANDBOX_WORKDIR.as_ref()]);
                }
                Workdir::Bind(path) => {
                    // Bound by descriptor: the path cannot be swapped for a link
                    // between the hand-over and the mount.
                    let dir = LentDir::lend(path, ids)?;
                    let fd = dir.fd.as_raw_fd().to_string();
                    add(&["--bind-fd".as_ref(), fd.as_ref(), SANDBOX_WORKDIR.as_ref()]);
                    setup.keep_fds.push(dir.fd.as_raw_fd());
                    lent = Some(dir);
                }
            }
            add(&["--chdir".as_ref(), SANDBOX_WORKDIR.as_ref(), "--clearenv".as_ref()]);
            for (key, value) in sandbox_env(&job.env) {
                add(&["--setenv".as_ref(), key.as_os_str(), value.as_os_str()]);
            }
            let programs = seccomp::programs(sandbox.network).map_err(RunError::Sandbox)?;
            for program in programs {
                let file = sys::memfd(c"troupe-seccomp", &program)
                    .map_err(|e| RunError::Sandbox(format!("seccomp filter: {e}")))?;
                let fd = file.as_raw_fd().to_string();
                add(&["--add-seccomp-fd".as_ref(), fd.as_ref()]);
                setup.keep_fds.push(file.as_raw_fd());
                child_fds.push(file);
            }
            let (read, write) = sys::pipe().map_err(|e| RunError::Sandbox(format!("start marker: {e}")))?;
            let fd = write.as_raw_fd();
            setup.keep_fds.push(fd);
            child_fds.push(write);
            marker = Some(read);
            // The shim: mark the start, close the marker, become the job.
            let shim = format!("printf . >&{fd} && exec {fd}>&- && exec \"$0\" \"$@\"");
            add(&["--".as_ref(), SHIM_SHELL.as_ref(), "-c".as_ref(), shim.as_ref(), job.program.as_os_str()]);
            command.args(&job.args);
            // bubblewrap itself runs with no environment of the node's.
            command.env_clear();
            (command, job.program.to_string_lossy().into_owned())
        }
    };
    command
        .stdin(if job.stdin.is_empty() { Stdio::null() } else { Stdio::piped() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // SAFETY: `apply` makes only async-signal-safe system calls and does not allocate.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    let mut child = command.spawn().map_err(|source| RunError::Spawn { program: shown, source })?;
    drop(child_fds);
    let pgid = child.id().unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = job.stdin;
        tokio::spawn(async move {
            // A job that exits without reading its input is not an error of ours.
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    let cap = job.output_cap;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    Ok(Running {
        child,
        pgid,
        started: Instant::now(),
        timeout: job.timeout,
        cancel: Arc::new(Notify::new()),
        stdout: tokio::spawn(read_capped(stdout, cap)),
        stderr: tokio::spawn(read_capped(stderr, cap)),
        marker,
        uid,
        done: false,
        _lease: lease,
        _lent: lent,
    })
}

impl Running {
    /// The pid of the job's first process (bubblewrap's, in a sandbox), which is also
    /// its process group id.
    pub fn pid(&self) -> u32 {
        self.pgid
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Waits for the job to end, by itself, at its timeout or by cancellation; then
    /// kills whatever is left of its process group and collects its output.
    pub async fn wait(mut self) -> Result<Outcome, RunError> {
        let deadline = tokio::time::sleep(self.timeout);
        let exit = tokio::select! {
            status = self.child.wait() => match status {
                Ok(status) => Exit::from_status(status),
                Err(source) => {
                    sys::kill_group(self.pgid);
                    return Err(RunError::Spawn { program: "the job".into(), source });
                }
            },
            () = deadline => Exit::TimedOut,
            () = self.cancel.notified() => Exit::Cancelled,
        };
        if matches!(exit, Exit::TimedOut | Exit::Cancelled) {
            // Not reaped yet, so the group id cannot have been reused.
            sys::kill_group(self.pgid);
            let _ = self.child.wait().await;
        }
        // Stragglers the job left (a background process, one that called setsid):
        // on a root node every process of the job's own uid; otherwise its group.
        match &self._lease {
            Some(lease) => sys::kill_uid(lease.uid),
            None => sys::kill_group(self.pgid),
        }
        self.done = true;
        // bubblewrap passes a job killed by a signal on as exit code 128 + signal.
        let exit = match exit {
            Exit::Code(code) if self.marker.is_some() && (129..=192).contains(&code) => Exit::Signal(code - 128),
            other => other,
        };
        let elapsed = self.started.elapsed();
        // Output pipes close when the last process holding them is gone; a process
        // that left the group (its own setsid, unsandboxed) may still hold one.
        let grace = Duration::from_secs(2);
        let (stdout, stdout_truncated) = collect(&mut self.stdout, grace).await;
        let (stderr, stderr_truncated) = collect(&mut self.stderr, grace).await;
        // A sandbox that never reached the job (a bind source missing, namespaces
        // refused): bubblewrap says why on standard error.
        if let Some(marker) = self.marker.as_mut()
            && !matches!(exit, Exit::TimedOut | Exit::Cancelled)
        {
            let mut byte = [0u8; 1];
            if !matches!(marker.read(&mut byte), Ok(1)) {
                let why = String::from_utf8_lossy(&stderr).trim().to_string();
                return Err(RunError::Sandbox(if why.is_empty() { format!("bubblewrap {exit}") } else { why }));
            }
        }
        Ok(Outcome { exit, stdout, stderr, stdout_truncated, stderr_truncated, elapsed, uid: self.uid })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            sys::kill_group(self.pgid);
        }
    }
}

async fn collect(task: &mut tokio::task::JoinHandle<(Vec<u8>, bool)>, grace: Duration) -> (Vec<u8>, bool) {
    match tokio::time::timeout(grace, &mut *task).await {
        Ok(Ok(out)) => out,
        Ok(Err(_)) => (Vec::new(), false),
        Err(_) => {
            task.abort();
            (Vec::new(), false)
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(source: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut source) = source else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

fn base_env(command: &mut tokio::process::Command, home: &OsStr, env: &[(OsString, OsString)]) {
    command.env_clear();
    command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    command.env("LANG", "C.UTF-8");
    command.env("HOME", home);
    for (k, v) in env {
        command.env(k, v);
    }
}

fn sandbox_env(env: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOME".into(), SANDBOX_WORKDIR.into()),
    ];
    out.extend(env.iter().cloned());
    out
}

/// `program` itself when it names a path, else its first match on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Whether a sandbox can run here: bubblewrap is installed and may create its
/// namespaces. Runs `true` inside a default sandbox.
pub async fn sandbox_check() -> Result<(), RunError> {
    let outcome = run(Job::new("true").sandbox(Sandbox::default()).timeout(Duration::from_secs(30))).await?;
    if outcome.exit.success() {
        Ok(())
    } else {
        Err(RunError::Sandbox(format!("`true` {} in the sandbox: {}", outcome.exit, outcome.stderr_text().trim())))
    }
}
