//! Uploading a store entry to `s3://bucket/<prefix>/<entry>/<file>`.
//!
//! Each object carries the file's digest as metadata (`imgd-digest`,
//! `blake3:<hex>` for artifacts); an object whose metadata already matches is
//! skipped. S3 checks what arrives against a CRC32C (a small file's whole
//! body, each part of a large one). The checksum only has to catch damage in
//! transit (TLS and SigV4 cover tampering, the digest names the content), and
//! a CRC costs a fraction of a SHA-256 on both ends: on a CPU without SHA
//! extensions, SHA-256 runs at ~85 MB/s, CRC32C at memory speed. The payload
//! is not hashed again for SigV4: the checksum header is signed.
//! Large files go up in parts with bounded parallelism; an upload a killed
//! run left behind is resumed (its parts that match, by checksum and MD5,
//! are kept) when it was for the same content, and aborted otherwise, so
//! orphan parts never pile up.

use crate::options::Counters;
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
/// What S3 checks each part against (see the top of this file).
const PART_CHECKSUM: &str = "CRC32C";
const PARALLEL_PARTS: usize = 4;

/// Where entries go: `s3://<bucket>/<prefix>/<hash>-<profile>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl Location {
    pub fn new(bucket: &str, prefix: &str) -> Location {
        Location { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() }
    }

    /// `<prefix>/` (or nothing for an empty prefix): where entries start.
    pub fn dir(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    pub fn key(&self, entry: &str, file: &str) -> String {
        format!("{}{entry}/{file}", self.dir())
    }

    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// S3's rules for bucket names (with the legacy ones' capitals and
/// underscores), so a typo fails here rather than as a signature error.
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=255).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{bucket}` is not an S3 bucket name"))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl std::str::FromStr for Location {
    type Err = String;
    /// `s3://bucket/some/prefix`.
    fn from_str(url: &str) -> Result<Location, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("`{url}` is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Location::new(bucket, prefix))
    }
}

/// The metadata key that carries a file's digest.
const DIGEST_METADATA: &str = "imgd-digest";
/// Metadata that marks an object as imgd's: today's key, and the one imgd
/// wrote before artifacts were named by BLAKE3.
pub const OUR_METADATA: [&str; 2] = [DIGEST_METADATA, "imgd-sha256"];

/// Whether `key` holds an object imgd uploaded with this digest.
pub async fn present(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, digest: &str) -> bool {
    let Ok(head) = s3.head_object().bucket(bucket).key(key).send().await else { return false };
    head.metadata().and_then(|m| m.get(DIGEST_METADATA)).is_some_and(|v| v == digest)
}

/// Uploads `files` under `<prefix>/<entry>/` in order, skipping objects whose
/// `imgd-digest` metadata already matches (unless `overwrite`: a copy there
/// failed verification). The caller puts the manifest last: a manifest in S3
/// means the entry there is complete.
pub async fn upload_files(
    s3: &aws_sdk_s3::Client,
    to: &Location,
    entry: &str,
    files: &[crate::model::File],
    counters: &Counters,
    overwrite: bool,
    opts: &crate::options::Options,
) -> Result<()> {
    for f in files {
        upload(s3, &to.bucket, &to.key(entry, &f.name), f, counters, overwrite, opts).await?;
    }
    Ok(())
}

/// Uploads `path` to `key` unless an object with the same digest is there
/// (or regardless, with `overwrite`).
/// Returns whether it uploaded.
pub async fn upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file: &crate::model::File,
    counters: &Counters,
    overwrite: bool,
    opts: &crate::options::Options,
) -> Result<bool> {
    let (path, digest) = (file.path.as_path(), file.digest.as_str());
    if !overwrite && present(s3, bucket, key, digest).await {
        tracing::info!("s3://{bucket}/{key}: present, same digest");
        return Ok(false);
    }
    let size = std::fs::metadata(path)?.len();
    if size <= PART {
        put_whole(s3, bucket, key, file, size, counters).await?;
        return Ok(true);
    }
    // The first part checked before an upload is started: a file that no
    // longer matches its manifest leaves nothing in the bucket.
    let mut first = vec![0u8; PART as usize];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(path)?, &mut first, 0)?;
    file.check.piece(path, PART, 0, &first)?;
    drop(first);
    let state = UploadState::path(&opts.state_dir, opts.endpoint_url.as_deref(), bucket, key);
    let (upload_id, done) = resume_or_start(s3, bucket, key, digest, &state, counters).await?;
    // On failure the upload stays for the next run to resume (or abort), and
    // `imgd prune` aborts leftovers; it never just grows.
    let bar = opts.progress.start(&format!("s3://{bucket}/{key}"), size);
    let parts = upload_parts(s3, bucket, key, file, size, &upload_id, done, counters, bar.clone()).await?;
    bar.finish();
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

