//! Things imgd makes once and keeps in its cache folder, named by the hash of
//! what went in: assembled Debian bases, unpacked kernel packages. Each is
//! made under a lock of its own name in a private folder beside that name,
//! and renamed into place only when whole: a killed run never leaves
//! something that looks complete, and the next maker sweeps what it left.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long an unpacked kernel or Debian base may go unused before it is
/// removed: when another one is made, and by `imgd gc` unless told otherwise
/// (`UNUSED_AGE` is the same age as `imgd gc --cache-unused` writes it).
/// Each is ~400 MB to ~1 GB on disk and made again on demand.
pub const UNUSED: Duration = Duration::from_secs(14 * 86_400);
pub const UNUSED_AGE: &str = "14d";

/// One folder of such things.
#[derive(Debug, Clone)]
pub struct Shelf {
    dir: PathBuf,
}

impl Shelf {
    pub fn new(dir: PathBuf) -> Shelf {
        Shelf { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks until this process is the only maker of `key`; the lock is
    /// held until the returned file is dropped.
    pub fn lock(&self, key: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(self.lock_path(key))?;
        f.lock().with_context(|| format!("locking {key} in {}", self.dir.display()))?;
        Ok(f)
    }

    /// The lock of `key` if no one holds it: for removals, which skip what
    /// is being made rather than wait for it.
    pub fn try_lock(&self, key: &str) -> Result<std::fs::File> {
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(self.lock_path(key))?;
        f.try_lock().map_err(|e| anyhow::anyhow!("{key} in {} is locked: {e}", self.dir.display()))?;
        Ok(f)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".{key}.lock"))
    }

    /// A private folder to make something in, beside where it will be
    /// renamed to. Folders with the same `prefix` that killed runs left are
    /// removed first: the caller holds the lock of the key the prefix names,
    /// so no live maker owns them.
    pub fn workspace(&self, prefix: &str) -> Result<tempfile::TempDir> {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(&self.dir)?)
    }

    /// Keys (names ending in `suffix`, which is stripped) whose `used` file
    /// has not been touched for `unused`, other than `keep`: what the caller
    /// may remove, each under its own lock.
    pub fn unused(&self, suffix: &str, used: &str, unused: Duration, keep: &str) -> Vec<(String, PathBuf)> {
        let cutoff = SystemTime::now().checked_sub(unused).unwrap_or(SystemTime::UNIX_EPOCH);
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return vec![] };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(suffix)?.to_string();
                let last = std::fs::metadata(e.path().join(used)).and_then(|m| m.modified());
                (key != keep && !key.starts_with('.') && !last.is_ok_and(|t| t > cutoff)).then(|| (key, e.path()))
            })
            .collect()
    }
}

impl Shelf {
    /// Removes what [`Shelf::unused`] lists, each under its own lock (one
    /// being made is skipped, not waited for), and only keys that are a
    /// SHA-256: what imgd made. `also(key)`: files kept beside the folder.
    /// `what` names one in logs and in the result (`kernel`, `Debian base`).
    pub fn remove_unused(
        &self,
        [suffix, used]: [&str; 2],
        unused: Duration,
        keep: &str,
        what: &str,
        also: impl Fn(&str) -> Vec<PathBuf>,
    ) -> Vec<Removed> {
        let mut removed = Vec::new();
        for (key, path) in self.unused(suffix, used, unused, keep) {
            if !crate::hash::is_sha256_hex(&key) {
                continue;
            }
            let Ok(_locked) = self.try_lock(&key) else { continue };
            let beside = also(&key);
            let bytes = disk_bytes(&path) + beside.iter().map(|p| disk_bytes(p)).sum::<u64>();
            tracing::info!("removing {what} {} (unused for {})", &key[..16], humantime::format_duration(unused));
            if std::fs::remove_dir_all(&path).is_ok() {
                for p in beside {
                    let _ = std::fs::remove_file(p);
                }
                removed.push(Removed { what: format!("{what} {key}"), bytes });
            }
        }
        removed
    }
}

/// Something removed from the cache because nothing used it, and what that freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// `kernel <sha256>`, `Debian base <key>`.
    pub what: String,
    pub bytes: u64,
}

/// Disk space taken by `path` and what is under it, each inode counted once
/// (as `du` counts it); symlinks are not followed.
pub fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    total
}

/// Marks `file` as used now, for [`Shelf::unused`].
pub fn touch(file: &Path) {
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_sweeps_what_killed_makers_of_its_key_left_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let shelf = Shelf::new(d.path().join("s"));
        let _l = shelf.lock("k1").unwrap();
        let left = shelf.workspace(".make-k1-").unwrap().keep();
        let other = shelf.workspace(".make-k2-").unwrap().keep();
        let w = shelf.workspace(".make-k1-").unwrap();
        assert!(!left.exists(), "a killed maker's folder of the same key is swept");
        assert!(other.exists() && w.path().exists());
    }

    #[test]
    fn only_things_unused_for_long_enough_are_offered_for_removal() {
        let d = tempfile::tempdir().unwrap();
        let shelf = Shelf::new(d.path().to_path_buf());
        for k in ["old", "new", "kept"] {
            std::fs::create_dir_all(d.path().join(format!("{k}.tree"))).unwrap();
            std::fs::write(d.path().join(format!("{k}.tree/used")), "").unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(30 * 86_400);
        for k in ["old", "kept"] {
            std::fs::File::options()
                .write(true)
                .open(d.path().join(format!("{k}.tree/used")))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let keys: Vec<String> = shelf
            .unused(".tree", "used", Duration::from_secs(14 * 86_400), "kept")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["old"]);
        touch(&d.path().join("old.tree/used"));
        assert!(shelf.unused(".tree", "used", Duration::from_secs(14 * 86_400), "kept").is_empty());
    }
}
