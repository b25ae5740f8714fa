//! Custom alias rules.
//!
//! Invariants of every [`Alias`]: `ALIAS_CHARS_MIN..=ALIAS_CHARS_MAX` characters of
//! `[A-Za-z0-9_-]`; not a reserved word in any letter case (those paths belong to the API,
//! the admin pages and static files); and not shaped like a generated code (exactly 7
//! letters/digits), so an alias can never take a code the generator will mint later.
//! Aliases are case-sensitive like codes; reserved words are matched case-insensitively
//! because `/Admin` and `/admin` look the same to a person.

use std::fmt;

use crate::ids::CODE_LEN;

use super::AliasError;

/// Shortest custom alias, in characters.
pub const ALIAS_CHARS_MIN: usize = 3;
/// Longest custom alias, in characters.
pub const ALIAS_CHARS_MAX: usize = 32;

/// Paths the service itself uses or may use; never available as aliases.
pub const RESERVED_ALIASES: &[&str] = &[
    "about",
    "abuse",
    "account",
    "admin",
    "api",
    "app",
    "assets",
    "auth",
    "billing",
    "blog",
    "cdn",
    "contact",
    "dashboard",
    "debug",
    "delete",
    "docs",
    "edit",
    "favicon",
    "health",
    "healthz",
    "help",
    "home",
    "index",
    "internal",
    "legal",
    "links",
    "live",
    "livez",
    "login",
    "logout",
    "metrics",
    "new",
    "oauth",
    "privacy",
    "public",
    "ready",
    "readyz",
    "register",
    "report",
    "robots",
    "root",
    "security",
    "settings",
    "signin",
    "signup",
    "sitemap",
    "static",
    "stats",
    "status",
    "support",
    "system",
    "terms",
    "troupe",
    "user",
    "users",
    "well-known",
    "www",
];

/// A custom alias that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Alias(String);

impl Alias {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a requested custom alias. Whether it is already taken is the link store's call.
pub fn validate_alias(text: &str) -> Result<Alias, AliasError> {
    if let Some((position, found)) =
        text.chars().enumerate().find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(AliasError::BadChar { found, position });
    }
    // All ASCII from here on, so bytes are characters.
    let len_chars = text.len();
    if len_chars < ALIAS_CHARS_MIN {
        return Err(AliasError::TooShort { len_chars, min_chars: ALIAS_CHARS_MIN });
    }
    if len_chars > ALIAS_CHARS_MAX {
        return Err(AliasError::TooLong { len_chars, max_chars: ALIAS_CHARS_MAX });
    }
    let lower = text.to_ascii_lowercase();
    if RESERVED_ALIASES.contains(&lower.as_str()) {
        return Err(AliasError::Reserved { alias: text.to_string() });
    }
    if len_chars == CODE_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AliasError::GeneratedShape { alias: text.to_string() });
    }
    Ok(Alias(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_aliases() {
        for ok in ["abc", "my-link", "Summer_Sale_2026", "a-b", &"x".repeat(ALIAS_CHARS_MAX), "launch-7"] {
            assert_eq!(validate_alias(ok).map(Alias::into_string).ok().as_deref(), Some(ok));
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        assert!(matches!(validate_alias("ab"), Err(AliasError::TooShort { len_chars: 2, min_chars: 3 })));
        assert!(matches!(validate_alias(""), Err(AliasError::TooShort { len_chars: 0, .. })));
        assert!(matches!(validate_alias(&"x".repeat(33)), Err(AliasError::TooLong { len_chars: 33, .. })));
        assert!(matches!(validate_alias("my link"), Err(AliasError::BadChar { found: ' ', position: 2 })));
        assert!(matches!(validate_alias("caf\u{e9}"), Err(AliasError::BadChar { found: '\u{e9}', position: 3 })));
        assert!(matches!(validate_alias("a/b"), Err(AliasError::BadChar { found: '/', .. })));
        assert!(matches!(validate_alias("API"), Err(AliasError::Reserved { .. })));
        assert!(matches!(validate_alias("metrics"), Err(AliasError::Reserved { .. })));
        assert!(matches!(validate_alias("abcDEF1"), Err(AliasError::GeneratedShape { .. })));
        assert!(validate_alias("abc-EF1").is_ok(), "a dash takes it out of the code space");
    }

    #[test]
    fn messages_tell_what_to_do() {
        let msg = validate_alias("admin").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("admin") && msg.contains("choose"), "{msg}");
        let msg = validate_alias("ab").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains('3'), "{msg}");
    }

    proptest! {
        #[test]
        fn anything_accepted_obeys_the_charset_and_length(text in "\\PC{0,40}") {
            if let Ok(alias) = validate_alias(&text) {
                prop_assert!((ALIAS_CHARS_MIN..=ALIAS_CHARS_MAX).contains(&alias.as_str().len()));
                prop_assert!(alias.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                prop_assert!(!RESERVED_ALIASES.contains(&alias.as_str().to_ascii_lowercase().as_str()));
            }
        }

        #[test]
        fn generated_codes_are_never_valid_aliases(x in 0..crate::ids::DOMAIN_SIZE) {
            let code = crate::ids::encode(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(validate_alias(code.as_str()).is_err());
        }
    }
}
