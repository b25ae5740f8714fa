use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn cc(text: &str) -> CountryCode {
    CountryCode::new(text).expect("two letters")
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn synthetic() -> GeoDb {
    let v4 = [
        (u32::from(Ipv4Addr::new(1, 0, 0, 0)), u32::from(Ipv4Addr::new(1, 0, 0, 255)), cc("AU")),
        (u32::from(Ipv4Addr::new(8, 8, 8, 0)), u32::from(Ipv4Addr::new(8, 8, 8, 255)), cc("US")),
        (u32::from(Ipv4Addr::new(8, 8, 9, 0)), u32::from(Ipv4Addr::new(8, 8, 9, 0)), cc("CA")),
        (u32::from(Ipv4Addr::new(255, 255, 255, 0)), u32::MAX, cc("ZZ")),
    ];
    let v6 = [(
        u128::from("2001:db8::".parse::<Ipv6Addr>().expect("v6")),
        u128::from("2001:db8::ffff".parse::<Ipv6Addr>().expect("v6")),
        cc("DE"),
    )];
    GeoDb::from_bytes(&encode("synthetic test table", &v4, &v6)).expect("valid table")
}

#[test]
fn lookups_hit_edges_and_gaps() {
    let db = synthetic();
    assert_eq!(db.source(), "synthetic test table");
    assert_eq!(db.range_counts(), (4, 1));
    assert_eq!(db.lookup(ip4(1, 0, 0, 0)), Some(cc("AU")));
    assert_eq!(db.lookup(ip4(1, 0, 0, 255)), Some(cc("AU")));
    assert_eq!(db.lookup(ip4(1, 0, 1, 0)), None, "gap after a range");
    assert_eq!(db.lookup(ip4(0, 255, 255, 255)), None, "before the first range");
    assert_eq!(db.lookup(ip4(8, 8, 8, 8)), Some(cc("US")));
    assert_eq!(db.lookup(ip4(8, 8, 9, 0)), Some(cc("CA")), "single-address range");
    assert_eq!(db.lookup(ip4(8, 8, 9, 1)), None);
    assert_eq!(db.lookup(ip4(255, 255, 255, 255)), Some(cc("ZZ")), "range ending at the top");
    assert_eq!(db.lookup("2001:db8::42".parse().expect("v6")), Some(cc("DE")));
    assert_eq!(db.lookup("2001:db9::".parse().expect("v6")), None);
    assert_eq!(db.lookup("::ffff:8.8.8.8".parse().expect("v6")), Some(cc("US")), "v4-mapped uses the v4 table");
    assert_eq!(GeoDb::default().lookup(ip4(8, 8, 8, 8)), None);
}

#[test]
fn rejects_corrupt_files() {
    let good = encode("s", &[(1, 2, cc("US")), (5, 9, cc("FR"))], &[]);
    assert!(GeoDb::from_bytes(&good).is_ok());
    assert!(matches!(GeoDb::from_bytes(b"nope"), Err(GeoError::Truncated { .. })));
    assert!(matches!(GeoDb::from_bytes(b"NOTGEO\x01\x00\x00\x00"), Err(GeoError::BadMagic)));
    let mut bad_version = good.clone();
    bad_version[6] = 9;
    assert!(matches!(GeoDb::from_bytes(&bad_version), Err(GeoError::UnsupportedVersion { version: 9 })));
    assert!(matches!(GeoDb::from_bytes(&good[..good.len() - 1]), Err(GeoError::LengthMismatch { .. })));
    let overlapping = encode("s", &[(1, 5, cc("US")), (5, 9, cc("FR"))], &[]);
    assert!(matches!(GeoDb::from_bytes(&overlapping), Err(GeoError::BadRecord { index: 1, .. })));
    let unsorted = encode("s", &[(10, 20, cc("US")), (1, 2, cc("FR"))], &[]);
    assert!(matches!(GeoDb::from_bytes(&unsorted), Err(GeoError::BadRecord { .. })));
    let backwards = encode("s", &[(9, 1, cc("US"))], &[]);
    assert!(matches!(GeoDb::from_bytes(&backwards), Err(GeoError::BadRecord { index: 0, .. })));
    let mut bad_cc = good.clone();
    let last = bad_cc.len() - 1;
    bad_cc[last] = b'1';
    assert!(matches!(GeoDb::from_bytes(&bad_cc), Err(GeoError::BadRecord { index: 1, .. })));
}

#[test]
fn country_code_rules() {
    assert_eq!(CountryCode::new("us").map(|c| c.to_string()).as_deref(), Some("US"));
    assert!(CountryCode::new("USA").is_none());
    assert!(CountryCode::new("1A").is_none());
    assert!(CountryCode::from_bytes(*b"us").is_none());
}

proptest! {
    /// Hostile or corrupt files are refused with an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = GeoDb::from_bytes(&bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut file = encode("src", &[(1, 2, cc("US")), (5, 9, cc("FR"))], &[(1, 3, cc("DE"))]);
        let i = at.index(file.len());
        file[i] = byte;
        if let Ok(db) = GeoDb::from_bytes(&file) {
            let _ = db.lookup(ip4(0, 0, 0, 5));
        }
    }

    /// Binary search agrees with a linear scan on random disjoint tables.
    #[test]
    fn lookup_matches_linear_scan(
        cuts in proptest::collection::btree_set(any::<u32>(), 0..40),
        probes in proptest::collection::vec(any::<u32>(), 1..50),
    ) {
        let cuts: Vec<u32> = cuts.into_iter().collect();
        let countries = [cc("AA"), cc("BB"), cc("CC")];
        // Pairs of cuts make ranges; every other pair is a gap.
        let ranges: Vec<(u32, u32, CountryCode)> = cuts
            .chunks_exact(2)
            .enumerate()
            .map(|(i, pair)| (pair[0], pair[1], countries[i % 3]))
            .collect();
        let db = GeoDb::from_bytes(&encode("p", &ranges, &[])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for p in probes.into_iter().chain(cuts.iter().copied()) {
            let linear = ranges.iter().find(|r| r.0 <= p && p <= r.1).map(|r| r.2);
            prop_assert_eq!(db.lookup(IpAddr::V4(Ipv4Addr::from(p))), linear);
        }
    }
}
