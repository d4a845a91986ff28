//! An EBS snapshot straight from the raw disk with the EBS direct APIs:
//! StartSnapshot, PutSnapshotBlock per 512 KiB block (each with its SHA-256),
//! CompleteSnapshot with the LINEAR aggregate of the block checksums. No S3
//! staging and no vmimport role.
//!
//! Zero blocks are not sent when the snapshot is unencrypted (they read as
//! zeros anyway). An account with EBS encryption by default makes encrypted
//! snapshots, where an unsent block is not guaranteed to read as zeros, so
//! there every block is sent (coldsnap made the same change in 0.8.0).
//!
//! An upload a killed run left is finished, not started over: the next run
//! writes to the same pending snapshot and sends only the blocks its
//! [`journal`] does not name.

pub mod journal;

use crate::options::Counters;
use anyhow::{bail, Context, Result};
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use journal::BLOCK;
/// Blocks in flight. EBS takes 1,000 PutSnapshotBlock a second per snapshot
/// and each takes tens of milliseconds from EC2, so 16 would leave most of
/// that unused; 64 is coldsnap's default too (32 MiB of buffers).
const WORKERS: usize = 64;
/// EBS cancels a pending snapshot no block is written to for this long
/// (its default); a killed run's upload can be resumed until then.
const TIMEOUT_MINUTES: i32 = 60;

pub struct Snapshot {
    pub id: String,
}

/// Whole GiB that hold `bytes` (EBS volume sizes are whole GiB).
pub fn gib(bytes: u64) -> i64 {
    bytes.div_ceil(1 << 30) as i64
}

/// What to snapshot and how.
pub struct Request<'a> {
    pub raw: &'a Path,
    /// The build's hash: a journal is used only for the disk it was kept for.
    pub hash: &'a str,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    pub encrypted: bool,
    pub kms_key: Option<&'a str>,
    /// The pending snapshot an interrupted run left, to finish.
    pub resume: Option<Resume<'a>>,
    /// Where journals are kept.
    pub state_dir: &'a Path,
    /// Checks each block read from `raw` before it is sent.
    pub check: &'a crate::model::Check,
}

#[derive(Clone, Copy)]
pub struct Resume<'a> {
    pub id: &'a str,
    /// As DescribeSnapshots says: an encrypted one needs its zero blocks too.
    pub encrypted: bool,
}

/// Throttling of one block is waited out by that block alone, with capped
/// exponential backoff and jitter, however long the snapshot's request rate
/// is exceeded (the SDK's own retries give up after `--max-attempts` and
/// share one retry budget across the whole upload): the upload never fails
/// or starts over for it. Any other error fails the block.
const THROTTLE_RETRIES: u32 = 40;
const THROTTLE_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const THROTTLE_CAP: std::time::Duration = std::time::Duration::from_secs(20);

async fn put_block(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    index: u64,
    data: Vec<u8>,
    checksum: &str,
    counters: &Counters,
) -> Result<()> {
    use aws_sdk_ebs::error::ProvideErrorMetadata;
    let data = bytes::Bytes::from(data);
    let mut wait = THROTTLE_FIRST;
    let mut attempt = 0;
    loop {
        counters.mutate();
        let sent = ebs
            .put_snapshot_block()
            .snapshot_id(id)
            .block_index(index as i32)
            .data_length(BLOCK as i32)
            .checksum(checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .block_data(ByteStream::from(data.clone()))
            .send()
            .await;
        let err = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let throttled = matches!(err.code(), Some("ThrottlingException" | "RequestThrottledException"))
            || err.raw_response().is_some_and(|r| r.status().as_u16() == 429);
        if !throttled || attempt >= THROTTLE_RETRIES {
            return Err(err).with_context(|| format!("PutSnapshotBlock {index}"));
        }
        counters.throttled.fetch_add(1, Ordering::Relaxed);
        // Full jitter: blocks throttled together do not come back together.
        let jitter = rand_fraction(index, attempt);
        tokio::time::sleep(wait.mul_f64(0.5 + jitter / 2.0)).await;
        wait = (wait * 2).min(THROTTLE_CAP);
        attempt += 1;
    }
}

/// A fraction in [0, 1) that differs per block and attempt (jitter needs
/// spread, not secrecy: a hash of the two and the clock).
fn rand_fraction(index: u64, attempt: u32) -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let h = Sha256::digest(format!("{index}:{attempt}:{nanos}").as_bytes());
    f64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]])) / (f64::from(u32::MAX) + 1.0)
}

