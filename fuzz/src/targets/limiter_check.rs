//! `POST /v1/check` bodies (the rate limiter's HTTP API and the middleware): checks or a
//! reason naming the field, never a panic; accepted checks always name a rule.

use troupe_limiter::json::parse_checks;

pub fn run(data: &[u8]) {
    match parse_checks(data) {
        Ok(items) => assert!(items.iter().all(|c| !c.rule.is_empty()), "a check without a rule"),
        Err(why) => assert!(!why.is_empty()),
    }
}
