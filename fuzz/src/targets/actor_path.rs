//! Actor paths come from clients in every envelope and HTTP route: parsing never
//! panics, and an accepted path prints as text that parses to the same path.

use troupe_wire::ActorPath;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = ActorPath::parse(text) {
        let again = ActorPath::parse(&p.to_string()).expect("a printed path parses");
        assert_eq!(again, p);
    }
}
