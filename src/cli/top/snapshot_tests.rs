//! Renders a fake cluster (three nodes, n2 down, a failed actor) with ratatui's
//! TestBackend at 80×24 and 120×40 and checks the screen text: nodes and states, the
//! tree, the details pane, the metrics panel and the footer.

use super::app::{App, Key, Panel};
use super::data::Report;
use super::{fixture, view};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::time::{Duration, Instant};

fn screen(app: &mut App, w: u16, h: u16, now: Instant) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| view::draw(f, app, now)).expect("draw");
    let buf = t.backend().buffer();
    let lines: Vec<String> = (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>()).collect();
    // Shown with --nocapture: the quickest way to look at the layout.
    println!("{}", lines.join("\n"));
    lines
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[track_caller]
fn assert_has(lines: &[String], needles: &[&str]) {
    let text = lines.join("\n");
    for n in needles {
        assert!(text.contains(n), "screen lacks {n:?}:\n{text}");
    }
}

/// n1 and n3 answer twice a second apart (so there are rates), n2 answered once and
/// then stopped; n1's cursor is on the failed entity. Returns the app and "now".
fn scenario(entities: usize) -> (App, Instant) {
    let t0 = Instant::now();
    let mut app =
        App::new("cluster.toml", fixture::NODES.iter().map(|s| s.to_string()).collect(), Duration::from_secs(1));
    for n in fixture::NODES {
        let mut d = fixture::node(n, 100, &[]);
        d.tree = fixture::tree(n, 100, fixture::entities(entities));
        d.metrics.unix_ms = 1_700_000_000_000;
        app.ingest(Report { node: n.into(), outcome: Ok(d) }, t0);
    }
    for (n, handled) in [("n1", 112), ("n3", 100)] {
        let mut d = fixture::node(n, handled, &["n2"]);
        d.tree = fixture::tree(n, handled, fixture::entities(entities));
        d.metrics.unix_ms = 1_700_000_001_000;
        app.ingest(Report { node: n.into(), outcome: Ok(d) }, t0 + Duration::from_secs(1));
    }
    app.ingest(
        Report { node: "n2".into(), outcome: Err("no answer within 800 ms".into()) },
        t0 + Duration::from_secs(1),
    );
    // Down to /kv/store, open it, down to cart-7 (first by path).
    for k in [Key::Down, Key::Toggle, Key::Down] {
        app.on_key(k);
    }
    (app, t0 + Duration::from_secs(13))
}

#[test]
fn at_80x24_everything_is_on_screen() {
    let (mut app, now) = scenario(0);
    let s = screen(&mut app, 80, 24, now);
    assert_has(
        &s,
        &[
            "troupe top",
            "2/3 nodes up",
            // Nodes and how each sees the others.
            "▶ n1",
            "DOWN 13s ago",
            "UP",
            "1h02m",
            // The tree with the kind expanded.
            "Tree n1",
            "▾ /kv",
            "▾ store (3, 1 failed)",
            "cart-7 FAILED ↻5",
            "hello mbox 2",
            "▸ ranges (1)",
            "▾ /troupe",
            // Details of the failed actor.
            "path     /kv/store/cart-7",
            "kind     store · FAILED",
            "mailbox  0/1024 · handled 3",
            "restarts 5 (0.0/min)",
            "error    disk full",
            // Metrics of kv on n1.
            "Metrics n1 · kv (1/2)",
            "messages_handled",
            // Footer.
            "q quit",
            "tab panel",
            "? help",
        ],
    );
    // n1's row: it sees n2 as DOWN; n2's row: its view is not shown as current.
    let n1 = s.iter().find(|l| l.contains("▶ n1")).expect("n1 row");
    assert!(n1.contains("up   DOWN up"), "{n1}");
    let n2 = s.iter().find(|l| l.contains("n2  ") && l.contains("DOWN 13s ago")).expect("n2 row");
    assert!(n2.contains("-    -    -"), "{n2}");
    assert!(s.iter().all(|l| l.chars().count() == 80));
}

#[test]
fn rates_show_in_the_details() {
    let (mut app, now) = scenario(0);
    app.on_key(Key::Down); // hello: 100 → 112 in one second
    let s = screen(&mut app, 80, 24, now);
    assert_has(&s, &["path     /kv/store/hello", "mailbox  2/1024 · handled 112", "rate     12.0 msg/s"]);
    let n1 = s.iter().find(|l| l.contains("▶ n1")).expect("n1 row");
    assert!(n1.contains("12.0"), "node messages/s: {n1}");
}