/// One PutObject for a file of at most [`PART`] bytes, checked against the
/// ETag S3 returns.
async fn put_whole(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file: &crate::model::File,
    size: u64,
    counters: &Counters,
) -> Result<()> {
    let (path, digest) = (file.path.as_path(), file.digest.as_str());
    abort_stale(s3, bucket, key, None, counters).await?;
    let data = bytes::Bytes::from(tokio::fs::read(path).await?);
    file.check.piece(path, PART, 0, &data)?;
    let Digests { crc32c, md5 } = digests(&data);
    counters.mutate();
    let out = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .checksum_crc32_c(crc32c)
        .metadata(DIGEST_METADATA, digest)
        // The signed checksum header covers the body; hashing it again
        // for the signature would double the CPU cost.
        .customize()
        .disable_payload_signing()
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
    Ok(())
}

/// The multipart upload to send parts to, and the parts already there:
/// the one an interrupted run of ours started for this content (its id in
/// `state`), else a new one, remembered in `state`. Any other is aborted.
async fn resume_or_start(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    digest: &str,
    state: &Path,
    counters: &Counters,
) -> Result<(String, BTreeMap<i32, DonePart>)> {
    let ours = UploadState::read(state)
        .filter(|s| s.digest == digest && s.part_checksum == PART_CHECKSUM)
        .map(|s| s.upload_id);
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
    Ok(match listed {
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
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .metadata(DIGEST_METADATA, digest)
                .send()
                .await
                .with_context(|| format!("starting multipart upload of s3://{bucket}/{key}"))?;
            let id = created.upload_id().context("no upload id")?.to_string();
            let part_checksum = PART_CHECKSUM.to_string();
            UploadState { upload_id: id.clone(), digest: digest.to_string(), part_checksum }.write(state)?;
            (id, BTreeMap::new())
        }
    })
}

/// Whether S3 stored what was sent: its ETag is the MD5 of the bytes, except
/// for KMS-encrypted objects, whose ETag is opaque (S3's own SHA-256 check
/// covers those; this one is for endpoints that do not check).
fn intact(sse: Option<&aws_sdk_s3::types::ServerSideEncryption>, etag: &str, md5_hex: &str) -> bool {
    sse.is_some_and(|e| e.as_str().starts_with("aws:kms")) || etag == md5_hex
}

/// A multipart upload in flight, remembered in imgd's cache folder so an
/// interrupted run's parts are reused only for the same content (S3 does not
/// list an upload's metadata).
#[derive(serde::Serialize, serde::Deserialize)]
struct UploadState {
    upload_id: String,
    /// The file's digest (state files of older imgd versions, which have
    /// none, are read as no state: their uploads are aborted).
    digest: String,
    /// The upload's checksum algorithm: its parts must all use it, so an
    /// upload an older imgd started with another (SHA-256) is
    /// aborted, not resumed. Missing in those state files.
    #[serde(default)]
    part_checksum: String,
}

impl UploadState {
    /// One file per object and service: a bucket of the same name behind
    /// another endpoint (an S3-compatible store, a test server) is another
    /// upload, whose state must not replace this one's. AWS's own endpoint
    /// keeps the name it always had, so an upload in flight still resumes.
    fn path(dir: &Path, endpoint: Option<&str>, bucket: &str, key: &str) -> PathBuf {
        let name = match endpoint {
            None => format!("{bucket}/{key}"),
            Some(e) => format!("{e}\n{bucket}/{key}"),
        };
        let id = hex::encode(Sha256::digest(name.as_bytes()));
        dir.join(format!("{}.json", &id[..32]))
    }
    fn read(path: &Path) -> Option<UploadState> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
    /// Written whole (a private temp file beside it, then renamed): a torn
    /// state file would be read as no state, never as another upload's.
    fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let dir = path.parent().context("upload state has no folder")?;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(serde_json::to_string(self)?.as_bytes())?;
        tmp.persist(path)?;
        Ok(())
    }
}

/// A part already in S3: its ETag, CRC32C checksum (when S3 lists it) and size.
struct DonePart {
    e_tag: String,
    crc32c: Option<String>,
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
                    crc32c: p.checksum_crc32_c().map(str::to_string),
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

/// A body's or part's digests: base64 CRC32C (S3's checksum) and hex MD5 (what S3
/// answers as its ETag).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Digests {
    crc32c: String,
    md5: String,
}

