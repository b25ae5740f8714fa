//! Cluster trust: a cluster CA, node and client certificates, and the rustls
//! configurations for mutual TLS on the QUIC endpoints.
//!
//! A node certificate carries the DNS name `<node>.node.troupe`; a client
//! certificate `<name>.client.troupe`. A peer's identity is read from the
//! certificate it presented (verified against the CA), never from a payload.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// DNS-name suffix of node certificates: node `n1` is `n1.node.troupe`.
pub const NODE_SUFFIX: &str = ".node.troupe";
/// DNS-name suffix of client certificates: client `cli` is `cli.client.troupe`.
pub const CLIENT_SUFFIX: &str = ".client.troupe";
/// DNS-name suffix of client certificates with the admin role: `ops.admin.troupe`.
pub const ADMIN_SUFFIX: &str = ".admin.troupe";
/// ALPN protocol id both ends of a troupe QUIC connection require.
pub const ALPN: &[u8] = b"troupe/1";

/// Why making, reading or using the cluster's certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read, written or parsed; the reason
    /// says how to make missing ones.
    #[error("{path}: {reason}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong, with a hint.
        reason: String,
    },
    /// Generating, signing or loading a certificate or key failed.
    #[error("certificate error: {0}")]
    Cert(String),
    /// rustls refused the certificates or settings when building a configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: e.to_string() }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerId {
    /// A node of the cluster, by node name.
    Node(String),
    /// A client (CLI, tool), by client name.
    Client(String),
    /// A client whose certificate carries the admin role (`troupe certs client NAME
    /// --admin`): what a kind that allows only `admin` asks for.
    Admin(String),
}

impl PeerId {
    /// The role a kind's `allow` list names for this peer (`node`, `client`, `admin`).
    pub fn role(&self) -> &'static str {
        match self {
            PeerId::Node(_) => "node",
            PeerId::Client(_) => "client",
            PeerId::Admin(_) => "admin",
        }
    }

    /// The name in the certificate.
    pub fn name(&self) -> &str {
        match self {
            PeerId::Node(n) | PeerId::Client(n) | PeerId::Admin(n) => n,
        }
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerId::Node(n) => write!(f, "node {n}"),
            PeerId::Client(c) => write!(f, "client {c}"),
            PeerId::Admin(c) => write!(f, "admin client {c}"),
        }
    }
}

/// The files of one cluster's trust folder.
#[derive(Debug, Clone)]
pub struct TlsDir(pub PathBuf);

impl TlsDir {
    /// The CA certificate, `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// The CA private key, `ca.key`; only needed to issue certificates.
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// The certificate `<name>.pem` (a node's name, or `client-<name>` for a client).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.pem"))
    }
    /// The private key `<name>.key` that goes with [`TlsDir::cert`].
    pub fn key(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.key"))
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_secret(path, contents.as_bytes()).map_err(|e| file_err(path, e))
}

/// Makes a secret of `bytes` random bytes, written as hex and a newline by
/// [`write_secret`] (the cluster key, the admin token), creating its folder.
pub(crate) fn write_random_hex(path: &Path, bytes: usize) -> std::io::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    let hex: String = (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    write_secret(path, format!("{hex}\n").as_bytes())
}

/// Reads a secret of `bytes` bytes written as hex; the error names the file and says a
/// `what` is that many hex characters.
pub(crate) fn read_hex(path: &Path, bytes: usize, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hex = text.trim();
    if hex.len() != bytes * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{}: {what} is {} hex characters", path.display(), bytes * 2));
    }
    Ok(hex.to_string())
}