#[test]
fn a_down_node_shows_its_last_tree_marked_stale() {
    let (mut app, now) = scenario(0);
    app.on_key(Key::NextNode);
    let s = screen(&mut app, 80, 24, now);
    assert_has(
        &s,
        &["Tree n2 · DOWN, as of 13s ago", "not answering: no answer within", "800 ms", "Actor (stale)", "▶ n2"],
    );
    assert!(has(&s, "cart-7"), "the last known tree stays visible");
}

#[test]
fn a_node_that_stops_answering_shows_no_rates() {
    let t0 = Instant::now();
    let mut app = App::new("cluster.toml", vec!["n1".into()], Duration::from_secs(1));
    for (s, handled) in [(0u64, 100u64), (1, 112)] {
        let mut d = fixture::node("n1", handled, &[]);
        d.metrics.unix_ms = 1_700_000_000_000 + s * 1000;
        app.ingest(Report { node: "n1".into(), outcome: Ok(d) }, t0 + Duration::from_secs(s));
    }
    for k in [Key::Down, Key::Toggle, Key::Down, Key::Down] {
        app.on_key(k);
    }
    let s = screen(&mut app, 80, 24, t0 + Duration::from_secs(1));
    assert_has(&s, &["path     /kv/store/hello", "rate     12.0 msg/s", "12.0/s│"]);
    app.ingest(Report { node: "n1".into(), outcome: Err("refused".into()) }, t0 + Duration::from_secs(2));
    let s = screen(&mut app, 80, 24, t0 + Duration::from_secs(3));
    assert_has(&s, &["path     /kv/store/hello", "rate     -"]);
    assert!(!has(&s, "/s│"), "no metric rates for a node that stopped answering");
}

#[test]
fn at_120x40_a_big_kind_is_paged() {
    let (mut app, now) = scenario(3000);
    let s = screen(&mut app, 120, 40, now);
    assert_has(
        &s,
        &[
            "store (3003, 1 failed)",
            "key0000",
            "path     /kv/store/cart-7",
            "error    disk full: cannot append to the log",
            "messages_handled kind=store",
            "12.0/s",
        ],
    );
    assert!(s.iter().all(|l| l.chars().count() == 120));
    // The tree panel scrolls with the cursor: go to the end of the page.
    for _ in 0..60 {
        app.on_key(Key::Down);
    }
    let s = screen(&mut app, 120, 40, now);
    assert_has(&s, &["… 2953 more (enter)", "▸ ranges (1)"]);
    assert!(!has(&s, "▾ /kv "), "scrolled past the top");
}

#[test]
fn help_and_pause_are_drawn() {
    let (mut app, now) = scenario(0);
    app.on_key(Key::Help);
    app.on_key(Key::Pause); // closes the help (any key does)
    app.on_key(Key::Pause);
    app.on_key(Key::Help);
    let s = screen(&mut app, 80, 24, now);
    assert_has(&s, &["PAUSED", " keys ", "show the next node", "quit"]);
}

#[test]
fn focus_moves_between_panels() {
    let (mut app, now) = scenario(0);
    app.on_key(Key::Tab);
    assert_eq!(app.focus, Panel::Metrics);
    app.on_key(Key::Right);
    let s = screen(&mut app, 80, 24, now);
    assert_has(&s, &["Metrics n1 · runtime (2/2)", "gossip_packets_sent", "4242"]);
}

#[test]
fn nothing_heard_yet_says_waiting() {
    let mut app = App::new("cluster.toml", vec!["n1".into()], Duration::from_secs(1));
    let s = screen(&mut app, 80, 24, Instant::now());
    assert_has(&s, &["waiting for n1…", "0/1 nodes up", "no metrics yet"]);
}

#[test]
fn tiny_terminals_do_not_break_the_screen() {
    // Below 80×24 is not supported, but a resize must never crash the program.
    let (mut app, now) = scenario(3000);
    app.on_key(Key::Help);
    for (w, h) in [(40, 10), (20, 5), (1, 1), (80, 3)] {
        let s = screen(&mut app, w, h, now);
        assert_eq!(s.len(), h as usize);
    }
}

/// Like `scenario`, with n1 serving models: two snapshots a second apart (see
/// `fixture::llm_metrics` for what happened between them).
fn llm_scenario() -> (App, Instant) {
    let t0 = Instant::now();
    let mut app =
        App::new("cluster.toml", fixture::NODES.iter().map(|s| s.to_string()).collect(), Duration::from_secs(1));
    for (step, handled) in [(0, 100), (1, 112)] {
        for n in fixture::NODES {
            let mut d =
                if n == "n1" { fixture::llm_node(n, handled, &[], step) } else { fixture::node(n, handled, &[]) };
            d.metrics.unix_ms = 1_700_000_000_000 + step * 1000;
            app.ingest(Report { node: n.into(), outcome: Ok(d) }, t0 + Duration::from_secs(step));
        }
    }
    (app, t0 + Duration::from_secs(1))
}

