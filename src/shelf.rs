//! Things imgd makes once and keeps in its cache folder, named by the hash of
//! what went in: assembled Debian bases, unpacked kernel packages. Each is
//! made under a lock of its own name in a private folder beside that name,
//! and renamed into place only when whole: a killed run never leaves
//! something that looks complete, and the next maker sweeps what it left.

use crate::fsutil::{IoAt, IoError};
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
    pub(crate) fn new(dir: PathBuf) -> Shelf {
        Shelf { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks until this process is the only maker of `key`; the lock is
    /// held until the returned file is dropped.
    pub(crate) fn lock(&self, key: &str) -> Result<std::fs::File, IoError> {
        std::fs::create_dir_all(&self.dir).at("creating", &self.dir)?;
        let path = self.lock_path(key);
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(&path).at("opening", &path)?;
        f.lock().at("locking", &path)?;
        Ok(f)
    }

    /// The lock of `key` if no one holds it: for removals, which skip what
    /// is being made rather than wait for it.
    pub(crate) fn try_lock(&self, key: &str) -> Result<std::fs::File, IoError> {
        let path = self.lock_path(key);
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(&path).at("opening", &path)?;
        f.try_lock().map_err(std::io::Error::from).at("locking", &path)?;
        Ok(f)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".{key}.lock"))
    }

    /// A private folder to make something in, beside where it will be
    /// renamed to. Folders with the same `prefix` that killed runs left are
    /// removed first: the caller holds the lock of the key the prefix names,
    /// so no live maker owns them.
    pub(crate) fn workspace(&self, prefix: &str) -> Result<tempfile::TempDir, IoError> {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let path = e.path();
                // A removal would go down into what is mounted there: the
                // bind-mounted /dev of a chroot is the host's own.
                if let Some(m) = mount_under(&path) {
                    // Debug-quoted: a mount point may hold any byte but '/'.
                    tracing::warn!("leaving {path:?}: {m:?} is mounted in it (unmount it to have it removed)");
                    continue;
                }
                let _ = std::fs::remove_dir_all(path);
            }
        }
        tempfile::Builder::new().prefix(prefix).tempdir_in(&self.dir).at("making a private folder in", &self.dir)
    }

    /// Keys of `kind` (names ending in its suffix, which is stripped) none of
    /// whose use marks was touched for `unused`, other than `keep`: what the
    /// caller may remove, each under its own lock.
    pub(crate) fn unused(&self, kind: &Kind, unused: Duration, keep: &str) -> Vec<(String, PathBuf)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return vec![] };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(kind.suffix)?.to_string();
                (key != keep && !key.starts_with('.') && kind.idle(&key, unused)).then(|| (key, e.path()))
            })
            .collect()
    }
}

/// One kind of thing kept on a shelf, for the removal of unused ones.
pub(crate) struct Kind<'a> {
    /// Entries (folders or files) are named `<key><suffix>`.
    pub suffix: &'a str,
    /// Names one in logs and in results (`kernel`, `Debian base`).
    pub what: &'a str,
    /// The files whose mtime says when `key` was last used; the newest counts
    /// (none there: never used).
    pub marks: &'a dyn Fn(&str) -> Vec<PathBuf>,
    /// What goes with `key` when it is removed (folders or files).
    pub also: &'a dyn Fn(&str) -> Vec<PathBuf>,
}

impl Kind<'_> {
    fn idle(&self, key: &str, unused: Duration) -> bool {
        let cutoff = SystemTime::now().checked_sub(unused).unwrap_or(SystemTime::UNIX_EPOCH);
        let last = (self.marks)(key).iter().filter_map(|m| std::fs::metadata(m).and_then(|m| m.modified()).ok()).max();
        last.is_none_or(|t| t <= cutoff)
    }
}

/// Removes a folder with what is in it, or a file.
fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

impl Shelf {
    /// Removes what [`Shelf::unused`] lists, each under its own lock (one
    /// being made is skipped, not waited for) and looked at again once
    /// locked (a build may have used it meanwhile), and only keys that are a
    /// SHA-256: what imgd made.
    pub(crate) fn remove_unused(&self, kind: &Kind, unused: Duration, keep: &str) -> Vec<Removed> {
        let mut removed = Vec::new();
        for (key, path) in self.unused(kind, unused, keep) {
            if !crate::hash::is_sha256_hex(&key) {
                continue;
            }
            let Ok(_locked) = self.try_lock(&key) else { continue };
            if !kind.idle(&key, unused) {
                continue;
            }
            let beside = (kind.also)(&key);
            let bytes = disk_bytes(&path) + beside.iter().map(|p| disk_bytes(p)).sum::<u64>();
            let what = kind.what;
            tracing::info!("removing {what} {} (unused for {})", &key[..16], humantime::format_duration(unused));
            if remove(&path).is_ok() {
                for p in beside {
                    let _ = remove(&p);
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
pub(crate) fn disk_bytes(path: &Path) -> u64 {
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
pub(crate) fn touch(file: &Path) {
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// A mount point at or under `path`, as this process's mount namespace sees
/// it (`/proc/self/mountinfo`, whose paths escape space, tab, newline and
/// backslash as octal).
fn mount_under(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .find(|m| m.strip_prefix(path.as_ref()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match digits {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    /// What a killed maker left is swept, except where something is mounted
    /// in it: a chroot's bind-mounted /dev is the host's (needs root, as
    /// assembling a Debian base does).
    #[test]
    fn a_leftover_with_a_mount_in_it_is_left_alone_until_unmounted() {
        let d = tempfile::tempdir().unwrap();
        let shelf = Shelf::new(d.path().to_path_buf());
        // A space in the name: mountinfo writes it as \040.
        let mounted = d.path().join(".assemble-killed x/chroot/dev");
        std::fs::create_dir_all(&mounted).unwrap();
        let mount = |args: &[&str]| {
            assert!(std::process::Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}")
        };
        mount(&["mount", "-t", "tmpfs", "-o", "size=1m", "imgd-test", mounted.to_str().unwrap()]);
        // Unmounted however the test ends.
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let unmount = Unmount(&mounted);
        std::fs::write(mounted.join("null"), "the host's device").unwrap();
        let w = shelf.workspace(".assemble-").unwrap();
        assert!(mounted.join("null").exists(), "nothing under a mount point is removed");
        drop(unmount);
        drop(w);
        let _w = shelf.workspace(".assemble-").unwrap();
        assert!(!d.path().join(".assemble-killed x").exists(), "swept once nothing is mounted there");
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
        let marks = |k: &str| vec![d.path().join(format!("{k}.tree/used"))];
        let kind = Kind { suffix: ".tree", what: "tree", marks: &marks, also: &|_| vec![] };
        let keys: Vec<String> =
            shelf.unused(&kind, Duration::from_secs(14 * 86_400), "kept").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["old"]);
        touch(&d.path().join("old.tree/used"));
        assert!(shelf.unused(&kind, Duration::from_secs(14 * 86_400), "kept").is_empty());
    }
}
