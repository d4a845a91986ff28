//! A remote build cache: other machines' builds, looked up before building
//! and filled after, so a team (or a CI fleet) builds each input hash once.
//!
//! `s3://bucket/prefix` is the one kind today. The AWS SDK lives in the
//! `imgd-aws` companion binary, so this side runs `imgd-aws cache fetch|push`.
//! What a fetch brings is never trusted: [`crate::build`] checks the manifest
//! names the same hash and re-hashes every artifact before committing it.

use crate::config::error::from_toml;
use crate::config::ConfigError;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where builds are shared.
pub trait Remote {
    /// Downloads entry `name` into `dest`; false when the cache lacks it.
    fn fetch(&self, name: &str, dest: &Path) -> Result<bool>;
    /// Uploads a committed entry; `overwrite` replaces objects that claim to
    /// be the same (after a fetched copy failed verification).
    fn push(&self, entry: &super::Entry, overwrite: bool) -> Result<()>;
    fn url(&self) -> &str;
}

/// An S3 cache reached through `imgd-aws`.
pub struct S3Cache {
    url: String,
    exe: PathBuf,
    endpoint: Option<String>,
}

/// `imgd-aws cache fetch` exits with this when the bucket lacks the entry.
const MISS: i32 = 3;

impl S3Cache {
    pub fn new(url: &str) -> Result<S3Cache, ConfigError> {
        if !url.starts_with("s3://") || url.len() <= "s3://".len() {
            return Err(ConfigError::new("--cache", format!("`{url}`: a cache is an s3://bucket/prefix URL")));
        }
        // Beside this executable (cargo and packages install them together), else on PATH.
        let beside = std::env::current_exe().ok().map(|e| e.with_file_name("imgd-aws")).filter(|p| p.is_file());
        let exe = beside.unwrap_or_else(|| PathBuf::from("imgd-aws"));
        Ok(S3Cache { url: url.to_string(), exe, endpoint: None })
    }

    /// A custom S3 endpoint (else `$AWS_ENDPOINT_URL` or AWS's own).
    pub fn endpoint(mut self, url: Option<&str>) -> Self {
        self.endpoint = url.map(str::to_string);
        self
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<i32> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        if let Some(e) = &self.endpoint {
            cmd.args(["--endpoint-url", e]);
        }
        let status = cmd.status().with_context(|| {
            format!("running {} (build it with `cargo build --release -p imgd-aws`)", self.exe.display())
        })?;
        Ok(status.code().unwrap_or(1))
    }
}

impl Remote for S3Cache {
    fn fetch(&self, name: &str, dest: &Path) -> Result<bool> {
        let args = ["cache", "fetch", "--url", &self.url, "--entry", name, "--dest"].map(std::ffi::OsStr::new);
        match self.run(&[&args[..], &[dest.as_os_str()]].concat())? {
            0 => Ok(true),
            MISS => Ok(false),
            c => bail!("imgd-aws cache fetch exited with {c}"),
        }
    }

    fn push(&self, entry: &super::Entry, overwrite: bool) -> Result<()> {
        let args = ["cache", "push", "--url", &self.url, "--entry-dir"].map(std::ffi::OsStr::new);
        let flag: &[&std::ffi::OsStr] = if overwrite { &[std::ffi::OsStr::new("--overwrite")] } else { &[] };
        match self.run(&[&args[..], &[entry.path.as_os_str()], flag].concat())? {
            0 => Ok(()),
            c => bail!("imgd-aws cache push exited with {c}"),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// `<root>/imgd.toml`: settings shared by everyone who builds in this folder.
///
/// ```toml
/// cache = "s3://team-images/cache"   # like --cache / $IMGD_BUILD_CACHE
/// ```
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub cache: Option<String>,
}

impl Settings {
    pub fn load(root: &Path) -> Result<Settings, ConfigError> {
        let path = root.join("imgd.toml");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Settings::default()) };
        toml::from_str(&text).map_err(|e| from_toml(&path, &text, &e))
    }
}

/// The cache to use: the flag (or its environment variable), else imgd.toml.
pub fn configured(flag: Option<&str>, root: &Path) -> Result<Option<S3Cache>, ConfigError> {
    let url = match flag {
        Some(u) => Some(u.to_string()),
        None => Settings::load(root)?.cache,
    };
    match url.as_deref() {
        None | Some("") => Ok(None),
        Some(u) => S3Cache::new(u).map(Some).map_err(|e| {
            if flag.is_none() {
                let file = root.join("imgd.toml");
                let pos = crate::config::load::locate(&file, "cache");
                ConfigError::new(file, e.message).key("cache").at(pos)
            } else {
                e
            }
        }),
    }
}
