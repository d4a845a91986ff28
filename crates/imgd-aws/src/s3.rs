//! Uploading a store entry to `s3://bucket/<prefix>/<entry>/<file>`.
//!
//! Each object carries the artifact's SHA-256 as metadata (`imgd-sha256`) and
//! S3 verifies a SHA-256 checksum of every part; an object whose metadata
//! already matches is skipped. Large files go up in parts with bounded
//! parallelism; an upload a killed run left behind is resumed (its parts
//! that match, by checksum, are kept) when it was for the same content, and
//! aborted otherwise, so orphan parts never pile up.

use crate::Counters;
use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const PART: u64 = 16 << 20;
const PARALLEL_PARTS: usize = 4;

/// `<prefix>/` (or nothing for an empty prefix): where entries start.
pub fn prefix_dir(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

pub fn key(prefix: &str, entry: &str, file: &str) -> String {
    format!("{}{entry}/{file}", prefix_dir(prefix))
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
            Mode::SkipPresent | Mode::Overwrite => {
                let overwrite = matches!(mode, Mode::Overwrite);
                upload(s3, bucket, &k, &path, sha, counters, overwrite).await?;
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
        counters.downloaded_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
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
    let size = std::fs::metadata(path)?.len();
    if size <= PART {
        abort_stale(s3, bucket, key, None, counters).await?;
        let data = bytes::Bytes::from(tokio::fs::read(path).await?);
        let md5 = hex::encode(md5::Md5::digest(&data));
        counters.mutate();
        let out = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data))
            .checksum_sha256(hex_to_b64(sha256)?)
            .metadata("imgd-sha256", sha256)
            .send()
            .await
            .with_context(|| format!("uploading s3://{bucket}/{key}"))?;
        let etag = out.e_tag().unwrap_or_default().trim_matches('"');
        if !intact(out.server_side_encryption(), etag, &md5) {
            // Not to be taken for complete: the next run must not skip it.
            let _ = s3.delete_object().bucket(bucket).key(key).send().await;
            bail!("s3://{bucket}/{key} arrived corrupted (ETag {etag}, MD5 {md5}); run again");
        }
        counters.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
        return Ok(true);
    }

    // Resume the upload an interrupted run of ours started for this content,
    // abort any other; else start one and remember it.
    let state = UploadState::path(bucket, key);
    let ours = UploadState::read(&state).filter(|s| s.sha256 == sha256).map(|s| s.upload_id);
    let resumed = abort_stale(s3, bucket, key, ours.as_deref(), counters).await?;
    let listed = match resumed {
        Some(id) => match list_parts(s3, bucket, key, &id).await {
            Ok(done) => Some((id, done)),
            Err(e) => {
                // Parts we cannot list we cannot check: start over.
                tracing::warn!("s3://{bucket}/{key}: {e:#}; starting the upload again");
                counters.mutate();
                s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(&id).send().await?;
                None
            }
        },
        None => None,
    };
    let (upload_id, done) = match listed {
        Some((id, done)) => {
            tracing::info!("s3://{bucket}/{key}: resuming an interrupted upload ({} parts there)", done.len());
            (id, done)
        }
        None => {
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
            let id = created.upload_id().context("no upload id")?.to_string();
            UploadState { upload_id: id.clone(), sha256: sha256.to_string() }.write(&state)?;
            (id, BTreeMap::new())
        }
    };
    // On failure the upload stays for the next run to resume (or abort), and
    // `imgd prune` aborts leftovers; it never just grows.
    let parts = upload_parts(s3, bucket, key, path, size, &upload_id, done, counters).await?;
    counters.mutate();
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .with_context(|| format!("completing s3://{bucket}/{key}"))?;
    let _ = std::fs::remove_file(&state);
    Ok(true)
}

/// Whether S3 stored what was sent: its ETag is the MD5 of the bytes, except
/// for KMS-encrypted objects, whose ETag is opaque (S3's own SHA-256 check
/// covers those; this one is for endpoints that do not check).
fn intact(sse: Option<&aws_sdk_s3::types::ServerSideEncryption>, etag: &str, md5_hex: &str) -> bool {
    sse.is_some_and(|e| e.as_str().starts_with("aws:kms")) || etag == md5_hex
}

/// The artifact's SHA-256 (hex, from the manifest) as S3 wants it (base64).
fn hex_to_b64(hex_digest: &str) -> Result<String> {
    let bytes = hex::decode(hex_digest).context("bad sha256 in the manifest")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A multipart upload in flight, remembered in imgd's cache folder so an
/// interrupted run's parts are reused only for the same content (S3 does not
/// list an upload's metadata).
#[derive(serde::Serialize, serde::Deserialize)]
struct UploadState {
    upload_id: String,
    sha256: String,
}

impl UploadState {
    fn path(bucket: &str, key: &str) -> PathBuf {
        let id = imgd::hash::sha256_hex(format!("{bucket}/{key}").as_bytes());
        imgd::config::default_cache().join("uploads").join(format!("{}.json", &id[..32]))
    }
    fn read(path: &Path) -> Option<UploadState> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
    fn write(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path.parent().unwrap())?;
        crate::output::write_atomic(path, &serde_json::to_string(self)?)
    }
}

/// A part already in S3: its ETag, SHA-256 checksum (when S3 lists it) and size.
struct DonePart {
    e_tag: String,
    sha256: Option<String>,
    size: u64,
}