/// Writes a secret (a private key, the cluster key) so that no other user can read it,
/// not even for a moment: a new file created with mode 0600 beside `path`, synced, then
/// renamed over it (a crash leaves the old file or the new one, never half of one).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover of a crashed run of this process id: it was never renamed into place.
    let _ = std::fs::remove_file(&tmp);
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let written = open.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Makes the CA if it is missing. Returns true when it was created.
pub fn ensure_ca(dir: &TlsDir, cluster: &str) -> Result<bool, TlsError> {
    match (dir.ca_cert().exists(), dir.ca_key().exists()) {
        // The CA's key may be kept elsewhere (a host holds only its bundle, or the key
        // is offline): nothing is made, and issuing a certificate here says the key is
        // missing. A new CA would not match the cluster's certificates.
        (true, _) => return Ok(false),
        (false, true) => {
            return Err(TlsError::Cert(format!(
                "{} exists without {}: restore the CA certificate (a new CA would not match the cluster's \
                 certificates), or remove the key to start a new CA and issue every certificate again",
                dir.ca_key().display(),
                dir.ca_cert().display()
            )));
        }
        (false, false) => {}
    }
    std::fs::create_dir_all(&dir.0).map_err(|e| file_err(&dir.0, e))?;
    let key = KeyPair::generate().map_err(|e| TlsError::Cert(e.to_string()))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Cert(e.to_string()))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, format!("troupe cluster CA ({cluster})"));
    let cert = p.self_signed(&key).map_err(|e| TlsError::Cert(e.to_string()))?;
    std::fs::write(dir.ca_cert(), cert.pem()).map_err(|e| file_err(&dir.ca_cert(), e))?;
    write_private(&dir.ca_key(), &key.serialize_pem())?;
    Ok(true)
}

/// Issues a certificate for `id` signed by the cluster CA, unless one exists.
/// Returns true when it was created.
pub fn ensure_cert(dir: &TlsDir, id: &PeerId) -> Result<bool, TlsError> {
    let (file, dns) = match id {
        PeerId::Node(n) => (n.clone(), format!("{n}{NODE_SUFFIX}")),
        PeerId::Client(c) => (format!("client-{c}"), format!("{c}{CLIENT_SUFFIX}")),
        PeerId::Admin(c) => (format!("client-{c}"), format!("{c}{ADMIN_SUFFIX}")),
    };
    if dir.cert(&file).exists() && dir.key(&file).exists() {
        return Ok(false);
    }
    let ca_pem = std::fs::read_to_string(dir.ca_cert()).map_err(|e| file_err(&dir.ca_cert(), e))?;
    let ca_key_pem = std::fs::read_to_string(dir.ca_key()).map_err(|e| {
        file_err(&dir.ca_key(), format!("{e} (the CA key is needed to issue certificates: run `troupe certs init`)"))
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Cert(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| TlsError::Cert(e.to_string()))?;
    let key = KeyPair::generate().map_err(|e| TlsError::Cert(e.to_string()))?;
    let mut p = CertificateParams::new(vec![dns.clone()]).map_err(|e| TlsError::Cert(e.to_string()))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, dns);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).map_err(|e| TlsError::Cert(e.to_string()))?;
    std::fs::write(dir.cert(&file), cert.pem()).map_err(|e| file_err(&dir.cert(&file), e))?;
    write_private(&dir.key(&file), &key.serialize_pem())?;
    Ok(true)
}

/// The certificate chain and key of `id`, and the CA roots.
pub struct Identity {
    /// The certificate chain presented to peers, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA, the only root peers are verified against.
    pub roots: Arc<rustls::RootCertStore>,
}

