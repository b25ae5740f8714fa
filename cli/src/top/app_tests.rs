//! App state: selection, expand/collapse, paging, rates, a node going down.

use super::*;
use crate::top::data::Report;
use crate::top::fixture;

fn ok(node: &str, handled: u64) -> Report {
    Report { node: node.into(), outcome: Ok(fixture::node(node, handled, &[])) }
}

fn app_with_cluster(t0: Instant) -> App {
    let mut app = App::new("test", fixture::NODES.iter().map(|s| s.to_string()).collect(), Duration::from_secs(1));
    for n in fixture::NODES {
        app.ingest(ok(n, 100), t0);
    }
    app
}

fn labels(app: &App) -> Vec<String> {
    app.rows()
        .iter()
        .map(|r| match &r.id {
            RowId::Actor(p) => p.clone(),
            RowId::Earlier(p) => format!("<{p}"),
            RowId::Later(p) => format!(">{p}"),
        })
        .collect()
}

#[test]
fn kinds_start_collapsed_and_systems_expanded() {
    let app = app_with_cluster(Instant::now());
    assert_eq!(labels(&app), ["/demo", "/demo/store", "/demo/ranges", "/troupe", "/troupe/node"]);
    assert_eq!(app.selected_row(), Some(RowId::Actor("/demo".into())), "the first row is selected at start");
}

#[test]
fn enter_expands_and_collapses_the_selected_row() {
    let mut app = app_with_cluster(Instant::now());
    app.on_key(Key::Down);
    assert_eq!(app.selected_actor().map(|a| a.path.as_str()), Some("/demo/store"));
    app.on_key(Key::Toggle);
    assert_eq!(
        labels(&app)[..5],
        ["/demo", "/demo/store", "/demo/store/cart-7", "/demo/store/hello", "/demo/store/world"],
        "entities sorted by path"
    );
    app.on_key(Key::Down);
    assert_eq!(app.selected_actor().map(|a| a.path.as_str()), Some("/demo/store/cart-7"));
    // Left on a leaf goes to the parent, left again collapses it.
    app.on_key(Key::Left);
    assert_eq!(app.selected_row(), Some(RowId::Actor("/demo/store".into())));
    app.on_key(Key::Left);
    assert_eq!(labels(&app).len(), 5);
    app.on_key(Key::Right);
    assert_eq!(labels(&app).len(), 8, "right expands again");
}

#[test]
fn selection_follows_the_actor_across_refreshes() {
    let t0 = Instant::now();
    let mut app = app_with_cluster(t0);
    app.on_key(Key::Down);
    app.on_key(Key::Toggle);
    app.on_key(Key::End);
    let before = app.selected_row();
    // A new entity sorts before the selection and shifts every index.
    let mut d = fixture::node("n1", 110, &[]);
    d.tree.children[0].children[0].children.push(fixture::actor(
        "/demo/store/aaa",
        "store",
        troupe_runtime::wire::introspect::ActorState::Running,
        0,
        vec![],
    ));
    app.ingest(Report { node: "n1".into(), outcome: Ok(d) }, t0 + Duration::from_secs(1));
    assert_eq!(app.selected_row(), before);
}

#[test]
fn big_kinds_are_paged() {
    let mut app = App::new("test", vec!["n1".into()], Duration::from_secs(1));
    let mut d = fixture::node("n1", 1, &[]);
    d.tree = fixture::tree("n1", 1, fixture::entities(3000));
    app.ingest(Report { node: "n1".into(), outcome: Ok(d) }, Instant::now());
    app.on_key(Key::Down);
    app.on_key(Key::Toggle);
    let rows = labels(&app);
    assert_eq!(rows.len(), 5 + PAGE + 1, "one page of children plus a `more` row");
    assert!(rows.contains(&">/demo/store".to_string()));
    let more = app.rows().iter().find(|r| r.id == RowId::Later("/demo/store".into())).map(|r| r.hidden);
    assert_eq!(more, Some(3003 - PAGE));
    // Turn the page from the `more` row: the cursor lands on the first of the next page.
    app.on_key(Key::Down);
    app.on_key(Key::End);
    while app.selected_row() != Some(RowId::Later("/demo/store".into())) {
        app.on_key(Key::Up);
    }
    app.on_key(Key::Toggle);
    let rows = labels(&app);
    assert!(rows.contains(&"</demo/store".to_string()), "{rows:?}");
    let first = app.selected_actor().map(|a| a.path.clone()).unwrap_or_default();
    assert_eq!(first, "/demo/store/key0048", "entry 51 by path: cart-7, hello, key0000.. come first");
    // And back.
    app.on_key(Key::Up);
    app.on_key(Key::Toggle);
    assert!(!labels(&app).contains(&"</demo/store".to_string()));
}

