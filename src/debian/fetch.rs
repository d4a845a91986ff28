//! Getting files from a Debian mirror (http, https or file://), and `.deb`s
//! into a content-addressed pool where each is kept under its SHA-256.

use super::error::{DebianError, Result};
use crate::fsutil::IoAt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// A mirror's base URL (the folder holding `dists/` and `pool/`).
#[derive(Debug, Clone)]
pub struct Mirror {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Display for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// Largest index or package imgd will read from a mirror (a bound, not a
/// guess: Debian's largest .deb is under 2 GiB).
const MAX_BODY: u64 = 4 << 30;

impl Mirror {
    pub fn new(url: &str) -> Result<Mirror> {
        let base = crate::config::lock::checked_mirror_url(url)?;
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build();
        Ok(Mirror { base, agent: config.into() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// A reader over the file at `path`, below the mirror's base.
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        if path.split('/').any(|c| c == "..") {
            return Err(DebianError::Climbs { mirror: self.to_string(), path: path.to_string() });
        }
        let url = self.url(path);
        if let Some(local) = url.strip_prefix("file://") {
            let f = std::fs::File::open(local).at("reading", local)?;
            return Ok(Box::new(f));
        }
        let resp = match self.agent.get(&url).call() {
            Ok(resp) => resp,
            Err(e) => return Err(DebianError::Mirror { doing: "GET", url, source: Box::new(e) }),
        };
        Ok(Box::new(resp.into_body().into_reader().take(MAX_BODY)))
    }

    /// The whole file at `path` (indexes: small enough to hold).
    pub(crate) fn get(&self, path: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(path)?.read_to_end(&mut buf).map_err(|e| DebianError::Mirror {
            doing: "reading",
            url: self.url(path),
            source: Box::new(e),
        })?;
        Ok(buf)
    }
}

const PARTIAL: &str = ".partial-";

/// `.deb` files kept by SHA-256: `<dir>/<sha256>.deb`. A file is only ever
/// put there whole and checked (written to a temporary name, renamed), so
/// one found there is taken as complete.
#[derive(Debug, Clone)]
pub struct Pool {
    pub dir: PathBuf,
}

impl Pool {
    pub(crate) fn new(dir: PathBuf) -> Pool {
        Pool { dir }
    }

    pub(crate) fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.deb"))
    }

    pub(crate) fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// A new private folder in the pool's folder, for a download to land in
    /// before [`Pool::adopt`] checks it.
    pub(crate) fn partial_dir(&self) -> Result<tempfile::TempDir> {
        std::fs::create_dir_all(&self.dir).at("creating", &self.dir)?;
        Ok(tempfile::Builder::new()
            .prefix(PARTIAL)
            .tempdir_in(&self.dir)
            .at("making a private folder in", &self.dir)?)
    }

    /// Keeps a downloaded file as `sha256` if it has that size and digest;
    /// else this is an error (and the caller's private folder goes with it).
    pub(crate) fn adopt(&self, file: &std::path::Path, sha256: &str, size: u64) -> Result<PathBuf> {
        let got = std::fs::metadata(file).at("reading", file)?.len();
        let actual = crate::hash::sha256_file(file).at("reading", file)?;
        if got != size || actual != sha256 {
            let (at, sha256) = (String::new(), sha256.to_string());
            return Err(DebianError::NotLocked { at, got, actual, size, sha256 });
        }
        let dest = self.path(sha256);
        std::fs::File::open(file).and_then(|f| f.sync_all()).at("syncing", file)?;
        std::fs::rename(file, &dest).at("keeping", &dest)?;
        Ok(dest)
    }

    /// Removes downloads that a killed imgd left, an hour old or more (a
    /// running download is younger: it writes as it goes).
    pub(crate) fn sweep_partial(&self) {
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago);
            if old && e.file_name().to_string_lossy().starts_with(PARTIAL) {
                let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
    }

    /// Downloads `path` from `mirror` unless the pool has it; a download whose
    /// size or SHA-256 differs from what was locked is an error and is not kept.
    pub(crate) fn fetch(&self, mirror: &Mirror, path: &str, sha256: &str, size: u64) -> Result<PathBuf> {
        let dest = self.path(sha256);
        if dest.is_file() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&self.dir).at("creating", &self.dir)?;
        let mut tmp = tempfile::Builder::new().prefix(PARTIAL).tempfile_in(&self.dir).at("writing into", &self.dir)?;
        let mut reader = mirror.open(path)?.take(size + 1);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| DebianError::Mirror {
                doing: "downloading",
                url: mirror.url(path),
                source: Box::new(e),
            })?;
            if n == 0 {
                break;
            }
            got += n as u64;
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).at("writing", tmp.path())?;
        }
        let actual = hex::encode(hasher.finalize());
        if got != size || actual != sha256 {
            let (at, sha256) = (format!("{mirror}/{path}: "), sha256.to_string());
            return Err(DebianError::NotLocked { at, got, actual, size, sha256 });
        }
        tmp.as_file().sync_all().at("syncing", tmp.path())?;
        tmp.persist(&dest).map_err(|e| e.error).at("keeping", &dest)?;
        Ok(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_only_files_with_the_locked_digest() {
        let d = tempfile::tempdir().unwrap();
        let www = d.path().join("www");
        std::fs::create_dir_all(www.join("pool")).unwrap();
        std::fs::write(www.join("pool/a.deb"), b"package a").unwrap();
        let mirror = Mirror::new(&format!("file://{}", www.display())).unwrap();
        let pool = Pool::new(d.path().join("pool"));
        let good = crate::hash::sha256_hex(b"package a");

        let e = pool.fetch(&mirror, "pool/a.deb", &"0".repeat(64), 9).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
        let e = pool.fetch(&mirror, "pool/a.deb", &good, 8).unwrap_err().to_string();
        assert!(e.contains("got 9 bytes"), "{e}");
        // Nothing of the refused downloads is left, under any name.
        assert_eq!(std::fs::read_dir(&pool.dir).unwrap().count(), 0);

        let got = pool.fetch(&mirror, "pool/a.deb", &good, 9).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), b"package a");
        assert!(pool.has(&good));
        assert!(pool.fetch(&mirror, "../etc/passwd", &good, 9).is_ok(), "already pooled: no fetch");
        assert!(pool.fetch(&mirror, "../x.deb", &"1".repeat(64), 9).unwrap_err().to_string().contains("climbs out"));
        assert!(Mirror::new("ftp://x").is_err());
    }
}
