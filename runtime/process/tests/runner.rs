//! The process runner on real processes: limits, timeouts, cancellation, output caps,
//! and the bubblewrap sandbox refusing what it must (one test each). `.ci/run`
//! installs bubblewrap; these tests fail, not skip, without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};
use troupe_process::{Exit, Job, Limits, RunError, Sandbox, Workdir, run, spawn};

/// A marker no other process on the machine has in its command line, so a test can
/// look for leftovers of its own job in /proc.
fn marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("1000.{}{:04}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Pids of live processes whose command line contains `marker`.
fn alive_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie waiting for its reaper is already dead.
        let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// Waits (bounded) until no process carries `marker`; the kill is asynchronous.
async fn assert_all_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = alive_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of the job outlived it: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn sh(script: &str) -> Job {
    Job::new("/bin/sh").arg("-c").arg(script)
}

#[tokio::test]
async fn runs_with_its_own_environment_and_stdin() {
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TROUPE_NODE_SECRET", "must-not-leak") };
    let out = run(sh("cat; echo; echo \"[$TROUPE_NODE_SECRET][$GREETING]\"; exit 3")
        .env("GREETING", "hello")
        .stdin("from stdin"))
    .await
    .unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.stdout_text(), "from stdin\n[][hello]\n");
    assert!(!out.stdout_truncated);
}

