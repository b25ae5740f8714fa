//! Drives the real `troupe top` in tmux the way a person would: a real 3-node cluster,
//! keys sent with `send-keys`, the screen read back with `capture-pane`. Checks the
//! nodes and their states, an actor found by moving and expanding, a killed node
//! shown as DOWN while the screen keeps answering, a partition seen from both sides,
//! and a clean exit on `q`.
//!
//! Needs tmux (`apt-get install -y tmux`); without it the test fails and says so.
//! Every wait is bounded; the tmux server has its own socket and is killed on drop.

mod common;

use common::{BIN, Options, TestCluster};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a key may take to show on screen; generous, the machine is shared.
const WAIT: Duration = Duration::from_secs(10);

struct Tmux {
    socket: String,
    conf: String,
}

impl Tmux {
    /// Fails at once, before any cluster starts, if tmux is missing.
    fn require() {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "tmux is not installed; this test drives `troupe top` in it: install it (apt-get install -y tmux)"
            ),
        }
    }

    fn start(dir: &Path, command: &str) -> Tmux {
        // No status line, so the pane is the whole 100x30 window; keep a pane whose
        // program exited so its exit status can be read.
        let conf = dir.join("tmux.conf");
        std::fs::write(&conf, "set -g status off\nset -g remain-on-exit on\n").expect("write tmux.conf");
        let t = Tmux { socket: format!("troupe-top-{}", std::process::id()), conf: conf.display().to_string() };
        let out = t.tmux(&["new-session", "-d", "-s", "top", "-x", "100", "-y", "30", command]);
        assert!(out.status.success(), "tmux new-session failed: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", &self.conf])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success(), "send-keys {keys:?}");
    }

    /// Waits until `ok` holds for the screen; fails showing the last screen.
    fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pane(&self, format: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", "top", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // tmux leaves its socket file behind after kill-server; one per run would pile up.
        let socket = self.pane("#{socket_path}");
        let _ = self.tmux(&["kill-server"]);
        if !socket.is_empty() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The screen line of node `node` in the nodes panel.
fn node_row<'a>(screen: &'a str, node: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.starts_with(&format!("│▶ {node} ")) || l.starts_with(&format!("│  {node} ")))
}

/// How `row` sees `col` in the membership columns (`up`, `susp`, `DOWN`, `-`).
fn member_cell(screen: &str, row: &str, col: &str) -> Option<String> {
    let header = screen.lines().find(|l| l.contains("NODE") && l.contains("MSG/S"))?;
    let from = header.find("MSG/S")?;
    let byte = from + header[from..].find(&format!(" {col} "))? + 1;
    let at = header[..byte].chars().count();
    let cells: String = node_row(screen, row)?.chars().skip(at).take(4).collect();
    Some(cells.trim().to_string())
}

/// The node whose tree is shown (from the tree panel's title).
fn tree_node(screen: &str) -> Option<String> {
    screen.lines().find_map(|l| l.split("Tree ").nth(1)).and_then(|r| r.split(' ').next()).map(str::to_string)
}

fn selected_path(screen: &str) -> Option<&str> {
    screen.lines().find_map(|l| l.split("path     ").nth(1)).map(|p| p.split([' ', '│']).next().unwrap_or(""))
}

/// Moves the tree cursor down until the details pane shows `path` (at most `max` rows).
fn select(t: &Tmux, path: &str, max: usize) {
    for _ in 0..max {
        let s = t.screen();
        if selected_path(&s) == Some(path) {
            return;
        }
        let before = selected_path(&s).map(str::to_string);
        t.keys(&["j"]);
        t.wait("the cursor to move", WAIT, |s| selected_path(s).map(str::to_string) != before);
    }
    panic!("never reached {path}; the screen:\n{}", t.screen());
}

