//! imgd's AWS side, as a library the `imgd` binary links (feature `aws`):
//! store entries to S3, an EBS snapshot and an AMI in every region a fleet
//! needs, the clean-up of old ones, and the S3 build cache's transfers.
//!
//! It knows nothing of profiles or the store. imgd hands it typed requests
//! ([`Entry`]: named files with their digests, and what the machine needs from
//! an AMI) and gets plans and results back; the AWS SDK stays in this crate so
//! the rest of imgd builds without it.
//!
//! Everything that changes remote state runs as observe -> plan -> apply: list
//! what exists, compute the steps with a pure function of (observed, wanted)
//! ([`sync::plan`], [`prune::plan`]), then carry them out. `--dry-run` and
//! prune without `--yes` print the plan; a re-run after success plans nothing.

pub mod ami;
pub mod cache;
pub mod clients;
pub mod ebs;
pub mod import;
pub mod model;
pub mod output;
pub mod promote;
pub mod prune;
pub mod regions;
pub mod retry;
pub mod s3;
pub mod ssm;
pub mod sync;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the crate's entry points return: a boxed future, so the code that
/// polls the whole AWS state machine is compiled once, here. Returned as
/// `impl Future`, it was compiled again in every crate that awaited it: in
/// imgd's binary, its library and the library's tests (some 40 s of each CI
/// build on two cores).
pub type Task<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// What a run did, for `--json` and for tests that assert a re-run does nothing.
#[derive(Debug, Default)]
pub struct Counters {
    pub mutating_calls: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub blocks_sent: AtomicU64,
    pub blocks_total: AtomicU64,
    /// Blocks an interrupted run had sent and a resume did not send again.
    pub blocks_resumed: AtomicU64,
    /// How long the EBS direct snapshot took, StartSnapshot (or the resume)
    /// to CompleteSnapshot.
    pub snapshot_millis: AtomicU64,
    /// Requests answered "slow down" and waited out (EBS blocks).
    pub throttled: AtomicU64,
}

impl Counters {
    pub fn mutate(&self) {
        self.mutating_calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// How to reach AWS: the standard chain for credentials and region, plus these.
#[derive(Clone)]
pub struct Options {
    /// A local emulator or a custom endpoint.
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call (throttling and 5xx are retried with jittered backoff).
    pub max_attempts: u32,
    /// Where multipart uploads in flight are remembered, so a killed run's
    /// parts are reused only for the same content.
    pub state_dir: PathBuf,
    pub progress: Arc<dyn Progress>,
}

/// Byte progress of long transfers; imgd shows it as a bar on a terminal and
/// as plain lines otherwise.
pub trait Progress: Send + Sync {
    fn start(&self, label: &str, total: u64) -> Arc<dyn Transfer>;
}

pub trait Transfer: Send + Sync {
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) -> Arc<dyn Transfer> {
        Arc::new(NoProgress)
    }
}

impl Transfer for NoProgress {
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// A store entry as the AWS side sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `<hash32>-<profile>`: the entry's folder in S3.
    pub name: String,
    /// The full input hash (64 hex digits).
    pub hash: String,
    pub profile: String,
    /// Unix seconds; tagged on AMIs so prune keeps the newest.
    pub built_at: u64,
    /// Uploaded in this order; the last one (the manifest) marks the entry complete.
    pub files: Vec<File>,
    /// The raw disk (EBS direct) and the VHD (ImportSnapshot), where built.
    pub raw_disk: Option<File>,
    pub vhd: Option<File>,
    pub machine: Machine,
}

/// A file of an entry: its name in the entry folder, where it is, its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub path: PathBuf,
    /// The content's name with its algorithm, `blake3:<hex>` (artifacts) or
    /// `sha256:<hex>` (Debian packages): stored as the object's `imgd-digest`
    /// metadata, an object whose metadata matches is not sent again.
    pub digest: String,
    pub size: u64,
    /// Checks each piece read from `path` before it is sent.
    pub check: Check,
}

