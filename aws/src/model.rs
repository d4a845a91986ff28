//! The crate's shared vocabulary: who an image is shared with, what a dead
//! run left behind, what imgd's tags say. Plain data and pure checks, so the
//! planners import these and nothing that talks to AWS. A store entry as
//! imgd hands it over ([`Entry`]) is here too.

use std::path::PathBuf;
use std::sync::Arc;

/// Someone an image is shared with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// A 12-digit AWS account id.
    Account(String),
    /// An AWS Organizations organization, by ARN.
    Organization(String),
    /// An organizational unit, by ARN.
    OrganizationalUnit(String),
    /// Everyone (`--public`, never implied).
    Public,
}

impl Principal {
    /// For plans and logs.
    pub fn label(&self) -> String {
        match self {
            Principal::Account(a) => format!("account {a}"),
            Principal::Organization(a) => format!("organization {a}"),
            Principal::OrganizationalUnit(a) => format!("OU {a}"),
            Principal::Public => "everyone (public)".into(),
        }
    }

    /// Whether a snapshot can be shared with it too: create-volume
    /// permission names accounts or `all`, never organizations or OUs
    /// (there, launch permission is what AWS offers).
    pub fn shares_snapshots(&self) -> bool {
        matches!(self, Principal::Account(_) | Principal::Public)
    }
}

/// A snapshot of ours tagged with a build's hash that no image uses yet: left
/// by a run that died after StartSnapshot (pending or, once EBS has cancelled
/// it, error) or after the upload (completed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftSnapshot {
    pub id: String,
    pub state: LeftState,
    pub encrypted: bool,
    pub kms_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftState {
    Pending,
    Completed,
    /// Cancelled by EBS (a snapshot nobody completed within its timeout) or failed.
    Error,
}

/// A snapshot id as EC2 writes it; ids from AWS name local journal files,
/// so anything else is refused where it enters.
pub fn valid_snapshot_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|h| (8..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An image or snapshot carrying imgd's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub id: String,
    pub profile: String,
    pub hash: String,
    pub built_at: String,
    /// The deployments it was synced for (`imgd:deployment:NAME` tags): a
    /// deployment's history, which `prune --deployments --keep` counts.
    pub deployments: std::collections::BTreeSet<String>,
    /// Snapshots in the image's block device mappings (empty for a snapshot).
    pub snapshots: Vec<String>,
    /// A snapshot in state `error` (EBS cancelled an interrupted upload, or
    /// it failed): nothing can ever use it.
    pub failed: bool,
}

/// ISO 8601 UTC from Unix seconds, as the `imgd:built-at` tag carries it.
pub fn iso8601(secs: u64) -> String {
    let t = aws_smithy_types::DateTime::from_secs(i64::try_from(secs).unwrap_or(i64::MAX));
    // DateTime's own format prints fractional seconds only when there are some.
    t.fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default()
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
    pub(crate) fn piece(&self, file: &std::path::Path, piece: u64, index: u64, data: &[u8]) -> anyhow::Result<()> {
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
