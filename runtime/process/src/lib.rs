//! troupe's process runner: what an actor uses to run a program (an agent's tool, a
//! video system's ffmpeg) without letting it take the node down.
//!
//! Every [`Job`] runs in its own session and process group, so a timeout or a
//! cancellation kills the whole group, grandchildren included; it runs under resource
//! limits ([`Limits`]: CPU seconds, address space, open files, processes, file size),
//! with its standard output and error capped ([`Job::output_cap`]) and an environment
//! it was given, not the node's. It dies with the node (`PR_SET_PDEATHSIG`).
//!
//! A [`Sandbox`] adds bubblewrap: new user, mount, PID, IPC, UTS and network
//! namespaces (no network unless granted), the system directories bound read-only, a
//! tmpfs (or one bound host directory) as the only writable work directory, and a
//! seccomp filter ([`seccomp`](crate) module: mounts, namespaces, ptrace, BPF, keyrings,
//! io_uring and, without the network grant, every socket but `AF_UNIX` refused).
//!
//! **Who the job runs as.** A node often runs as root, and neither the process limit
//! (`RLIMIT_NPROC`) nor file permissions bind root. So when the node is root, every
//! job runs under a uid of its own, leased from [`UID_BASE`]… for its lifetime: it
//! cannot read root's files (`/etc/shadow`), cannot signal other jobs, and its process
//! limit counts only its own processes. A node that is not root cannot change uid: its
//! jobs run as the node's user, and the process limit then counts every process and
//! thread of that user (set it above what the node itself runs).
//!
//! Spawn from a tokio runtime's worker thread (an actor's handler is one), not from
//! `spawn_blocking`: the job is killed when the thread that spawned it exits.

mod seccomp;
mod sys;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
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
    /// The bubblewrap binary (looked up on `PATH` when bare).
    pub bwrap: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            network: false,
            ro_binds: Vec::new(),
            workdir: Workdir::Tmpfs(64 << 20),
            bwrap: PathBuf::from("bwrap"),
        }
    }
}

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

/// Uids leased to running jobs on a root node.
static UIDS: uid_pool::Pool = uid_pool::Pool::new();

mod uid_pool {
    //! The lease pool of job uids.
    use super::{BTreeSet, UID_BASE, UID_COUNT};
    use std::sync::Mutex;

    pub(crate) struct Pool {
        state: Mutex<(u32, BTreeSet<u32>)>,
    }

    impl Pool {
        pub(crate) const fn new() -> Pool {
            Pool { state: Mutex::new((0, BTreeSet::new())) }
        }
        /// The next free uid after the last one leased (round robin, so a uid is not
        /// reused right after its job ended).
        pub(crate) fn lease(&self) -> Option<u32> {
            let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (next, used) = &mut *guard;
            for _ in 0..UID_COUNT {
                let uid = UID_BASE + *next;
                *next = (*next + 1) % UID_COUNT;
                if used.insert(uid) {
                    return Some(uid);
                }
            }
            None
        }
        pub(crate) fn release(&self, uid: u32) {
            let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
            guard.1.remove(&uid);
        }
    }
}

/// A uid held for one job; back in the pool on drop.
#[derive(Debug)]
struct UidLease(u32);

impl Drop for UidLease {
    fn drop(&mut self) {
        UIDS.release(self.0);
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
    /// Run under bubblewrap (whose own failures are errors, not outcomes).
    sandboxed: bool,
    uid: u32,
    done: bool,
    _lease: Option<UidLease>,
}

/// Runs `job` to the end.
pub async fn run(job: Job) -> Result<Outcome, RunError> {
    spawn(job)?.wait().await
}

/// Starts `job`. Call from a tokio runtime.
pub fn spawn(job: Job) -> Result<Running, RunError> {
    let lease = if sys::is_root() { Some(UidLease(UIDS.lease().ok_or(RunError::NoUid)?)) } else { None };
    let ids = lease.as_ref().map(|l| (l.0, l.0));
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = ids.map_or_else(|| unsafe { libc::getuid() }, |(u, _)| u);
    let mut setup = sys::ChildSetup { rlimits: job.limits.setup(), ids, keep_fds: Vec::new() };
    // Kept alive until the child has been spawned (it holds its own copies).
    let mut child_fds: Vec<std::fs::File> = Vec::new();
    let (mut command, shown) = match &job.sandbox {
        None => {
            let mut command = tokio::process::Command::new(&job.program);
            command.args(&job.args);
            if let Some(dir) = &job.cwd {
                hand_over(dir, ids)?;
                command.current_dir(dir);
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
            add(&["--die-with-parent".as_ref(), "--new-session".as_ref(), "--unshare-all".as_ref()]);
            if sandbox.network {
                add(&["--share-net".as_ref()]);
            }
            for dir in SYSTEM_DIRS {
                add(&["--ro-bind-try".as_ref(), dir.as_ref(), dir.as_ref()]);
            }
            add(&[
                "--proc".as_ref(),
                "/proc".as_ref(),
                "--dev".as_ref(),
                "/dev".as_ref(),
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
                    hand_over(path, ids)?;
                    add(&["--bind".as_ref(), path.as_os_str(), SANDBOX_WORKDIR.as_ref()]);
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
            add(&["--".as_ref(), job.program.as_os_str()]);
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
        sandboxed: job.sandbox.is_some(),
        uid,
        done: false,
        _lease: lease,
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
        // Stragglers (a background process the job left) die with the group.
        sys::kill_group(self.pgid);
        if matches!(exit, Exit::TimedOut | Exit::Cancelled) {
            let _ = self.child.wait().await;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        // Output pipes close when the last process holding them is gone; a process
        // that left the group (its own setsid, unsandboxed) may still hold one.
        let grace = Duration::from_secs(2);
        let (stdout, stdout_truncated) = collect(&mut self.stdout, grace).await;
        let (stderr, stderr_truncated) = collect(&mut self.stderr, grace).await;
        // bubblewrap reports a sandbox it could not set up (a bind source missing,
        // namespaces refused) on standard error, prefixed `bwrap: `, and exits 1.
        if self.sandboxed && exit == Exit::Code(1) && stderr.starts_with(b"bwrap: ") {
            let why = String::from_utf8_lossy(&stderr).trim().to_string();
            return Err(RunError::Sandbox(why));
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

/// Gives a job's work directory to the job's own uid, when it has one.
fn hand_over(dir: &Path, ids: Option<(u32, u32)>) -> Result<(), RunError> {
    match ids {
        Some((uid, gid)) => {
            sys::chown(dir, uid, gid).map_err(|source| RunError::Workdir { path: dir.to_path_buf(), source })
        }
        None => Ok(()),
    }
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
