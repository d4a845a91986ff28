//! Uploading a store entry to `s3://bucket/<prefix>/<entry>/<file>`.
//!
//! Each object carries the artifact's SHA-256 as metadata (`imgd-sha256`) and
//! S3 verifies a SHA-256 checksum of every part; an object whose metadata
//! already matches is skipped. Large files go up in parts with bounded
//! parallelism; uploads a killed run left behind are aborted first, so
//! orphan parts never pile up.

use crate::Counters;
use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use std::path::Path;
use std::sync::Arc;

pub const PART: u64 = 16 << 20;
const PARALLEL_PARTS: usize = 4;

pub fn key(prefix: &str, entry: &str, file: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        format!("{entry}/{file}")
    } else {
        format!("{p}/{entry}/{file}")
    }
}

/// Whether `key` holds an object imgd uploaded with this SHA-256.
pub async fn present(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, sha256: &str) -> bool {
    let Ok(head) = s3.head_object().bucket(bucket).key(key).send().await else { return false };
    head.metadata().and_then(|m| m.get("imgd-sha256")).is_some_and(|v| v == sha256)
}

/// How [`upload_entry`] treats objects already there.
pub enum Mode<'p> {
    /// Skip objects whose imgd-sha256 metadata matches (the normal case).
    SkipPresent,
    /// Upload regardless (a copy there failed verification).
    Overwrite,
    /// Upload nothing; record what would go up.
    Plan(&'p mut crate::output::Plan),
}

/// Uploads every artifact of `entry` under `<prefix>/<entry>/`, then its
/// manifest: a manifest in S3 means the entry there is complete. Returns the
/// s3:// URLs.
pub async fn upload_entry(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    entry: &imgd::store::Entry,
    counters: &Counters,
    mut mode: Mode<'_>,
) -> Result<Vec<String>> {
    let m = &entry.manifest;
    let mut files: Vec<(String, String, u64)> =
        m.artifacts.iter().map(|x| (x.file.clone(), x.sha256.clone(), x.size)).collect();
    let manifest = entry.path.join("manifest.json");
    files.push(("manifest.json".into(), imgd::hash::sha256_file(&manifest)?, std::fs::metadata(&manifest)?.len()));
    let mut urls = Vec::new();
    for (file, sha, size) in &files {
        let k = key(prefix, &entry.name, file);
        let path = entry.path.join(file);
        match &mut mode {
            Mode::Plan(p) if !present(s3, bucket, &k, sha).await => {
                p.add("upload", &format!("s3://{bucket}"), &format!("{k} ({size} bytes)"))
            }
            Mode::Plan(_) => {}
            Mode::SkipPresent => {
                upload(s3, bucket, &k, &path, sha, counters, false).await?;
            }
            Mode::Overwrite => {
                upload(s3, bucket, &k, &path, sha, counters, true).await?;
            }
        }
        urls.push(format!("s3://{bucket}/{k}"));
    }
    Ok(urls)
}

/// Downloads `key` to `dest`; `Ok(false)` when there is no such object.
pub async fn download(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    dest: &Path,
    counters: &Counters,
) -> Result<bool> {
    use tokio::io::AsyncWriteExt;
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => o,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("GetObject s3://{bucket}/{key}")),
    };
    let mut body = out.body;
    let mut f = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
    while let Some(chunk) = body.try_next().await.with_context(|| format!("reading s3://{bucket}/{key}"))? {
        counters.downloaded_bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        f.write_all(&chunk).await?;
    }
    f.sync_all().await?;
    Ok(true)
}

/// Uploads `path` to `key` unless an object with the same SHA-256 is there
/// (or regardless, with `overwrite`).
/// Returns whether it uploaded.
pub async fn upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    sha256: &str,
    counters: &Counters,
    overwrite: bool,
) -> Result<bool> {
    if !overwrite && present(s3, bucket, key, sha256).await {
        tracing::info!("s3://{bucket}/{key}: present, same sha256");
        return Ok(false);
    }
    abort_stale(s3, bucket, key, counters).await?;
    let size = std::fs::metadata(path)?.len();
    if size <= PART {
        let body = ByteStream::from_path(path).await?;
        counters.mutate();
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata("imgd-sha256", sha256)
            .send()
            .await
            .with_context(|| format!("uploading s3://{bucket}/{key}"))?;
        counters.uploaded_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        return Ok(true);
    }
    counters.mutate();
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .metadata("imgd-sha256", sha256)
        .send()
        .await
        .with_context(|| format!("starting multipart upload of s3://{bucket}/{key}"))?;
    let upload_id = created.upload_id().context("no upload id")?.to_string();
    let result = upload_parts(s3, bucket, key, path, size, &upload_id, counters).await;
    match result {
        Ok(parts) => {
            counters.mutate();
            s3.complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .with_context(|| format!("completing s3://{bucket}/{key}"))?;
            Ok(true)
        }
        Err(e) => {
            // Never leave parts behind to be billed for.
            counters.mutate();
            let _ = s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
            Err(e)
        }
    }
}

async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    upload_id: &str,
    counters: &Counters,
) -> Result<Vec<CompletedPart>> {
    let n = size.div_ceil(PART);
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (s3, bucket, key, path, upload_id) =
            (s3.clone(), bucket.to_string(), key.to_string(), path.to_path_buf(), upload_id.to_string());
        let len = PART.min(size - i * PART);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, i * PART)?;
                Ok(buf)
            })
            .await??;
            let out = s3
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(i as i32 + 1)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .body(ByteStream::from(data))
                .send()
                .await
                .with_context(|| format!("part {} of s3://{bucket}/{key}", i + 1))?;
            anyhow::Ok(
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
                    .build(),
            )
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        counters.mutate();
        parts.push(t.await??);
    }
    counters.uploaded_bytes.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    Ok(parts)
}

/// Aborts multipart uploads of `key` that an interrupted run left open.
async fn abort_stale(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, counters: &Counters) -> Result<()> {
    let listed = s3.list_multipart_uploads().bucket(bucket).prefix(key).send().await;
    let Ok(listed) = listed else { return Ok(()) };
    for u in listed.uploads() {
        if u.key() == Some(key) {
            if let Some(id) = u.upload_id() {
                tracing::info!("aborting an interrupted upload of s3://{bucket}/{key}");
                counters.mutate();
                s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await?;
            }
        }
    }
    Ok(())
}
