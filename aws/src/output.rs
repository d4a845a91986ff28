//! What sync and prune hand back: results for Terraform and scripts, and
//! plan rows for people.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize, Clone)]
pub struct SyncResult {
    pub profile: String,
    pub hash: String,
    pub entry: String,
    pub name: String,
    /// Region -> AMI id.
    pub amis: BTreeMap<String, String>,
    /// Region -> snapshot id (where known).
    pub snapshots: BTreeMap<String, String>,
    /// "us-east-1:ami-1,eu-west-1:ami-2", as Packer manifests write it.
    pub artifact_id: String,
    pub s3: Vec<String>,
    pub mutating_calls: u64,
    pub uploaded_bytes: u64,
    pub blocks_sent: u64,
    pub blocks_total: u64,
    /// Blocks an interrupted upload had sent, not sent again.
    pub blocks_resumed: u64,
    /// Seconds the EBS direct snapshot took (0 when none was made).
    pub snapshot_seconds: f64,
    /// EBS block requests throttled and waited out.
    pub throttled: u64,
}

impl SyncResult {
    /// `--out`: region -> AMI, with the build's hash, profile and snapshots.
    pub fn amis_json(&self) -> serde_json::Value {
        serde_json::json!({
            "profile": self.profile, "hash": self.hash, "entry": self.entry, "name": self.name,
            "amis": self.amis, "snapshots": self.snapshots,
        })
    }

    /// `--tfvars`: `{"aws_amis": {...}}` for `lookup(var.aws_amis, var.region)`.
    pub fn tfvars(&self) -> serde_json::Value {
        serde_json::json!({ "aws_amis": self.amis })
    }
}

pub fn artifact_id(amis: &BTreeMap<String, String>) -> String {
    amis.iter().map(|(r, a)| format!("{r}:{a}")).collect::<Vec<_>>().join(",")
}

/// One step of a plan as people and scripts read it.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Row {
    /// upload, snapshot, register, copy, tag, share, deregister, delete-snapshot,
    /// delete-object, abort-upload
    pub action: String,
    /// A region, or s3://bucket.
    pub place: String,
    pub what: String,
}

impl Row {
    pub fn new(action: &str, place: &str, what: &str) -> Row {
        Row { action: action.into(), place: place.into(), what: what.into() }
    }
}

/// Rows as aligned text, or "nothing to do".
pub fn text(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "nothing to do\n".into();
    }
    rows.iter().map(|s| format!("{:<16} {:<16} {}\n", s.action, s.place, s.what)).collect()
}
