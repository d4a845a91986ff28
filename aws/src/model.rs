//! The crate's shared vocabulary: who an image is shared with, what a dead
//! run left behind, what imgd's tags say. Plain data and pure checks, so the
//! planners import these and nothing that talks to AWS.

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