/// The part's digests, in one read of its bytes. Disks are mostly zeros, and
/// checking a part is all zeros costs less than hashing it, so the digests
/// of a zero part are computed once per length.
fn digests(buf: &[u8]) -> Digests {
    let hash = |b: &[u8]| {
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b) as u32;
        Digests {
            crc32c: base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()),
            md5: hex::encode(md5::Md5::digest(b)),
        }
    };
    // OR-folding a page at a time vectorizes; a byte-wise `any` does not.
    if buf.chunks(4096).any(|page| page.iter().fold(0u8, |acc, b| acc | b) != 0) {
        return hash(buf);
    }
    static ZEROS: std::sync::Mutex<BTreeMap<usize, Digests>> = std::sync::Mutex::new(BTreeMap::new());
    // A poisoned map still holds whole entries (each is inserted at once).
    ZEROS.lock().unwrap_or_else(|p| p.into_inner()).entry(buf.len()).or_insert_with(|| hash(buf)).clone()
}

/// Whether a part in S3 holds exactly our part: same size, the same CRC32C
/// where S3 lists one, and the same MD5 where the ETag is one (it is not for
/// KMS-encrypted parts). A part neither can vouch for is sent again.
fn same_part(done: &DonePart, ours: &Digests, len: u64) -> bool {
    let etag = done.e_tag.trim_matches('"');
    let etag_is_md5 = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    let crc_ok = done.crc32c.as_ref().map(|c| *c == ours.crc32c);
    let md5_ok = etag_is_md5.then(|| etag.eq_ignore_ascii_case(&ours.md5));
    done.size == len && crc_ok != Some(false) && md5_ok != Some(false) && (crc_ok.is_some() || md5_ok.is_some())
}

#[allow(clippy::too_many_arguments)]
async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file: &crate::model::File,
    size: u64,
    upload_id: &str,
    done: BTreeMap<i32, DonePart>,
    counters: &Counters,
    bar: std::sync::Arc<dyn crate::options::Transfer>,
) -> Result<Vec<CompletedPart>> {
    let n = size.div_ceil(PART);
    let done = Arc::new(done);
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_PARTS));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (s3, bucket, key, path, check, upload_id, done, bar) = (
            s3.clone(),
            bucket.to_string(),
            key.to_string(),
            file.path.clone(),
            file.check.clone(),
            upload_id.to_string(),
            done.clone(),
            bar.clone(),
        );
        let len = PART.min(size - i * PART);
        let number = i as i32 + 1;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            // Read, check and hash off the async workers. A part that is not
            // the manifest's is never sent (nor vouched for when S3 has it).
            let (data, ours) = tokio::task::spawn_blocking(move || -> Result<_> {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, i * PART)?;
                check.piece(&path, PART, i, &buf)?;
                let ours = digests(&buf);
                Ok((bytes::Bytes::from(buf), ours))
            })
            .await??;
            bar.advance(len);
            if let Some(d) = done.get(&number).filter(|d| same_part(d, &ours, len)) {
                let part = CompletedPart::builder().part_number(number).e_tag(&d.e_tag).checksum_crc32_c(ours.crc32c);
                return anyhow::Ok((part.build(), 0));
            }
            // The checksum goes in a header computed here, so the body goes
            // up plain (not aws-chunked with a trailer) and S3 verifies it;
            // the header is signed, so the body is not hashed again for the
            // signature. Endpoints that do not verify it still answer with
            // the part's MD5 as its ETag (unless KMS-encrypted): imgd checks
            // that too.
            let Digests { crc32c, md5 } = ours;
            let mut attempt = 0;
            let out = loop {
                attempt += 1;
                let out = s3
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_crc32_c(&crc32c)
                    .body(ByteStream::from(data.clone()))
                    .customize()
                    .disable_payload_signing()
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
                .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_string).or(Some(crc32c)));
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
    Ok(parts)
}