/// Reads the certificate, key and CA of `id` from `dir`. A missing file is a
/// [`TlsError::File`] that says how to make the certificates.
pub fn load_identity(dir: &TlsDir, id: &PeerId) -> Result<Identity, TlsError> {
    let file = match id {
        PeerId::Node(n) => n.clone(),
        PeerId::Client(c) | PeerId::Admin(c) => format!("client-{c}"),
    };
    let hint = |p: &Path, e: &dyn std::fmt::Display| {
        file_err(p, format!("{e} (run `troupe certs init --cluster <file>` to make the cluster's certificates)"))
    };
    let chain = CertificateDer::pem_file_iter(dir.cert(&file))
        .map_err(|e| hint(&dir.cert(&file), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| hint(&dir.cert(&file), &e))?;
    let key = PrivateKeyDer::from_pem_file(dir.key(&file)).map_err(|e| hint(&dir.key(&file), &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.ca_cert()).map_err(|e| hint(&dir.ca_cert(), &e))? {
        let ca = ca.map_err(|e| hint(&dir.ca_cert(), &e))?;
        roots.add(ca).map_err(|e| TlsError::Cert(e.to_string()))?;
    }
    Ok(Identity { chain, key, roots: Arc::new(roots) })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side of a node endpoint: requires a client certificate from the CA.
pub fn server_config(id: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    c.alpn_protocols = vec![ALPN.to_vec()];
    Ok(c)
}

/// Client side: verifies the server against the CA and presents our certificate.
pub fn client_config(id: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(id.roots.clone())
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    c.alpn_protocols = vec![ALPN.to_vec()];
    Ok(c)
}

/// The peer identity in a (CA-verified) certificate.
pub fn peer_from_cert(cert: &CertificateDer<'_>) -> Option<PeerId> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok()??;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(d) = name {
            if let Some(n) = d.strip_suffix(NODE_SUFFIX) {
                return Some(PeerId::Node(n.to_string()));
            }
            if let Some(c) = d.strip_suffix(CLIENT_SUFFIX) {
                return Some(PeerId::Client(c.to_string()));
            }
            if let Some(c) = d.strip_suffix(ADMIN_SUFFIX) {
                return Some(PeerId::Admin(c.to_string()));
            }
        }
    }
    None
}

/// Server name to dial node `name`.
pub fn node_server_name(name: &str) -> String {
    format!("{name}{NODE_SUFFIX}")
}

/// Makes the cluster's CA, a certificate for every node and one client
/// certificate (`cli`), skipping what exists. Returns the files it created.
pub fn init_cluster(dir: &TlsDir, cluster: &str, nodes: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    let mut made = Vec::new();
    if ensure_ca(dir, cluster)? {
        made.push(dir.ca_cert());
    }
    for n in nodes {
        if ensure_cert(dir, &PeerId::Node(n.clone()))? {
            made.push(dir.cert(n));
        }
    }
    if ensure_cert(dir, &PeerId::Client("cli".into()))? {
        made.push(dir.cert("client-cli"));
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_reads_back_identities() {
        let d = std::env::temp_dir().join(format!("troupe-tls-{}", rand::random::<u64>()));
        let dir = TlsDir(d.clone());
        let made = init_cluster(&dir, "t", &["n1".into(), "n2".into()]).unwrap();
        assert_eq!(made.len(), 4);
        assert!(init_cluster(&dir, "t", &["n1".into()]).unwrap().is_empty(), "idempotent");
        let id = load_identity(&dir, &PeerId::Node("n2".into())).unwrap();
        assert_eq!(peer_from_cert(&id.chain[0]), Some(PeerId::Node("n2".into())));
        let cli = load_identity(&dir, &PeerId::Client("cli".into())).unwrap();
        assert_eq!(peer_from_cert(&cli.chain[0]), Some(PeerId::Client("cli".into())));
        assert!(ensure_cert(&dir, &PeerId::Admin("ops".into())).unwrap());
        let ops = load_identity(&dir, &PeerId::Client("ops".into())).unwrap();
        assert_eq!(peer_from_cert(&ops.chain[0]), Some(PeerId::Admin("ops".into())), "the role is in the certificate");
        server_config(&id).unwrap();
        client_config(&cli).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [dir.ca_key(), dir.key("n1"), dir.key("n2")] {
                let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is readable by others", key.display());
            }
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_secret_replaces_a_readable_file_with_an_owner_only_one() {
        let d = std::env::temp_dir().join(format!("troupe-secret-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("cluster.key");
        std::fs::write(&p, "old").unwrap();
        write_secret(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // No temporary file is left beside it.
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["cluster.key"]);
        // A folder that does not exist is an error, not a panic.
        assert!(write_secret(&d.join("no/such/dir/k"), b"x").is_err());
        let _ = std::fs::remove_dir_all(d);
    }
}
