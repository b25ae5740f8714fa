//! Lookups against the real range file built by `tools/build_geo.py`.
//!
//! Skips (with a message) when the file is absent, unless `TROUPE_REQUIRE_GEO` is set, in
//! which case absence fails: CI sets it after running the build script.

use std::net::IpAddr;
use std::path::Path;

use troupe_shortener::geo::{CountryCode, GEO_DB_ENV, GEO_DB_RELATIVE_PATH, GeoDb};

fn real_db() -> Option<GeoDb> {
    let path = match std::env::var_os(GEO_DB_ENV) {
        Some(p) if !p.is_empty() => p.into(),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GEO_DB_RELATIVE_PATH),
    };
    if !path.exists() {
        if std::env::var_os("TROUPE_REQUIRE_GEO").is_some() {
            panic!(
                "TROUPE_REQUIRE_GEO is set but {} is missing; run python3 actors/shortener/core/tools/build_geo.py",
                path.display()
            );
        }
        eprintln!("SKIPPED: no geo database at {} (run actors/shortener/core/tools/build_geo.py)", path.display());
        return None;
    }
    // Tests may read files; the crate itself does not.
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(GeoDb::from_bytes(&bytes).unwrap_or_else(|e| panic!("{e}")))
}

fn country(db: &GeoDb, ip: &str) -> Option<String> {
    db.lookup(ip.parse::<IpAddr>().expect("valid address")).map(|c: CountryCode| c.to_string())
}

#[test]
fn real_database_answers_known_addresses() {
    let Some(db) = real_db() else { return };
    let (v4, v6) = db.range_counts();
    assert!(v4 > 100_000 && v6 > 50_000, "suspiciously small table: {v4} IPv4 / {v6} IPv6 ranges");
    assert!(db.source().contains("GeoLite2"), "attribution missing: {}", db.source());
    // Addresses whose registration country is stable and well known.
    assert_eq!(country(&db, "8.8.8.8").as_deref(), Some("US"));
    assert_eq!(country(&db, "81.2.69.142").as_deref(), Some("GB"));
    assert_eq!(country(&db, "200.147.67.142").as_deref(), Some("BR"));
    assert_eq!(country(&db, "2001:4860:4860::8888").as_deref(), Some("US"));
    // Private and documentation space has no country.
    assert_eq!(country(&db, "10.0.0.1"), None);
    assert_eq!(country(&db, "192.0.2.1"), None);
    assert_eq!(country(&db, "fd00::1"), None);
}
