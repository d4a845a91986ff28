//! The local store: one directory per build, named `<hash>-<profile>`, holding
//! the artifacts and a `manifest.json`.
//!
//! An entry is complete exactly when its directory exists under its final name:
//! builds happen in `.tmp/` inside the store and are renamed into place after
//! every file (manifest last) is synced, so a kill at any moment leaves nothing
//! that looks complete. `.locks/<hash>.lock` serializes builds of one hash.

pub mod manifest;
pub mod remote;

use anyhow::{Context, Result};
pub use manifest::Manifest;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Hex digits of the input hash used in entry names (128 bits).
pub const NAME_HASH_LEN: usize = 32;

pub struct Store {
    root: PathBuf,
}

/// A complete entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub manifest: Manifest,
}

pub fn entry_name(hash: &str, profile: &str) -> String {
    format!("{}-{profile}", &hash[..NAME_HASH_LEN])
}

/// `--store`, else `$IMGD_STORE`, else `$XDG_DATA_HOME/imgd/store`, else
/// `~/.local/share/imgd/store`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGD_STORE") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("imgd/store");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/lib"), PathBuf::from);
    home.join(".local/share/imgd/store")
}

/// A build in progress: a private directory inside the store.
pub struct Pending {
    pub dir: tempfile::TempDir,
    name: String,
}

impl Pending {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Holds the per-hash build lock until dropped.
pub struct BuildLock {
    _file: File,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        for d in [root.to_path_buf(), root.join(".tmp"), root.join(".locks")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating store directory {}", d.display()))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The complete entry with this name, if any.
    pub fn get(&self, name: &str) -> Result<Option<Entry>> {
        let path = self.root.join(name);
        let mpath = path.join("manifest.json");
        if !mpath.is_file() {
            return Ok(None);
        }
        let manifest = Manifest::read(&mpath)?;
        Ok(Some(Entry { name: name.to_string(), path, manifest }))
    }

    /// Blocks until no other process builds `hash`.
    pub fn lock(&self, hash: &str) -> Result<BuildLock> {
        let p = self.root.join(".locks").join(format!("{}.lock", &hash[..NAME_HASH_LEN]));
        let f = File::options().create(true).truncate(false).write(true).open(&p)?;
        f.lock().with_context(|| format!("locking {}", p.display()))?;
        Ok(BuildLock { _file: f })
    }

    pub fn begin(&self, name: &str) -> Result<Pending> {
        let dir = tempfile::Builder::new().prefix(&format!("{name}.")).tempdir_in(self.root.join(".tmp"))?;
        Ok(Pending { dir, name: name.to_string() })
    }

    /// Writes the manifest, syncs everything and renames the entry into place.
    pub fn commit(&self, pending: Pending, manifest: &Manifest) -> Result<Entry> {
        let dir = pending.dir.path();
        let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            File::open(e.path())?.sync_all()?;
        }
        manifest.write(&dir.join("manifest.json"))?;
        File::open(dir)?.sync_all()?;
        let dest = self.root.join(&pending.name);
        let tmp = pending.dir.keep();
        std::fs::rename(&tmp, &dest).with_context(|| format!("moving build into {}", dest.display()))?;
        File::open(&self.root)?.sync_all()?;
        self.get(&pending.name)?.context("entry vanished after commit")
    }

    /// Every complete entry, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.get(&name) {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => {}
                Err(err) => tracing::warn!("skipping {name}: {err:#}"),
            }
        }
        out.sort_by(|a, b| (a.manifest.built_at, &a.name).cmp(&(b.manifest.built_at, &b.name)));
        Ok(out)
    }

    /// Re-hashes an entry's artifacts; returns a problem per bad file.
    pub fn verify(&self, entry: &Entry) -> Vec<String> {
        let mut problems = Vec::new();
        for a in &entry.manifest.artifacts {
            let p = entry.path.join(&a.file);
            match (std::fs::metadata(&p), crate::hash::sha256_file(&p)) {
                (Ok(md), Ok(sum)) if md.len() == a.size && sum == a.sha256 => {}
                (Ok(md), Ok(sum)) => problems.push(format!(
                    "{}/{}: expected {} bytes sha256 {}, found {} bytes sha256 {sum}",
                    entry.name,
                    a.file,
                    a.size,
                    a.sha256,
                    md.len()
                )),
                (Err(e), _) | (_, Err(e)) => problems.push(format!("{}/{}: {e}", entry.name, a.file)),
            }
        }
        problems
    }

    /// Removes all but the newest `keep` entries of each profile, and leftovers
    /// of interrupted builds that nobody is running. Returns removed names.
    pub fn gc(&self, keep: usize) -> Result<Vec<String>> {
        let mut by_profile: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
        for e in self.entries()? {
            by_profile.entry(e.manifest.profile.clone()).or_default().push(e);
        }
        let mut removed = Vec::new();
        for (_, mut entries) in by_profile {
            entries.reverse(); // newest first
            for e in entries.into_iter().skip(keep) {
                // Rename out of the namespace first: a half-deleted entry must
                // not look complete.
                let trash = self.root.join(".tmp").join(format!("{}.gc", e.name));
                std::fs::rename(&e.path, &trash)?;
                std::fs::remove_dir_all(&trash)?;
                removed.push(e.name);
            }
        }
        for e in std::fs::read_dir(self.root.join(".tmp"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let hash_prefix = name.split('-').next().unwrap_or("");
            let lock = self.root.join(".locks").join(format!("{hash_prefix}.lock"));
            let busy = File::options().write(true).open(&lock).map(|f| f.try_lock().is_err()).unwrap_or(false);
            if !busy {
                std::fs::remove_dir_all(e.path()).ok();
                removed.push(format!(".tmp/{name}"));
            }
        }
        Ok(removed)
    }
}
