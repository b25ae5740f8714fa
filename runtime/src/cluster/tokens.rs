//! The cluster's HTTP credentials: bearer tokens that callers of state-changing or
//! quota-spending routes present as `Authorization: Bearer <token>`.
//!
//! - The **admin** token (`admin.token`, `$TROUPE_ADMIN_TOKEN`): the admin API's
//!   `POST /v1/chaos`, the rate limiter's `PUT /v1/rules`.
//! - The **service** token (`service.token`, `$TROUPE_SERVICE_TOKEN`): what a trusted
//!   service presents — the rate limiter's `POST /v1/check`, the JSON gateway's
//!   writes (kv), an authenticating proxy that sets the URL shortener's `X-User-Id`.
//!   The admin token passes wherever the service token is asked for.
//!
//! Each is 32 random bytes in hex, in a file beside the cluster key (`.troupe/` by
//! default), written 0600 by `troupe certs init` and `troupe up` like every key, never
//! by a node and never committed; the environment variable overrides the file for
//! clients. A node compares SHA-256 digests in constant time.

use super::api_keys::digest;
use std::path::{Path, PathBuf};

/// Bytes of a token (hex: twice as many characters).
pub const TOKEN_BYTES: usize = 32;

/// Which credential a route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The operator: fault injection, rule changes.
    Admin,
    /// A trusted service: quota checks, writes through the JSON gateway, a proxy
    /// vouching for a user.
    Service,
}

impl Role {
    /// The token's file name, beside the cluster key.
    pub fn file_name(self) -> &'static str {
        match self {
            Role::Admin => "admin.token",
            Role::Service => "service.token",
        }
    }

    /// The environment variable that gives clients the token instead of the file.
    pub fn env(self) -> &'static str {
        match self {
            Role::Admin => "TROUPE_ADMIN_TOKEN",
            Role::Service => "TROUPE_SERVICE_TOKEN",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

/// Where a cluster keeps a token: beside its cluster key.
pub fn path(role: Role, key_file: &Path) -> PathBuf {
    key_file.with_file_name(role.file_name())
}

/// Makes the token file if it is missing; true when it was created.
pub fn ensure(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    super::tls::write_random_hex(path, TOKEN_BYTES)?;
    Ok(true)
}

/// The token a client sends: the role's environment variable, else the file beside
/// `key_file`.
pub fn for_client(role: Role, key_file: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var(role.env())
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    read(role, &path(role, key_file))
}

/// Reads a token file.
pub fn read(role: Role, path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!(
            "no {} token at {}: run `troupe certs init`, or set ${}",
            role.what(),
            path.display(),
            role.env()
        ));
    }
    super::tls::read_hex(path, TOKEN_BYTES, &format!("a {} token", role.what()))
}

/// What a node checks presented tokens of one role against: the digest of the token,
/// or why it has none (then every request that needs it is refused).
#[derive(Clone)]
pub struct Verifier {
    role: Role,
    want: Result<[u8; 32], String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({}, {})", self.role.what(), if self.want.is_ok() { "token" } else { "none" })
    }
}

/// The token of a `Bearer` header value, if it is one.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

impl Verifier {
    /// From the cluster's token file (read once, when a listener starts).
    pub fn load(role: Role, path: &Path) -> Verifier {
        Verifier { role, want: read(role, path).map(|t| digest(&t)) }
    }

    /// From a token itself.
    pub fn of(role: Role, token: &str) -> Verifier {
        Verifier { role, want: Ok(digest(token)) }
    }

    /// Whether the header carries this token (constant time).
    fn matches(&self, authorization: Option<&str>) -> bool {
        let (Ok(want), Some(given)) = (&self.want, bearer(authorization)) else { return false };
        let got = digest(given);
        // Constant time: every byte is compared whatever the first difference.
        got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Checks an `Authorization` header value; the error is the reason to send back.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let what = self.role.what();
        if let Err(why) = &self.want {
            return Err(format!("this node has no {what} token: {why}"));
        }
        if bearer(authorization).is_none() {
            return Err(format!(
                "{} {what} token is required: send `Authorization: Bearer <token>` (the token is in {} beside the cluster key, or ${})",
                if self.role == Role::Admin { "an" } else { "a" },
                self.role.file_name(),
                self.role.env()
            ));
        }
        if self.matches(authorization) {
            Ok(())
        } else {
            Err(format!("the {what} token does not match this cluster's"))
        }
    }
}

