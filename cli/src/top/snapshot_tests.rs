//! Renders a fake cluster (three nodes, n2 down, a failed actor) with ratatui's
//! TestBackend at 80×24 and 120×40 and checks the screen text: nodes and states, the
//! tree, the details pane, the metrics panel and the footer.

use super::app::{App, Key, Panel};
use super::data::Report;
use super::{fixture, view};
use std::time::{Duration, Instant};
use troupe_runtime::wire::introspect::{Metric, MetricsSnapshot, SpanRecord};
use troupe_system::screen::{assert_has, has, render};

fn screen(app: &mut App, w: u16, h: u16, now: Instant) -> Vec<String> {
    render(w, h, |f| view::draw(f, app, now))
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
    // Down to /demo/store, open it, down to cart-7 (first by path).
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
            "▾ /demo",
            "▾ store (3, 1 failed)",
            "cart-7 FAILED ↻5",
            "hello mbox 2",
            "▸ ranges (1)",
            "▾ /troupe",
            // Details of the failed actor.
            "path     /demo/store/cart-7",
            "kind     store · FAILED",
            "mailbox  0/1024 · handled 3",
            "restarts 5 (0.0/min)",
            "error    disk full",
            // Metrics of demo on n1.
            "Metrics n1 · demo (1/2)",
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
    assert_has(&s, &["path     /demo/store/hello", "mailbox  2/1024 · handled 112", "rate     12.0 msg/s"]);
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
    assert_has(&s, &["path     /demo/store/hello", "rate     12.0 msg/s", "12.0/s│"]);
    app.ingest(Report { node: "n1".into(), outcome: Err("refused".into()) }, t0 + Duration::from_secs(2));
    let s = screen(&mut app, 80, 24, t0 + Duration::from_secs(3));
    assert_has(&s, &["path     /demo/store/hello", "rate     -"]);
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
            "path     /demo/store/cart-7",
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
    assert!(!has(&s, "▾ /demo "), "scrolled past the top");
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

/// A system's panel as `troupe top` sees any: shown on nodes whose metrics have
/// `demo_queue_depth`, as tall as asked, saying whether the node answers.
struct DemoPanel {
    title: &'static str,
    rows: u16,
}

struct DemoView {
    title: &'static str,
    rows: u16,
    depth: f64,
}

impl troupe_system::Panel for DemoPanel {
    fn summarize(
        &self,
        now: &MetricsSnapshot,
        _: Option<&MetricsSnapshot>,
    ) -> Option<Box<dyn troupe_system::PanelView>> {
        let m = now.metrics.iter().find(|m| m.name == "demo_queue_depth")?;
        Some(Box::new(DemoView { title: self.title, rows: self.rows, depth: m.value }))
    }
}

impl troupe_system::PanelView for DemoView {
    fn height(&self) -> u16 {
        self.rows
    }
    fn draw(&self, f: &mut ratatui::Frame, area: ratatui::layout::Rect, node: &str, live: bool) {
        let title = format!(" {} {node}{} ", self.title, if live { "" } else { " (stale)" });
        let text = format!("queue depth {}", self.depth);
        f.render_widget(
            ratatui::widgets::Paragraph::new(text).block(ratatui::widgets::Block::bordered().title(title)),
            area,
        );
    }
}

static DEMO: DemoPanel = DemoPanel { title: "Demo", rows: 4 };
static TALL: DemoPanel = DemoPanel { title: "Tall", rows: 40 };

/// `scenario`, with n1 (only) reporting the demo system's metric, and `panels` shown.
fn panel_scenario(panels: Vec<&'static dyn troupe_system::Panel>) -> (App, Instant) {
    let (app, now) = scenario(0);
    let mut app = app.with_panels(panels);
    let mut d = fixture::node("n1", 124, &["n2"]);
    d.metrics.metrics.push(Metric {
        name: "demo_queue_depth".into(),
        help: String::new(),
        kind: "gauge".into(),
        labels: vec![("system".into(), "demo".into())],
        value: 7.0,
    });
    d.metrics.unix_ms = 1_700_000_002_000;
    app.ingest(Report { node: "n1".into(), outcome: Ok(d) }, now);
    (app, now)
}

#[test]
fn a_system_panel_is_drawn_under_the_rest_where_it_applies() {
    let (mut app, now) = panel_scenario(vec![&DEMO]);
    let s = screen(&mut app, 80, 24, now);
    assert_has(&s, &["Demo n1", "queue depth 7", "Tree n1", "Metrics n1", "q quit"]);
    let at = s.iter().position(|l| l.contains("Demo n1")).expect("panel title");
    let tree = s.iter().position(|l| l.contains("Tree n1")).expect("tree title");
    assert!(at > tree, "the panel is below the tree:\n{}", s.join("\n"));
    assert_eq!(s.iter().filter(|l| l.contains("queue depth")).count(), 1);
    // n2 is down and n3 reports no demo metric: no panel there.
    for _ in 0..2 {
        app.on_key(Key::NextNode);
        let s = screen(&mut app, 80, 24, now);
        assert!(!has(&s, "Demo "), "{}", s.join("\n"));
    }
}

#[test]
fn panels_take_at_most_half_of_the_middle_and_stack_in_list_order() {
    let (mut app, now) = panel_scenario(vec![&DEMO, &TALL]);
    let s = screen(&mut app, 80, 24, now);
    let demo = s.iter().position(|l| l.contains("Demo n1")).expect("first panel");
    let tall = s.iter().position(|l| l.contains("Tall n1")).expect("second panel");
    assert_eq!(tall, demo + 4, "the first system gets its rows first:\n{}", s.join("\n"));
    // 80×24: the middle (tree, details, metrics) is 24 - 1 - 6 - 1 = 16 rows, so the
    // panels get 8 between them and the tree keeps the rest.
    assert_eq!(s.len() - 1 - demo, 8, "{}", s.join("\n"));
    assert_has(&s, &["Tree n1", "q quit"]);
}

#[test]
fn a_panel_of_a_node_that_stopped_answering_says_stale() {
    let (mut app, now) = panel_scenario(vec![&DEMO]);
    app.ingest(Report { node: "n1".into(), outcome: Err("refused".into()) }, now);
    let s = screen(&mut app, 80, 24, now + Duration::from_secs(2));
    assert_has(&s, &["Demo n1 (stale)", "queue depth 7"]);
}

fn span(node: &str, name: &str, target: &str, start_ms: u64, dur_ms: u64, fields: &[(&str, &str)]) -> SpanRecord {
    SpanRecord {
        trace: 0xabc3,
        node: node.into(),
        name: name.into(),
        target: target.into(),
        start_unix_us: 1_700_000_000_000_000 + start_ms * 1000,
        duration_us: dur_ms * 1000,
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[test]
fn a_followed_trace_shows_every_nodes_spans_as_a_waterfall() {
    let (mut app, now) = scenario(0);
    let s = screen(&mut app, 120, 40, now);
    assert!(has(&s, "Metrics") && !has(&s, "Trace 0"), "no trace followed: no trace panel");
    app.trace = Some(0xabc3);
    let put = |app: &mut App, node: &str, spans: Vec<SpanRecord>| {
        let n = app.nodes.iter_mut().find(|n| n.name == node).unwrap();
        n.data.as_mut().unwrap().spans = spans;
    };
    put(&mut app, "n1", vec![span("n1", "client", "/demo/store/cart-7", 0, 12, &[])]);
    put(
        &mut app,
        "n3",
        vec![
            span("n3", "remote-in", "/demo/store/cart-7", 2, 9, &[]),
            span("n3", "handle", "/demo/store/cart-7", 3, 8, &[("demo.items", "3"), ("note", "a\nb")]),
        ],
    );
    let s = screen(&mut app, 120, 40, now);
    assert_has(
        &s,
        &[
            "Trace 000000000000abc3 · 3 spans on 2 nodes",
            "client /demo/store/cart-7",
            "remote-in /demo/store/cart-7",
            "handle /demo/store/cart-7 demo.items=\"3\" note=\"a\\nb\"",
            "████████████",
            "Metrics n1",
        ],
    );
    let line = s.iter().find(|l| l.contains("handle /demo")).unwrap();
    assert!(line.contains("     3.0     8.0 n3"), "offset and duration in ms from the first span: {line}");
    // At 80×24 it still draws, cut to the width.
    let s = screen(&mut app, 80, 24, now);
    assert!(has(&s, "Trace 000000000000abc3"), "{s:#?}");
}
