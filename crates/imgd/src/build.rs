//! `imgd build` as a library call: hash the recipe, return the store entry if it
//! exists, else build it in a private directory and commit it atomically.

use crate::artifact;
use crate::config::Recipe;
use crate::progress::Progress;
use crate::store::remote::Remote;
use crate::store::{entry_name, Entry, Manifest, Store};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bumped whenever the builder's output for the same inputs changes.
pub const BUILDER_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "/layout-1");

/// External tools whose version can change the bytes of an artifact.
const TOOLS: &[(&str, &str)] = &[
    ("mke2fs", "-V"),
    ("mformat", "--version"),
    ("sfdisk", "--version"),
    ("qemu-img", "--version"),
    ("depmod", "--version"),
    ("grub-mkimage", "--version"),
];

#[derive(Serialize)]
struct HashInput<'a> {
    builder: &'static str,
    tools: BTreeMap<&'static str, String>,
    ipxe_template: String,
    recipe: &'a Recipe,
}

/// SHA-256 over the canonical JSON of the recipe (inputs by content digest),
/// the builder version, the image tools' versions and the iPXE template.
pub fn input_hash(recipe: &Recipe) -> String {
    let tools = TOOLS.iter().map(|(t, a)| (*t, crate::tools::version_line(t, a))).collect();
    let input = HashInput {
        builder: BUILDER_VERSION,
        tools,
        ipxe_template: crate::hash::sha256_hex(artifact::IPXE_TEMPLATE.as_bytes()),
        recipe,
    };
    let json = serde_json::to_vec(&input).expect("recipe serializes");
    crate::hash::sha256_hex(&json)
}

pub struct Built {
    pub entry: Entry,
    /// True when the entry already existed (no work was done).
    pub cached: bool,
    /// True when it came from the remote cache.
    pub fetched: bool,
}

pub fn build(recipe: &Recipe, store: &Store, progress: &Progress) -> Result<Built> {
    build_with(recipe, store, progress, None)
}

/// Like [`build`], first asking `remote` for the entry and pushing it there
/// after a build. A remote that fails is a warning: the build goes on locally.
pub fn build_with(recipe: &Recipe, store: &Store, progress: &Progress, remote: Option<&dyn Remote>) -> Result<Built> {
    let hash = input_hash(recipe);
    let name = entry_name(&hash, &recipe.name);
    if let Some(entry) = store.get(&name)? {
        return Ok(Built { entry, cached: true, fetched: false });
    }
    let _lock = store.lock(&hash)?;
    // Someone else may have finished it while we waited for the lock.
    if let Some(entry) = store.get(&name)? {
        return Ok(Built { entry, cached: true, fetched: false });
    }
    let mut bad_copy = false;
    if let Some(r) = remote {
        let step = progress.step(&format!("looking for {name} in {}", r.url()));
        match fetch(store, r, &name, &hash) {
            Ok(Some(entry)) => {
                step.done();
                return Ok(Built { entry, cached: true, fetched: true });
            }
            Ok(None) => step.done(),
            Err(e) => {
                tracing::warn!("{name} from {}: {e:#}; building here", r.url());
                bad_copy = true;
            }
        }
    }
    let pending = store.begin(&name)?;
    let work = tempfile::Builder::new().prefix("work.").tempdir_in(store.root().join(".tmp"))?;

    let step = progress.step(&format!("root filesystem for {}", recipe.name));
    let rootfs = crate::rootfs::assemble(recipe, work.path()).context("assembling the root filesystem")?;
    step.done();
    let artifacts = artifact::produce(recipe, &rootfs, &hash, &name, pending.path(), work.path(), progress)?;
    drop(rootfs);
    drop(work);

    let manifest = Manifest {
        name: name.clone(),
        hash: hash.clone(),
        profile: recipe.name.clone(),
        hardware: recipe.hardware.clone(),
        arch: recipe.arch,
        firmware: recipe.firmware,
        imgd_version: env!("CARGO_PKG_VERSION").into(),
        built_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        source_date_epoch: recipe.epoch,
        artifacts,
        recipe: serde_json::to_value(recipe)?,
    };
    let entry = store.commit(pending, &manifest)?;
    if let Some(r) = remote {
        let step = progress.step(&format!("sharing {name} with {}", r.url()));
        match r.push(&entry, bad_copy) {
            Ok(()) => step.done(),
            Err(e) => tracing::warn!("could not share {name} with {} ({e:#}); the local build is fine", r.url()),
        }
    }
    Ok(Built { entry, cached: false, fetched: false })
}

/// The entry from the remote cache, checked before it enters the store: its
/// manifest must name this hash and every artifact must match its SHA-256.
fn fetch(store: &Store, remote: &dyn Remote, name: &str, hash: &str) -> Result<Option<Entry>> {
    let pending = store.begin(name)?;
    if !remote.fetch(name, pending.path())? {
        return Ok(None);
    }
    let manifest = Manifest::read(&pending.path().join("manifest.json"))?;
    if manifest.hash != hash || manifest.name != name {
        anyhow::bail!("its manifest names {} ({}), not {name}", manifest.name, manifest.hash);
    }
    for a in &manifest.artifacts {
        let path = pending.path().join(&a.file);
        let (size, sha) = (std::fs::metadata(&path)?.len(), crate::hash::sha256_file(&path)?);
        if size != a.size || sha != a.sha256 {
            anyhow::bail!("{} does not match its manifest (sha256 {sha}, {size} bytes)", a.file);
        }
    }
    Ok(Some(store.commit(pending, &manifest)?))
}
