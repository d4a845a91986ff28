//! The build pipeline as one library call, used by `imgd build`, `serve
//! --build` and every command that needs an entry:
//!
//! 1. [`recipe`]: the profile resolved; with `--unlocked`, a Debian base
//!    without a lock gets the package set the mirror has today (lock policy);
//! 2. [`entry`]: the input hash -> a cache hit, a checked fetch from the
//!    remote cache, or a build in a private directory committed atomically;
//! 3. then the sign policy: a profile with `[secure_boot]` has its UKI
//!    signed (once; a cached entry keeps its signatures).

use crate::artifact;
use crate::config::Recipe;
use crate::fsutil::IoAt;
use crate::model::{Blake3, EntryName, InputHash};
use crate::progress::Progress;
use crate::store::remote::Remote;
use crate::store::{Entry, Manifest, Store};
use serde::Serialize;
use std::collections::BTreeMap;

/// What can stop the pipeline, each from the step it was in.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The profile or hardware file is wrong (exit code 2).
    #[error("resolving the profile")]
    Config(#[source] crate::model::ConfigError),
    #[error(transparent)]
    Debian(#[from] crate::debian::DebianError),
    #[error(transparent)]
    Name(#[from] crate::model::BadName),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error("assembling the root filesystem")]
    Rootfs(#[source] crate::rootfs::RootfsError),
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    /// Measuring a UKI for its PCR 11 value (`what`: which UKI).
    #[error("measuring {what} as its stub will")]
    Measure {
        what: &'static str,
        #[source]
        source: Box<artifact::ArtifactError>,
    },
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error(transparent)]
    Remote(#[from] crate::store::remote::RemoteError),
    #[error(transparent)]
    Manifest(#[from] crate::model::manifest::ManifestError),
    #[error("recording the recipe in the manifest")]
    Record(#[source] serde_json::Error),
    /// An entry from the remote cache that is not what its name says.
    #[error("{0}")]
    Fetched(String),
}

impl From<crate::model::ConfigError> for BuildError {
    fn from(e: crate::model::ConfigError) -> Self {
        BuildError::Config(e)
    }
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Bumped whenever the builder's output for the same inputs changes (its
/// files, or the manifest: `layout-2` names artifacts by BLAKE3, `layout-3`
/// records a UKI's PCR 11).
pub(crate) const BUILDER_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "/layout-3");

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
    /// The node stage script every image carries (`rootfs::node_stage`).
    node_stage: String,
    /// The scratch stage's body, for images with `[scratch]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    scratch_stage: Option<String>,
    recipe: &'a Recipe,
}

/// SHA-256 over the canonical JSON of the recipe (inputs by content digest),
/// the builder version, the image tools' versions, and what imgd itself
/// writes into images (the iPXE template, the node stage).
pub fn input_hash(recipe: &Recipe) -> InputHash {
    let tools = TOOLS.iter().map(|(t, a)| (*t, crate::tools::version_line(t, a))).collect();
    let input = HashInput {
        builder: BUILDER_VERSION,
        tools,
        ipxe_template: crate::hash::sha256_hex(artifact::IPXE_TEMPLATE.as_bytes()),
        node_stage: crate::hash::sha256_hex(crate::rootfs::node_stage::SCRIPT.as_bytes()),
        scratch_stage: recipe
            .scratch
            .as_ref()
            .map(|_| crate::hash::sha256_hex(crate::rootfs::scratch::SCRIPT.as_bytes())),
        recipe,
    };
    // Serializing plain data to a Vec cannot fail; an empty input would still
    // hash, but to a value no real recipe has.
    let json = serde_json::to_vec(&input).unwrap_or_default();
    InputHash::of_sha256(crate::hash::sha256(&json))
}

/// How a build's entry came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Built here just now.
    Built,
    /// Already in the store: no work was done.
    Cached,
    /// Fetched (and checked) from the remote cache.
    Fetched,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Built => "built",
            Outcome::Cached => "cached",
            Outcome::Fetched => "fetched",
        }
    }
}

pub struct Built {
    pub entry: Entry,
    pub outcome: Outcome,
    /// `[secure_boot]`: the entry's signed set, and whether it was signed now.
    pub signed: Option<(crate::sign::Signed, bool)>,
}

/// Step 1: a loaded profile's recipe, with the lock policy applied (see the
/// module docs). `formats` builds only those (`--format`).
pub fn recipe(
    loaded: &crate::config::Loaded,
    cache: &std::path::Path,
    formats: Option<Vec<crate::model::Format>>,
    unlocked: bool,
) -> Result<Recipe> {
    let mut recipe = crate::config::resolve_in(loaded, cache, formats, unlocked)?;
    crate::debian::lock_now_if_unlocked(&mut recipe)?;
    Ok(recipe)
}

/// Steps 2 and 3: the recipe's entry — found, fetched from `remote`, or
/// built (and pushed to `remote`) — then signed as its profile asks. A
/// remote that fails is a warning: the build goes on locally.
pub fn entry(recipe: &Recipe, store: &Store, progress: &Progress, remote: Option<&dyn Remote>) -> Result<Built> {
    let (entry, outcome) = find_or_build(recipe, store, progress, remote)?;
    let signed = match &recipe.signing {
        Some(s) => Some(crate::sign::ensure(store, &entry, &s.key, &s.cert)?),
        None => None,
    };
    Ok(Built { entry, outcome, signed })
}

fn find_or_build(
    recipe: &Recipe,
    store: &Store,
    progress: &Progress,
    remote: Option<&dyn Remote>,
) -> Result<(Entry, Outcome)> {
    let hash = input_hash(recipe);
    let name = EntryName::of(&hash, &recipe.name)?;
    if let Some(entry) = store.get(&name)? {
        return Ok((entry, Outcome::Cached));
    }
    let _lock = store.lock(&hash)?;
    // Someone else may have finished it while we waited for the lock.
    if let Some(entry) = store.get(&name)? {
        return Ok((entry, Outcome::Cached));
    }
    // Builds killed earlier (kill -9, a crash loop) left their folders.
    match store.sweep_tmp(Some(&hash)) {
        Ok(gone) if !gone.is_empty() => tracing::info!("removed {} folder(s) killed builds left", gone.len()),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot sweep the store's .tmp: {}", crate::model::Chain(&e)),
    }
    let mut bad_copy = false;
    if let Some(r) = remote {
        let step = progress.step(&format!("looking for {name} in {}", r.url()));
        match fetch(store, r, &name, &hash) {
            Ok(Some(entry)) => {
                step.done();
                return Ok((entry, Outcome::Fetched));
            }
            Ok(None) => step.done(),
            Err(e) => {
                tracing::warn!("{name} from {}: {}; building here", r.url(), crate::model::Chain(&e));
                bad_copy = true;
            }
        }
    }
    let pending = store.begin(&name)?;
    let work = store.work_dir(&name)?;

    let step = progress.step(&format!("root filesystem for {}", recipe.name));
    let rootfs = crate::rootfs::assemble(recipe, work.path(), remote).map_err(BuildError::Rootfs)?;
    step.done();
    // Kept in the store, which holds what it is for; ~200 MB per Debian base.
    let frames = artifact::tarball::FrameCache::new(store.root().join(".cache/tar-frames"), 1 << 30);
    let places = artifact::Places { out: pending.path(), work: work.path(), tar_frames: Some(&frames) };
    let artifacts = artifact::produce(recipe, &rootfs, &hash, &name, places, progress)?;
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
        pcr11: pcr11(pending.path(), &artifacts)?,
        disk_pcr11: disk_pcr11(pending.path(), &artifacts, &recipe.name, recipe.firmware)?,
        artifacts,
        recipe: recipe.record().map_err(BuildError::Record)?,
    };
    let entry = store.commit(pending, &manifest)?;
    if let Some(r) = remote {
        let step = progress.step(&format!("sharing {name} with {}", r.url()));
        match r.push(&entry, bad_copy) {
            Ok(()) => step.done(),
            Err(e) => tracing::warn!(
                "could not share {name} with {} ({}); the local build is fine",
                r.url(),
                crate::model::Chain(&e)
            ),
        }
    }
    Ok((entry, Outcome::Built))
}

