//! The local store: one directory per build, named `<hash>-<profile>`, holding
//! the artifacts and a `manifest.json`.
//!
//! An entry is complete exactly when its directory exists under its final name:
//! builds happen in `.tmp/` inside the store and are renamed into place after
//! every file (manifest last) is synced, so a kill at any moment leaves nothing
//! that looks complete. `.locks/<hash>.lock` serializes builds of one hash and
//! tells `gc` which `.tmp/` folders belong to a running build; a build sweeps
//! the leftovers of killed ones when it starts, so a crash-looping builder
//! does not fill its disk.
//!
//! GC roots (as Nix has them): a running `imgd serve` lists the entries it
//! hands out in `.roots/<id>.json` and holds `.roots/<id>.lock` while it runs;
//! `gc` never removes a rooted entry, and drops roots whose lock is free (the
//! server is gone). `gc` holds `.locks/gc.lock` exclusively; a server holds it
//! shared while it picks entries and writes its root, so neither sees the
//! other half done.

pub mod remote;
#[cfg(feature = "aws")]
pub mod s3;
pub mod settings;

pub use crate::model::manifest::Manifest;
use crate::model::{EntryName, InputHash, NAME_HASH_LEN};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a store operation failed: what it was doing, and on which path or
/// entry. (The cause follows in the chain: `{:#}` prints both.)
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder of the store could not be read, written or locked.
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    /// An entry's manifest could not be read or written as imgd writes it.
    #[error("the manifest of {entry}")]
    Manifest {
        entry: EntryName,
        #[source]
        source: crate::model::manifest::ManifestError,
    },
    /// A GC root of this id is held by another running process.
    #[error("GC root {id} is held by another process")]
    RootHeld { id: String },
    /// An entry was renamed into place and is not there when read back.
    #[error("entry {0} vanished after commit")]
    Vanished(EntryName),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Tags an I/O error with what was done to which path.
fn io<'p>(doing: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StoreError + 'p {
    move |source| StoreError::Io(crate::fsutil::IoError { doing, path: path.to_path_buf(), source })
}

/// Tags a manifest's read or write error with its entry.
fn manifest(entry: &EntryName) -> impl FnOnce(crate::model::manifest::ManifestError) -> StoreError + '_ {
    move |source| StoreError::Manifest { entry: entry.clone(), source }
}

/// The folder of signed copies, inside the store.
pub(crate) const SIGNED_DIR: &str = ".signed";

pub struct Store {
    root: PathBuf,
}

/// A complete entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: EntryName,
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// A build in progress: a private directory inside the store.
pub(crate) struct Pending {
    pub dir: tempfile::TempDir,
    name: EntryName,
}

