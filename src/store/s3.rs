//! The store's side of the AWS crate (feature `aws`): an entry as
//! `imgd_aws` sees it (named files with their digests, the machine's traits),
//! the options every AWS command shares, and the S3 build cache.

use super::remote::{Remote, RemoteError};
use super::Entry;
use crate::fsutil::{IoAt, IoError};
use crate::model::manifest::ArtifactName;
use crate::model::{Arch, Firmware, Format};
use std::path::Path;
use std::sync::Arc;

impl imgd_aws::Verify for crate::hash::Pieces {
    fn piece(&self, piece: u64, index: u64, data: &[u8]) -> std::io::Result<bool> {
        self.verifies(piece, index, data)
    }
}

impl Entry {
    /// The entry for `imgd_aws`: every artifact, then the manifest (uploaded
    /// last, it marks the entry complete in S3).
    pub fn for_aws(&self) -> Result<imgd_aws::Entry, IoError> {
        let m = &self.manifest;
        // Every piece read to be sent is checked against the manifest.
        let file = |name: &str, blake3: &str, size: u64| {
            let path = self.path.join(name);
            let check = Arc::new(crate::hash::Pieces::new(&path, size, blake3));
            imgd_aws::File {
                name: name.to_string(),
                path,
                digest: format!("blake3:{blake3}"),
                size,
                check: imgd_aws::Check(Some(check)),
            }
        };
        let mut files: Vec<imgd_aws::File> =
            m.artifacts.iter().map(|a| file(a.file.as_str(), &a.blake3, a.size)).collect();
        let manifest = self.path.join("manifest.json");
        let size = std::fs::metadata(&manifest).at("reading", &manifest)?.len();
        files.push(file("manifest.json", &crate::hash::artifact_digest(&manifest).at("reading", &manifest)?, size));
        let disk = |f: Format| m.artifact(f, ArtifactName::Disk).map(|a| file(a.file.as_str(), &a.blake3, a.size));
        Ok(imgd_aws::Entry {
            name: self.name.to_string(),
            hash: m.hash.to_string(),
            profile: m.profile.clone(),
            built_at: m.built_at,
            files,
            raw_disk: disk(Format::Raw),
            vhd: disk(Format::Vhd),
            machine: imgd_aws::Machine {
                arch: match m.arch {
                    Arch::X86_64 => imgd_aws::Arch::X86_64,
                    Arch::Aarch64 => imgd_aws::Arch::Arm64,
                },
                boot: match m.firmware {
                    Firmware::Uefi => imgd_aws::BootMode::Uefi,
                    Firmware::Bios => imgd_aws::BootMode::LegacyBios,
                },
                ena: m.recipe.ena,
                sriov: m.recipe.sriov,
            },
        })
    }
}

/// What every AWS call shares: the endpoint, attempts, where uploads in
/// flight are remembered, and progress on this terminal.
pub fn options(endpoint: Option<&str>, max_attempts: u32) -> imgd_aws::Options {
    imgd_aws::Options {
        endpoint_url: endpoint.map(str::to_string),
        max_attempts,
        state_dir: crate::dirs::cache().join("uploads"),
        progress: Arc::new(crate::progress::Progress::new(false)),
    }
}

/// An S3 build cache, reached through the AWS crate on a runtime of its own
/// (builds are synchronous code).
pub(crate) struct S3Cache {
    url: String,
    rt: tokio::runtime::Runtime,
    cache: imgd_aws::Cache,
}

impl S3Cache {
    pub(crate) fn new(url: &str, endpoint: Option<&str>) -> Result<S3Cache, String> {
        let at: imgd_aws::Location = url.parse()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the S3 client: {e}"))?;
        let cache = rt
            .block_on(imgd_aws::Cache::open(at, &options(endpoint, 8)))
            .map_err(|e| format!("starting the S3 client: {e:#}"))?;
        Ok(S3Cache { url: url.to_string(), rt, cache })
    }
}

impl S3Cache {
    fn failed(&self, doing: &'static str, entry: &str, file: &str) -> impl FnOnce(imgd_aws::Error) -> RemoteError {
        let (url, entry, file) = (self.url.clone(), entry.to_string(), file.to_string());
        move |e| RemoteError::Transfer { doing, url, entry, file, source: Box::new(e) }
    }
}

impl Remote for S3Cache {
    fn get(&self, entry: &str, file: &str, dest: &Path, max_size: u64) -> Result<bool, RemoteError> {
        self.rt.block_on(self.cache.get(entry, file, dest, max_size)).map_err(self.failed("fetching", entry, file))
    }

    fn push(&self, entry: &Entry, overwrite: bool) -> Result<(), RemoteError> {
        let e = entry.for_aws()?;
        self.rt.block_on(self.cache.put(&e.name, &e.files, overwrite)).map_err(self.failed("pushing", &e.name, "*"))?;
        let c = &self.cache.counters;
        tracing::info!("pushed {} to {} ({} bytes)", entry.name, self.url, c.get(&c.uploaded_bytes));
        Ok(())
    }

    fn put_file(&self, entry: &str, file: &str, path: &Path, sha256: &str, overwrite: bool) -> Result<(), RemoteError> {
        let size = std::fs::metadata(path).at("reading", path)?.len();
        let digest = format!("sha256:{sha256}");
        let check = imgd_aws::Check::default(); // the pool checks its packages' SHA-256
        let f = imgd_aws::File { name: file.to_string(), path: path.to_path_buf(), digest, size, check };
        self.rt.block_on(self.cache.put(entry, &[f], overwrite)).map_err(self.failed("pushing", entry, file))
    }

    fn url(&self) -> &str {
        &self.url
    }
}