/// (key, upload id, initiated in Unix seconds) of every multipart upload
/// under `prefix`. ListMultipartUploads pages by (key, upload id) markers and
/// the SDK has no paginator for it.
pub async fn uploads(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
    loop {
        let page = s3
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await
            .with_context(|| format!("listing uploads in s3://{bucket}/{prefix}"))?;
        for u in page.uploads() {
            if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                let initiated = u.initiated().map_or(0, |t| t.secs().max(0) as u64);
                out.push((key.to_string(), id.to_string(), initiated));
            }
        }
        let next = (page.next_key_marker().map(str::to_string), page.next_upload_id_marker().map(str::to_string));
        // Stop at the end, and on an endpoint that does not move its markers.
        if !page.is_truncated().unwrap_or(false) || next.0.is_none() || next == (key_marker.clone(), id_marker.clone())
        {
            return Ok(out);
        }
        (key_marker, id_marker) = next;
    }
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
    let Ok(listed) = uploads(s3, bucket, key).await else { return Ok(None) };
    let mut kept = None;
    for (k, id, _) in &listed {
        if k != key {
            continue;
        }
        if Some(id.as_str()) == keep {
            kept = Some(id.clone());
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
    fn upload_state_is_one_file_per_object_and_endpoint_and_aws_keeps_its_old_name() {
        use super::UploadState;
        let dir = std::path::Path::new("/state");
        let aws = UploadState::path(dir, None, "imgs", "a/disk.raw");
        let other = UploadState::path(dir, Some("http://127.0.0.1:9000"), "imgs", "a/disk.raw");
        let third = UploadState::path(dir, Some("http://127.0.0.1:9001"), "imgs", "a/disk.raw");
        assert!(aws != other && other != third);
        assert_eq!(other, UploadState::path(dir, Some("http://127.0.0.1:9000"), "imgs", "a/disk.raw"));
        // What a run before this change wrote for AWS is still found.
        use sha2::Digest;
        let old = hex::encode(sha2::Sha256::digest(b"imgs/a/disk.raw"));
        assert_eq!(aws, dir.join(format!("{}.json", &old[..32])));
    }

    #[test]
    fn zero_parts_get_the_same_digests_as_hashing_them() {
        use sha2::Digest;
        for len in [1usize, 4096, 1 << 20] {
            let zeros = vec![0u8; len];
            let want = super::Digests {
                crc32c: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &zeros).to_be_bytes()[4..],
                ),
                md5: hex::encode(md5::Md5::digest(&zeros)),
            };
            assert_eq!(super::digests(&zeros), want);
            assert_eq!(super::digests(&zeros), want, "from the cache");
        }
        let mut one = vec![0u8; 4096];
        one[4095] = 1;
        assert_ne!(super::digests(&one), super::digests(&[0u8; 4096]));
    }

    #[test]
    fn crc32c_is_the_castagnoli_crc_s3_expects() {
        // RFC 3720's check value for "123456789", and S3's example for "":
        // an empty body's x-amz-checksum-crc32c is AAAAAA==.
        let crc = |b: &[u8]| super::digests(b).crc32c;
        assert_eq!(crc(b"123456789"), "4waSgw==", "0xE3069283");
        assert_eq!(crc(b""), "AAAAAA==");
    }

    #[test]
    fn a_leftover_part_is_reused_only_when_what_s3_lists_vouches_for_it() {
        let ours = super::digests(b"part");
        let other = super::digests(b"another part");
        let done = |e_tag: &str, crc32c: Option<&str>, size| super::DonePart {
            e_tag: format!("\"{e_tag}\""),
            crc32c: crc32c.map(str::to_string),
            size,
        };
        let opaque = "0123456789abcdef-kms";
        assert!(super::same_part(&done(&ours.md5, Some(&ours.crc32c), 4), &ours, 4));
        assert!(super::same_part(&done(&ours.md5, None, 4), &ours, 4), "a plain ETag alone");
        assert!(super::same_part(&done(opaque, Some(&ours.crc32c), 4), &ours, 4), "a CRC alone (KMS)");
        assert!(!super::same_part(&done(opaque, None, 4), &ours, 4), "nothing to check it by");
        assert!(!super::same_part(&done(&ours.md5, Some(&ours.crc32c), 5), &ours, 4), "size");
        assert!(!super::same_part(&done(&other.md5, Some(&ours.crc32c), 4), &ours, 4), "MD5 differs");
        assert!(!super::same_part(&done(&ours.md5, Some(&other.crc32c), 4), &ours, 4), "CRC differs");
    }

    #[test]
    fn keys_join_prefix_entry_and_file() {
        assert_eq!(super::Location::new("b", "imgd/").key("e", "f"), "imgd/e/f");
        assert_eq!(super::Location::new("b", "").key("e", "f"), "e/f");
    }

    #[test]
    fn cache_urls() {
        let l: super::Location = "s3://bucket/p/q/".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bucket", "p/q"));
        let l: super::Location = "s3://bucket".parse().unwrap();
        assert_eq!(l.prefix, "");
        for bad in ["https://b/p", "s3:///p", "s3://b@d/p", "s3://x/p"] {
            assert!(bad.parse::<super::Location>().is_err(), "{bad}");
        }
    }
}