impl Pending {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Holds the per-hash build lock until dropped.
pub(crate) struct BuildLock {
    _file: File,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        for d in [root.to_path_buf(), root.join(".tmp"), root.join(".locks")] {
            std::fs::create_dir_all(&d).map_err(io("creating store directory", &d))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the signed copies of `entry` live (`.signed/<entry>/`, made by
    /// `crate::sign`): the store owns the folder, so gc removes it with the entry.
    pub(crate) fn signed_dir(&self, entry: &EntryName) -> PathBuf {
        self.root.join(SIGNED_DIR).join(entry)
    }

    /// Removes every signed set of `entry` (when gc removes the entry).
    fn forget_signed(&self, entry: &EntryName) -> Result<()> {
        let dir = self.signed_dir(entry);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// The complete entry with this name, if any.
    pub fn get(&self, name: &EntryName) -> Result<Option<Entry>> {
        let path = self.root.join(name);
        let mpath = path.join("manifest.json");
        if !mpath.is_file() {
            return Ok(None);
        }
        let manifest = Manifest::read(&mpath).map_err(manifest(name))?;
        Ok(Some(Entry { name: name.clone(), path, manifest }))
    }

    /// Blocks until no other process builds `hash`.
    pub(crate) fn lock(&self, hash: &InputHash) -> Result<BuildLock> {
        let p = self.root.join(".locks").join(format!("{}.lock", hash.short()));
        let f = File::options().create(true).truncate(false).write(true).open(&p).map_err(io("opening", &p))?;
        f.lock().map_err(io("locking", &p))?;
        Ok(BuildLock { _file: f })
    }

    /// A private folder for a build of `name` (hold its lock first): named
    /// after the entry, so `gc` can tell it belongs to a running build.
    pub(crate) fn begin(&self, name: &EntryName) -> Result<Pending> {
        let tmp = self.root.join(".tmp");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir_in(&tmp)
            .map_err(io("making a folder in", &tmp))?;
        Ok(Pending { dir, name: name.clone() })
    }

    /// Scratch space for a build of `name` (removed when dropped).
    pub(crate) fn work_dir(&self, name: &EntryName) -> Result<tempfile::TempDir> {
        let tmp = self.root.join(".tmp");
        tempfile::Builder::new()
            .prefix(&format!("{name}.work."))
            .tempdir_in(&tmp)
            .map_err(io("making a folder in", &tmp))
    }

    /// Writes the manifest, syncs everything and renames the entry into place.
    pub(crate) fn commit(&self, pending: Pending, manifest: &Manifest) -> Result<Entry> {
        let dir = pending.dir.path();
        let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all()).map_err(io("syncing", p));
        let listed: std::io::Result<Vec<_>> = std::fs::read_dir(dir).and_then(|d| d.collect());
        let mut names = listed.map_err(io("listing", dir))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            sync(&e.path())?;
        }
        manifest.write(&dir.join("manifest.json")).map_err(self::manifest(&pending.name))?;
        sync(dir)?;
        let dest = self.root.join(&pending.name);
        let tmp = pending.dir.keep();
        std::fs::rename(&tmp, &dest).map_err(io("moving the build into", &dest))?;
        sync(&self.root)?;
        self.get(&pending.name)?.ok_or_else(|| StoreError::Vanished(pending.name.clone()))
    }

    /// Every complete entry, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io("listing", &self.root))? {
            let e = e.map_err(io("listing", &self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(name) = EntryName::new(&name) else {
                tracing::warn!("skipping {}: not a store entry name (<32 hex digits>-<profile>)", name.escape_debug());
                continue;
            };
            match self.get(&name) {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => {}
                Err(err) => tracing::warn!("skipping an entry: {}", crate::model::Chain(&err)),
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
            match (std::fs::metadata(&p), crate::model::Blake3::of_file(&p)) {
                (Ok(md), Ok(sum)) if md.len() == a.size && sum == a.blake3 => {}
                (Ok(md), Ok(sum)) => problems.push(format!(
                    "{}/{}: expected {} bytes blake3 {}, found {} bytes blake3 {sum}",
                    entry.name,
                    a.file,
                    a.size,
                    a.blake3,
                    md.len()
                )),
                (Err(e), _) | (_, Err(e)) => problems.push(format!("{}/{}: {e}", entry.name, a.file)),
            }
        }
        problems
    }

    /// Removes the folders in `.tmp/` that no running build holds (killed
    /// builds' leftovers). `held` is the hash whose lock the caller holds
    /// itself: its folders are leftovers too. Returns what it removed.
    pub(crate) fn sweep_tmp(&self, held: Option<&InputHash>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let tmp = self.root.join(".tmp");
        for e in std::fs::read_dir(&tmp).map_err(io("listing", &tmp))? {
            let e = e.map_err(io("listing", &tmp))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // `<hash32>-<profile>.<random>` or `.work.<random>`, or a gc's `.gc`.
            let hash = name.split('-').next().unwrap_or("");
            let mine = held.is_some_and(|h| h.short() == hash);
            if hash.len() == NAME_HASH_LEN && !mine && self.build_running(hash) {
                continue;
            }
            let is_dir = e.file_type().map_err(io("reading the type of", &e.path()))?.is_dir();
            let remove = || if is_dir { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
            // A tool a killed build started may still be finishing (the kernel
            // delivers its death signal, but not instantly): try again briefly.
            let mut gone = remove();
            for _ in 0..5 {
                if gone.is_ok() || !e.path().exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                gone = remove();
            }
            match gone {
                Ok(()) => removed.push(format!(".tmp/{name}")),
                Err(err) => tracing::warn!("cannot remove .tmp/{name}: {err}"),
            }
        }
        Ok(removed)
    }

    /// Whether a build of the hash starting with `hash32` holds its lock now.
    fn build_running(&self, hash32: &str) -> bool {
        let lock = self.root.join(".locks").join(format!("{hash32}.lock"));
        File::options().write(true).open(&lock).is_ok_and(|f| f.try_lock().is_err())
    }

    /// Removes all but the newest `keep` entries of each profile, except those
    /// a running server hands out, and leftovers of interrupted builds that
    /// nobody is running. Returns removed names.
    pub fn gc(&self, keep: usize) -> Result<Vec<String>> {
        let _gc = self.gc_lock(true)?;
        let rooted = self.live_roots()?;
        let mut by_profile: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
        for e in self.entries()? {
            by_profile.entry(e.manifest.profile.clone()).or_default().push(e);
        }
        let mut removed = Vec::new();
        for (_, mut entries) in by_profile {
            entries.reverse(); // newest first
            for e in entries.into_iter().skip(keep) {
                if rooted.contains(&e.name) {
                    tracing::info!("keeping {}: a running imgd serve hands it out", e.name);
                    continue;
                }
                // Rename out of the namespace first: a half-deleted entry must
                // not look complete.
                let trash = self.root.join(".tmp").join(format!("{}.gc", e.name));
                std::fs::rename(&e.path, &trash).map_err(io("moving out of the store", &e.path))?;
                std::fs::remove_dir_all(&trash).map_err(io("removing", &trash))?;
                self.forget_signed(&e.name)?;
                removed.push(e.name.to_string());
            }
        }
        removed.extend(self.sweep_tmp(None)?);
        Ok(removed)
    }

    /// `.locks/gc.lock`: exclusive for gc, shared for a server choosing entries.
    pub fn gc_lock(&self, exclusive: bool) -> Result<File> {
        let p = self.root.join(".locks").join("gc.lock");
        let f = File::options().create(true).truncate(false).write(true).open(&p).map_err(io("opening", &p))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io("locking", &p))?;
        Ok(f)
    }

    /// Entries that running servers hand out; roots of servers that are gone
    /// are removed.
    pub(crate) fn live_roots(&self) -> Result<std::collections::BTreeSet<EntryName>> {
        let dir = self.root.join(".roots");
        let mut live = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let lock = path.with_extension("lock");
            let held = File::options().write(true).open(&lock).is_ok_and(|f| f.try_lock().is_err());
            if !held {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(&lock);
                continue;
            }
            let names: Vec<String> =
                std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            live.extend(names.iter().filter_map(|n| EntryName::new(n).ok()));
        }
        Ok(live)
    }

    /// Makes `names` a GC root for as long as the returned root lives.
    pub fn gc_root(&self, id: &str) -> Result<Root> {
        let dir = self.root.join(".roots");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let path = dir.join(format!("{id}.lock"));
        let lock =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(io("opening", &path))?;
        lock.try_lock().map_err(|_| StoreError::RootHeld { id: id.to_string() })?;
        Ok(Root { path: dir.join(format!("{id}.json")), _lock: lock })
    }
}

/// A GC root: the entries listed in it survive `imgd gc` while it lives.
pub struct Root {
    path: PathBuf,
    _lock: File,
}

impl Root {
    /// Replaces the rooted entries (atomically: gc sees the old list or the new).
    pub fn set(&self, names: &[EntryName]) -> Result<(), crate::fsutil::IoError> {
        use crate::fsutil::IoAt;
        let json = serde_json::to_vec(names).map_err(std::io::Error::from).at("writing", &self.path)?;
        crate::fsutil::write_atomic(&self.path, &json)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_say_what_failed_on_which_path_or_entry() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-folder");
        std::fs::write(&file, "").unwrap();
        let err = Store::open(&file.join("store")).err().unwrap();
        assert!(
            matches!(&err, StoreError::Io(crate::fsutil::IoError { doing: "creating store directory", path, .. }) if path.starts_with(&file))
        );
        let shown = crate::model::Chain(&err).to_string();
        assert!(shown.starts_with(&format!("creating store directory {}", file.display())), "{shown}");

        let store = Store::open(&d.path().join("store")).unwrap();
        let name = EntryName::new(&format!("{}-web", "0".repeat(NAME_HASH_LEN))).unwrap();
        std::fs::create_dir_all(store.root().join(&*name)).unwrap();
        std::fs::write(store.root().join(&*name).join("manifest.json"), "{ not json").unwrap();
        let err = store.get(&name).err().unwrap();
        assert!(matches!(&err, StoreError::Manifest { entry, .. } if *entry == name), "{err:?}");
        assert!(crate::model::Chain(&err).to_string().contains("manifest.json"));

        let _root = store.gc_root("serve-1").unwrap();
        let err = store.gc_root("serve-1").err().unwrap();
        assert!(matches!(&err, StoreError::RootHeld { id } if id == "serve-1"), "{err:?}");
    }
}
