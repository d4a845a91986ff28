//! Which blocks of a pending EBS snapshot EBS has accepted, kept in imgd's
//! state folder so the run after a killed one sends only the rest. EBS itself
//! cannot tell: its direct APIs list the blocks of completed snapshots only.
//!
//! A text file, `ebs-<snapshot>.blocks`: a header naming the snapshot, the
//! build's hash and the disk's size, then one line per accepted block, its
//! index and SHA-256. A line is written only after EBS accepted the block;
//! lines are single appends, so the 16 workers' lines never interleave. A
//! block is skipped on resume only when its line names exactly the bytes
//! read from the disk now, so a journal that is lost, torn or another
//! disk's costs blocks sent again, never a wrong snapshot (CompleteSnapshot's
//! checksum covers every block either way).

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const BLOCK: u64 = 512 * 1024;

const MAGIC: &str = "imgd-ebs-journal 1";

/// Which disk a journal is for.
#[derive(Clone, Copy)]
pub struct Disk<'a> {
    pub snapshot: &'a str,
    pub hash: &'a str,
    pub size: u64,
}

impl Disk<'_> {
    fn header(&self) -> String {
        format!("{MAGIC} {} {} {}\n", self.snapshot, self.hash, self.size)
    }
}

pub fn path(dir: &Path, snapshot: &str) -> Result<PathBuf> {
    // The id comes from AWS and names a file: only EC2's own shape is used.
    if !crate::model::valid_snapshot_id(snapshot) {
        bail!("{:?} is not a snapshot id", snapshot.escape_debug().to_string());
    }
    Ok(dir.join(format!("ebs-{snapshot}.blocks")))
}

/// The blocks recorded for `disk`: index -> SHA-256. Empty when there is no
/// journal or it is another disk's; lines that do not parse are left out.
pub fn read(dir: &Path, disk: Disk) -> BTreeMap<u64, [u8; 32]> {
    let Ok(text) = path(dir, disk.snapshot).and_then(|p| Ok(std::fs::read_to_string(p)?)) else {
        return BTreeMap::new();
    };
    let Some(body) = text.strip_prefix(&disk.header()) else { return BTreeMap::new() };
    let blocks = disk.size.div_ceil(BLOCK);
    body.lines()
        .filter_map(|line| {
            let (index, digest) = line.split_once(' ')?;
            let index: u64 = index.parse().ok().filter(|i| *i < blocks)?;
            let digest: [u8; 32] = hex::decode(digest).ok()?.try_into().ok()?;
            Some((index, digest))
        })
        .collect()
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl Journal {
    /// Opens `disk`'s journal to add to it (`keep`: the blocks in it are
    /// being reused), else starts it anew, written whole before any line.
    pub fn open(dir: &Path, disk: Disk, keep: bool) -> Result<Journal> {
        let path = path(dir, disk.snapshot)?;
        if !keep {
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(disk.header().as_bytes())?;
            tmp.persist(&path)?;
        }
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(Journal { path, file: Mutex::new(file) })
    }

    /// Block `index` with SHA-256 `digest` was accepted.
    pub fn record(&self, index: u64, digest: &[u8]) -> std::io::Result<()> {
        let line = format!("{index} {}\n", hex::encode(digest));
        let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.write_all(line.as_bytes())
    }

    /// The snapshot is complete (or can never be): nothing to resume.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Forgets a snapshot's journal (the snapshot was deleted).
pub fn forget(dir: &Path, snapshot: &str) {
    if let Ok(p) = path(dir, snapshot) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lines_for_this_disk_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk { snapshot: "snap-0123456789abcdef0", hash: "ab", size: 3 * super::super::BLOCK };
        let j = Journal::open(dir.path(), disk, false).unwrap();
        j.record(0, &[1; 32]).unwrap();
        j.record(2, &[2; 32]).unwrap();
        drop(j);
        let got = read(dir.path(), disk);
        assert_eq!(got, BTreeMap::from([(0, [1; 32]), (2, [2; 32])]));

        // A torn last line, an index past the disk and junk are left out.
        let p = path(dir.path(), disk.snapshot).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "7 {}\nx y\n1 {}", hex::encode([3; 32]), &hex::encode([4; 32])[..10]).unwrap();
        assert_eq!(read(dir.path(), disk).len(), 2);

        // Another disk (hash or size) gets nothing; reopening without keep starts anew.
        assert!(read(dir.path(), Disk { hash: "cd", ..disk }).is_empty());
        assert!(read(dir.path(), Disk { size: 1, ..disk }).is_empty());
        Journal::open(dir.path(), disk, false).unwrap();
        assert!(read(dir.path(), disk).is_empty());
    }

    #[test]
    fn snapshot_ids_from_aws_never_name_another_path() {
        let dir = Path::new("/state");
        assert!(path(dir, "snap-0123456789abcdef0").is_ok());
        for bad in ["../../etc/passwd", "snap-", "snap-../x", "snap-0123456789abcdeg", "snap-12345678/x"] {
            assert!(path(dir, bad).is_err(), "{bad}");
        }
    }
}
