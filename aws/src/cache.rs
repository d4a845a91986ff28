//! The S3 side of the shared build cache (`imgd build --cache s3://bucket/prefix`).
//!
//! The layout is the one `imgd sync` writes, so a synced build is a cache hit
//! too. An entry in S3 is complete once its manifest.json is there ([`put`]
//! uploads it last). This module only moves bytes: imgd reads the manifest,
//! checks it, and names each file it wants with the size it expects; nothing
//! fetched is trusted until imgd has re-hashed it.

use crate::s3::Location;
use crate::{clients::Clients, options::Counters, options::Options};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::atomic::Ordering;

/// A build cache in one S3 place.
pub struct Cache {
    pub at: Location,
    s3: aws_sdk_s3::Client,
    opts: Options,
    pub counters: Counters,
}

impl Cache {
    pub fn open(at: Location, opts: &Options) -> crate::error::Task<'_, Cache> {
        Box::pin(async move {
            let s3 = Clients::load("us-east-1", opts).await.s3();
            Ok(Cache { at, s3, opts: opts.clone(), counters: Counters::default() })
        })
    }

    /// Downloads `<entry>/<file>` into `dest` (created new). `Ok(false)` when
    /// the object is not there. An object larger than `max_size` is refused
    /// before its body is read, and a body that runs past it is cut off: a
    /// poisoned cache cannot fill the builder's disk.
    pub fn get<'a>(
        &'a self,
        entry: &'a str,
        file: &'a str,
        dest: &'a Path,
        max_size: u64,
    ) -> crate::error::Task<'a, bool> {
        crate::error::task(self.download(entry, file, dest, max_size))
    }

    async fn download(&self, entry: &str, file: &str, dest: &Path, max_size: u64) -> Result<bool> {
        use tokio::io::AsyncWriteExt;
        let key = self.at.key(entry, file);
        let url = self.at.url(&key);
        let out = match self.s3.get_object().bucket(&self.at.bucket).key(&key).send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("GetObject {url}")),
        };
        if let Some(len) = out.content_length().filter(|l| *l as u64 > max_size) {
            bail!("{url} is {len} bytes, more than the {max_size} expected");
        }
        let mut body = out.body;
        // create_new: never follow or reuse something already at `dest`.
        let mut f = tokio::fs::File::options()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        let mut got = 0u64;
        while let Some(chunk) = body.try_next().await.with_context(|| format!("reading {url}"))? {
            got += chunk.len() as u64;
            if got > max_size {
                bail!("{url} is longer than the {max_size} bytes expected");
            }
            self.counters.downloaded_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            f.write_all(&chunk).await?;
        }
        f.sync_all().await?;
        Ok(true)
    }

    /// Uploads an entry's files (the manifest last); `overwrite` replaces
    /// objects that claim the same content (after a fetched copy failed its check).
    pub fn put<'a>(
        &'a self,
        entry: &'a str,
        files: &'a [crate::model::File],
        overwrite: bool,
    ) -> crate::error::Task<'a, ()> {
        crate::error::task(crate::s3::upload_files(
            &self.s3,
            &self.at,
            entry,
            files,
            &self.counters,
            overwrite,
            &self.opts,
        ))
    }
}