pub async fn upload(
    ebs: &aws_sdk_ebs::Client,
    r: &Request<'_>,
    counters: &Arc<Counters>,
    opts: &crate::options::Options,
) -> Result<Snapshot> {
    let t0 = std::time::Instant::now();
    let size = std::fs::metadata(r.raw)?.len();
    let volume_gib = gib(size);
    // The first block checked before anything is started: a disk that no
    // longer matches its manifest leaves no snapshot behind.
    let mut first = vec![0u8; BLOCK.min(size) as usize];
    std::fs::File::open(r.raw)?.read_exact_at(&mut first, 0)?;
    r.check.piece(r.raw, BLOCK, 0, &first)?;
    let (id, send_zeros) = match r.resume {
        Some(p) => (p.id.to_string(), p.encrypted || r.encrypted),
        None => start(ebs, r, volume_gib, counters).await?,
    };
    let disk = journal::Disk { snapshot: &id, hash: r.hash, size };
    let done = Arc::new(if r.resume.is_some() { journal::read(r.state_dir, disk) } else { Default::default() });
    if r.resume.is_some() {
        tracing::info!("{id}: resuming an interrupted upload ({} blocks recorded as sent)", done.len());
    }
    let journal = Arc::new(journal::Journal::open(r.state_dir, disk, !done.is_empty())?);

    let raw = r.raw;
    let file = Arc::new(std::fs::File::open(raw).with_context(|| format!("{}", raw.display()))?);
    let blocks = size.div_ceil(BLOCK);
    let bar = opts.progress.start(&format!("snapshot {id} from {}", raw.display()), size);
    counters.blocks_total.fetch_add(blocks, Ordering::Relaxed);
    // At most WORKERS blocks in flight, each task reaped as soon as it ends:
    // a finished task's memory (sized for the SDK's deep futures, KiBs) would
    // otherwise stay until the end, growing with the disk (4 GiB: ~40 MiB).
    let mut running = tokio::task::JoinSet::new();
    let mut sent = Vec::new();
    for index in 0..blocks {
        while running.len() >= WORKERS {
            if let Some(done) = running.join_next().await {
                sent.extend(done??);
            }
        }
        let (ebs, raw, id, counters, bar) = (ebs.clone(), file.clone(), id.clone(), counters.clone(), bar.clone());
        let (check, path) = (r.check.clone(), r.raw.to_path_buf());
        let (done, journal) = (done.clone(), journal.clone());
        running.spawn(async move {
            // Allocated here, not on the blocking thread: buffers then come
            // from the runtime threads' few malloc arenas instead of one per
            // blocking thread (4 GiB upload: peak RSS 156 -> 123 MiB).
            let mut buf = vec![0u8; BLOCK as usize];
            // Every block is checked, zeros too: a block that should hold
            // data and reads as zeros would otherwise be skipped silently.
            let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let len = (BLOCK.min(size - index * BLOCK)) as usize;
                raw.read_exact_at(&mut buf[..len], index * BLOCK)?; // the tail block is zero-padded
                check.piece(&path, BLOCK, index, &buf[..len])?;
                Ok(buf)
            })
            .await??;
            bar.advance(BLOCK.min(size - index * BLOCK));
            if !send_zeros && data.iter().all(|b| *b == 0) {
                return anyhow::Ok(None);
            }
            let digest: [u8; 32] = Sha256::digest(&data).into();
            if done.get(&index) == Some(&digest) {
                counters.blocks_resumed.fetch_add(1, Ordering::Relaxed);
                return anyhow::Ok(Some((index, digest)));
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
            put_block(&ebs, &id, index, data, &b64, &counters).await?;
            counters.blocks_sent.fetch_add(1, Ordering::Relaxed);
            // Off the runtime's threads; a line that fails to land only costs
            // this block being sent again by a later resume.
            let recorded = tokio::task::spawn_blocking(move || journal.record(index, &digest)).await?;
            if let Err(e) = recorded {
                tracing::warn!("{id}: block {index} not recorded in the journal: {e}");
            }
            anyhow::Ok(Some((index, digest)))
        });
    }
    while let Some(done) = running.join_next().await {
        sent.extend(done??);
    }
    bar.finish();
    let completed = complete(ebs, &id, sent, counters).await?;
    counters.snapshot_millis.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    // Complete (or never completable): nothing left to resume either way.
    if let Ok(j) = Arc::try_unwrap(journal) {
        j.remove();
    }
    if let Some(status) = completed.status() {
        if status.as_str() == "error" {
            bail!("snapshot {id} failed to complete");
        }
    }
    Ok(Snapshot { id })
}

/// CompleteSnapshot with the LINEAR checksum: SHA-256 over the checksums of
/// the blocks sent, in block order.
async fn complete(
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    mut sent: Vec<(u64, [u8; 32])>,
    counters: &Counters,
) -> Result<aws_sdk_ebs::operation::complete_snapshot::CompleteSnapshotOutput> {
    sent.sort_by_key(|(i, _)| *i);
    let mut agg = Sha256::new();
    for (_, d) in &sent {
        agg.update(d);
    }
    let agg = base64::engine::general_purpose::STANDARD.encode(agg.finalize());
    counters.mutate();
    ebs.complete_snapshot()
        .snapshot_id(id)
        .changed_blocks_count(sent.len() as i32)
        .checksum(agg)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .context("CompleteSnapshot")
}

/// StartSnapshot: the new snapshot's id, and whether zero blocks must be sent.
/// The SDK gives the call an idempotency token of its own, kept across its
/// retries; a token derived from the build would, after EBS cancelled that
/// snapshot, keep returning the cancelled one.
async fn start(
    ebs: &aws_sdk_ebs::Client,
    r: &Request<'_>,
    volume_gib: i64,
    counters: &Counters,
) -> Result<(String, bool)> {
    counters.mutate();
    let mut start = ebs.start_snapshot().volume_size(volume_gib).description(r.description).timeout(TIMEOUT_MINUTES);
    for (k, v) in r.tags {
        start = start.tags(Tag::builder().key(k).value(v).build());
    }
    if r.encrypted {
        start = start.encrypted(true);
        if let Some(k) = r.kms_key {
            start = start.kms_key_arn(k);
        }
    }
    let started = start.send().await.context("StartSnapshot")?;
    let id = started.snapshot_id().context("no snapshot id")?;
    anyhow::ensure!(
        crate::model::valid_snapshot_id(id),
        "StartSnapshot answered {:?}, not a snapshot id",
        id.escape_debug().to_string()
    );
    // Encryption by default can make the snapshot encrypted without our asking.
    Ok((id.to_string(), r.encrypted || started.kms_key_arn().is_some()))
}