/// A cluster's tokens and its users' API keys, as a node checks requests.
#[derive(Debug, Clone)]
pub struct Credentials {
    admin: Verifier,
    service: Verifier,
    api_keys: super::api_keys::ApiKeys,
}

impl Credentials {
    /// The tokens and API keys beside `key_file` (read once).
    pub fn load(key_file: &Path) -> Credentials {
        Credentials {
            admin: Verifier::load(Role::Admin, &path(Role::Admin, key_file)),
            service: Verifier::load(Role::Service, &path(Role::Service, key_file)),
            api_keys: super::api_keys::ApiKeys::load(&super::api_keys::path(key_file)),
        }
    }

    /// From the tokens themselves (in-process tests and labs); no API keys.
    pub fn of(admin: &str, service: &str) -> Credentials {
        Credentials {
            admin: Verifier::of(Role::Admin, admin),
            service: Verifier::of(Role::Service, service),
            api_keys: super::api_keys::ApiKeys::default(),
        }
    }

    /// The same, with these API keys.
    pub fn with_api_keys(mut self, keys: super::api_keys::ApiKeys) -> Credentials {
        self.api_keys = keys;
        self
    }

    /// The users' API keys.
    pub fn api_keys(&self) -> &super::api_keys::ApiKeys {
        &self.api_keys
    }

    /// The account whose API key `authorization` carries as a bearer token, `Ok(None)`
    /// when it carries no bearer token, or the reason the key is refused.
    pub fn account(&self, authorization: Option<&str>) -> Result<Option<&super::api_keys::Account>, String> {
        match bearer(authorization) {
            None => Ok(None),
            Some(key) => self.api_keys.account_of(key).map(Some),
        }
    }

    /// Whether `authorization` carries a token of `need` (the admin token also passes
    /// where the service token is asked for); the error is the reason to send back.
    pub fn check(&self, need: Role, authorization: Option<&str>) -> Result<(), String> {
        match need {
            Role::Admin => self.admin.check(authorization),
            Role::Service if self.admin.matches(authorization) => Ok(()),
            Role::Service => self.service.check(authorization),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_and_checked_with_reasons() {
        let d = std::env::temp_dir().join(format!("troupe-tokens-{}", rand::random::<u64>()));
        let key = d.join("cluster.key");
        for role in [Role::Admin, Role::Service] {
            let p = path(role, &key);
            assert!(ensure(&p).unwrap());
            assert!(!ensure(&p).unwrap(), "made once");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        let admin = read(Role::Admin, &path(Role::Admin, &key)).unwrap();
        let service = read(Role::Service, &path(Role::Service, &key)).unwrap();
        assert_eq!(admin.len(), 64);
        assert_ne!(admin, service);
        let c = Credentials::load(&key);
        let h = |t: &str| format!("Bearer {t}");
        assert!(c.check(Role::Admin, Some(&h(&admin))).is_ok());
        assert!(c.check(Role::Service, Some(&h(&service))).is_ok());
        assert!(c.check(Role::Service, Some(&h(&admin))).is_ok(), "the admin token passes for a service");
        let e = c.check(Role::Admin, Some(&h(&service))).unwrap_err();
        assert!(e.contains("admin token does not match"), "the service token is no admin token: {e}");
        let e = c.check(Role::Service, None).unwrap_err();
        assert!(e.contains("a service token is required") && e.contains("TROUPE_SERVICE_TOKEN"), "{e}");
        assert!(c.check(Role::Admin, None).unwrap_err().contains("an admin token is required"));
        assert!(c.check(Role::Service, Some("Bearer 00")).unwrap_err().contains("does not match"));
        assert!(c.check(Role::Service, Some(&service)).unwrap_err().contains("required"), "a bare token is no Bearer");
        let none = Credentials::load(&d.join("elsewhere/cluster.key"));
        assert!(none.check(Role::Admin, Some(&h(&admin))).unwrap_err().contains("no admin token"));
        let _ = std::fs::remove_dir_all(d);
    }
}
