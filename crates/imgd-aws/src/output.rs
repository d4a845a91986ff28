//! The hand-off to fleet launch: amis.json, Terraform tfvars, and the
//! Packer-style artifact id, all written atomically.

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

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
}

pub fn artifact_id(amis: &BTreeMap<String, String>) -> String {
    amis.iter().map(|(r, a)| format!("{r}:{a}")).collect::<Vec<_>>().join(",")
}

/// Writes to a temporary file beside `path`, then renames it into place.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    use std::io::Write;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

pub fn tfvars(amis: &BTreeMap<String, String>) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "aws_amis": amis })).expect("json") + "\n"
}

/// What a `--dry-run` would do, step by step, for people and for scripts.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize, Clone)]
pub struct Step {
    /// upload, snapshot, register, copy, tag, share, deregister, delete-snapshot, delete-object
    pub action: String,
    /// A region, or s3://bucket.
    pub place: String,
    pub what: String,
}

impl Plan {
    pub fn add(&mut self, action: &str, place: &str, what: &str) {
        self.steps.push(Step { action: action.into(), place: place.into(), what: what.into() });
    }

    pub fn text(&self) -> String {
        if self.steps.is_empty() {
            return "nothing to do\n".into();
        }
        self.steps.iter().map(|s| format!("{:<16} {:<16} {}\n", s.action, s.place, s.what)).collect()
    }
}
