//! Reading the URL shortener's geo table (the I/O its pure core leaves to the shell):
//! `$TROUPE_GEO_DB` if set, else `actors/shortener/data/geo-country.bin`, bounded in
//! size before it is read, then checked and indexed by `troupe_shortener::geo`.

use std::path::{Path, PathBuf};
use troupe_shortener::geo::{GEO_DB_ENV, GEO_DB_RELATIVE_PATH, GEO_FILE_BYTES_MAX, GeoDb, GeoError};

/// `$TROUPE_GEO_DB` if set, else the table `tools/build_geo.py` writes in the
/// shortener core's folder.
pub fn default_db_path() -> PathBuf {
    match std::env::var_os(GEO_DB_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GEO_DB_RELATIVE_PATH),
    }
}

/// Reads and checks a range file.
pub fn load(path: &Path) -> Result<GeoDb, GeoError> {
    let io = |source| GeoError::Io { path: path.to_path_buf(), source };
    let file_bytes = std::fs::metadata(path).map_err(io)?.len();
    if file_bytes > GEO_FILE_BYTES_MAX {
        return Err(GeoError::TooLarge { file_bytes, max_bytes: GEO_FILE_BYTES_MAX });
    }
    GeoDb::from_bytes(&std::fs::read(path).map_err(io)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_says_how_to_fix_it() {
        let err = load(Path::new("/nonexistent/geo.bin")).expect_err("missing");
        assert!(err.to_string().contains("build_geo.py"), "{err}");
    }
}