#[test]
fn rates_come_from_successive_snapshots() {
    let t0 = Instant::now();
    let mut app = app_with_cluster(t0);
    app.ingest(ok("n1", 130), t0 + Duration::from_secs(2));
    assert_eq!(app.rates.msgs_per_sec("n1", "/demo/store/hello"), Some(15.0));
    // Node total: only `hello` changed.
    assert_eq!(app.rates.msgs_per_sec("n1", ""), Some(15.0));
    assert_eq!(app.rates.restarts_per_min("n1", "/demo/store/cart-7"), Some(0.0));
}

#[test]
fn a_node_going_down_keeps_its_last_data_and_counts_time() {
    let t0 = Instant::now();
    let mut app = app_with_cluster(t0);
    assert_eq!(app.status(1, t0), Status::Up);
    let fail = Report { node: "n2".into(), outcome: Err("no answer within 800 ms".into()) };
    app.ingest(fail, t0 + Duration::from_secs(2));
    match app.status(1, t0 + Duration::from_secs(12)) {
        Status::Down { since_contact, reason } => {
            assert_eq!(since_contact, Some(Duration::from_secs(12)));
            assert!(reason.contains("800 ms"));
        }
        s => panic!("n2 should be down, is {s:?}"),
    }
    assert!(app.nodes[1].data.is_some(), "the last data stays on screen");
    assert_eq!(app.view_of(1, "n1"), None, "a down node's view of others is not shown as current");
    // It answers again.
    app.ingest(ok("n2", 100), t0 + Duration::from_secs(13));
    assert_eq!(app.status(1, t0 + Duration::from_secs(13)), Status::Up);
}

#[test]
fn never_seen_node_is_down_without_a_contact_time() {
    let mut app = App::new("t", vec!["n1".into()], Duration::from_secs(1));
    let now = Instant::now();
    assert_eq!(app.status(0, now), Status::Waiting);
    app.ingest(Report { node: "n1".into(), outcome: Err("refused".into()) }, now);
    assert_eq!(app.status(0, now), Status::Down { since_contact: None, reason: "refused".into() });
}

#[test]
fn keys_switch_nodes_panels_pause_and_quit() {
    let t0 = Instant::now();
    let mut app = app_with_cluster(t0);
    app.on_key(Key::NextNode);
    assert_eq!(app.node().name, "n2");
    app.on_key(Key::Tab);
    assert_eq!(app.focus, Panel::Metrics);
    app.on_key(Key::Tab);
    assert_eq!(app.focus, Panel::Nodes);
    app.on_key(Key::Down);
    assert_eq!(app.node().name, "n3");
    app.on_key(Key::Pause);
    app.ingest(Report { node: "n3".into(), outcome: Err("gone".into()) }, t0);
    assert_eq!(app.status(2, t0), Status::Up, "paused: the screen does not change");
    app.on_key(Key::Help);
    assert!(app.help);
    assert_eq!(app.on_key(Key::Down), Action::Continue);
    assert!(!app.help, "any key closes the help");
    assert_eq!(app.on_key(Key::Quit), Action::Quit);
}

#[test]
fn metrics_groups_cycle_with_arrows() {
    let mut app = app_with_cluster(Instant::now());
    let groups = app.metric_groups();
    let names: Vec<&str> = groups.iter().map(|g| g.system.as_str()).collect();
    assert_eq!(names, ["demo", "runtime"]);
    app.focus = Panel::Metrics;
    app.on_key(Key::Right);
    assert_eq!(app.metric_group_index(&app.metric_groups()), 1);
    app.on_key(Key::Right);
    assert_eq!(app.metric_group_index(&app.metric_groups()), 0, "wraps around");
}

#[test]
fn metric_rates_use_the_same_window_as_actor_rates() {
    let t0 = Instant::now();
    let mut app = App::new("t", vec!["n1".into()], Duration::from_secs(1));
    for (s, handled) in [(0u64, 100u64), (1, 110), (2, 130), (9, 130)] {
        let mut d = fixture::node("n1", handled, &[]);
        d.metrics.unix_ms = 1_700_000_000_000 + s * 1000;
        app.ingest(Report { node: "n1".into(), outcome: Ok(d) }, t0 + Duration::from_secs(s));
        if s == 2 {
            let demo = &app.metric_groups()[0];
            let handled = demo.series.iter().find(|x| x.name == "messages_handled").and_then(|x| x.rate);
            assert_eq!(handled, Some(15.0), "30 messages over 2 s");
        }
    }
    let demo = &app.metric_groups()[0];
    let handled = demo.series.iter().find(|x| x.name == "messages_handled").and_then(|x| x.rate);
    assert_eq!(handled, Some(0.0), "after a gap, the rate is over the gap");
    assert_eq!(app.nodes[0].metric_history.len(), 1, "only the newest snapshot before the window is kept");
}
