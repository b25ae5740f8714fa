//! User and conversation ids, and where a user's directory entry lives.

/// Longest user or conversation id, in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// A user id: 1..=128 bytes of ASCII letters, digits and `_ . @ -` (no `:`, which
/// joins the two users of a direct conversation's id).
pub fn check_user(user: &str) -> Result<(), String> {
    check(user, "user id", |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
}

/// A conversation id: 1..=128 bytes of ASCII letters, digits and `_ . @ - :`.
pub fn check_conversation(id: &str) -> Result<(), String> {
    check(id, "conversation id", |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-' | ':'))
}

fn check(s: &str, what: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    if s.is_empty() || s.len() > ID_BYTES_MAX {
        return Err(format!("a {what} is 1..={ID_BYTES_MAX} bytes, not {}", s.len()));
    }
    if let Some(bad) = s.chars().find(|c| !ok(*c)) {
        return Err(format!("a {what} may not contain {bad:?} (letters, digits and _ . @ - only)"));
    }
    Ok(())
}

/// The id of the direct conversation between `a` and `b` (the same either way round).
pub fn direct(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{x}:{y}")
}

/// Whether `id` names a direct conversation (its members are fixed: the two users).
pub fn direct_members(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("dm:")?;
    let (a, b) = rest.split_once(':')?;
    (check_user(a).is_ok() && check_user(b).is_ok() && a <= b).then_some((a, b))
}

/// FNV-1a: stable across builds and machines (a user's directory shard must not move).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The directory shard (`"0"..shards-1`) that holds `user`'s conversations.
pub fn directory_shard(user: &str, shards: u32) -> String {
    (stable_hash(user.as_bytes()) % u64::from(shards.max(1))).to_string()
}

/// The pub/sub topic of a conversation's events (gateways with a member online
/// subscribe; the conversation publishes once per such node).
pub fn conversation_topic(system: &str, conv: &str) -> String {
    format!("{system}/c/{conv}")
}

/// Topics that tell gateways of users joining and leaving conversations: users are
/// spread over this many (by `directory_shard`), so a node subscribes to a fixed 16
/// topics however many users it holds sessions of.
pub const USER_TOPICS: u32 = 16;

/// The pub/sub topic on which `user`'s joins and leaves are told.
pub fn user_topic(system: &str, user: &str) -> String {
    format!("{system}/u/{}", directory_shard(user, USER_TOPICS))
}

/// The topic of the gateways' presence digests.
pub fn presence_topic(system: &str) -> String {
    format!("{system}/presence")
}

/// Every user topic.
pub fn user_topics(system: &str) -> Vec<String> {
    (0..USER_TOPICS).map(|i| format!("{system}/u/{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_the_reason() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("a.b-c_d@e").is_ok());
        assert!(check_user("").unwrap_err().contains("1..=128"));
        assert!(check_user(&"x".repeat(129)).unwrap_err().contains("129"));
        assert!(check_user("a:b").unwrap_err().contains("':'"));
        assert!(check_user("a b").unwrap_err().contains("' '"));
        assert!(check_conversation("dm:a:b").is_ok());
        assert!(check_conversation("room/1").unwrap_err().contains("'/'"));
    }

    #[test]
    fn a_direct_id_is_the_same_both_ways_and_names_its_two_users() {
        assert_eq!(direct("bob", "alice"), "dm:alice:bob");
        assert_eq!(direct("alice", "bob"), "dm:alice:bob");
        assert_eq!(direct_members("dm:alice:bob"), Some(("alice", "bob")));
        assert_eq!(direct_members("dm:bob:alice"), None, "not in order: not a direct id");
        assert_eq!(direct_members("room"), None);
    }

    #[test]
    fn directory_shards_are_stable_and_spread() {
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[directory_shard(&format!("user{i}"), 8).parse::<usize>().unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
