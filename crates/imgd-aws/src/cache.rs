//! The S3 side of the shared build cache (`imgd build --cache s3://bucket/prefix`).
//!
//! imgd runs `imgd-aws cache fetch` before building and `imgd-aws cache push`
//! after; the S3 layout is the one `imgd sync` writes, so a synced build is a
//! cache hit too. An entry in S3 is complete once its manifest.json is there
//! (push uploads it last); fetch downloads into a directory imgd then verifies
//! against the manifest before it commits it to the store.

use crate::{clients::Clients, s3, AwsArgs, Counters};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Exit status of `cache fetch` when the bucket does not have the entry.
pub const MISS: i32 = 3;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCmd {
    /// Download a complete entry into DEST (exit 3 when the bucket lacks it).
    Fetch {
        #[arg(long)]
        url: String,
        /// Entry name, `<hash>-<profile>`.
        #[arg(long)]
        entry: String,
        #[arg(long)]
        dest: PathBuf,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Upload a store entry (artifacts, then its manifest).
    Push {
        #[arg(long)]
        url: String,
        /// The entry's directory in the store.
        #[arg(long)]
        entry_dir: PathBuf,
        /// Replace objects even when their metadata claims the same content
        /// (imgd passes it after a fetched copy failed verification).
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        aws: AwsArgs,
    },
}

/// `s3://bucket/some/prefix` -> ("bucket", "some/prefix").
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.strip_prefix("s3://") else {
        bail!(imgd::config::ConfigError::new("--cache", format!("`{url}` is not an s3://bucket/prefix URL")));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!(imgd::config::ConfigError::new("--cache", format!("`{url}` names no bucket")));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// Runs a cache subcommand; returns the process exit status.
pub fn run(cmd: &CacheCmd) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        CacheCmd::Fetch { url, entry, dest, aws } => rt.block_on(async {
            let (bucket, prefix) = parse_url(url)?;
            let s3c = Clients::load("us-east-1", aws).await.s3();
            let counters = Counters::default();
            // The manifest first: without it the entry is absent or incomplete.
            let manifest_path = dest.join("manifest.json");
            if !s3::download(&s3c, &bucket, &s3::key(&prefix, entry, "manifest.json"), &manifest_path, &counters)
                .await?
            {
                return Ok(MISS);
            }
            let manifest = imgd::store::Manifest::read(&manifest_path)?;
            for a in &manifest.artifacts {
                let key = s3::key(&prefix, entry, &a.file);
                if !s3::download(&s3c, &bucket, &key, &dest.join(&a.file), &counters).await? {
                    tracing::warn!("s3://{bucket}/{key} is missing although the manifest lists it");
                    return Ok(MISS);
                }
            }
            tracing::info!("fetched {entry} from {url} ({} bytes)", counters.get(&counters.downloaded_bytes));
            Ok(0)
        }),
        CacheCmd::Push { url, entry_dir, overwrite, aws } => rt.block_on(async {
            let (bucket, prefix) = parse_url(url)?;
            let dir = entry_dir.canonicalize().with_context(|| format!("{}", entry_dir.display()))?;
            let name = dir.file_name().context("entry directory has no name")?.to_string_lossy().into_owned();
            let manifest = imgd::store::Manifest::read(&dir.join("manifest.json"))?;
            let entry = imgd::store::Entry { name, path: dir, manifest };
            let s3c = Clients::load("us-east-1", aws).await.s3();
            let counters = Counters::default();
            let mode = if *overwrite { s3::Mode::Overwrite } else { s3::Mode::SkipPresent };
            s3::upload_entry(&s3c, &bucket, &prefix, &entry, &counters, mode).await?;
            tracing::info!("pushed {} to {url} ({} bytes)", entry.name, counters.get(&counters.uploaded_bytes));
            Ok(0)
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_urls() {
        assert_eq!(super::parse_url("s3://b/p/q/").unwrap(), ("b".into(), "p/q".into()));
        assert_eq!(super::parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(super::parse_url("https://b/p").is_err());
        assert!(super::parse_url("s3:///p").is_err());
    }
}
