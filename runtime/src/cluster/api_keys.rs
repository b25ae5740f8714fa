//! The cluster's API keys: how an end user (not a service, not the operator) proves who
//! they are to a system's HTTP API, as `Authorization: Bearer sk-…`. The LLM gateway
//! maps a key to the account it bills (user, org, tier); the URL shortener to the owner
//! of the links it creates.
//!
//! The keys live in `api-keys.toml` beside the cluster key (`.troupe/` by default):
//!
//! ```toml
//! [[key]]
//! key = "sk-troupe-3f…"     # 20..=256 characters, no spaces
//! user = "alice"
//! org = "acme"
//! tier = "paid"             # what a system makes of it (the LLM gateway: free | paid)
//! ```
//!
//! `troupe certs init` and `troupe up` write it 0600 with three development users
//! (alice and bob of acme, carol of globex) and random keys when it is missing, and
//! print where it is; nothing on main holds a key. A deployment edits the file (every
//! node reads it at start). Clients find a user's key the same documented way as the
//! tokens: `$TROUPE_API_KEY`, else the file ([`for_client`]).
//!
//! A node whose file is missing or broken refuses every key (and says so in its log;
//! a caller only hears that the keys are not available): it fails closed. A file with
//! no `[[key]]` is a deliberate choice of no keys (the LLM gateway then serves
//! everyone as `anonymous`).
//!
//! A node keeps only SHA-256 digests of the keys and finds an account by the digest
//! of what it was sent, so neither the comparison nor the lookup depends on how much
//! of a real key a guess shares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file's name, beside the cluster key.
pub const FILE_NAME: &str = "api-keys.toml";
/// The environment variable that gives a client its key instead of the file.
pub const ENV: &str = "TROUPE_API_KEY";
/// Shortest key accepted (a bearer secret anyone may guess at).
pub const KEY_CHARS_MIN: usize = 20;
/// Random bytes in a generated key (hex after the `sk-troupe-` prefix).
const KEY_BYTES: usize = 24;
/// The development users a new cluster gets: (user, org, tier).
pub const DEV_USERS: [(&str, &str, &str); 3] =
    [("alice", "acme", "paid"), ("bob", "acme", "free"), ("carol", "globex", "free")];

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Who: owner of what they create, the key of their rate limits.
    pub user: String,
    /// Their organization (the LLM gateway's per-org limits).
    pub org: String,
    /// What the system makes of it (the LLM gateway: `free` or `paid`).
    pub tier: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    #[serde(flatten)]
    account: Account,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<Entry>,
}

/// Where a cluster keeps its API keys: beside its cluster key.
pub fn path(key_file: &Path) -> PathBuf {
    key_file.with_file_name(FILE_NAME)
}

fn random_key() -> String {
    let hex: String = (0..KEY_BYTES).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    format!("sk-troupe-{hex}")
}

/// Writes the file with the development users if it is missing (0600, atomically);
/// true when it was created.
pub fn ensure(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let mut text = String::from(
        "# API keys of this cluster's users (docs/operations.md, \"Credentials\"). Made for\n\
         # development by `troupe certs init`; keep it 0600 and never commit it. Add a\n\
         # [[key]] per user; every node reads this file when it starts.\n",
    );
    for (user, org, tier) in DEV_USERS {
        text.push_str(&format!(
            "\n[[key]]\nkey = \"{}\"\nuser = \"{user}\"\norg = \"{org}\"\ntier = \"{tier}\"\n",
            random_key()
        ));
    }
    super::tls::write_secret(path, text.as_bytes())?;
    Ok(true)
}

/// Parses an API keys document: every key with its account, or the first thing wrong.
pub fn parse(text: &str) -> Result<Vec<(String, Account)>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(file.key.len());
    for Entry { key, account } in file.key {
        let u = &account.user;
        if key.len() < KEY_CHARS_MIN || key.len() > 256 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("the key of user `{u}` must be {KEY_CHARS_MIN}..=256 characters without spaces"));
        }
        for (what, v) in [("user", u), ("org", &account.org), ("tier", &account.tier)] {
            if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) {
                return Err(format!("every key needs a {what} of 1..=200 printable bytes (user `{u}`)"));
            }
        }
        if !seen.insert(key.clone()) {
            return Err(format!("the key of user `{u}` is listed twice"));
        }
        out.push((key, account));
    }
    Ok(out)
}

/// SHA-256 of a secret: what a node keeps and compares instead of the secret.
pub(crate) fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The key a client sends as `user`: `$TROUPE_API_KEY`, else that user's key in the
/// file beside `key_file`.
pub fn for_client(user: &str, key_file: &Path) -> Result<String, String> {
    if let Ok(k) = std::env::var(ENV)
        && !k.trim().is_empty()
    {
        return Ok(k.trim().to_string());
    }
    from_file(user, key_file)
}

/// `user`'s key in the file beside `key_file` (the environment is not consulted).
pub fn from_file(user: &str, key_file: &Path) -> Result<String, String> {
    let p = path(key_file);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("{}: {e} (run `troupe certs init`, or set ${ENV})", p.display()))?;
    let keys = parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    keys.into_iter()
        .find(|(_, a)| a.user == user)
        .map(|(k, _)| k)
        .ok_or_else(|| format!("{} has no key for user `{user}`", p.display()))
}