async fn list_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<BTreeMap<i32, DonePart>> {
    let mut out = BTreeMap::new();
    let mut marker = None;
    loop {
        let page = s3
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .set_part_number_marker(marker)
            .send()
            .await
            .with_context(|| format!("ListParts s3://{bucket}/{key}"))?;
        for p in page.parts() {
            if let (Some(n), Some(e)) = (p.part_number(), p.e_tag()) {
                let done = DonePart {
                    e_tag: e.to_string(),
                    sha256: p.checksum_sha256().map(str::to_string),
                    size: p.size().unwrap_or(0) as u64,
                };
                out.insert(n, done);
            }
        }
        marker = page.next_part_number_marker().map(str::to_string);
        if !page.is_truncated().unwrap_or(false) {
            return Ok(out);
        }
    }
}

/// (base64 SHA-256, hex MD5) of a part. Disks are mostly zeros, and hashing
/// 16 MiB twice costs more CPU than checking it is all zeros, so the digests
/// of a zero part are computed once per length.
fn digests(buf: &[u8]) -> (String, String) {
    let hash = |b: &[u8]| {
        (base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b)), hex::encode(md5::Md5::digest(b)))
    };
    if buf.iter().any(|b| *b != 0) {
        return hash(buf);
    }
    static ZEROS: std::sync::Mutex<BTreeMap<usize, (String, String)>> = std::sync::Mutex::new(BTreeMap::new());
    ZEROS.lock().expect("zero digests").entry(buf.len()).or_insert_with(|| hash(buf)).clone()
}

/// Whether a part in S3 holds exactly our part: by its SHA-256 checksum, or,
/// where S3 lists none, by its ETag (the MD5 of a plainly stored part).
fn same_part(done: &DonePart, md5_hex: &str, sha_b64: &str, len: u64) -> bool {
    if done.size != len {
        return false;
    }
    match &done.sha256 {
        Some(s) => s == sha_b64,
        None => done.e_tag.trim_matches('"') == md5_hex,
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    upload_id: &str,
    done: BTreeMap<i32, DonePart>,
    counters: &Counters,
) -> Result<Vec<CompletedPart>> {
    let n = size.div_ceil(PART);
    let bar = imgd::progress::Progress::new(false).bytes(&format!("s3://{bucket}/{key}"), size);
    let done = Arc::new(done);
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (s3, bucket, key, path, upload_id, done, bar) = (
            s3.clone(),
            bucket.to_string(),
            key.to_string(),
            path.to_path_buf(),
            upload_id.to_string(),
            done.clone(),
            bar.clone(),
        );
        let len = PART.min(size - i * PART);
        let number = i as i32 + 1;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            // Read and hash off the async workers.
            let (data, sha, md5) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, i * PART)?;
                let (sha, md5) = digests(&buf);
                Ok((bytes::Bytes::from(buf), sha, md5))
            })
            .await??;
            bar.inc(len);
            if let Some(d) = done.get(&number).filter(|d| same_part(d, &md5, &sha, len)) {
                let part = CompletedPart::builder().part_number(number).e_tag(&d.e_tag).checksum_sha256(sha);
                return anyhow::Ok((part.build(), 0));
            }
            // The checksum goes in a header computed here, so the body goes
            // up plain (not aws-chunked with a trailer) and S3 verifies it.
            // Endpoints that do not verify it still answer with the part's
            // MD5 as its ETag (unless KMS-encrypted): imgd checks that too.
            let mut attempt = 0;
            let out = loop {
                attempt += 1;
                let out = s3
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_sha256(&sha)
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .with_context(|| format!("part {number} of s3://{bucket}/{key}"))?;
                let etag = out.e_tag().unwrap_or_default().trim_matches('"');
                if intact(out.server_side_encryption(), etag, &md5) {
                    break out;
                }
                if attempt == 3 {
                    bail!("part {number} of s3://{bucket}/{key} arrived corrupted 3 times (ETag {etag}, MD5 {md5})");
                }
                tracing::warn!(
                    "part {number} of s3://{bucket}/{key} arrived corrupted (ETag {etag}, MD5 {md5}); sending it again"
                );
            };
            let part = CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_sha256(out.checksum_sha256().map(str::to_string).or(Some(sha)));
            anyhow::Ok((part.build(), len))
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        let (part, sent) = t.await??;
        if sent > 0 {
            counters.mutate();
            counters.uploaded_bytes.fetch_add(sent, Ordering::Relaxed);
        }
        parts.push(part);
    }
    bar.finish();
    Ok(parts)
}

/// Aborts the multipart uploads of `key` that interrupted runs left open,
/// except `keep` (ours, to resume), which it returns if S3 still has it.
async fn abort_stale(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    keep: Option<&str>,
    counters: &Counters,
) -> Result<Option<String>> {
    let listed = s3.list_multipart_uploads().bucket(bucket).prefix(key).send().await;
    let Ok(listed) = listed else { return Ok(None) };
    let mut kept = None;
    for u in listed.uploads() {
        let (Some(k), Some(id)) = (u.key(), u.upload_id()) else { continue };
        if k != key {
            continue;
        }
        if Some(id) == keep {
            kept = Some(id.to_string());
            continue;
        }
        tracing::info!("aborting an interrupted upload of s3://{bucket}/{key}");
        counters.mutate();
        s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await?;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_parts_get_the_same_digests_as_hashing_them() {
        use sha2::Digest;
        for len in [1usize, 4096, 1 << 20] {
            let zeros = vec![0u8; len];
            let want = (
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sha2::Sha256::digest(&zeros)),
                hex::encode(md5::Md5::digest(&zeros)),
            );
            assert_eq!(super::digests(&zeros), want);
            assert_eq!(super::digests(&zeros), want, "from the cache");
        }
        let mut one = vec![0u8; 4096];
        one[4095] = 1;
        assert_ne!(super::digests(&one), super::digests(&[0u8; 4096]));
    }

    #[test]
    fn keys_join_prefix_entry_and_file() {
        assert_eq!(super::key("imgd/", "e", "f"), "imgd/e/f");
        assert_eq!(super::key("", "e", "f"), "e/f");
    }
}