#[tokio::test]
async fn a_missing_program_says_which() {
    let err = run(Job::new("/nonexistent/tool")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RunError::Spawn { .. }), "{text}");
    assert!(text.contains("/nonexistent/tool") && text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let m = marker();
    let started = Instant::now();
    let out = run(sh(&format!("sleep {m} & sleep {m}; echo never")).timeout(Duration::from_millis(500))).await.unwrap();
    assert_eq!(out.exit, Exit::TimedOut);
    assert!(out.stdout.is_empty());
    assert!(started.elapsed() < Duration::from_secs(30));
    // The background sleep (a grandchild) died with the group.
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn a_finished_job_leaves_no_stragglers() {
    let m = marker();
    let out = run(sh(&format!("sleep {m} & echo started"))).await.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.stdout_text(), "started\n");
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn cancel_kills_the_job() {
    let m = marker();
    let running = spawn(sh(&format!("sleep {m}"))).unwrap();
    let cancel = running.canceller();
    let waiter = tokio::spawn(running.wait());
    // Cancel once the job is surely running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_with(&m).is_empty() {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let out = waiter.await.unwrap().unwrap();
    assert_eq!(out.exit, Exit::Cancelled);
    assert!(out.exit.to_string().contains("cancelled"));
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn dropping_a_running_job_kills_it() {
    let m = marker();
    let running = spawn(sh(&format!("sleep {m}"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_with(&m).is_empty() {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(running);
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn output_is_capped_and_the_job_is_not_blocked() {
    // 8 MB through a pipe of 64 KiB: the runner must keep reading past the cap.
    let out = run(Job::new("head").args(["-c", "8000000", "/dev/zero"]).output_cap(1000)).await.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated);
    assert!(!out.stderr_truncated);
}

#[tokio::test]
async fn cpu_limit_stops_a_spinning_job() {
    let out = run(sh("while :; do :; done")
        .limits(Limits { cpu_secs: Some(1), ..Limits::standard() })
        .timeout(Duration::from_secs(60)))
    .await
    .unwrap();
    // SIGXCPU at the soft limit (sh does not catch it).
    assert_eq!(out.exit, Exit::Signal(libc::SIGXCPU), "{}", out.exit);
    assert!(out.exit.to_string().contains("CPU time limit"));
}

#[tokio::test]
async fn memory_limit_fails_a_large_allocation() {
    let out = run(Job::new("python3")
        .args(["-c", "b = bytearray(512 << 20); print('allocated')"])
        .limits(Limits { memory_bytes: Some(128 << 20), ..Limits::standard() }))
    .await
    .unwrap();
    assert_eq!(out.exit, Exit::Code(1), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("MemoryError"), "{}", out.stderr_text());
    assert!(!out.stdout_text().contains("allocated"));
}

#[tokio::test]
async fn file_size_limit_stops_a_large_write() {
    let dir = tempdir();
    let out = run(sh("exec head -c 1000000 /dev/zero > big")
        .cwd(&dir)
        .limits(Limits { file_bytes: Some(4096), ..Limits::standard() }))
    .await
    .unwrap();
    assert_eq!(out.exit, Exit::Signal(libc::SIGXFSZ), "{}", out.exit);
    assert!(std::fs::metadata(dir.join("big")).unwrap().len() <= 4096);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("troupe-process-{}", marker()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- The sandbox: one refusal per test. ----

#[tokio::test]
async fn sandbox_runs_a_job() {
    troupe_process::sandbox_check().await.unwrap();
    let out = run(sh("echo hi from $HOME; id -u").sandbox(Sandbox::default())).await.unwrap();
    assert_eq!(out.exit, Exit::Code(0), "{}", out.stderr_text());
    let text = out.stdout_text();
    assert!(text.starts_with("hi from /work\n"), "{text}");
    // A root node runs each job under a uid of its own, never root.
    if root() {
        assert_ne!(out.uid, 0);
        assert_eq!(text.lines().nth(1), Some(out.uid.to_string().as_str()));
    }
}

#[tokio::test]
async fn sandbox_refuses_to_read_etc_shadow() {
    let out = run(Job::new("cat").arg("/etc/shadow").sandbox(Sandbox::default())).await.unwrap();
    assert_ne!(out.exit, Exit::Code(0));
    assert!(out.stdout.is_empty(), "it read: {}", out.stdout_text());
    assert!(out.stderr_text().contains("Permission denied"), "{}", out.stderr_text());
}

const OPEN_SOCKET: &str = "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
print('opened')";

#[tokio::test]
async fn sandbox_refuses_to_open_a_socket() {
    let out = run(Job::new("python3").args(["-c", OPEN_SOCKET]).sandbox(Sandbox::default())).await.unwrap();
    assert_eq!(out.exit, Exit::Code(1));
    assert!(!out.stdout_text().contains("opened"));
    let err = out.stderr_text();
    assert!(err.contains("PermissionError") && err.contains("Operation not permitted"), "{err}");
    // Unix sockets stay allowed, and the network grant allows the rest.
    let unix = run(Job::new("python3")
        .args(["-c", "import socket; socket.socket(socket.AF_UNIX); print('unix')"])
        .sandbox(Sandbox::default()))
    .await
    .unwrap();
    assert_eq!(unix.stdout_text(), "unix\n", "{}", unix.stderr_text());
    let granted =
        run(Job::new("python3").args(["-c", OPEN_SOCKET]).sandbox(Sandbox { network: true, ..Sandbox::default() }))
            .await
            .unwrap();
    assert_eq!(granted.stdout_text(), "opened\n", "{}", granted.stderr_text());
}

#[tokio::test]
async fn sandbox_contains_a_fork_bomb() {
    // The process limit binds the job's own uid, which only a root node gives it; as
    // any other user it would count that user's every thread (and root is what CI
    // and the nodes run as).
    assert!(root(), "the process-limit guarantees need a root node: run the tests as root, as CI does");
    let m = marker();
    let started = Instant::now();
    // Each round forks two more sleepers that fork again: unbounded without a limit.
    let bomb = format!("b() {{ sleep {m} & b & b; }}; b; wait");
    let out = run(Job::new("bash")
        .args(["-c", &bomb])
        .limits(Limits { processes: Some(32), ..Limits::standard() })
        .timeout(Duration::from_secs(5))
        .sandbox(Sandbox::default()))
    .await
    .unwrap();
    assert_eq!(out.exit, Exit::TimedOut, "{}", out.stderr_text());
    assert!(out.stderr_text().contains("Resource temporarily unavailable"), "{}", out.stderr_text());
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn sandbox_refuses_writes_outside_its_workdir() {
    let out = run(sh("echo x > /usr/troupe-escape; echo x > /etc/troupe-escape; echo kept > /work/f && cat /work/f")
        .sandbox(Sandbox::default()))
    .await
    .unwrap();
    let err = out.stderr_text();
    assert_eq!(err.matches("Read-only file system").count(), 2, "{err}");
    assert_eq!(out.stdout_text(), "kept\n");
    assert!(!std::path::Path::new("/usr/troupe-escape").exists());
    assert!(!std::path::Path::new("/etc/troupe-escape").exists());
    // A bound work directory is where its files land on the host.
    let dir = tempdir();
    let out = run(sh("echo result > /work/out.txt")
        .sandbox(Sandbox { workdir: Workdir::Bind(dir.clone()), ..Sandbox::default() }))
    .await
    .unwrap();
    assert_eq!(out.exit, Exit::Code(0), "{}", out.stderr_text());
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), "result\n");
    // The directory was lent to the job's uid and is handed back after.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&dir).unwrap();
    // SAFETY: getuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    if root() {
        assert_eq!(std::fs::metadata(dir.join("out.txt")).unwrap().uid(), out.uid);
    }
}

#[tokio::test]
async fn a_symlinked_work_directory_is_refused() {
    let dir = tempdir();
    let link = std::path::PathBuf::from(format!("{}-link", dir.display()));
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    for job in [
        sh("true").sandbox(Sandbox { workdir: Workdir::Bind(link.clone()), ..Sandbox::default() }),
        sh("true").cwd(&link),
    ] {
        let err = run(job).await.unwrap_err();
        assert!(matches!(err, RunError::Workdir { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link is refused"), "{err}");
    }
}

#[tokio::test]
async fn a_straggler_that_left_the_group_is_killed() {
    assert!(root(), "killing by uid needs a root node: run the tests as root, as CI does");
    let m = marker();
    // setsid: the straggler leaves the job's process group and session.
    let out = run(sh(&format!("setsid sleep {m} & echo started"))).await.unwrap();
    assert_eq!(out.stdout_text(), "started\n");
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn the_nodes_open_files_do_not_reach_the_job() {
    let dir = tempdir();
    let secret = dir.join("secret");
    std::fs::write(&secret, "node-secret").unwrap();
    let c = std::ffi::CString::new(secret.to_str().unwrap()).unwrap();
    // Opened without O_CLOEXEC, as a careless library or a parent process would.
    // SAFETY: open(2) with a valid C string; closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(fd > 2);
    let script = format!("cat <&{fd}");
    for job in
        [Job::new("bash").args(["-c", &script]), Job::new("bash").args(["-c", &script]).sandbox(Sandbox::default())]
    {
        let out = run(job).await.unwrap();
        assert!(!out.stdout_text().contains("node-secret"), "the job read the node's descriptor");
        assert!(out.stderr_text().contains("Bad file descriptor"), "{}", out.stderr_text());
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[tokio::test]
async fn sandbox_scratch_space_is_bounded() {
    for place in ["/tmp", "/dev/shm"] {
        let out = run(sh(&format!("head -c 64000000 /dev/zero > {place}/big"))
            .sandbox(Sandbox { scratch_bytes: 16 << 20, ..Sandbox::default() }))
        .await
        .unwrap();
        assert_ne!(out.exit, Exit::Code(0));
        assert!(out.stderr_text().contains("No space left on device"), "{place}: {}", out.stderr_text());
    }
}

#[tokio::test]
async fn a_job_cannot_pass_itself_off_as_a_sandbox_failure() {
    let out = run(sh("echo 'bwrap: Can not mount tmpfs' >&2; exit 1").sandbox(Sandbox::default())).await.unwrap();
    assert_eq!(out.exit, Exit::Code(1));
    assert!(out.stderr_text().starts_with("bwrap: "));
}

#[tokio::test]
async fn a_sandboxed_job_killed_by_a_signal_is_reported_so() {
    let out = run(sh("kill -XCPU $$").sandbox(Sandbox::default())).await.unwrap();
    assert_eq!(out.exit, Exit::Signal(libc::SIGXCPU), "{}", out.exit);
}

/// clone(CLONE_NEWUSER | SIGCHLD) through the raw system call: EPERM (1) from the
/// filter; with the filter gone, bubblewrap's --disable-userns would answer ENOSPC.
const CLONE_NEWUSER: &str = "import ctypes, os\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
nr = {'x86_64': 56, 'aarch64': 220}[os.uname().machine]\n\
r = libc.syscall(nr, 0x10000000 | 17, 0, 0, 0, 0)\n\
if r == 0: os._exit(0)\n\
print(r, ctypes.get_errno())";

#[tokio::test]
async fn sandbox_refuses_clone_into_a_new_user_namespace() {
    let out = run(Job::new("python3").args(["-c", CLONE_NEWUSER]).sandbox(Sandbox::default())).await.unwrap();
    assert_eq!(out.stdout_text(), format!("-1 {}\n", libc::EPERM), "{}", out.stderr_text());
}

#[tokio::test]
async fn sandbox_kills_a_job_past_its_timeout() {
    let m = marker();
    let out =
        run(sh(&format!("sleep {m} & sleep {m}")).timeout(Duration::from_millis(500)).sandbox(Sandbox::default()))
            .await
            .unwrap();
    assert_eq!(out.exit, Exit::TimedOut);
    assert_all_gone(&m).await;
}

#[tokio::test]
async fn sandbox_refuses_new_namespaces() {
    let out =
        run(Job::new("unshare").args(["--user", "--map-root-user", "true"]).sandbox(Sandbox::default())).await.unwrap();
    assert_ne!(out.exit, Exit::Code(0));
    assert!(out.stderr_text().contains("Operation not permitted"), "{}", out.stderr_text());
}

#[tokio::test]
async fn sandbox_without_bubblewrap_says_how_to_install_it() {
    let err = run(Job::new("true").sandbox(Sandbox { bwrap: "/nonexistent/bwrap".into(), ..Sandbox::default() }))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::NoBubblewrap(_)));
    assert!(err.to_string().contains("apt install bubblewrap"), "{err}");
}

#[tokio::test]
async fn sandbox_setup_failure_is_an_error_not_an_outcome() {
    // A read-only bind of a path that does not exist: bubblewrap refuses to start.
    let err = run(Job::new("true")
        .sandbox(Sandbox { ro_binds: vec![("/nonexistent/input".into(), "/input".into())], ..Sandbox::default() }))
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::Sandbox(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/input"), "{err}");
}