/// What a node checks presented API keys against.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Account>,
    /// Why the file could not be read (then no key is accepted).
    problem: Option<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys{})", self.by_digest.len(), if self.problem.is_some() { ", unreadable" } else { "" })
    }
}

impl ApiKeys {
    /// From the file (read once per node). A missing, unreadable or malformed file is
    /// logged with its reason, and every key is refused.
    pub fn load(path: &Path) -> ApiKeys {
        let why = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{} is missing (run `troupe certs init` to make it)", path.display())
            }
            Err(e) => format!("{}: {e}", path.display()),
            Ok(text) => match parse(&text) {
                Ok(keys) => return ApiKeys::of(keys),
                Err(e) => format!("{}: {e}", path.display()),
            },
        };
        tracing::error!(problem = %why, "API keys not loaded: every API key will be refused");
        ApiKeys { problem: Some(why), ..ApiKeys::default() }
    }

    /// From keys themselves (a topology's own list, tests).
    pub fn of(keys: impl IntoIterator<Item = (String, Account)>) -> ApiKeys {
        ApiKeys { by_digest: keys.into_iter().map(|(k, a)| (digest(&k), a)).collect(), problem: None }
    }

    /// Adds keys (a topology's own list on top of the cluster's file).
    pub fn extend(&mut self, keys: impl IntoIterator<Item = (String, Account)>) {
        self.by_digest.extend(keys.into_iter().map(|(k, a)| (digest(&k), a)));
    }

    /// Keys known.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// No keys and no unreadable file: authentication off where a system allows that.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty() && self.problem.is_none()
    }

    /// The account of the bare key `key` (no `Bearer ` prefix), or the reason it is refused.
    pub fn account_of(&self, key: &str) -> Result<&Account, String> {
        if self.problem.is_some() {
            // The reason (a path, a parse error naming users) is in the node's log,
            // not in an answer to whoever asks.
            return Err("this node's API keys are not available (its log says why)".to_string());
        }
        self.by_digest.get(&digest(key)).ok_or_else(|| "the API key is not valid for this cluster".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_keys_are_made_once_private_and_found_by_user() {
        let d = std::env::temp_dir().join(format!("troupe-apikeys-{}", rand::random::<u64>()));
        let key_file = d.join("cluster.key");
        let p = path(&key_file);
        assert!(ensure(&p).expect("write"));
        let first = std::fs::read_to_string(&p).expect("read");
        assert!(!ensure(&p).expect("second call"), "an existing file is kept");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777, 0o600);
        }
        let keys = ApiKeys::load(&p);
        assert_eq!(keys.len(), 3);
        let alice = for_client("alice", &key_file).expect("alice has a key");
        assert!(alice.starts_with("sk-troupe-") && alice.len() == 10 + 2 * KEY_BYTES);
        let acc = keys.account_of(&alice).expect("her key is valid");
        assert_eq!((acc.user.as_str(), acc.org.as_str(), acc.tier.as_str()), ("alice", "acme", "paid"));
        assert_ne!(for_client("bob", &key_file).expect("bob"), alice, "each user has their own key");
        assert!(for_client("mallory", &key_file).expect_err("no key").contains("no key for user `mallory`"));
        assert_eq!(
            keys.account_of("sk-troupe-guess").expect_err("refused"),
            "the API key is not valid for this cluster"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_broken_file_refuses_every_key_with_its_reason() {
        for (text, says) in [
            ("[[key]]\nkey = \"sk-short-key\"\nuser = \"a\"\norg = \"o\"\ntier = \"free\"\n", "20..=256 characters"),
            (
                "[[key]]\nkey = \"sk-1234567890abcdefghij\"\nuser = \"\"\norg = \"o\"\ntier = \"free\"\n",
                "a user of 1..=200",
            ),
            (
                "[[key]]\nkey = \"sk-1234567890abcdefghij\"\nuser = \"a\"\norg = \"o\"\ntier = \"free\"\n[[key]]\nkey = \"sk-1234567890abcdefghij\"\nuser = \"b\"\norg = \"o\"\ntier = \"free\"\n",
                "listed twice",
            ),
            ("[[key]]\nkey = \"sk-1234567890abcdefghij\"\nuser = \"a\"\n", "missing field"),
            (
                "[[key]]\nkey = \"sk-1234567890abcdefghij\"\nuser = \"a\"\norg = \"o\"\ntier = \"free\"\nadmin = true\n",
                "unknown field",
            ),
        ] {
            assert!(parse(text).expect_err(text).contains(says), "{text}: {:?}", parse(text).err());
        }
        let d = std::env::temp_dir().join(format!("troupe-apikeys-bad-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("dir");
        let p = d.join(FILE_NAME);
        std::fs::write(&p, "[[key]]\nkey = 7\n").expect("write");
        let keys = ApiKeys::load(&p);
        assert!(!keys.is_empty(), "a broken file is not the same as no keys");
        let why = keys.account_of("anything-at-all").expect_err("refused");
        assert_eq!(why, "this node's API keys are not available (its log says why)", "no path or parse error leaks");
        let missing = ApiKeys::load(&d.join("missing.toml"));
        assert!(!missing.is_empty(), "a missing file fails closed");
        assert!(missing.account_of("sk-troupe-anything-at-all").is_err());
        std::fs::write(&p, "# no keys\n").expect("write");
        assert!(ApiKeys::load(&p).is_empty(), "a file with no [[key]] is a deliberate choice of none");
        let _ = std::fs::remove_dir_all(&d);
    }
}