/// Checks pieces of a file against what its manifest says it holds. imgd
/// keeps each artifact's BLAKE3 and can check any aligned piece of it on its
/// own; this crate asks before every S3 part or PUT and every EBS block it
/// sends, so bytes that changed on disk since the build never reach a
/// bucket or a snapshot.
pub trait Verify: Send + Sync {
    /// Whether `data` is piece `index` of the file cut in pieces of `piece`
    /// bytes (a power of two; the last piece may be shorter). An error: the
    /// file cannot be checked at all (as a whole it no longer matches).
    fn piece(&self, piece: u64, index: u64, data: &[u8]) -> std::io::Result<bool>;
}

/// A file's [`Verify`], if it has one (Debian packages in the build cache
/// are checked by their SHA-256 where they are read instead).
#[derive(Clone, Default)]
pub struct Check(pub Option<Arc<dyn Verify>>);

impl Check {
    /// Ok when `data` is piece `index` of `file` (or nothing checks it).
    pub fn piece(&self, file: &std::path::Path, piece: u64, index: u64, data: &[u8]) -> anyhow::Result<()> {
        let Some(v) = &self.0 else { return Ok(()) };
        let at = index * piece;
        match v.piece(piece, index, data) {
            Ok(true) => Ok(()),
            Ok(false) => anyhow::bail!(
                "{}: bytes {at}..{} do not match the entry's manifest (BLAKE3): the file changed on disk since \
                 it was built, so nothing of it is sent (`imgd verify` lists what changed)",
                file.display(),
                at + data.len() as u64
            ),
            Err(e) => anyhow::bail!("{}: not sent: {e}", file.display()),
        }
    }
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Check(verified)" } else { "Check(none)" })
    }
}

/// Checks compare equal: a file is its name, path, digest and size.
impl PartialEq for Check {
    fn eq(&self, _: &Check) -> bool {
        true
    }
}

impl Eq for Check {}

/// What an AMI must say about the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub arch: Arch,
    pub boot: BootMode,
    /// ENA and SR-IOV support flags (from the hardware file).
    pub ena: bool,
    pub sriov: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    LegacyBios,
}

/// Whether `s` is an input hash as imgd writes it: 64 lowercase hex digits.
/// Tags and keys read back from AWS are checked with this before use.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a profile name as imgd allows it (letters, digits, - and _).
pub fn is_profile_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Tag key prefix marking an image and its snapshot as synced for a
/// deployment (`imgd:deployment:presync`).
pub const DEPLOYMENT_TAG: &str = "imgd:deployment:";

/// A deployment name as a deployments file allows it, short enough that
/// its tag key stays within AWS's 128 characters.
pub fn is_deployment_name(s: &str) -> bool {
    is_profile_name(s) && DEPLOYMENT_TAG.len() + s.len() <= 128
}

/// Hex digits of the input hash in entry names (as imgd's store names them).
pub const NAME_HASH_LEN: usize = 32;

/// `<hash32>-<profile>` -> (hash32, profile), only for names imgd makes.
/// The AMI name of a build: `imgd-<profile>-<first 12 of its hash>` (in
/// every region; what sync registers and status looks up).
pub fn image_name(profile: &str, hash: &str) -> String {
    format!("imgd-{profile}-{}", hash.get(..12).unwrap_or(hash))
}

pub fn parse_entry_name(name: &str) -> Option<(&str, &str)> {
    let (hash, profile) = name.split_once('-')?;
    let ok = hash.len() == NAME_HASH_LEN
        && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && is_profile_name(profile);
    ok.then_some((hash, profile))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_parse_only_when_they_are_imgds() {
        let h = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_entry_name(&format!("{h}-hello")), Some((h, "hello")));
        assert_eq!(parse_entry_name(&format!("{h}-my-web")), Some((h, "my-web")));
        assert_eq!(parse_entry_name("backups-2024"), None);
        assert_eq!(parse_entry_name(&format!("{h}-")), None);
        assert_eq!(parse_entry_name(&format!("{h}-a/b")), None);
        assert_eq!(parse_entry_name(&format!("{}-x", h.to_uppercase())), None);
    }

    #[test]
    fn hashes_are_64_lowercase_hex() {
        assert!(is_hash(&"ab".repeat(32)));
        assert!(!is_hash("abc"));
        assert!(!is_hash(&"AB".repeat(32)));
        assert!(!is_hash(&format!("{}é", "a".repeat(62))));
    }
}
