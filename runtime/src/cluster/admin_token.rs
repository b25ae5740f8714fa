//! The admin token: what a caller of a node's state-changing admin routes (`POST
//! /v1/chaos`) must present as `Authorization: Bearer <token>`. It is 32 random bytes in
//! hex, in `admin.token` beside the cluster key (`.troupe/admin.token` by default),
//! written 0600 by `troupe certs init` and `troupe up` like every key, never by a node;
//! `$TROUPE_ADMIN_TOKEN` overrides the file for clients. A node compares SHA-256
//! digests in constant time.

use std::path::{Path, PathBuf};

/// Environment variable that gives clients the token instead of the file.
pub const ENV: &str = "TROUPE_ADMIN_TOKEN";
/// Bytes of a token (hex: twice as many characters).
pub const TOKEN_BYTES: usize = 32;

/// Where a cluster keeps its admin token: `admin.token` beside its cluster key.
pub fn path(key_file: &Path) -> PathBuf {
    key_file.with_file_name("admin.token")
}

/// Makes the token file if it is missing; true when it was created.
pub fn ensure(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    super::tls::write_random_hex(path, TOKEN_BYTES)?;
    Ok(true)
}

/// The token a client sends: `$TROUPE_ADMIN_TOKEN`, else the file.
pub fn for_client(path: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var(ENV)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    read(path)
}

/// Reads a token file.
pub fn read(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!("no admin token at {}: run `troupe certs init`, or set ${ENV}", path.display()));
    }
    super::tls::read_hex(path, TOKEN_BYTES, "an admin token")
}

/// What a node checks presented tokens against: the digest of its token, or why it has
/// none (then every state-changing admin request is refused).
#[derive(Clone)]
pub struct Verifier(Result<[u8; 32], String>);

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_ok() { "Verifier(token)" } else { "Verifier(none)" })
    }
}

fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Verifier {
    /// From the cluster's token file (read once, when the admin API starts).
    pub fn load(path: &Path) -> Verifier {
        Verifier(read(path).map(|t| digest(&t)))
    }

    /// From a token itself.
    pub fn of(token: &str) -> Verifier {
        Verifier(Ok(digest(token)))
    }

    /// Checks an `Authorization` header value; the error is the reason to send back.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let want = self.0.as_ref().map_err(|why| format!("this node has no admin token: {why}"))?;
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(format!(
                "an admin token is required: send `Authorization: Bearer <token>` (the token is in admin.token beside the cluster key, or ${ENV})"
            ));
        };
        let got = digest(given.trim());
        // Constant time: every byte is compared whatever the first difference.
        let diff = got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err("the admin token does not match this cluster's".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_and_checked_with_reasons() {
        let d = std::env::temp_dir().join(format!("troupe-admin-token-{}", rand::random::<u64>()));
        let p = path(&d.join("cluster.key"));
        assert!(ensure(&p).unwrap());
        assert!(!ensure(&p).unwrap(), "made once");
        let t = read(&p).unwrap();
        assert_eq!(t.len(), 64);
        let v = Verifier::load(&p);
        assert!(v.check(Some(&format!("Bearer {t}"))).is_ok());
        assert!(v.check(None).unwrap_err().contains("admin token is required"));
        assert!(v.check(Some("Bearer 00")).unwrap_err().contains("does not match"));
        assert!(v.check(Some(&t)).unwrap_err().contains("required"), "a bare token is not a Bearer header");
        let none = Verifier::load(&d.join("missing.token"));
        assert!(none.check(Some(&format!("Bearer {t}"))).unwrap_err().contains("no admin token"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(d);
    }
}