/// The recipe's entry from `remote` into `store`, never building: None when
/// the remote does not have it. (A netboot replica serves what was built
/// elsewhere.) Checked exactly as [`entry`] checks what it fetches.
pub(crate) fn fetch_only(recipe: &Recipe, store: &Store, remote: &dyn Remote) -> Result<Option<Entry>> {
    let hash = input_hash(recipe);
    let name = EntryName::of(&hash, &recipe.name)?;
    if let Some(entry) = store.get(&name)? {
        return Ok(Some(entry));
    }
    let _lock = store.lock(&hash)?;
    if let Some(entry) = store.get(&name)? {
        return Ok(Some(entry));
    }
    fetch(store, remote, &name, &hash)
}

/// The entry from the remote cache, checked before it enters the store.
///
/// Everything in the cache is untrusted: the manifest is read with a size
/// limit and checked ([`Manifest::parse`]: plain file names only, 64-hex
/// digests, nothing listed twice), it must name this very hash and entry,
/// each file is fetched into the private pending folder with at most the size
/// the manifest promises, and re-hashed. Only then is the entry committed
/// (with the manifest as imgd writes it, not the bytes fetched).
fn fetch(store: &Store, remote: &dyn Remote, name: &EntryName, hash: &InputHash) -> Result<Option<Entry>> {
    let pending = store.begin(name)?;
    let fetched = pending.path().join("manifest.json");
    if !remote.get(name, "manifest.json", &fetched, crate::model::manifest::MAX_BYTES)? {
        return Ok(None);
    }
    let manifest = Manifest::read(&fetched)?;
    if &manifest.hash != hash || &manifest.name != name {
        return Err(BuildError::Fetched(format!(
            "its manifest names {} ({}), not {name}",
            manifest.name, manifest.hash
        )));
    }
    for a in &manifest.artifacts {
        let path = pending.path().join(a.file.as_str());
        if !remote.get(name, a.file.as_str(), &path, a.size)? {
            return Err(BuildError::Fetched(format!("{} is missing although the manifest lists it", a.file)));
        }
        let size = std::fs::metadata(&path).at("reading", &path)?.len();
        let digest = Blake3::of_file(&path).at("reading", &path)?;
        if size != a.size || digest != a.blake3 {
            let problem = format!("{} does not match its manifest (blake3 {digest}, {size} bytes)", a.file);
            return Err(BuildError::Fetched(problem));
        }
    }
    // Derived from the UKI just checked, never taken from the remote.
    let mut manifest = manifest;
    manifest.pcr11 = pcr11(pending.path(), &manifest.artifacts)?;
    manifest.disk_pcr11 = disk_pcr11(pending.path(), &manifest.artifacts, &manifest.profile, manifest.firmware)?;
    let bytes: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
    tracing::info!("fetched {name} from {} ({bytes} bytes)", remote.url());
    Ok(Some(store.commit(pending, &manifest)?))
}

