use proptest::prelude::*;

use super::*;
use crate::time::DAY_MS;

// 2026-03-01T00:00:00Z
const T0: u64 = 1_772_323_200_000;

fn event(id: u128, code: &str, unix_ms: u64, referrer: Option<&str>, ua: UaFamily, cc: Option<&str>) -> ClickEvent {
    ClickEvent {
        event_id: EventId(id),
        code: code.to_string(),
        unix_ms,
        referrer_host: referrer.map(str::to_string),
        ua_family: ua,
        country: cc.and_then(CountryCode::new),
    }
}

#[test]
fn from_request_parses_headers() {
    let e = ClickEvent::from_request(
        EventId::from_parts(7, 1),
        "Ab3dE9x",
        T0,
        Some("https://www.google.com/search?q=x"),
        Some("curl/8.5.0"),
        CountryCode::new("FR"),
    );
    assert_eq!(e.event_id, EventId((7u128 << 64) | 1));
    assert_eq!(e.referrer_host.as_deref(), Some("google.com"));
    assert_eq!(e.ua_family, UaFamily::Curl);
    let long = ClickEvent::from_request(EventId(1), &"\u{e9}".repeat(100), T0, None, None, None);
    assert!(long.code.len() <= EVENT_CODE_BYTES_MAX);
}

#[test]
fn report_totals_referrers_agents_countries_days() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let events = [
        event(5, "xyz", T0, None, UaFamily::Safari, Some("JP")),
        event(1, "abc", T0, Some("google.com"), UaFamily::Chrome, Some("FR")),
        event(2, "abc", T0 + 1000, Some("google.com"), UaFamily::Firefox, Some("FR")),
        event(3, "abc", T0 + DAY_MS, Some("t.co"), UaFamily::Chrome, Some("US")),
        event(4, "abc", T0 + DAY_MS + 5, None, UaFamily::Bot, None),
    ];
    for e in &events {
        assert_eq!(agg.apply(e), Applied::New);
    }
    assert_eq!(agg.apply(&events[4]), Applied::Duplicate);
    let stats = agg.link("abc").expect("abc has clicks");
    stats.check_sums().expect("sums hold");
    let report = stats.report(10);
    assert_eq!(report.total, 4);
    assert_eq!(report.direct, 1);
    assert_eq!(report.top_referrers, vec![("google.com".into(), 2), ("t.co".into(), 1)]);
    assert_eq!(report.user_agents, vec![("chrome".into(), 2), ("bot".into(), 1), ("firefox".into(), 1)]);
    assert_eq!(report.countries, vec![("FR".into(), 2), ("US".into(), 1)]);
    assert_eq!(report.country_unknown, 1);
    assert_eq!(report.per_day, vec![("2026-03-01".into(), 2), ("2026-03-02".into(), 2)]);
    assert_eq!(report.last_click_unix_ms, Some(T0 + DAY_MS + 5));
    assert_eq!(agg.duplicate_events(), 1);
    assert_eq!(agg.link("xyz").map(|s| s.total), Some(1));
}

#[test]
fn bounds_on_referrers_and_days() {
    let limits = StatsLimits { referrer_hosts_max: 2, days_kept: 3 };
    let mut stats = LinkStats::default();
    for (i, host) in ["a.com", "b.com", "c.com", "a.com"].iter().enumerate() {
        stats.count(&event(i as u128, "k", T0 + i as u64 * DAY_MS, Some(host), UaFamily::Chrome, None), limits);
    }
    assert_eq!(stats.referrers.len(), 2);
    assert_eq!(stats.referrers_other, 1);
    assert_eq!(stats.per_day.len(), 3);
    assert_eq!(stats.per_day_pruned, 1);
    stats.check_sums().expect("sums hold");
}

#[test]
fn late_copies_are_refused_not_recounted() {
    let config = AggregatorConfig { dedup_window_ms: 10_000, dedup_ids_max: 1000, ..AggregatorConfig::default() };
    let mut agg = Aggregator::new(config);
    let old = event(1, "k", T0, None, UaFamily::Chrome, None);
    agg.apply(&old);
    agg.apply(&event(2, "k", T0 + 60_000, None, UaFamily::Chrome, None));
    assert_eq!(agg.apply(&old), Applied::TooLate);
    assert_eq!(agg.late_events(), 1);
    assert_eq!(agg.link("k").map(|s| s.total), Some(2));
}

#[test]
fn snapshot_survives_serialization() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    agg.apply(&event(1, "k", T0, Some("x.com"), UaFamily::Edge, Some("DE")));
    let json = serde_json::to_string(&agg.snapshot()).expect("serializes");
    let back: AggregatorSnapshot = serde_json::from_str(&json).expect("deserializes");
    let mut restored = Aggregator::restore(back);
    assert_eq!(restored, agg);
    assert_eq!(restored.apply(&event(1, "k", T0, Some("x.com"), UaFamily::Edge, Some("DE"))), Applied::Duplicate);
}

