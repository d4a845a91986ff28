//! `manifest.json`: what a store entry is and holds. Consumers (serve, sync,
//! test) read artifacts through it, never by guessing file names.
//!
//! ```json
//! { "name": "9f2c...-hello", "hash": "9f2c...(64 hex)", "profile": "hello",
//!   "hardware": "qemu-x86_64", "arch": "x86_64", "firmware": "uefi",
//!   "imgd_version": "0.1.0", "built_at": 1763779200,
//!   "artifacts": [{"name": "disk", "format": "raw", "file": "disk.raw",
//!                  "size": 268435456, "sha256": "..."}],
//!   "recipe": { ...the resolved profile, inputs by digest... } }
//! ```

use crate::artifact::Artifact;
use crate::config::types::{Arch, Firmware};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub hash: String,
    pub profile: String,
    pub hardware: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub imgd_version: String,
    /// When the entry was committed (Unix seconds). Not an input: it orders
    /// entries for `gc` and `ls`, and is the only field that differs between
    /// two builds of the same inputs.
    pub built_at: u64,
    /// The epoch stamped on every file in the images.
    pub source_date_epoch: u64,
    pub artifacts: Vec<Artifact>,
    pub recipe: serde_json::Value,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Written to a temporary file, synced, then renamed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn artifact(&self, format: crate::config::types::Format, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == format && a.name == name)
    }
}