fn row<'a>(s: &'a [String], start: &str) -> &'a str {
    s.iter().find(|l| l.trim_start_matches('│').starts_with(start)).map(|l| l.as_str()).unwrap_or_else(|| {
        panic!("no row starting with {start:?}:\n{}", s.join("\n"));
    })
}

/// The cells of a table row, split on blanks (values never hold one).
fn cells(line: &str) -> Vec<&str> {
    line.trim_matches('│').split_whitespace().collect()
}

#[test]
fn llm_panel_at_80x24() {
    let (mut app, now) = llm_scenario();
    let s = screen(&mut app, 80, 24, now);
    assert!(s.iter().all(|l| l.chars().count() == 80));
    assert_has(
        &s,
        &[
            "LLM serving n1 · last 1s · * since start",
            "MODEL",
            "TTFT p50",
            "TPOT p50",
            "pool worker      queue 1 · breaker closed · workers 2 active, 1 warm",
            "pool worker_fast queue 0 · breaker half-open · workers 1 active, 0 warm",
            // The rest of the screen is still there.
            "Tree n1",
            "▾ /kv",
            "path     /kv",
            "Metrics n1",
            "q quit",
        ],
    );
    // The header's columns line up with the values under them.
    let header = row(&s, "MODEL");
    let big = row(&s, "smollm2-135m ");
    let col = |l: &str, i: usize| l.chars().skip(i).collect::<String>();
    let ttft_at = header.find("TTFT p50").map(|b| header[..b].chars().count()).expect("TTFT column");
    assert!(col(big, ttft_at).trim_start().starts_with("125ms"), "TTFT p50 of smollm2-135m:\n{big}");
    assert_eq!(
        cells(big),
        ["smollm2-135m", "3", "1", "42%", "75%", "240", "125ms", "248ms", "16ms", "25ms", "2"],
        "running, waiting, KV, hit rate, tok/s, TTFT p50 p99, TPOT p50 p99, errors"
    );
    assert!(!row(&s, " pool worker ").contains("smoll"), "a model that does not fit whole is left out");
    // The fast model was idle in the window: its figures are since start, marked.
    let fast = row(&s, "smollm2-135m-f");
    assert_eq!(
        cells(fast),
        ["smollm2-135m-fa…", "0", "0", "5%", "25%*", "0.0", "33ms*", "50ms*", "10ms*", "25ms*", "0"]
    );
}

#[test]
fn llm_panel_wider_shows_full_names_and_models_of_pools() {
    let (mut app, now) = llm_scenario();
    let s = screen(&mut app, 120, 40, now);
    assert!(s.iter().all(|l| l.chars().count() == 120));
    let fast = row(&s, "smollm2-135m-fast ");
    assert_eq!(cells(fast)[0], "smollm2-135m-fast");
    assert_has(
        &s,
        &[
            "breaker half-open · workers 1 active, 0 warm · smollm2-135m-fast",
            // The details pane keeps its full height on a tall screen.
            "restarts",
        ],
    );
}

#[test]
fn llm_panel_is_hidden_where_a_node_serves_no_model() {
    let (mut app, now) = llm_scenario();
    app.on_key(Key::NextNode);
    let s = screen(&mut app, 80, 24, now);
    assert!(!has(&s, "LLM serving"), "n2 serves no model");
    assert_has(&s, &["Tree n2", "path     /kv"]);
}

#[test]
fn llm_panel_of_a_node_that_stopped_answering_is_stale_without_rates() {
    let (mut app, now) = llm_scenario();
    app.ingest(Report { node: "n1".into(), outcome: Err("refused".into()) }, now);
    let s = screen(&mut app, 80, 24, now + Duration::from_secs(2));
    assert_has(&s, &["LLM serving n1 (stale)"]);
    assert_eq!(cells(row(&s, "smollm2-135m "))[5], "-", "no tokens/s from the past");
}

#[test]
fn llm_panel_says_what_a_short_screen_cuts() {
    let (mut app, now) = llm_scenario();
    let s = screen(&mut app, 80, 18, now);
    assert_has(&s, &["LLM serving n1 · 2 more rows below", "smollm2-135m-fa…"]);
    assert!(!has(&s, " pool worker"), "the pools are the rows cut");
}