/// A stream of distinct events spread over a few links, hosts and 3 days (well inside the
/// dedup window, so exactly-once must hold).
fn stream() -> impl Strategy<Value = Vec<ClickEvent>> {
    let one = (0u8..4, 0u64..3 * DAY_MS, proptest::option::of(0u8..6), 0usize..4, proptest::option::of(0u8..3));
    proptest::collection::vec(one, 0..120).prop_map(|raw| {
        let families = [UaFamily::Chrome, UaFamily::Firefox, UaFamily::Safari, UaFamily::Bot];
        let countries = ["FR", "US", "JP"];
        raw.into_iter()
            .enumerate()
            .map(|(i, (code, dt, host, ua, cc))| {
                let host = host.map(|h| format!("h{h}.com"));
                event(
                    i as u128 + 1,
                    &format!("c{code}"),
                    T0 + dt,
                    host.as_deref(),
                    families[ua],
                    cc.map(|c| countries[c as usize]),
                )
            })
            .collect()
    })
}

fn run(events: &[ClickEvent]) -> Aggregator {
    let mut agg = Aggregator::new(AggregatorConfig { dedup_window_ms: 10 * DAY_MS, ..AggregatorConfig::default() });
    for e in events {
        agg.apply(e);
    }
    agg
}

fn links(agg: &Aggregator) -> BTreeMap<String, LinkStats> {
    agg.links().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

proptest! {
    /// Replaying any prefix again, and duplicating any events anywhere, changes nothing.
    #[test]
    fn replays_and_duplicates_do_not_change_the_aggregate(
        events in stream(),
        replay_len in 0usize..120,
        dup_picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..40),
    ) {
        let once = run(&events);
        let mut noisy = events.clone();
        // A crash-and-replay: a prefix of the log delivered a second time.
        noisy.extend(events.iter().take(replay_len).cloned());
        // Retried appends: copies inserted at arbitrary later positions.
        for (what, whence) in dup_picks {
            if events.is_empty() { break; }
            let original = what.index(events.len());
            let at = original + 1 + whence.index(noisy.len() - original);
            noisy.insert(at.min(noisy.len()), events[original].clone());
        }
        let replayed = run(&noisy);
        prop_assert_eq!(links(&replayed), links(&once));
        prop_assert_eq!(replayed.duplicate_events() as usize, noisy.len() - events.len());
        for (_, stats) in replayed.links() {
            prop_assert_eq!(stats.check_sums(), Ok(()));
        }
    }

    /// Crash after k events, restore the snapshot taken at j <= k, replay from j: same result.
    #[test]
    fn restore_and_replay_from_the_snapshot_position(events in stream(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let n = events.len();
        let (j, k) = { let (x, y) = (a.index(n + 1), b.index(n + 1)); (x.min(y), x.max(y)) };
        let mut agg = run(&[]);
        for e in &events[..j] { agg.apply(e); }
        let snapshot = serde_json::to_string(&agg.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for e in &events[j..k] { agg.apply(e); }
        // Crash: agg is lost. Restore and replay the log from the snapshot's position.
        let restored: AggregatorSnapshot = serde_json::from_str(&snapshot).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut agg = Aggregator::restore(restored);
        for e in &events[j..] { agg.apply(e); }
        prop_assert_eq!(links(&agg), links(&run(&events)));
    }

    /// Shards split by code, merged, equal one aggregator over everything.
    #[test]
    fn merged_shards_equal_a_single_aggregator(events in stream()) {
        let limits = AggregatorConfig::default().limits;
        let (left, right): (Vec<ClickEvent>, Vec<ClickEvent>) =
            events.iter().cloned().partition(|e| e.code == "c0" || e.code == "c2");
        let merged = merge_links([&run(&left), &run(&right)], limits);
        prop_assert_eq!(merged, links(&run(&events)));
    }

    /// Merging per-link stats is commutative, even split within one link.
    #[test]
    fn link_merge_is_commutative(events in stream(), split in any::<prop::sample::Index>()) {
        let limits = StatsLimits::default();
        let cut = split.index(events.len() + 1);
        let (mut a, mut b) = (LinkStats::default(), LinkStats::default());
        for e in &events[..cut] { a.count(e, limits); }
        for e in &events[cut..] { b.count(e, limits); }
        let mut ab = a.clone();
        ab.merge(&b, limits);
        let mut ba = b.clone();
        ba.merge(&a, limits);
        prop_assert_eq!(&ab, &ba);
        let mut whole = LinkStats::default();
        for e in &events { whole.count(e, limits); }
        prop_assert_eq!(ab, whole);
    }
}