#[test]
fn top_in_tmux_shows_the_cluster_a_dead_node_and_a_partition() {
    Tmux::require();
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(30));
    let file = c.cluster_file();
    let put = Command::new(BIN)
        .args(["ask", "/kv/store/hello", r#"{"Put":{"value":"world"}}"#, "--cluster"])
        .arg(&file)
        .output()
        .expect("troupe ask");
    assert!(put.status.success(), "troupe ask failed: {}", String::from_utf8_lossy(&put.stderr));

    // The shell records top's exit status: tmux's own `pane_dead_status` is sometimes
    // never filled in when the pane's output closes before the process is reaped.
    let status_file = c.dir.join("top.status");
    let t = Tmux::start(
        &c.dir,
        &format!("'{BIN}' top --cluster '{}' --refresh-ms 500; echo $? > '{}'", file.display(), status_file.display()),
    );
    let s = t.wait("all three nodes UP", Duration::from_secs(30), |s| {
        ["n1", "n2", "n3"].iter().all(|n| node_row(s, n).is_some_and(|r| r.contains(" UP ")))
    });
    assert!(s.contains("3/3 nodes up"), "{s}");
    for n in ["n1", "n2", "n3"] {
        assert_eq!(member_cell(&s, "n1", n).as_deref(), Some("up"), "n1 sees {n} alive:\n{s}");
    }

    // Find the node that holds `hello` (its store kind has one entity), open the kind
    // there and select the entity.
    let mut holder = None;
    for _ in 0..3 {
        let s = t.wait("a tree", WAIT, |s| s.contains("▾ /kv"));
        if s.contains("▸ store (1)") {
            holder = tree_node(&s);
            break;
        }
        let shown = tree_node(&s);
        t.keys(&["n"]);
        t.wait("the next node's tree", WAIT, |s| tree_node(s) != shown);
    }
    let holder = holder.unwrap_or_else(|| panic!("no node shows /kv/store/hello:\n{}", t.screen()));
    select(&t, "/kv/store", 10);
    t.keys(&["Enter"]);
    t.wait("hello under the open store", WAIT, |s| s.contains("▾ store (1)") && s.contains(" hello"));
    select(&t, "/kv/store/hello", 5);
    let s = t.wait("hello's details", WAIT, |s| s.contains("kind     store · running"));
    assert!(s.contains("mailbox  0/1024"), "{s}");

    // Kill a node the screen is not showing; it turns DOWN, the rest stays live.
    let victim = if holder == "n2" { "n3" } else { "n2" };
    c.kill(victim);
    let killed = Instant::now();
    let s = t.wait(&format!("{victim} DOWN"), Duration::from_secs(20), |s| {
        node_row(s, victim).is_some_and(|r| r.contains("DOWN ") && r.contains(" ago"))
    });
    eprintln!("{victim} shown DOWN after {:?}", killed.elapsed());
    assert!(s.contains("2/3 nodes up"), "{s}");
    // The survivors' membership views catch up (SWIM marks it down).
    let survivors: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|n| *n != victim).collect();
    t.wait("the survivors to see the death", Duration::from_secs(20), |s| {
        survivors.iter().all(|n| member_cell(s, n, victim).as_deref() == Some("DOWN"))
    });

    // Cut the two survivors apart: top asks each node directly, so both stay UP while
    // each one's own view loses the other.
    let (a, b) = (survivors[0], survivors[1]);
    let cut = Command::new(BIN)
        .args(["chaos", "partition", a, "--from", b, "--for-ms", "30000", "--cluster"])
        .arg(&file)
        .output()
        .expect("troupe chaos partition");
    assert!(cut.status.success(), "partition failed: {}", String::from_utf8_lossy(&cut.stderr));
    t.wait("each side to lose the other", Duration::from_secs(20), |s| {
        [(a, b), (b, a)].iter().all(|(x, y)| {
            node_row(s, x).is_some_and(|r| r.contains(" UP "))
                && member_cell(s, x, y).is_some_and(|c| c == "susp" || c == "DOWN")
        })
    });
    // Still answering keys: the details pane follows the cursor.
    t.keys(&["k"]);
    t.wait("the cursor to move up", WAIT, |s| selected_path(s) != Some("/kv/store/hello"));

    t.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = std::fs::read_to_string(&status_file).ok().filter(|s| s.ends_with('\n')) {
            break st;
        }
        assert!(Instant::now() < deadline, "troupe top did not exit on q:\n{}", t.screen());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.trim(), "0", "troupe top exit status; screen:\n{}", t.screen());
    // Back on the normal screen: nothing of the TUI is left behind.
    assert!(!t.screen().contains("Nodes · membership"), "the alternate screen was not left:\n{}", t.screen());
}