/// PCR 11 for the entry's UKI in `dir`, if it has one.
fn pcr11(
    dir: &std::path::Path,
    artifacts: &[crate::model::manifest::Artifact],
) -> Result<Option<crate::model::manifest::Pcr11>> {
    use crate::model::manifest::ArtifactName;
    let Some(a) = artifacts.iter().find(|a| a.name == ArtifactName::Uki) else { return Ok(None) };
    let measured = artifact::uki::pcr11(&dir.join(a.file.as_str()));
    measured.map(Some).map_err(|e| BuildError::Measure { what: "the UKI", source: Box::new(e) })
}

/// PCR 11 for the UKI on the ESP of the entry's raw UEFI disk, if it has one.
fn disk_pcr11(
    dir: &std::path::Path,
    artifacts: &[crate::model::manifest::Artifact],
    profile: &str,
    firmware: crate::model::Firmware,
) -> Result<Option<crate::model::manifest::Pcr11>> {
    use crate::model::manifest::ArtifactName;
    use crate::model::{Firmware, Format};
    let raw = artifacts.iter().find(|a| a.format == Format::Raw && a.name == ArtifactName::Disk);
    let Some(raw) = raw.filter(|_| firmware == Firmware::Uefi) else { return Ok(None) };
    // Beside the pending entry (in the store's .tmp), not inside it.
    let beside = dir.parent().unwrap_or(dir);
    let tmp = tempfile::tempdir_in(beside).at("making a private folder in", beside)?;
    let uki = tmp.path().join("disk-uki.efi");
    artifact::disk::esp_file(&dir.join(raw.file.as_str()), &format!("::/EFI/Linux/{profile}.efi"), &uki)?;
    let measured = artifact::uki::pcr11(&uki);
    measured.map(Some).map_err(|e| BuildError::Measure { what: "the disk's UKI", source: Box::new(e) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Chain, ConfigError, Kind};

    /// Bad input found deep in the pipeline still exits 2 once a command
    /// has wrapped it in anyhow; anything else exits 1. Each layer says
    /// which step it was in.
    #[test]
    fn a_config_error_deep_in_the_pipeline_keeps_its_kind_and_its_steps() {
        let bad = ConfigError::new("profiles/web.toml", "/bin/nope is not an executable file in the image").key("init");
        let e = BuildError::Rootfs(crate::rootfs::RootfsError::from(bad));
        assert_eq!(
            Chain(&e).to_string(),
            "assembling the root filesystem: the profile does not fit its image: \
             profiles/web.toml: key `init`: /bin/nope is not an executable file in the image"
        );
        let e = anyhow::Error::from(e).context("building web");
        assert_eq!(Kind::of(e.as_ref()).exit_code(), 2);

        let io = crate::fsutil::IoError {
            doing: "writing",
            path: "/store/x".into(),
            source: std::io::Error::other("disk full"),
        };
        let e = BuildError::Rootfs(crate::rootfs::RootfsError::Io(io));
        assert_eq!(Chain(&e).to_string(), "assembling the root filesystem: writing /store/x: disk full");
        assert_eq!(Kind::of(anyhow::Error::from(e).as_ref()).exit_code(), 1);
    }
}
