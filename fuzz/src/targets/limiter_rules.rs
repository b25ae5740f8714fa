//! Rules documents (`PUT /v1/rules`, `troupe limiter rules`): a rule set or every error
//! with its line, never a panic; an accepted set renders as JSON.

use troupe_limiter::RuleSet;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match RuleSet::from_toml_str(text) {
        Ok(set) => {
            let json = troupe_limiter::json::rules(&set);
            assert_eq!(json["rules"].as_array().map(Vec::len), Some(set.len()));
        }
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
}
